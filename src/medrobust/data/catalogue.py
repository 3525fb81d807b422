"""The file catalogue: every data file a task may need, by its path relative to the data folder.

The layout is that of the offline data folder (``$MEDROBUST_DATA``) and of the cache::

    medmnist/<subset>[_<size>].npz               MedMNIST v3 (Zenodo record 10519652)
    mitdb/<record>.{hea,dat,atr}                 MIT-BIH Arrhythmia Database 1.0.0 (PhysioNet)
    <name lower>/<Name>_{TRAIN,TEST}.<fmt>        UCR/UEA archive, fmt in txt, tsv, ts, arff
    <name lower>/<Name>.zip                      the archive the UCR files come in
    medical-abstracts-tc/medical_tc_{test,labels}.csv   Medical Abstracts TC corpus

Checksums: PhysioNet's sha256 for MIT-BIH; MedMNIST's published MD5 (and the sha256 established
for BreastMNIST and PneumoniaMNIST); the sha256 of ECG5000.zip from its Git LFS pointer and of
the ECG5000 TRAIN files; the sha256 of the Medical Abstracts files at the pinned commit.
"""

from __future__ import annotations

import re

from medrobust.data._medmnist_info import MEDMNIST_2D, MEDMNIST_SHA256, ZENODO_URL
from medrobust.data._mitdb_checksums import MITDB_SHA256
from medrobust.data.files import DataFile

MITDB_URL = "https://physionet.org/files/mitdb/1.0.0/{file}"
# de Chazal et al. (2004) inter-patient split, restricted to the 30 records medrobust uses.
MITDB_DS1 = (101, 106, 108, 109, 114, 118, 119, 124, 201, 203, 205, 207, 208, 209, 223)
MITDB_DS2 = (100, 105, 113, 200, 202, 210, 213, 214, 219, 221, 222, 228, 232, 233, 234)

ABSTRACTS_COMMIT = "70a2d9106c724729be8b3c4ddb00d1b14ec300c8"
ABSTRACTS_URL = (
    "https://raw.githubusercontent.com/sebischair/Medical-Abstracts-TC-Corpus/"
    f"{ABSTRACTS_COMMIT}/{{file}}"
)
ABSTRACTS_TEST = DataFile(
    path="medical-abstracts-tc/medical_tc_test.csv",
    url=ABSTRACTS_URL.format(file="medical_tc_test.csv"),
    sha256="1eecea73c9ecad292c55e10403bd139fab9580545d6878482997c5564d51ac05",
    size=3586836,
)
ABSTRACTS_LABELS = DataFile(
    path="medical-abstracts-tc/medical_tc_labels.csv",
    url=ABSTRACTS_URL.format(file="medical_tc_labels.csv"),
    sha256="8a27ae03339c798103678efa8012f744a723ff71a80f2b2c1355ee249564adc5",
    size=157,
)

UCR_URL = "https://timeseriesclassification.com/aeon-toolkit/{name}.zip"
UCR_FORMATS = ("txt", "tsv", "ts", "arff")
UCR_SPLITS = ("TRAIN", "TEST")

# name -> (zip sha256, zip size, {member base name: (sha256, size)}) for UCR datasets whose files
# have a known checksum.
_UCR_KNOWN: dict[str, tuple[str, int, dict[str, tuple[str, int]]]] = {
    "ECG5000": (
        "41f6de20ac895e9ce31753860995518951f1ed42a405d0e51c909d27e3b3c5a4",
        10614407,
        {
            "ECG5000_TRAIN.txt": (
                "0d96aff193311a6dc6111bf0dbd2f7d2313987fbf7a1da4a383d92563876057b",
                1128500,
            ),
            "ECG5000_TRAIN.tsv": (
                "df86ac15d7e283e731db6be7865f5004b65bc639014cb8b9753c26e24a9092a1",
                786687,
            ),
            "ECG5000_TRAIN.ts": (
                "1935be5cc08203aa7c0de288fbceb48997d475f43ee610fa373fd6f4a0d66775",
                786781,
            ),
            "ECG5000_TRAIN.arff": (
                "f2d793c998d853cbef4fed91f44792d680e51ed238cc51e8197a982b6520f4c6",
                790229,
            ),
        },
    ),
}

_MEDMNIST_STEM = re.compile(r"^([a-z0-9]+)(?:_(\d+))?$")
_UCR_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")


def medmnist_file(stem: str) -> DataFile:
    """The catalogue entry of ``medmnist/<stem>.npz`` (e.g. ``breastmnist``, ``pathmnist_64``).

    Official subsets carry their published MD5 (and a sha256 where established); any other stem
    gets an entry without checksum, read unverified and never downloaded.
    """
    file = f"{stem}.npz"
    match = _MEDMNIST_STEM.match(stem)
    md5: str | None = None
    if match is not None and match.group(1) in MEDMNIST_2D:
        size = int(match.group(2) or 28)
        md5 = MEDMNIST_2D[match.group(1)].md5.get(size)
    sha256, nbytes = MEDMNIST_SHA256.get(file, (None, None))
    return DataFile(
        path=f"medmnist/{file}",
        url=ZENODO_URL.format(file=file),
        sha256=sha256,
        md5=md5,
        size=nbytes,
    )


def mitdb_file(file: str) -> DataFile:
    """The catalogue entry of ``mitdb/<file>`` (``100.hea``, ``100.dat``, ``100.atr``, ...)."""
    sha256, size = MITDB_SHA256[file]
    return DataFile(path=f"mitdb/{file}", url=MITDB_URL.format(file=file), sha256=sha256, size=size)


def mitdb_record_files(record: int) -> tuple[DataFile, DataFile, DataFile]:
    """The ``.hea``, ``.dat`` and ``.atr`` entries of one MIT-BIH record."""
    return (
        mitdb_file(f"{record}.hea"),
        mitdb_file(f"{record}.dat"),
        mitdb_file(f"{record}.atr"),
    )


def ucr_folder(name: str) -> str:
    """Folder of a UCR dataset in the data folder: its name in lower case."""
    return name.lower()


def ucr_archive(name: str) -> DataFile:
    """The archive ``<folder>/<Name>.zip`` of a UCR dataset (with checksum where known)."""
    known = _UCR_KNOWN.get(name)
    members = tuple(f"{name}_{split}.{fmt}" for split in UCR_SPLITS for fmt in UCR_FORMATS)
    return DataFile(
        path=f"{ucr_folder(name)}/{name}.zip",
        url=UCR_URL.format(name=name),
        sha256=known[0] if known else None,
        size=known[1] if known else None,
        members=members,
    )


def ucr_file(name: str, split: str) -> DataFile:
    """The entry of one UCR split: ``<Name>_<SPLIT>.txt``, with the other formats as alternatives.

    Args:
        name: the dataset name as the archive spells it, e.g. ``"ECG5000"``.
        split: ``"TRAIN"`` or ``"TEST"``.
    """
    known = _UCR_KNOWN.get(name)
    member_sums = known[2] if known else {}
    archive = ucr_archive(name)
    variants = []
    for fmt in UCR_FORMATS:
        base = f"{name}_{split}.{fmt}"
        sha256, size = member_sums.get(base, (None, None))
        variants.append(
            DataFile(
                path=f"{ucr_folder(name)}/{base}",
                url=archive.url,
                sha256=sha256,
                size=size,
                archive=archive,
            )
        )
    primary, *others = variants
    return DataFile(
        path=primary.path,
        url=primary.url,
        sha256=primary.sha256,
        size=primary.size,
        archive=archive,
        alternatives=tuple(others),
    )


def canonical_ucr_name(name: str) -> str:
    """The archive's spelling of a catalogued UCR name (``ecg5000`` -> ``ECG5000``)."""
    return {known.lower(): known for known in _UCR_KNOWN}.get(name.lower(), name)


def valid_ucr_name(name: str) -> bool:
    """Whether ``name`` is safe as a UCR dataset (and file) name."""
    return bool(_UCR_NAME.match(name))


def valid_medmnist_stem(stem: str) -> bool:
    """Whether ``stem`` is safe as a MedMNIST file stem (``<subset>`` or ``<subset>_<size>``)."""
    return bool(_MEDMNIST_STEM.match(stem))


_UCR_KEY = re.compile(r"^([a-z0-9][a-z0-9_\-]*)/([A-Za-z0-9][A-Za-z0-9_\-]*)_(TRAIN|TEST)\.txt$")


def lookup(key: str) -> DataFile:
    """The catalogue entry for a key of ``TaskSpec.files``.

    Raises:
        KeyError: the key names no catalogue file.
    """
    if key == ABSTRACTS_TEST.path:
        return ABSTRACTS_TEST
    if key == ABSTRACTS_LABELS.path:
        return ABSTRACTS_LABELS
    folder, _, file = key.partition("/")
    if folder == "mitdb" and file in MITDB_SHA256:
        return mitdb_file(file)
    if folder == "medmnist" and file.endswith(".npz") and valid_medmnist_stem(file[:-4]):
        return medmnist_file(file[:-4])
    match = _UCR_KEY.match(key)
    if match is not None and match.group(1) == ucr_folder(match.group(2)):
        return ucr_file(match.group(2), match.group(3))
    raise KeyError(key)
