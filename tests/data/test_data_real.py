"""Every loader on the real offline files: shapes, dtypes, class counts, splits, determinism."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from medrobust.data import Task, cache_dir, ensure_files, load_task, task_names
from medrobust.data.catalogue import MITDB_DS1, MITDB_DS2
from medrobust.types import UNBOUNDED, UNIT_INTERVAL, Modality, TaskKind

SPLITS = ("train", "val", "test")


def counts(task: Task) -> dict[str, list[int]]:
    return {name: split.class_counts(task.num_classes) for name, split in task.splits().items()}


def assert_same(a: Task, b: Task) -> None:
    for name in SPLITS:
        sa, sb = a.splits()[name], b.splits()[name]
        np.testing.assert_array_equal(sa.x, sb.x)
        np.testing.assert_array_equal(sa.y, sb.y)


def check_common(task: Task) -> None:
    for split in task.splits().values():
        assert split.y.dtype == np.int64 and split.y.ndim == 1
        assert len(split) > 0
        assert split.y.min() >= 0 and split.y.max() < task.num_classes
        if task.modality is not Modality.TEXT:
            assert split.x.dtype == np.float32
            assert np.isfinite(split.x).all()
    assert task.description and "\n" not in task.description
    for key in ("source_files", "split_policy", "normalisation"):
        assert key in task.metadata


@pytest.mark.usefixtures("offline")
def test_ensure_files_on_the_real_folder_is_fast():
    start = time.perf_counter()
    ensure_files(task_names())
    assert time.perf_counter() - start < 10
    assert not cache_dir().exists()  # nothing needed downloading or writing


@pytest.mark.usefixtures("offline")
def test_breastmnist():
    task = load_task("breastmnist")
    check_common(task)
    assert task.class_names == ("malignant", "normal/benign")
    assert task.positive_class == 0
    assert task.domain == UNIT_INTERVAL
    assert task.input_shape == (1, 28, 28)
    assert counts(task) == {"train": [147, 399], "val": [21, 57], "test": [42, 114]}
    for split in task.splits().values():
        assert split.x.min() >= 0 and split.x.max() <= 1
    assert task.metadata["source_files"][0]["sha256"] == (
        "3a22d2a4625e7dd8903f0f59030e81a3d0c222bece2e5e10927456cb50efdec1"
    )
    assert_same(task, load_task("breastmnist", seed=7))  # official split: seed ignored


@pytest.mark.usefixtures("offline")
def test_pneumoniamnist():
    task = load_task("pneumoniamnist")
    check_common(task)
    assert task.class_names == ("normal", "pneumonia")
    assert task.positive_class == 1
    assert counts(task) == {"train": [1214, 3494], "val": [135, 389], "test": [234, 390]}
    assert task.train.x.shape == (4708, 1, 28, 28)
    assert float(task.train.x.max()) == 1.0


@pytest.mark.usefixtures("offline")
def test_generic_medmnist_matches_registered():
    generic = load_task("medmnist:breastmnist")
    registered = load_task("breastmnist")
    assert generic.name == "medmnist:breastmnist"
    assert generic.class_names == registered.class_names
    assert generic.positive_class == registered.positive_class == 0
    assert_same(generic, registered)


@pytest.mark.usefixtures("offline")
def test_ecg5000():
    task = load_task("ecg5000", seed=0)
    check_common(task)
    assert task.class_names == ("Normal", "R-on-T PVC", "PVC", "SP/EB", "Unclassified")
    assert task.positive_class == 1
    assert task.domain == UNBOUNDED
    assert task.input_shape == (1, 140)
    assert task.metadata["official_test"] is False
    per_split = counts(task)
    totals = np.sum([per_split[s] for s in SPLITS], axis=0).tolist()
    assert totals == [292, 177, 10, 19, 2]
    for label in range(4):  # every class with >= 3 series reaches every split
        assert all(per_split[s][label] > 0 for s in SPLITS)
    assert per_split["train"][4] == 1 and per_split["test"][4] == 1
    assert per_split["train"][0] == 175  # 60 % of 292
    assert_same(task, load_task("ecg5000", seed=0))
    other = load_task("ecg5000", seed=1)
    assert not np.array_equal(task.train.x, other.train.x)
    assert counts(other) == per_split  # stratification fixes the counts


@pytest.mark.usefixtures("offline")
def test_generic_ucr_matches_registered():
    generic = load_task("ucr:ECG5000", seed=2)
    assert generic.class_names == load_task("ecg5000").class_names
    assert_same(generic, load_task("ecg5000", seed=2))


@pytest.mark.usefixtures("offline")
def test_ecg5000_anomaly():
    task = load_task("ecg5000_anomaly", seed=3)
    check_common(task)
    assert task.kind is TaskKind.ANOMALY_DETECTION
    assert task.class_names == ("normal", "abnormal") and task.positive_class == 1
    per_split = counts(task)
    assert per_split["train"][1] == 0 and per_split["train"][0] > 0
    assert all(per_split[s][0] > 0 and per_split[s][1] > 0 for s in ("val", "test"))
    assert sum(sum(c) for c in per_split.values()) == 500
    assert sum(per_split[s][1] for s in SPLITS) == 208
    # Same partition of normal beats as the classification task with the same seed.
    classification = load_task("ecg5000", seed=3)
    normal_train = classification.train.x[classification.train.y == 0]
    np.testing.assert_array_equal(task.train.x, normal_train)
    assert_same(task, load_task("ecg5000_anomaly", seed=3))


@pytest.mark.usefixtures("offline")
def test_medical_abstracts():
    task = load_task("medical_abstracts", seed=0)
    check_common(task)
    assert task.modality is Modality.TEXT
    assert task.class_names[0] == "neoplasms" and task.positive_class == 0
    assert len(task.class_names) == 5
    per_split = counts(task)
    totals = np.sum([per_split[s] for s in SPLITS], axis=0)
    assert totals.tolist() == [633, 299, 385, 610, 961]
    assert totals.sum() == 2888
    for name, fraction in zip(SPLITS, (0.7, 0.1, 0.2), strict=True):
        assert np.all(np.abs(np.array(per_split[name]) - fraction * totals) <= 1)
        split = task.splits()[name]
        assert split.x.dtype == object
        assert all(isinstance(t, str) and t for t in split.x)
    assert_same(task, load_task("medical_abstracts", seed=0))
    assert not np.array_equal(task.train.x, load_task("medical_abstracts", seed=1).train.x)


def test_wisconsin_needs_no_files():
    task = load_task("wisconsin", seed=0)
    check_common(task)
    assert task.modality is Modality.TABULAR
    assert task.class_names == ("malignant", "benign") and task.positive_class == 0
    assert task.input_shape == (30,)
    per_split = counts(task)
    assert sum(sum(c) for c in per_split.values()) == 569
    assert np.sum([per_split[s] for s in SPLITS], axis=0).tolist() == [212, 357]
    np.testing.assert_allclose(task.train.x.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(task.train.x.std(axis=0), 1, atol=1e-4)
    assert len(task.metadata["feature_mean"]) == len(task.metadata["feature_std"]) == 30
    assert_same(task, load_task("wisconsin", seed=0))
    assert not np.array_equal(task.test.x, load_task("wisconsin", seed=1).test.x)
    assert not cache_dir().exists()


# -- MIT-BIH, loaded once per session ---------------------------------------------------------


@pytest.fixture(scope="session")
def mitbih_cache(real_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder shared by the MIT-BIH tests, so that beats are segmented once."""
    return tmp_path_factory.mktemp("mitbih-cache")


@pytest.fixture
def mitbih_env(real_data: Path, mitbih_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEDROBUST_DATA", str(real_data))
    monkeypatch.setenv("MEDROBUST_CACHE", str(mitbih_cache))
    return mitbih_cache


@pytest.fixture(scope="session")
def mitbih(real_data: Path, mitbih_cache: Path) -> Task:
    """The MIT-BIH task with seed 0, loaded once per session."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEDROBUST_DATA", str(real_data))
        patch.setenv("MEDROBUST_CACHE", str(mitbih_cache))
        patch.setenv("MEDROBUST_OFFLINE", "1")
        return load_task("mitbih", seed=0)


def test_mitbih_shapes_and_classes(mitbih: Task):
    check_common(mitbih)
    assert mitbih.class_names == ("N", "S", "V", "F", "Q")
    assert mitbih.positive_class == 2
    assert mitbih.domain == UNBOUNDED
    assert mitbih.input_shape == (1, 128)
    per_split = counts(mitbih)
    assert all(c > 0 for c in per_split["train"])
    assert all(c > 0 for c in per_split["test"])
    # Test = the DS2 records; counts from the .atr files less beats too close to the ends.
    assert per_split["test"] == [30815, 1832, 3213, 388, 7]
    ds1 = np.add(per_split["train"], per_split["val"]).tolist()
    assert ds1 == [29184, 844, 3514, 413, 8]
    median = np.median(mitbih.train.x[:, 0, :], axis=1)
    np.testing.assert_allclose(median, 0, atol=1e-6)


def test_mitbih_inter_patient_split(mitbih: Task):
    groups = {name: set(np.unique(s.groups).tolist()) for name, s in mitbih.splits().items()}
    assert groups["test"] == set(MITDB_DS2)
    assert groups["train"] | groups["val"] == set(MITDB_DS1)
    assert len(groups["val"]) == 3
    assert not groups["train"] & groups["val"]
    assert not (groups["train"] | groups["val"]) & groups["test"]
    assert mitbih.metadata["records"]["val"] == sorted(groups["val"])
    for split in mitbih.splits().values():
        assert split.groups is not None and split.groups.dtype == np.int64


def test_mitbih_seed_moves_only_validation(mitbih: Task, mitbih_env: Path):
    beat_caches = list((mitbih_env / "derived").glob("mitbih-beats-*.npz"))
    assert len(beat_caches) == 1
    start = time.perf_counter()
    again = load_task("mitbih", seed=0)
    assert time.perf_counter() - start < 5
    assert_same(again, mitbih)
    seeds = [load_task("mitbih", seed=s).metadata["records"]["val"] for s in range(1, 6)]
    assert len({tuple(v) for v in [*seeds, mitbih.metadata["records"]["val"]]}) > 1
    other = load_task("mitbih", seed=1)
    np.testing.assert_array_equal(other.test.x, mitbih.test.x)
    assert all(c > 0 for c in counts(other)["train"])
