"""Task names, generic names, the file catalogue and up-front checks (no data loaded)."""

from __future__ import annotations

import pytest

from medrobust.data import (
    TASKS,
    DataFile,
    cache_dir,
    get_task_spec,
    load_task,
    offline_dir,
    required_files,
    task_names,
)
from medrobust.data.catalogue import MITDB_DS1, MITDB_DS2
from medrobust.errors import ParameterError, UnknownNameError
from medrobust.types import Modality, TaskKind

REGISTERED = [
    "breastmnist",
    "ecg5000",
    "ecg5000_anomaly",
    "medical_abstracts",
    "mitbih",
    "pneumoniamnist",
    "wisconsin",
]


def test_registered_names():
    assert task_names() == REGISTERED
    assert TASKS.names() == REGISTERED


@pytest.mark.parametrize("name", REGISTERED)
def test_spec_fields(name: str):
    spec = get_task_spec(name)
    assert spec.name == name
    assert spec.summary
    assert callable(spec.load)
    expected_resplit = name not in ("breastmnist", "pneumoniamnist")
    assert spec.resplits is expected_resplit


def test_kinds_and_modalities():
    assert get_task_spec("ecg5000_anomaly").kind is TaskKind.ANOMALY_DETECTION
    assert get_task_spec("wisconsin").modality is Modality.TABULAR
    assert get_task_spec("medical_abstracts").modality is Modality.TEXT
    assert get_task_spec("mitbih").modality is Modality.ECG


def test_unknown_name_suggests_close_match():
    with pytest.raises(UnknownNameError, match="Did you mean 'breastmnist'"):
        get_task_spec("breastmnis")
    with pytest.raises(UnknownNameError, match="medmnist:<subset>"):
        load_task("no-such-task")


@pytest.mark.parametrize("name", ["medmnist:../etc", "medmnist:", "ucr:a/b", "ucr:", "ucr:../x"])
def test_unsafe_generic_names_are_rejected(name: str):
    with pytest.raises(UnknownNameError):
        get_task_spec(name)


def test_generic_specs():
    spec = get_task_spec("medmnist:PathMNIST_64")
    assert spec.name == "medmnist:pathmnist_64"
    assert spec.files == ("medmnist/pathmnist_64.npz",)
    (file,) = required_files(["medmnist:pathmnist_64"])
    assert file.md5 == "55aa9c1e0525abe5a6b9d8343a507616"
    assert file.url.startswith("https://zenodo.org/records/10519652/files/pathmnist_64.npz")
    spec = get_task_spec("ucr:ECG200")
    assert spec.name == "ucr:ECG200" and spec.resplits
    (file,) = required_files(["ucr:ECG200"])
    assert file.path == "ecg200/ECG200_TRAIN.txt"
    assert not file.verifiable
    assert [alt.name for alt in file.alternatives] == [
        "ECG200_TRAIN.tsv",
        "ECG200_TRAIN.ts",
        "ECG200_TRAIN.arff",
    ]


def test_known_ucr_names_are_case_insensitive():
    assert get_task_spec("ucr:ecg5000").files == get_task_spec("ecg5000").files
    assert get_task_spec("ucr:ecg5000").name == "ucr:ECG5000"


@pytest.mark.parametrize("name", ["medmnist:chestmnist", "medmnist:chestmnist_64"])
def test_multilabel_subset_is_refused_before_loading(name: str):
    with pytest.raises(ParameterError, match="multi-label"):
        get_task_spec(name)


def test_3d_subset_is_refused():
    with pytest.raises(ParameterError, match="3D"):
        get_task_spec("medmnist:organmnist3d")


def test_required_files_of_every_task_are_verifiable():
    files = required_files(task_names())
    paths = [f.path for f in files]
    assert len(paths) == len(set(paths)) == 2 + 90 + 1 + 2
    for file in files:
        assert isinstance(file, DataFile)
        assert file.verifiable, file.path
        assert file.url.startswith("https://"), file.url
    assert required_files(["wisconsin"]) == []
    assert required_files(["ecg5000", "ecg5000_anomaly"]) == required_files(["ecg5000"])


def test_mitbih_catalogue():
    files = required_files(["mitbih"])
    records = {int(f.name.split(".")[0]) for f in files}
    assert records == set(MITDB_DS1) | set(MITDB_DS2)
    assert len(MITDB_DS1) == len(MITDB_DS2) == 15
    dat = next(f for f in files if f.path == "mitdb/100.dat")
    assert dat.url == "https://physionet.org/files/mitdb/1.0.0/100.dat"
    assert dat.sha256 == "b2ea3c250e56e48f4b7b90697832b8ecd1afa1e0bb31f2dcfea4ed6e1075a639"
    assert dat.size == 1_950_000


def test_ecg5000_catalogue_reaches_the_official_zip():
    (train,) = required_files(["ecg5000"])
    assert train.path == "ecg5000/ECG5000_TRAIN.txt"
    assert train.sha256 == "0d96aff193311a6dc6111bf0dbd2f7d2313987fbf7a1da4a383d92563876057b"
    assert train.archive is not None
    assert train.archive.url == "https://timeseriesclassification.com/aeon-toolkit/ECG5000.zip"
    assert train.archive.sha256 == (
        "41f6de20ac895e9ce31753860995518951f1ed42a405d0e51c909d27e3b3c5a4"
    )
    assert "ECG5000_TEST.ts" in train.archive.members
    assert all(alt.sha256 for alt in train.alternatives)


def test_breastmnist_prefers_sha256():
    (file,) = required_files(["breastmnist"])
    assert file.checksum == (
        "sha256",
        "3a22d2a4625e7dd8903f0f59030e81a3d0c222bece2e5e10927456cb50efdec1",
    )
    assert file.md5 == "750601b1f35ba3300ea97c75c52ff8f6"


@pytest.mark.parametrize("seed", [-1, 1.5, "0", True, None])
def test_bad_seed(seed: object):
    with pytest.raises(ParameterError, match="'seed' parameter of load_task"):
        load_task("wisconsin", seed)  # type: ignore[arg-type]


def test_folders_follow_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path):
    monkeypatch.setenv("MEDROBUST_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("MEDROBUST_CACHE")
    assert str(cache_dir()).endswith(".cache/medrobust")
    assert offline_dir() is None
    monkeypatch.setenv("MEDROBUST_DATA", str(tmp_path))
    assert offline_dir() == tmp_path


@pytest.mark.parametrize(
    "kwargs",
    [
        {"path": "/abs/x.npz"},
        {"path": "a/../b"},
        {"path": "a\\b"},
        {"path": "x", "sha256": "abc"},
        {"path": "x", "md5": "Z" * 32},
        {"path": "x", "size": -1},
    ],
)
def test_datafile_validation(kwargs: dict[str, object]):
    with pytest.raises(ParameterError):
        DataFile(url="https://example.org/x", **kwargs)  # type: ignore[arg-type]
