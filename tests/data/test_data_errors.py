"""Bad input: each failure raises a typed error whose message names the file, URL and place."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from medrobust.data import ensure_files, load_task
from medrobust.data.mitbih import segment_record
from medrobust.data.text import read_abstracts
from medrobust.data.ucr import load_ucr, read_ucr
from medrobust.errors import (
    ChecksumError,
    CorruptDataError,
    DataNotFoundError,
    ParameterError,
    UnknownNameError,
)

BREAST_SHA256 = "3a22d2a4625e7dd8903f0f59030e81a3d0c222bece2e5e10927456cb50efdec1"


@pytest.fixture
def empty_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "offline"
    folder.mkdir()
    monkeypatch.setenv("MEDROBUST_DATA", str(folder))
    return folder


def place(real_data: Path, offline: Path, relative: str, new_name: str | None = None) -> Path:
    target = offline / (new_name or relative)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(real_data / relative, target)
    return target


def test_missing_file_names_file_url_and_place(empty_offline: Path, isolated_env: Path):
    with pytest.raises(DataNotFoundError) as info:
        load_task("breastmnist")
    message = str(info.value)
    assert "medmnist/breastmnist.npz" in message
    assert "https://zenodo.org/records/10519652/files/breastmnist.npz" in message
    assert "MEDROBUST_OFFLINE" in message
    assert str(empty_offline) in message and str(isolated_env) in message
    assert isinstance(info.value, FileNotFoundError)


def test_ensure_files_lists_every_missing_file_at_once(empty_offline: Path):
    with pytest.raises(DataNotFoundError) as info:
        ensure_files(["breastmnist", "pneumoniamnist", "medical_abstracts", "ecg5000", "mitbih"])
    missing = [m.relative_path for m in info.value.missing]
    assert len(missing) == 2 + 2 + 1 + 90
    assert "medmnist/pneumoniamnist.npz" in missing
    assert "medical-abstracts-tc/medical_tc_labels.csv" in missing
    assert "mitdb/232.dat" in missing
    assert any(m.startswith("ecg5000/ECG5000_TRAIN.txt") for m in missing)
    message = str(info.value)
    assert "95 data file(s)" in message
    assert "ECG5000.zip" in message


def test_offline_folder_typo_is_pointed_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MEDROBUST_DATA", str(tmp_path / "no-such-folder"))
    with pytest.raises(DataNotFoundError, match="is not a folder"):
        ensure_files(["breastmnist"])


def test_ensure_files_checks_names_first():
    with pytest.raises(UnknownNameError, match="Did you mean 'mitbih'"):
        ensure_files(["breastmnist", "mitbh"])


def test_wrong_checksum_in_offline_folder(real_data: Path, empty_offline: Path):
    target = place(real_data, empty_offline, "medmnist/breastmnist.npz")
    data = bytearray(target.read_bytes())
    data[1000] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(ChecksumError) as info:
        load_task("breastmnist")
    message = str(info.value)
    assert str(target) in message
    assert BREAST_SHA256 in message
    assert "zenodo.org" in message
    assert target.read_bytes() == bytes(data)  # the offline folder is never modified
    with pytest.raises(ChecksumError):
        ensure_files(["breastmnist"])


def test_wrong_file_in_cache_is_removed(real_data: Path, isolated_env: Path):
    target = isolated_env / "medmnist" / "breastmnist.npz"
    target.parent.mkdir(parents=True)
    target.write_bytes((real_data / "medmnist/breastmnist.npz").read_bytes()[:-10])
    with pytest.raises(DataNotFoundError, match=r"medmnist/breastmnist\.npz"):
        load_task("breastmnist")
    assert not target.exists()


def test_good_file_in_cache_is_used(real_data: Path, isolated_env: Path):
    target = isolated_env / "medmnist" / "breastmnist.npz"
    target.parent.mkdir(parents=True)
    shutil.copyfile(real_data / "medmnist/breastmnist.npz", target)
    assert load_task("breastmnist").test.class_counts(2) == [42, 114]


def test_truncated_generic_npz(real_data: Path, empty_offline: Path):
    target = place(real_data, empty_offline, "medmnist/breastmnist.npz", "medmnist/mybreast.npz")
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    with pytest.raises(CorruptDataError) as info:
        load_task("medmnist:mybreast")
    assert str(target) in str(info.value)


def test_not_an_npz(empty_offline: Path):
    target = empty_offline / "medmnist" / "junk.npz"
    target.parent.mkdir(parents=True)
    target.write_text("hello")
    with pytest.raises(CorruptDataError, match=r"junk\.npz"):
        load_task("medmnist:junk")


def test_npz_missing_keys(empty_offline: Path):
    target = empty_offline / "medmnist" / "partial.npz"
    target.parent.mkdir(parents=True)
    np.savez(target, train_images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(CorruptDataError, match="missing keys"):
        load_task("medmnist:partial")


def test_generic_medmnist_missing_says_place_by_hand(empty_offline: Path):
    with pytest.raises(DataNotFoundError, match="by hand") as info:
        load_task("medmnist:unknownmnist")
    assert "medmnist/unknownmnist.npz" in str(info.value)


def test_rgb_npz_loads_with_three_channels(empty_offline: Path):
    # Synthetic data only to test the RGB layout (N, H, W, 3) of the official key layout.
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 12), ("val", 6), ("test", 6)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 3).astype(np.uint8)[:, None]
    target = empty_offline / "medmnist" / "rgbtest.npz"
    target.parent.mkdir(parents=True)
    np.savez(target, **arrays)
    task = load_task("medmnist:rgbtest")
    assert task.input_shape == (3, 28, 28)
    assert task.train.x.dtype == np.float32
    assert task.class_names == ("class 0", "class 1", "class 2")
    assert task.positive_class == 0
    assert task.metadata["verified"] is False
    raw = arrays["train_images"]
    np.testing.assert_allclose(task.train.x[4, 2, 5, 7] * 255, raw[4, 5, 7, 2], atol=1e-3)
    assert task.train.x.min() >= 0 and task.train.x.max() <= 1


def test_truncated_generic_ucr(real_data: Path, empty_offline: Path):
    text = (real_data / "ecg5000/ECG5000_TRAIN.txt").read_text()
    target = empty_offline / "cut" / "Cut_TRAIN.txt"
    target.parent.mkdir(parents=True)
    target.write_text(text[: len(text) // 2 + 37])
    with pytest.raises(CorruptDataError, match=r"Cut_TRAIN\.txt"):
        load_task("ucr:Cut")


@pytest.mark.parametrize(
    ("name", "content", "error", "match"),
    [
        ("A_TRAIN.txt", "", CorruptDataError, "no series"),
        ("A_TRAIN.tsv", "1\t0.5\tabc\n2\t0.1\t0.2\n", CorruptDataError, "non-numeric"),
        ("A_TRAIN.tsv", "1\t0.5\tNaN\n2\t0.1\t0.2\n", ParameterError, "missing"),
        ("A_TRAIN.ts", "@problemName A\n@univariate true\n", CorruptDataError, "@data"),
        ("A_TRAIN.ts", "@problemName A\n1,2,3:1\n", CorruptDataError, "neither a header"),
        ("A_TRAIN.csv", "1,2\n", CorruptDataError, "unknown format"),
    ],
)
def test_bad_ucr_files(tmp_path: Path, name: str, content: str, error: type, match: str):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(error, match=match):
        read_ucr(path)


def test_non_utf8_files_are_rejected(tmp_path: Path):
    path = tmp_path / "medical_tc_test.csv"
    path.write_bytes('condition_label,medical_abstract\n1,"caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(CorruptDataError, match="not UTF-8"):
        read_abstracts(path)
    ucr = tmp_path / "B_TRAIN.txt"
    ucr.write_bytes(b"1 0.5 \xff\n")
    with pytest.raises(CorruptDataError, match="not UTF-8"):
        read_ucr(ucr)


def test_abstracts_csv_layout(tmp_path: Path):
    path = tmp_path / "medical_tc_test.csv"
    path.write_text('condition_label,medical_abstract\n1,"a, quoted\nmulti-line text"\n2,plain\n')
    texts, labels = read_abstracts(path)
    assert texts == ["a, quoted\nmulti-line text", "plain"] and labels == [1, 2]
    path.write_text("label,text\n1,a\n")
    with pytest.raises(CorruptDataError, match="header"):
        read_abstracts(path)
    path.write_text('condition_label,medical_abstract\n1,"unterminated\n')
    with pytest.raises(CorruptDataError, match="not valid CSV"):
        read_abstracts(path)


def test_ucr_formats_agree(real_data: Path):
    reference_x, reference_y = read_ucr(real_data / "ecg5000/ECG5000_TRAIN.txt")
    assert reference_x.shape == (500, 1, 140)
    for suffix in ("tsv", "ts", "arff"):
        x, y = read_ucr(real_data / f"ecg5000/ECG5000_TRAIN.{suffix}")
        np.testing.assert_allclose(x, reference_x, rtol=1e-6)
        assert y.tolist() == reference_y.tolist()


def test_ucr_offline_alternative_format(real_data: Path, empty_offline: Path):
    place(real_data, empty_offline, "ecg5000/ECG5000_TRAIN.ts")
    task = load_task("ecg5000")
    assert task.metadata["source_files"][0]["path"] == "ecg5000/ECG5000_TRAIN.ts"
    assert sum(len(s) for s in task.splits().values()) == 500


def test_ucr_with_official_test_split(real_data: Path, empty_offline: Path):
    lines = (real_data / "ecg5000/ECG5000_TRAIN.txt").read_text().splitlines(keepends=True)
    folder = empty_offline / "ecgpart"
    folder.mkdir()
    (folder / "EcgPart_TRAIN.txt").write_text("".join(lines[:350]))
    (folder / "EcgPart_TEST.txt").write_text("".join(lines[350:]))
    task = load_task("ucr:EcgPart", seed=0)
    assert task.metadata["official_test"] is True
    assert len(task.test) == 150
    assert len(task.train) + len(task.val) == 350
    assert task.positive_class == 0 and len(task.class_names) == 5
    anomaly = load_ucr("EcgPart", "ecgpart_anomaly", seed=0, anomaly=True)
    assert anomaly.train.class_counts(2)[1] == 0
    assert len(anomaly.test) == 150  # the official test split is left as it is
    assert len(anomaly.train) + len(anomaly.val) == 350


def test_mitbih_record_split_across_folders(real_data: Path, tmp_path: Path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    paths = {}
    for name, folder in (("114.hea", one), ("114.dat", two), ("114.atr", two)):
        shutil.copyfile(real_data / "mitdb" / name, folder / name)
        paths[name] = folder / name
    x, y, _ = segment_record(114, paths)
    direct = {n: real_data / "mitdb" / n for n in paths}
    x_ref, y_ref, _ = segment_record(114, direct)
    np.testing.assert_array_equal(x, x_ref)
    np.testing.assert_array_equal(y, y_ref)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted(paths)


def test_mitbih_uses_lead_mlii_by_name(real_data: Path):
    paths = {n: real_data / "mitdb" / n for n in ("114.hea", "114.dat", "114.atr")}
    x, _, samples = segment_record(114, paths)
    import wfdb  # imported quietly by segment_record first (wfdb 4.3 warns under pandas 3)

    header = wfdb.rdheader(str(real_data / "mitdb" / "114"))
    assert header.sig_name == ["V5", "MLII"]  # record 114 stores MLII second
    signal = wfdb.rdrecord(str(real_data / "mitdb" / "114"), channels=[1]).p_signal[:, 0]
    window = signal[samples[0] - 90 : samples[0] + 166].reshape(128, 2).mean(axis=1)
    np.testing.assert_allclose(x[0], window - np.median(window), atol=1e-5)


def test_mitbih_damaged_header(real_data: Path, tmp_path: Path):
    paths = {}
    for name in ("100.hea", "100.dat", "100.atr"):
        shutil.copyfile(real_data / "mitdb" / name, tmp_path / name)
        paths[name] = tmp_path / name
    (tmp_path / "100.hea").write_text("100 2 360 650000\n100.dat 212 200 11 1024 995 -22131 0 V1\n")
    with pytest.raises(CorruptDataError, match="no lead MLII"):
        segment_record(100, paths)
    (tmp_path / "100.hea").write_text("garbage\n")
    with pytest.raises(CorruptDataError, match="record 100"):
        segment_record(100, paths)
