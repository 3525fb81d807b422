"""MIT-BIH Arrhythmia beats in the five AAMI classes, with the inter-patient split.

Preprocessing (recorded in ``Task.metadata`` too):

- Lead MLII, found by signal name (record 114 stores it as the second signal), in physical units
  (millivolts) as ``wfdb.rdrecord`` returns them; 360 Hz.
- One window per annotated beat: the 90 samples before the annotated R peak and the 166 from it
  on (256 samples, 0.25 s before and 0.46 s after the peak). Beats whose window leaves the
  record are dropped, and so are annotations that are not beats (rhythm and signal-quality
  marks, ``!`` flutter waves, ``x`` non-conducted P waves, ...).
- Decimation by 2 to 128 samples (180 Hz) by averaging consecutive pairs of samples: a 2-tap
  boxcar anti-aliasing filter, deterministic and without edge effects inside the short window.
- Baseline: each window's median is subtracted. Amplitudes stay in millivolts (no scaling), so
  the input domain is unbounded.

AAMI classes (ANSI/AAMI EC57): N = N, L, R, e, j; S = A, a, J, S; V = V, E; F = F; Q = /, f, Q.
Labels 0..4 are (N, S, V, F, Q). The positive class is V (2): ventricular ectopic beats are the
clinically dangerous arrhythmia a detector must not miss; the metrics also report one-vs-rest.

Split (de Chazal et al., 2004, inter-patient, restricted to the 30 records medrobust uses): test
= the 15 DS2 records, fixed; val = 3 of the 15 DS1 records, drawn with the seed among the choices
that leave every class DS1 holds in the 12 training records; train = the other 12 DS1 records.
No record appears in two splits; ``Split.groups`` holds the record number of each beat.

The segmented beats of all 30 records are cached as
``<cache_dir>/derived/mitbih-beats-<key>.npz``, where the key hashes the files' checksums and the
segmentation parameters; the file is written atomically.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import itertools
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from medrobust.atomic import write_atomically
from medrobust.data.catalogue import MITDB_DS1, MITDB_DS2, mitdb_record_files
from medrobust.data.files import DataFile, cache_dir, describe, fetch_all
from medrobust.data.npzfile import NpzArchive
from medrobust.data.splits import check_seed
from medrobust.data.task import Split, Task, TaskSpec
from medrobust.errors import CorruptDataError
from medrobust.types import UNBOUNDED, Modality, TaskKind

logger = logging.getLogger(__name__)

CLASS_NAMES = ("N", "S", "V", "F", "Q")
POSITIVE_CLASS = 2
AAMI: dict[str, int] = {
    **dict.fromkeys("NLRej", 0),
    **dict.fromkeys("AaJS", 1),
    **dict.fromkeys("VE", 2),
    "F": 3,
    **dict.fromkeys("/fQ", 4),
}
LEAD = "MLII"
FS = 360
BEFORE = 90
AFTER = 166
DECIMATION = 2
BEAT_LENGTH = (BEFORE + AFTER) // DECIMATION
VAL_RECORDS = 3
_CACHE_VERSION = 1
PARAMS: dict[str, Any] = {
    "lead": LEAD,
    "fs": FS,
    "before": BEFORE,
    "after": AFTER,
    "decimation": f"mean of {DECIMATION} consecutive samples",
    "baseline": "window median subtracted",
    "units": "mV",
    "aami": {symbol: CLASS_NAMES[label] for symbol, label in sorted(AAMI.items())},
}
RECORDS = tuple(sorted(MITDB_DS1 + MITDB_DS2))


def files() -> list[DataFile]:
    """The 90 files (``.hea``, ``.dat``, ``.atr`` of 30 records) the task needs."""
    return [file for record in RECORDS for file in mitdb_record_files(record)]


def mitbih_spec() -> TaskSpec:
    """The TaskSpec of ``mitbih``."""
    return TaskSpec(
        name="mitbih",
        modality=Modality.ECG,
        kind=TaskKind.CLASSIFICATION,
        files=tuple(file.path for file in files()),
        load=load_mitbih,
        resplits=True,
        summary="MIT-BIH beats, 5 AAMI classes, inter-patient split (test = DS2 records)",
    )


def load_mitbih(seed: int = 0) -> Task:
    """Load the MIT-BIH AAMI task; the seed picks the 3 validation records among DS1.

    Raises:
        DataNotFoundError: listing every record file that cannot be had.
        ChecksumError: a file does not match PhysioNet's checksum.
        CorruptDataError: a record cannot be read or lacks lead MLII.
    """
    seed = check_seed(seed)
    needed = files()
    paths = fetch_all(needed)
    beats = _load_or_segment(needed, paths)
    x, y, record = beats["x"], beats["y"].astype(np.int64), beats["record"].astype(np.int64)
    present = {int(r): set(np.unique(y[record == r]).tolist()) for r in RECORDS}
    val_records = choose_val_records(MITDB_DS1, present, seed)
    train_records = [r for r in MITDB_DS1 if r not in val_records]
    test_records = list(MITDB_DS2)

    def split(records: Sequence[int]) -> Split:
        mask = np.isin(record, records)
        return Split(x=x[mask][:, None, :].copy(), y=y[mask].copy(), groups=record[mask].copy())

    train, val, test = split(train_records), split(val_records), split(test_records)
    return Task(
        name="mitbih",
        modality=Modality.ECG,
        kind=TaskKind.CLASSIFICATION,
        class_names=CLASS_NAMES,
        positive_class=POSITIVE_CLASS,
        domain=UNBOUNDED,
        train=train,
        val=val,
        test=test,
        description=(
            "MIT-BIH Arrhythmia beats (lead MLII, 128 samples at 180 Hz, mV, median baseline "
            "removed), AAMI N/S/V/F/Q, inter-patient DS1/DS2 split."
        ),
        metadata={
            "source_files": [describe(file, paths[file.path]) for file in needed],
            "verified": True,
            "split_policy": (
                "inter-patient (de Chazal 2004): test = DS2 records; val = 3 DS1 records drawn "
                "with the seed so that train keeps every DS1 class; train = the other DS1 records"
            ),
            "records": {"train": train_records, "val": val_records, "test": test_records},
            "normalisation": (
                "per beat: window median subtracted (baseline); amplitudes kept in mV"
            ),
            "segmentation": copy.deepcopy(PARAMS),
            "positive_class_reason": "V: ventricular ectopic beats, the dangerous class to miss",
            "class_counts": {
                name: s.class_counts(len(CLASS_NAMES))
                for name, s in (("train", train), ("val", val), ("test", test))
            },
        },
    )


def choose_val_records(ds1: Sequence[int], present: dict[int, set[int]], seed: int) -> list[int]:
    """Draw the validation records among ``ds1`` with ``seed``, keeping every class in train.

    Args:
        ds1: the candidate records.
        present: the classes each record holds.
        seed: the seed.

    Returns:
        ``VAL_RECORDS`` sorted record numbers.
    """
    wanted = set().union(*(present[r] for r in ds1))
    choices = list(itertools.combinations(sorted(ds1), VAL_RECORDS))
    rng = np.random.default_rng(seed)
    for index in rng.permutation(len(choices)):
        val = choices[int(index)]
        kept = set().union(*(present[r] for r in ds1 if r not in val))
        if kept == wanted:
            return list(val)
    return list(choices[0])  # pragma: no cover - only if no choice keeps every class


def _cache_key(needed: Sequence[DataFile]) -> str:
    payload = json.dumps(
        {
            "version": _CACHE_VERSION,
            "files": sorted((f.path, f.sha256) for f in needed),
            "params": PARAMS,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


_BEAT_KEYS = ("x", "y", "record", "sample")


def read_beat_cache(target: Path) -> dict[str, np.ndarray] | None:
    """The segmented beats cached at ``target``, or None if the file is unusable.

    The file lies in the cache, where anything may have happened to it, so it is checked as
    strictly as a data file: the four arrays, float32 beats of ``BEAT_LENGTH`` samples that are
    finite, labels 0..4, records among ``RECORDS``, one entry per beat.
    """
    try:
        with NpzArchive(target, CorruptDataError) as npz:
            if npz.keys != set(_BEAT_KEYS):
                return None
            beats = {key: npz.read(key) for key in _BEAT_KEYS}
    except CorruptDataError:
        return None
    x, y, record, sample = (beats[key] for key in _BEAT_KEYS)
    if (
        x.dtype != np.float32
        or x.ndim != 2
        or x.shape[1] != BEAT_LENGTH
        or any(v.ndim != 1 or v.dtype.kind not in "iu" for v in (y, record, sample))
        or len({len(v) for v in beats.values()}) != 1
        or not np.isfinite(x).all()
        or not np.isin(y, np.arange(len(CLASS_NAMES))).all()
        or not np.isin(record, RECORDS).all()
    ):
        return None
    return beats


def _load_or_segment(needed: Sequence[DataFile], paths: dict[str, Path]) -> dict[str, np.ndarray]:
    target = cache_dir() / "derived" / f"mitbih-beats-{_cache_key(needed)}.npz"
    if target.is_file():
        cached = read_beat_cache(target)
        if cached is not None:
            return cached
        logger.warning("Rebuilding the unreadable MIT-BIH beat cache %s.", target)
    parts = [segment_record(record, _record_paths(record, paths)) for record in RECORDS]
    beats: dict[str, np.ndarray] = {
        "x": np.concatenate([p[0] for p in parts]).astype(np.float32),
        "y": np.concatenate([p[1] for p in parts]).astype(np.int8),
        "record": np.concatenate(
            [np.full(len(p[1]), r, np.int16) for p, r in zip(parts, RECORDS, strict=True)]
        ),
        "sample": np.concatenate([p[2] for p in parts]).astype(np.int64),
    }

    def write(handle: IO[bytes]) -> None:
        np.savez(handle, x=beats["x"], y=beats["y"], record=beats["record"], sample=beats["sample"])

    try:
        write_atomically(target, write)
    except OSError as err:  # a read-only cache only costs speed
        logger.warning("Could not cache MIT-BIH beats at %s: %s", target, err)
    return beats


def _record_paths(record: int, paths: dict[str, Path]) -> dict[str, Path]:
    return {file.name: paths[file.path] for file in mitdb_record_files(record)}


@contextlib.contextmanager
def _record_folder(paths: dict[str, Path]) -> Iterator[Path]:
    """A folder holding all files of one record (linking them when they lie in two folders)."""
    folders = {path.parent for path in paths.values()}
    if len(folders) == 1:
        yield folders.pop()
        return
    with tempfile.TemporaryDirectory(prefix="medrobust-mitdb-") as tmp:
        for name, path in paths.items():
            try:
                os.symlink(path.resolve(), Path(tmp) / name)
            except OSError:
                shutil.copyfile(path, Path(tmp) / name)
        yield Path(tmp)


def segment_record(
    record: int, paths: dict[str, Path]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut one record into AAMI-labelled beats (see the module docstring).

    Args:
        record: the record number.
        paths: ``{"<record>.hea": path, "<record>.dat": path, "<record>.atr": path}``.

    Returns:
        ``(x, y, sample)``: beats (n, 128) float32 in mV, AAMI labels (n,) and R-peak positions.

    Raises:
        CorruptDataError: the record cannot be read, lacks lead MLII or has another rate.
    """
    wfdb = _import_wfdb()
    with _record_folder(paths) as folder:
        base = str(folder / str(record))
        try:
            header = wfdb.rdheader(base)
            names = list(header.sig_name)
            if LEAD not in names:
                raise CorruptDataError(
                    f"The MIT-BIH record {record} ({folder}) has no lead {LEAD}; it has {names}."
                )
            if int(header.fs) != FS:
                raise CorruptDataError(
                    f"The MIT-BIH record {record} ({folder}) is sampled at {header.fs} Hz, "
                    f"expected {FS} Hz."
                )
            signal = wfdb.rdrecord(base, channels=[names.index(LEAD)]).p_signal[:, 0]
            with _quiet_wfdb():
                annotation = wfdb.rdann(base, "atr")
        except CorruptDataError:
            raise
        except Exception as err:  # wfdb raises many types on damaged files
            raise CorruptDataError(
                f"The MIT-BIH record {record} in {folder} could not be read "
                f"({type(err).__name__}: {err}). Replace its .hea/.dat/.atr files with "
                f"PhysioNet's ({mitdb_record_files(record)[0].url.rsplit('/', 1)[0]}/)."
            ) from None
    return cut_beats(np.asarray(signal, dtype=np.float64), annotation.sample, annotation.symbol)


@contextlib.contextmanager
def _quiet_wfdb() -> Iterator[None]:
    """Silence the one deprecation warning wfdb 4.3 triggers in pandas 3 (harmless here)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"The inplace keyword in DataFrame\.set_index")
        yield


def _import_wfdb() -> Any:
    with _quiet_wfdb():
        import wfdb
    return wfdb


def cut_beats(
    signal: np.ndarray, samples: np.ndarray, symbols: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Window, decimate and baseline-correct the annotated beats of one signal.

    Args:
        signal: one lead in mV at 360 Hz, shape (T,).
        samples: annotation positions.
        symbols: annotation symbols (non-beat symbols are skipped).

    Returns:
        ``(x, y, sample)`` as in :func:`segment_record`.
    """
    positions = np.asarray(samples, dtype=np.int64)
    labels = np.array([AAMI.get(s, -1) for s in symbols], dtype=np.int64)
    keep = (labels >= 0) & (positions - BEFORE >= 0) & (positions + AFTER <= len(signal))
    positions, labels = positions[keep], labels[keep]
    windows = signal[(positions - BEFORE)[:, None] + np.arange(BEFORE + AFTER)[None, :]]
    finite = np.isfinite(windows).all(axis=1)
    windows, positions, labels = windows[finite], positions[finite], labels[finite]
    beats = windows.reshape(len(windows), BEAT_LENGTH, DECIMATION).mean(axis=2)
    beats -= np.median(beats, axis=1, keepdims=True)
    return beats.astype(np.float32), labels, positions
