"""Property-based (fuzz) tests of data files: every damaged, odd or hostile file ends in a
documented error or in a correct task, and no failure leaves a partial file behind.

Families (counted in the "fuzz cases and their outcomes" summary, see tests/fuzz.py):

- user data files (.npz): keys, shapes, ranks, dtypes (objects are never unpickled), values and
  labels of ``file:<path>.npz`` tasks, each case with the outcome it must have;
- user data files (.npz bytes): truncated, bit-flipped, random, pickled, mislabelled archives,
  every zip compression, headers that lie about their shape;
- user data files (.csv): tabular CSVs with odd encodings, line endings, quotes, ragged rows,
  bad cells, labels and split columns;
- text csv: random Unicode texts that must round-trip exactly, or fail for a stated reason;
- user data file names and options: the ``?option=value`` query and the path itself;
- registered dataset files: corrupted copies of the canonical files (ChecksumError);
- unverified medmnist / ucr files: generic ``medmnist:<subset>`` and ``ucr:<Name>`` files and
  archives and the ECG5000 TEST file, which have no pinned checksum, so their parsers see them;
- medical abstracts csv parser, mitbih record header parser, mitbih beat cache: the parsers
  behind a checksum, fuzzed directly.

Each case runs in its own temporary offline folder and cache (``MEDROBUST_OFFLINE=1``); after
it, the offline folder and the user's folder are unchanged and the cache holds no temporary
file, and, after a failure, nothing new.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import hashlib
import io
import json
import pickle
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlencode

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medrobust.data import Task, load_task
from medrobust.data.files import clear_digest_memo, file_digest
from medrobust.data.mitbih import BEAT_LENGTH, RECORDS, read_beat_cache, segment_record
from medrobust.data.text import read_abstracts, read_label_names
from medrobust.data.userfile import OPTIONS
from medrobust.errors import MedrobustError
from medrobust.types import Domain, Modality, TaskKind
from tests import fuzz
from tests.fuzz import ACCEPTED, describe, outcome

NPZ = "user data files (.npz)"
NPZ_BYTES = "user data files (.npz bytes)"
CSV = "user data files (.csv)"
TEXT = "text csv"
OPTION = "user data file names and options"
REGISTERED = "registered dataset files"
MEDMNIST = "unverified medmnist files"
UCR = "unverified ucr files"
ABSTRACTS = "medical abstracts csv parser"
MITBIH_HEADER = "mitbih record header parser"
BEAT_CACHE = "mitbih beat cache"

CORRUPT = "CorruptDataError"
CONFIG = "ConfigError"
CHECKSUM = "ChecksumError"
NOT_FOUND = "DataNotFoundError"
PARAMETER = "ParameterError"

# The tests/data conftest gives each test a fresh cache through function-scoped fixtures; every
# example here makes its own folders instead (see sandbox()), so those fixtures are harmless.
FUZZ = {"suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]}


# -- sandbox and the no-partial-files check ------------------------------------------------------


@dataclass(frozen=True)
class Box:
    """The folders of one fuzz case."""

    data: Path  # MEDROBUST_DATA, the offline folder
    cache: Path  # MEDROBUST_CACHE
    user: Path  # the user's own data files


@contextlib.contextmanager
def sandbox() -> Iterator[Box]:
    """Fresh offline folder, cache and user folder; downloads disabled."""
    with (
        tempfile.TemporaryDirectory(prefix="medrobust-fuzz-") as tmp,
        pytest.MonkeyPatch.context() as patch,
    ):
        root = Path(tmp)
        box = Box(data=root / "data", cache=root / "cache", user=root / "user")
        for folder in (box.data, box.cache, box.user):
            folder.mkdir()
        patch.setenv("MEDROBUST_DATA", str(box.data))
        patch.setenv("MEDROBUST_CACHE", str(box.cache))
        patch.setenv("MEDROBUST_OFFLINE", "1")
        patch.delenv("MEDROBUST_DOWNLOAD_TIMEOUT", raising=False)
        clear_digest_memo()
        yield box


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder``: relative path -> (size, mtime)."""
    return {
        path.relative_to(folder).as_posix(): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _unverified(cache: Path, new: list[str]) -> list[str]:
    """The files of ``new`` that are not complete archive members recorded in a manifest.

    Members extracted from an intact archive are kept even when parsing them then fails: they
    are whole copies (all or none, CRC checked), and the manifest records their sha256.
    """
    recorded: dict[str, str] = {}
    for name in new:
        if name.endswith(".members.json"):
            manifest = json.loads((cache / name).read_text(encoding="utf-8"))
            folder = PurePosixPath(name).parent
            for member, digest in manifest["members"].items():
                recorded[(folder / member).as_posix()] = digest
    return [
        name
        for name in new
        if not name.endswith(".members.json")
        and recorded.get(name) != hashlib.sha256((cache / name).read_bytes()).hexdigest()
    ]


@contextlib.contextmanager
def watched(box: Box) -> Iterator[Callable[[str], None]]:
    """Yields ``done(result)``, which checks the folders after a case that ended in ``result``."""
    data, user, cache = listing(box.data), listing(box.user), listing(box.cache)

    def done(result: str) -> None:
        assert listing(box.data) == data, "the offline folder was modified"
        assert listing(box.user) == user, "the user's folder was modified"
        after = listing(box.cache)
        temporary = [p for p in after if p.endswith((".tmp", ".part")) or "/." in f"/{p}"]
        assert not temporary, f"temporary files left in the cache: {temporary}"
        if result != ACCEPTED:
            new = _unverified(box.cache, sorted(set(after) - set(cache)))
            assert not new, f"a failed case ({result}) left files in the cache: {new}"

    yield done


def run_case(family: str, box: Box, call: Callable[[], Any]) -> tuple[str, Any]:
    """Run one case through fuzz.outcome and check the folders afterwards."""
    with watched(box) as done:
        result, value = outcome(family, call)
        done(result)
    return result, value


# -- checking an accepted task -------------------------------------------------------------------


def check_task(task: Task) -> None:
    """What every loaded task must satisfy, whatever the file looked like."""
    assert task.num_classes >= 2
    assert len(set(task.class_names)) == task.num_classes
    assert 0 <= task.positive_class < task.num_classes
    for name, split in task.splits().items():
        assert len(split) > 0, f"empty {name} split"
        assert split.y.dtype == np.int64 and split.y.ndim == 1
        assert split.y.min() >= 0 and split.y.max() < task.num_classes, name
        if task.modality is Modality.TEXT:
            assert split.x.dtype == object
            assert all(isinstance(t, str) and t.strip() and "\x00" not in t for t in split.x)
        else:
            assert split.x.dtype == np.float32
            assert split.x.shape[1:] == task.input_shape and all(task.input_shape)
            assert np.isfinite(split.x).all()
            assert split.x.min() >= task.domain.low and split.x.max() <= task.domain.high
    if task.kind is TaskKind.CLASSIFICATION:
        assert len(np.unique(task.train.y)) >= 2
    counts = task.metadata.get("class_counts")
    if counts is not None:
        for name, split in task.splits().items():
            assert counts[name] == np.bincount(split.y, minlength=task.num_classes).tolist()


# -- pickles must never be loaded ----------------------------------------------------------------

UNPICKLED: list[str] = []


def _record_unpickling(tag: str) -> str:
    UNPICKLED.append(tag)
    return tag


class Explosive:
    """Unpickling one records it: a file that would run code when loaded."""

    def __reduce__(self) -> tuple[Callable[[str], str], tuple[str]]:
        return (_record_unpickling, ("unpickled",))


def explosive_array(shape: tuple[int, ...]) -> np.ndarray:
    array = np.empty(shape, dtype=object)
    array.flat[:] = [Explosive() for _ in range(array.size)]
    return array


def test_the_unpickling_sentinel_works():
    """The fuzz cases' check that nothing was unpickled would notice an unpickling loader."""
    try:
        np.load(io.BytesIO(npy_bytes(explosive_array((2,)))), allow_pickle=True)
        assert UNPICKLED == ["unpickled", "unpickled"]
    finally:
        UNPICKLED.clear()


# -- editing bytes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Edit:
    """A change to a file's bytes; ``at`` wraps around the file's length."""

    kind: str = "none"  # none, insert, truncate, xor, prefix, replace, strip-newlines, utf-16
    at: int = 0
    data: bytes = b""

    def __call__(self, raw: bytes) -> bytes:
        if self.kind == "none":
            return raw
        if self.kind == "replace":
            return self.data
        if self.kind == "prefix":
            return self.data + raw
        if self.kind == "strip-newlines":
            return raw.rstrip(b"\n")
        if self.kind == "utf-16":
            return raw.decode("utf-8").encode("utf-16")
        if not raw:
            return raw
        at = self.at % len(raw)
        if self.kind == "insert":
            return raw[:at] + self.data + raw[at:]
        if self.kind == "truncate":
            return raw[:at]
        if self.kind == "xor":
            return raw[:at] + bytes([raw[at] ^ self.data[0]]) + raw[at + 1 :]
        raise AssertionError(self.kind)


def position() -> st.SearchStrategy[int]:
    return st.integers(0, 10**6)


# -- writing .npz files --------------------------------------------------------------------------

COMPRESSIONS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)


def npy_bytes(array: Any) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def npz_bytes(members: dict[str, Any], compression: int = zipfile.ZIP_STORED) -> bytes:
    """A zip of ``<key>.npy`` members (values that are bytes are stored as they are)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # duplicate names, on purpose
        for key, value in members.items():
            name = key.split("#")[0]  # "x_train#2": a second member of the same name
            data = value if isinstance(value, bytes) else npy_bytes(value)
            archive.writestr(name if name.endswith(".npy") or "." in name else f"{name}.npy", data)
    return buffer.getvalue()


# -- user .npz files: structure --------------------------------------------------------------------

# name: (shape of one example in the file, modality option, shape of one example in the task)
LAYOUTS: dict[str, tuple[tuple[int, ...], str | None, Modality, tuple[int, ...]]] = {
    "tabular": ((5,), None, Modality.TABULAR, (5,)),
    "ecg": ((2, 12), None, Modality.ECG, (2, 12)),
    "ecg-2d": ((12,), "ecg", Modality.ECG, (1, 12)),
    "image": ((1, 6, 6), None, Modality.IMAGE, (1, 6, 6)),
    "image-3d": ((6, 6), "image", Modality.IMAGE, (1, 6, 6)),
    "image-rgb": ((3, 4, 4), None, Modality.IMAGE, (3, 4, 4)),
}
NPZ_ACCEPTED = (
    "none",
    "compressed",
    "fortran-order",
    "big-endian",
    "labels-column",
    "labels-gap",
    "labels-bool",
    "labels-unsigned",
)
NPZ_REFUSED = (
    "drop-key",
    "drop-val-half",
    "extra-key",
    "renamed-key",
    "rank-low",
    "rank-high",
    "shape-mismatch",
    "label-length",
    "label-2d",
    "x-object",
    "x-str",
    "x-bool",
    "x-complex",
    "x-float16",
    "x-datetime",
    "x-structured",
    "x-nan",
    "x-inf",
    "x-beyond-float32",
    "out-of-domain",
    "y-float",
    "y-negative",
    "y-huge",
    "y-uint64",
    "y-object",
    "y-str",
    "single-class",
    "empty-test",
    "empty-val",
    "zero-width",
    "scalar-x",
    "classes-too-few",
)


def _inputs(rng: np.random.Generator, n: int, layout: str, dtype: str) -> np.ndarray:
    shape = (n, *LAYOUTS[layout][0])
    image = LAYOUTS[layout][2] is Modality.IMAGE
    if dtype == "uint8":
        return rng.integers(0, 256, shape).astype(np.uint8)
    if dtype == "int16":
        return rng.integers(0, 2 if image else 100, shape).astype(np.int16)
    values = rng.random(shape) if image else rng.normal(0, 3, shape)
    return values.astype(dtype)


@st.composite
def npz_cases(draw: st.DrawFn) -> dict[str, Any]:
    mutation = draw(st.sampled_from(NPZ_ACCEPTED + NPZ_REFUSED))
    layout = draw(st.sampled_from(sorted(LAYOUTS)))
    k = 2 if mutation == "labels-bool" else draw(st.integers(2, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dtype = draw(st.sampled_from(["float32", "float64", "int16", "uint8"]))
    sizes = {"train": draw(st.integers(2 * k, 24)), "test": draw(st.integers(1, 8))}
    if draw(st.booleans()) or mutation == "empty-val":
        sizes["val"] = draw(st.integers(1, 6))
    arrays: dict[str, Any] = {}
    for split, n in sizes.items():
        labels = np.arange(n) % k if split == "train" else rng.integers(0, k, n)
        arrays[f"x_{split}"] = _inputs(rng, n, layout, dtype)
        arrays[f"y_{split}"] = rng.permutation(labels).astype(draw(st.sampled_from(["i8", "i4"])))
    splits = list(sizes)
    target = draw(st.sampled_from(splits))  # the split a mutation hits
    query: dict[str, str] = {}
    option = LAYOUTS[layout][1]
    if option:
        query["modality"] = option
    compression = zipfile.ZIP_STORED
    x, y = f"x_{target}", f"y_{target}"
    n = sizes[target]
    if mutation == "compressed":
        compression = draw(st.sampled_from(COMPRESSIONS[1:]))
    elif mutation == "fortran-order":
        arrays[x] = np.asfortranarray(arrays[x])
    elif mutation == "big-endian":
        arrays[x] = arrays[x].astype(arrays[x].dtype.newbyteorder(">"))
    elif mutation == "labels-column":
        arrays[y] = arrays[y][:, None]
    elif mutation == "labels-gap":
        for split in splits:
            arrays[f"y_{split}"] = arrays[f"y_{split}"] * 2
    elif mutation == "labels-bool":
        for split in splits:
            arrays[f"y_{split}"] = arrays[f"y_{split}"].astype(bool)
    elif mutation == "labels-unsigned":
        arrays[y] = arrays[y].astype(np.uint16)
    elif mutation == "drop-key":
        del arrays[draw(st.sampled_from(["x_train", "y_train", "x_test", "y_test"]))]
    elif mutation == "drop-val-half":
        if "x_val" in arrays:
            del arrays[draw(st.sampled_from(["x_val", "y_val"]))]
        else:
            arrays["x_val"] = arrays["x_test"]
    elif mutation == "extra-key":
        arrays[draw(st.sampled_from(["notes", "x_extra", "y_train_old", "meta"]))] = np.ones(3)
    elif mutation == "renamed-key":
        key = draw(st.sampled_from(splits))
        arrays[f"X_{key}"] = arrays.pop(f"x_{key}")
    elif mutation == "rank-low":
        arrays[x] = arrays[x].reshape(n, -1)[:, 0]
    elif mutation == "rank-high":
        arrays[x] = arrays[x][..., None, None]
    elif mutation == "shape-mismatch":
        other = "x_test" if target == "train" else "x_train"
        arrays[other] = np.concatenate([arrays[other], arrays[other][..., :1]], axis=-1)
    elif mutation == "label-length":
        arrays[y] = arrays[y][: n - 1] if draw(st.booleans()) else np.append(arrays[y], 0)
    elif mutation == "label-2d":
        arrays[y] = np.stack([arrays[y], arrays[y]], axis=1)
    elif mutation == "x-object":
        arrays[x] = explosive_array(arrays[x].shape)
    elif mutation == "x-str":
        arrays[x] = arrays[x].astype(str)
    elif mutation == "x-bool":
        arrays[x] = arrays[x] > 0
    elif mutation == "x-complex":
        arrays[x] = arrays[x].astype(np.complex64)
    elif mutation == "x-float16":
        arrays[x] = arrays[x].astype(np.float16)
    elif mutation == "x-datetime":
        arrays[x] = arrays[x].astype("int64").astype("M8[s]")
    elif mutation == "x-structured":
        arrays[x] = np.zeros(n, dtype=[("a", "f4"), ("b", "f4")])
    elif mutation in ("x-nan", "x-inf", "x-beyond-float32", "out-of-domain"):
        values = arrays[x].astype(np.float64)
        bad = {"x-nan": np.nan, "x-inf": -np.inf, "x-beyond-float32": 1e300, "out-of-domain": 2.0}
        values.flat[draw(st.integers(0, values.size - 1))] = bad[mutation]
        arrays[x] = values
        if mutation == "out-of-domain" and LAYOUTS[layout][2] is not Modality.IMAGE:
            query["domain"] = "-100,1.5"
    elif mutation == "y-float":
        arrays[y] = arrays[y].astype(np.float64)
    elif mutation == "y-negative":
        arrays[y][draw(st.integers(0, n - 1))] = -1
    elif mutation == "y-huge":
        arrays[y] = arrays[y].astype(np.int64)
        arrays[y][draw(st.integers(0, n - 1))] = draw(st.sampled_from([2**40, 2**62, 10**6]))
    elif mutation == "y-uint64":
        arrays[y] = arrays[y].astype(np.uint64)
        arrays[y][0] = np.uint64(2**63 + 5)
    elif mutation == "y-object":
        arrays[y] = arrays[y].astype(object)
    elif mutation == "y-str":
        arrays[y] = arrays[y].astype(str)
    elif mutation == "single-class":
        arrays["y_train"] = np.zeros_like(arrays["y_train"])
    elif mutation == "empty-test":
        arrays["x_test"], arrays["y_test"] = arrays["x_test"][:0], arrays["y_test"][:0]
    elif mutation == "empty-val":
        arrays["x_val"], arrays["y_val"] = arrays["x_val"][:0], arrays["y_val"][:0]
    elif mutation == "zero-width":
        for split in splits:
            arrays[f"x_{split}"] = arrays[f"x_{split}"][..., :0]
    elif mutation == "scalar-x":
        arrays[x] = np.float32(0.5)
    elif mutation == "classes-too-few":
        query["classes"] = ",".join(f"c{i}" for i in range(k - 1)) + ",other" * (k < 3)
        labels = arrays["y_train"].astype(np.int64)
        labels[0] = k  # one label more than the named classes
        arrays["y_train"] = labels
    return {
        "mutation": mutation,
        "layout": layout,
        "arrays": arrays,
        "compression": compression,
        "query": query,
        "sizes": sizes,
    }


@settings(max_examples=300, **FUZZ)
@given(case=npz_cases())
def test_user_npz_structure(case: dict[str, Any]):
    mutation, layout, arrays = case["mutation"], case["layout"], case["arrays"]
    with sandbox() as box:
        path = box.user / "my scans.npz"
        path.write_bytes(npz_bytes(arrays, case["compression"]))
        query = f"?{urlencode(case['query'])}" if case["query"] else ""
        result, task = run_case(NPZ, box, lambda: load_task(f"file:{path}{query}", seed=0))
    assert not UNPICKLED, "a pickled object in a data file was unpickled"
    expected = ACCEPTED if mutation in NPZ_ACCEPTED else CORRUPT
    assert result == expected, f"{mutation} on {layout}: {result}, expected {expected}"
    if task is None:
        return
    check_task(task)
    _, _, modality, shape = LAYOUTS[layout]
    assert task.modality is modality and task.input_shape == shape
    labels = [np.asarray(arrays[f"y_{s}"]).reshape(-1).astype(np.int64) for s in case["sizes"]]
    assert task.num_classes == max(int(max(y.max() for y in labels)) + 1, 2)
    assert len(task.train) + len(task.val) == sum(
        n for s, n in case["sizes"].items() if s != "test"
    )
    x_test = np.asarray(arrays["x_test"])
    scale = 255.0 if modality is Modality.IMAGE and x_test.dtype == np.uint8 else 1.0
    wanted = (x_test.astype(np.float32) / np.float32(scale)).reshape(len(x_test), *shape)
    np.testing.assert_array_equal(task.test.x, wanted)
    np.testing.assert_array_equal(task.test.y, np.asarray(arrays["y_test"]).reshape(-1))


# -- user .npz files: bytes ------------------------------------------------------------------------


def _small_arrays(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "x_train": rng.normal(size=(12, 4)).astype(np.float32),
        "y_train": rng.permutation(np.arange(12) % 2),
        "x_test": rng.normal(size=(5, 4)).astype(np.float32),
        "y_test": np.arange(5) % 2,
    }


def _lying_header(array: np.ndarray, shape: tuple[int, ...]) -> bytes:
    """``array``'s .npy bytes with a header that declares ``shape`` (the data unchanged)."""
    data = npy_bytes(array)
    end = data.index(b"\n") + 1  # the header: magic, length, dict, spaces, '\n'
    text = data[:end].replace(repr(array.shape).encode(), repr(shape).encode())
    body = text[:-1].rstrip(b" ")
    return body + b" " * (end - 1 - len(body)) + b"\n" + data[end:]


NPZ_BYTE_MUTATIONS = (
    "truncate",
    "flip",
    "random-bytes",
    "empty",
    "bare-npy",
    "pickle-file",
    "pickle-member",
    "garbage-member",
    "member-without-suffix",
    "duplicate-member",
    "absurd-shape",
    "header-lies",
    "encrypted-flag",
    "intact",
)


@settings(max_examples=250, **FUZZ)
@given(
    mutation=st.sampled_from(NPZ_BYTE_MUTATIONS),
    compression=st.sampled_from(COMPRESSIONS),
    seed=st.integers(0, 2**32 - 1),
    data=st.data(),
)
def test_user_npz_bytes(mutation: str, compression: int, seed: int, data: st.DataObject):
    rng = np.random.default_rng(seed)
    arrays = _small_arrays(rng)
    good = npz_bytes(dict(arrays), compression)
    expected = {CORRUPT}
    if mutation == "intact":
        raw, expected = good, {ACCEPTED}
    elif mutation == "truncate":
        raw = good[: data.draw(st.integers(0, len(good) - 1), label="cut")]
    elif mutation == "flip":
        raw_list = bytearray(good)
        for at in data.draw(st.lists(st.integers(0, len(good) - 1), min_size=1, max_size=4)):
            raw_list[at] ^= data.draw(st.integers(1, 255))
        raw, expected = bytes(raw_list), {ACCEPTED, CORRUPT}
    elif mutation == "random-bytes":
        raw = rng.bytes(data.draw(st.integers(1, 3000)))
    elif mutation == "empty":
        raw = b""
    elif mutation == "bare-npy":
        raw = npy_bytes(arrays["x_train"])
    elif mutation == "pickle-file":
        raw = pickle.dumps({"x_train": Explosive(), **arrays})
    elif mutation == "pickle-member":
        raw = npz_bytes({**arrays, "x_train": pickle.dumps(Explosive())}, compression)
    elif mutation == "garbage-member":
        key = data.draw(st.sampled_from(sorted(arrays)))
        raw = npz_bytes({**arrays, key: rng.bytes(data.draw(st.integers(0, 200)))}, compression)
    elif mutation == "member-without-suffix":
        members = {k: v for k, v in arrays.items() if k != "x_test"}
        members["x_test.bin"] = npy_bytes(arrays["x_test"])
        raw = npz_bytes(members, compression)
    elif mutation == "duplicate-member":
        raw = npz_bytes({**arrays, "y_train#2": arrays["y_train"][::-1]}, compression)
    elif mutation == "absurd-shape":
        shape = data.draw(st.sampled_from([(10**13, 4), (2**40, 2**20), (12, 10**12)]))
        raw = npz_bytes({**arrays, "x_train": _lying_header(arrays["x_train"], shape)}, compression)
    elif mutation == "header-lies":
        shape = data.draw(st.sampled_from([(13, 4), (11, 4), (12, 5), (48,)]))
        raw = npz_bytes({**arrays, "x_train": _lying_header(arrays["x_train"], shape)}, compression)
    else:  # encrypted-flag: zipfile refuses such members without a password
        flagged = bytearray(good)
        for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
            start = 0
            while (start := flagged.find(signature, start)) >= 0:
                flagged[start + offset] |= 1
                start += 4
        raw = bytes(flagged)
    with sandbox() as box:
        path = box.user / "data.npz"
        path.write_bytes(raw)
        result, task = run_case(NPZ_BYTES, box, lambda: load_task(f"file:{path}", seed=0))
    assert not UNPICKLED, "a pickled object in a data file was unpickled"
    assert result in expected, f"{mutation}: {result}, expected {expected}"
    if task is not None:
        check_task(task)
        np.testing.assert_array_equal(task.test.x, arrays["x_test"])
        np.testing.assert_array_equal(task.test.y, arrays["y_test"])


def test_header_lies_helper_keeps_the_header_length():
    array = np.zeros((12, 4), np.float32)
    for shape in [(10**13, 4), (13, 4), (48,)]:
        lied = _lying_header(array, shape)
        assert len(lied) == len(npy_bytes(array))
        assert np.lib.format.read_array_header_1_0(io.BytesIO(lied[8:]))[0] == shape


# -- user .csv files (tabular) -------------------------------------------------------------------

CSV_ACCEPTED = (
    "none",
    "crlf",
    "cr",
    "utf8-bom",
    "blank-lines",
    "header-spaces",
    "quote-all",
    "no-final-newline",
    "classes-order",
)
CSV_REFUSED = (
    "latin-1",
    "utf-16",
    "utf-32",
    "invalid-utf8",
    "nul",
    "long-field",
    "ragged",
    "empty-file",
    "header-only",
    "bom-only",
    "duplicate-column",
    "blank-column-name",
    "non-numeric",
    "nan-cell",
    "beyond-float32",
    "blank-label",
    "negative-label",
    "huge-label",
    "bad-split",
    "no-test-rows",
    "no-label-column",
    "no-feature-columns",
    "too-few-rows",
    "single-class",
    "classes-missing-label",
)
CSV_EITHER = ("truncate", "unbalanced-quote", "flip")
SPLITS3 = ("train", "val", "test")
NAMES = ("benign", "malignant", "normal", "pneumonia", "Übergang - ü")


@st.composite
def csv_cases(draw: st.DrawFn) -> dict[str, Any]:
    mutation = draw(st.sampled_from(CSV_ACCEPTED + CSV_REFUSED + CSV_EITHER))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    k = draw(st.integers(2, 3))
    named = draw(st.booleans())
    n = draw(st.integers(3 * k, 24))
    features = [f"f{i}" for i in range(draw(st.integers(1, 4)))]
    labels = rng.permutation(np.arange(n) % k)
    values = rng.normal(0, 10, (n, len(features))).astype(np.float32)
    with_split = draw(st.booleans())
    header = [*features, "label"] + (["split"] if with_split else [])
    rows: list[list[str]] = []
    names = draw(st.permutations(NAMES))[:k]
    for i in range(n):
        label = names[labels[i]] if named else str(labels[i])
        rows.append([repr(float(v)) for v in values[i]] + [label])
    if with_split:  # two of each class in train (so val can be held out), one test row
        seen: dict[int, int] = {}
        for i in range(n):
            seen[int(labels[i])] = seen.get(int(labels[i]), 0) + 1
            where = "train" if seen[int(labels[i])] <= 2 else draw(st.sampled_from(SPLITS3))
            rows[i].append(where)
        if not any(r[-1] == "test" for r in rows):
            rows.append([*rows[0][:-1], "test"])
    query: dict[str, str] = {}
    terminator = "\n"
    quoting = csv.QUOTE_MINIMAL
    encoding = "utf-8"
    edit = Edit()
    label_at = len(features)
    if mutation == "crlf":
        terminator = "\r\n"
    elif mutation == "cr":
        terminator = "\r"
    elif mutation == "utf8-bom":
        encoding = "utf-8-sig"
    elif mutation == "blank-lines":
        rows.insert(draw(st.integers(0, len(rows))), [])
        rows.append(["", ""])
    elif mutation == "header-spaces":
        header = [f" {h}  " for h in header]
    elif mutation == "quote-all":
        quoting = csv.QUOTE_ALL
    elif mutation == "no-final-newline":
        edit = Edit("strip-newlines")
    elif mutation == "classes-order":
        used = sorted({r[label_at] for r in rows})
        query["classes"] = (
            ",".join(reversed(used)) if named else ",".join(f"c{i}" for i in range(k))
        )
    elif mutation == "latin-1":
        header[0] = "größe"
        encoding = "latin-1"
    elif mutation == "utf-16":
        encoding = draw(st.sampled_from(["utf-16", "utf-16-le", "utf-16-be"]))
        if encoding != "utf-16":
            bom = codecs.BOM_UTF16_LE if encoding.endswith("le") else codecs.BOM_UTF16_BE
            edit = Edit("prefix", data=bom)
    elif mutation == "utf-32":
        encoding = "utf-32"
    elif mutation == "invalid-utf8":
        junk = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80"]))
        edit = Edit("insert", draw(position()), junk)
    elif mutation == "nul":
        edit = Edit("insert", draw(position()), b"\x00")
    elif mutation == "long-field":
        rows[draw(st.integers(0, len(rows) - 1))][0] = "1" * draw(st.integers(131_073, 200_000))
    elif mutation == "ragged":
        row = rows[draw(st.integers(0, len(rows) - 1))]
        if draw(st.booleans()):
            row.append("1.0")
        else:
            row.pop(0)
    elif mutation == "empty-file":
        edit = Edit("replace", data=b"")
    elif mutation == "header-only":
        rows = []
    elif mutation == "bom-only":
        edit = Edit("replace", data=codecs.BOM_UTF8)
    elif mutation == "duplicate-column":
        header.append(header[draw(st.integers(0, len(header) - 1))])
        rows = [[*r, "1"] for r in rows]
    elif mutation == "blank-column-name":
        header = ["", *header]
        rows = [[str(i), *r] for i, r in enumerate(rows)]
    elif mutation in ("non-numeric", "nan-cell", "beyond-float32"):
        bad = {
            "non-numeric": draw(st.sampled_from(["abc", "", "1,5", "0x10", "1.2.3", "--1"])),
            "nan-cell": draw(st.sampled_from(["nan", "NaN", "inf", "-Infinity", "1e999"])),
            "beyond-float32": draw(st.sampled_from(["1e39", "-3.5e38", "1e300"])),
        }[mutation]
        row = rows[draw(st.integers(0, len(rows) - 1))]
        row[draw(st.integers(0, len(features) - 1))] = bad
    elif mutation == "blank-label":
        rows[draw(st.integers(0, len(rows) - 1))][label_at] = draw(st.sampled_from(["", "  "]))
    elif mutation == "negative-label":
        named = False
        for r in rows:
            r[label_at] = str(NAMES.index(r[label_at])) if r[label_at] in NAMES else r[label_at]
        rows[0][label_at] = "-1"
    elif mutation == "huge-label":
        for r in rows:
            r[label_at] = str(NAMES.index(r[label_at])) if r[label_at] in NAMES else r[label_at]
        rows[0][label_at] = draw(st.sampled_from(["99999999999999999999", "10000", str(2**63)]))
    elif mutation == "bad-split":
        if not with_split:
            header.append("split")
            rows = [[*r, "train"] for r in rows]
            rows[-1][-1] = "test"
        rows[0][-1] = draw(st.sampled_from(["training", "", "validation", "tset"]))
    elif mutation == "no-test-rows":
        if not with_split:
            header.append("split")
            rows = [[*r, "train"] for r in rows]
        rows = [r for r in rows if r[-1] != "test"]
    elif mutation == "no-label-column":
        header[label_at] = draw(st.sampled_from(["Label", "class", "target"]))
    elif mutation == "no-feature-columns":
        header = header[label_at:]
        rows = [r[label_at:] for r in rows]
    elif mutation == "too-few-rows":
        header = [h for h in header if h != "split"]
        rows = [r[: label_at + 1] for r in rows[:2]]
        rows[0][label_at], rows[1][label_at] = "0", "1"
    elif mutation == "single-class":
        for r in rows:
            r[label_at] = rows[0][label_at]
    elif mutation == "classes-missing-label":
        if named:
            query["classes"] = ",".join([*sorted({r[label_at] for r in rows})[:-1], "other"])
        else:
            query["classes"] = ",".join(f"c{i}" for i in range(k - 1)) + ",other" * (k < 3)
            rows[0][label_at] = str(k)
    elif mutation == "truncate":
        edit = Edit("truncate", draw(position()))
    elif mutation == "unbalanced-quote":
        row = rows[draw(st.integers(0, len(rows) - 1))]
        at = draw(st.integers(0, len(row) - 1))
        row[at] = '"' + row[at] if draw(st.booleans()) else row[at][:1] + '"' + row[at][1:]
        quoting = csv.QUOTE_NONE
    elif mutation == "flip":
        edit = Edit("xor", draw(position()), bytes([1 << draw(st.integers(0, 7))]))
    text = io.StringIO(newline="")
    if quoting == csv.QUOTE_NONE:
        writer = csv.writer(text, lineterminator=terminator, quoting=quoting, quotechar="'")
    else:
        writer = csv.writer(text, lineterminator=terminator, quoting=quoting)
    writer.writerow(header)
    writer.writerows(rows)
    raw = edit(text.getvalue().encode(encoding))
    return {"mutation": mutation, "raw": raw, "query": query, "rows": rows, "named": named}


@settings(max_examples=300, **FUZZ)
@given(case=csv_cases())
def test_user_csv(case: dict[str, Any]):
    mutation = case["mutation"]
    with sandbox() as box:
        path = box.user / "table.csv"
        path.write_bytes(case["raw"])
        query = f"?{urlencode(case['query'])}" if case["query"] else ""
        result, task = run_case(CSV, box, lambda: load_task(f"file:{path}{query}", seed=0))
    if mutation in CSV_ACCEPTED:
        assert result == ACCEPTED, f"{mutation}: {result}"
    elif mutation in CSV_REFUSED:
        assert result == CORRUPT, f"{mutation}: {result}"
    else:
        assert result in (ACCEPTED, CORRUPT), f"{mutation}: {result}"
    if task is None:
        return
    check_task(task)
    assert task.modality is Modality.TABULAR
    if mutation in CSV_ACCEPTED:
        rows = [r for r in case["rows"] if any(c.strip() for c in r)]
        assert sum(len(s) for s in task.splits().values()) == len(rows)
        label_at = task.input_shape[0]
        written = sorted(tuple(np.float32(float(v)) for v in r[:label_at]) for r in rows)
        loaded = sorted(tuple(row) for s in task.splits().values() for row in s.x.tolist())
        assert [tuple(np.float32(v) for v in r) for r in loaded] == written
        names = [r[label_at].strip() for r in rows]
        got = [task.class_names[i] for s in task.splits().values() for i in s.y]
        if case["named"]:
            assert sorted(got) == sorted(names)
        else:
            assert sorted(got) == sorted(task.class_names[int(v)] for v in names)
        if "classes" in case["query"]:
            assert task.class_names == tuple(case["query"]["classes"].split(","))


# -- text CSVs -----------------------------------------------------------------------------------

# Any Unicode scalar value: controls, combining marks, right-to-left, emoji; NUL in a few texts.
TEXT_ALPHABET = st.characters(codec="utf-8", exclude_characters="\x00")


@st.composite
def text_cases(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(6, 12))
    odd = st.sampled_from(
        ['say "hi", ok', "a\r\nb", "line\rbreak", "  padded  ", "\ufeffbom", "tab\tx", "x" * 5000]
    )
    texts = draw(
        st.lists(
            st.one_of(st.text(TEXT_ALPHABET, min_size=1, max_size=30), odd),
            min_size=n,
            max_size=n,
        )
    )
    bad = draw(st.sampled_from([None] * 4 + ["", " ", "\u3000\n\t", "nul\x00byte"]))
    if bad is not None:
        texts[draw(st.integers(0, n - 1))] = bad
    labels = [str(i % 2) for i in range(n)]
    with_split = draw(st.booleans())
    header = ["text", "label"] + (["split"] if with_split else [])
    if draw(st.booleans()):
        header = [header[1], header[0], *header[2:]]
    rows = []
    for i, (text, label) in enumerate(zip(texts, labels, strict=True)):
        row = {"text": text, "label": label, "split": "train" if i < 4 else SPLITS3[i % 3]}
        rows.append([row[h] for h in header])
    encoding = draw(st.sampled_from(["utf-8"] * 4 + ["utf-8-sig", "utf-16", "latin-1", "cp1252"]))
    terminator = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    quoting = csv.QUOTE_MINIMAL if terminator == "\r\n" else csv.QUOTE_ALL
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator=terminator, quoting=quoting)
    writer.writerow(header)
    writer.writerows(rows)
    try:
        raw = out.getvalue().encode(encoding)
    except UnicodeEncodeError:
        encoding, raw = "utf-8", out.getvalue().encode("utf-8")
    return {"texts": texts, "labels": labels, "raw": raw, "encoding": encoding}


@settings(max_examples=220, **FUZZ)
@given(case=text_cases())
def test_text_csv_round_trips_or_fails_for_a_reason(case: dict[str, Any]):
    texts, raw = case["texts"], case["raw"]
    with sandbox() as box:
        path = box.user / "notes.csv"
        path.write_bytes(raw)
        result, task = run_case(TEXT, box, lambda: load_task(f"file:{path}", seed=0))
    try:
        decoded_ok = not raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
        raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        decoded_ok = False
    exact = case["encoding"] in ("utf-8", "utf-8-sig") or raw.isascii()
    if not decoded_ok or any("\x00" in t for t in texts) or any(not t.strip() for t in texts):
        assert result == CORRUPT, f"{result} for {describe(texts)} in {case['encoding']}"
        return
    if exact:
        assert result == ACCEPTED, f"{result} for {describe(texts)}"
    else:  # latin-1/cp1252 bytes that happen to be valid UTF-8 read as other texts
        assert result in (ACCEPTED, CORRUPT)
    if task is None:
        return
    check_task(task)
    assert task.modality is Modality.TEXT
    if exact:
        loaded = sorted(
            (str(t), task.class_names[int(y)])
            for s in task.splits().values()
            for t, y in zip(s.x, s.y, strict=True)
        )
        assert loaded == sorted(
            (t, f"class {y}") for t, y in zip(texts, case["labels"], strict=True)
        )


# -- the task name: path and options ---------------------------------------------------------------

OPTION_VALUES: dict[str, list[str]] = {
    "modality": ["image", "ecg", "tabular", "text", "IMAGE", "", "audio"],
    "classes": ["a,b", "benign,malignant", "a,a", "a", "a,,b", " x , y ", "a,b,c", "b,a"],
    "positive": ["0", "1", "2", "-1", "²", "1" * 5000, "benign", "malignant", " 1", "+1", ""],
    "domain": ["0,1", "-inf,inf", "1,0", "nan,1", "0,1,2", "a,b", "-100,100", "5,5", ""],
    "label": ["label", "Label", "f0", "nope", ""],
    "split": ["split", "f1", "nope"],
    "text": ["text", "f0", "nope"],
    "sha256": ["0" * 64, "xyz", "", "g" * 64, "DIGEST", "digest", "0" * 63],
}


@st.composite
def option_cases(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["npz", "csv"]))
    applicable = [o for o in OPTIONS if kind == "csv" or o not in ("label", "split", "text")]
    keys = draw(
        st.lists(
            st.sampled_from([*OPTIONS, *applicable, *applicable, "modalty", "Classes", ""]),
            min_size=1,
            max_size=3,
            unique=True,
        )
    )
    options = {}
    for key in keys:
        values = OPTION_VALUES.get(key, ["1"])
        curated = st.sampled_from(values)
        options[key] = draw(st.one_of(curated, curated, st.text(max_size=12)))
    return {"kind": kind, "options": options}


def _write_small_task(folder: Path, kind: str) -> Path:
    rng = np.random.default_rng(0)
    if kind == "npz":
        path = folder / "small.npz"
        path.write_bytes(npz_bytes(dict(_small_arrays(rng))))
        return path
    path = folder / "small.csv"
    lines = ["f0,f1,label"] + [
        f"{rng.normal():.4f},{rng.normal():.4f},{('benign', 'malignant')[i % 2]}" for i in range(15)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@settings(max_examples=200, **FUZZ)
@given(case=option_cases())
def test_task_options(case: dict[str, Any]):
    options = dict(case["options"])
    with sandbox() as box:
        path = _write_small_task(box.user, case["kind"])
        digest = file_digest(path)
        if options.get("sha256") in ("DIGEST", "digest"):
            options["sha256"] = digest.upper() if options["sha256"] == "DIGEST" else digest
        name = f"file:{path}?{urlencode(options)}"
        result, task = run_case(OPTION, box, lambda: load_task(name, seed=0))
    assert result in (ACCEPTED, CONFIG, CORRUPT, CHECKSUM), result
    if set(options) - set(OPTIONS):
        assert result == CONFIG, f"unknown option accepted: {options}"
    if case["kind"] == "npz" and set(options) & {"label", "split", "text"}:
        assert result == CONFIG, f"CSV column options accepted for a .npz: {options}"
    sha = options.get("sha256")
    if sha is not None and (len(sha) != 64 or any(c not in "0123456789abcdefABCDEF" for c in sha)):
        assert result == CONFIG, f"malformed sha256 {sha!r}: {result}"
    if task is None:
        return
    check_task(task)
    if sha is not None:
        assert sha.lower() == digest
    if "classes" in options:
        assert task.class_names == tuple(c.strip() for c in options["classes"].split(","))
    if "positive" in options:
        value = options["positive"].strip()
        assert task.class_names[task.positive_class] == value or int(value) == task.positive_class
    if "domain" in options:
        low, high = (float(v) for v in options["domain"].split(","))
        assert task.domain == Domain(low, high)
    if "modality" in options:
        assert task.modality.value == options["modality"]


def _path_cases(folder: Path) -> list[str]:
    (folder / "folder.npz").mkdir()
    (folder / "plain.txt").write_text("f0,label\n1,0\n")
    return [
        "file:",
        "file:?",
        "file:" + str(folder / "missing.npz"),
        "file:" + str(folder / "folder.npz"),
        "file:" + str(folder / "plain.txt"),
        "file:" + str(folder / "plain.TXT.csv"),
        "file:/" + "a" * 5000 + ".npz",
        "file:/" + "a/" * 3000 + "x.csv",
        "file:" + str(folder) + "/nul%00.npz",
        "file:" + str(folder) + "/%ff%fe.npz",
        "file:~no-such-user-medrobust/x.npz",
        "file:" + str(folder / "missing.npz") + "?%zz=1",
        "file:" + str(folder / "missing.npz") + "?&&==&",
    ]


@settings(max_examples=60, **FUZZ)
@given(index=st.integers(0, 12), suffix=st.text(max_size=20))
def test_task_paths(index: int, suffix: str):
    with sandbox() as box:
        name = _path_cases(box.user)[index] + (suffix if index % 2 else "")
        result, _ = run_case(OPTION, box, lambda: load_task(name, seed=0))
    assert result in (CONFIG, "UnknownNameError"), f"{name!r}: {result}"


# -- registered datasets: corrupted canonical files ----------------------------------------------

REGISTERED_FILES = (
    ("breastmnist", "medmnist/breastmnist.npz"),
    ("pneumoniamnist", "medmnist/pneumoniamnist.npz"),
    ("medical_abstracts", "medical-abstracts-tc/medical_tc_test.csv"),
    ("medical_abstracts", "medical-abstracts-tc/medical_tc_labels.csv"),
    ("ecg5000", "ecg5000/ECG5000_TRAIN.txt"),
    ("ecg5000_anomaly", "ecg5000/ECG5000_TRAIN.tsv"),
    ("ecg5000", "ecg5000/ECG5000_TRAIN.ts"),
    ("ecg5000", "ecg5000/ECG5000_TRAIN.arff"),
    ("mitbih", "mitdb/100.hea"),
    ("mitbih", "mitdb/101.atr"),
    ("mitbih", "mitdb/232.dat"),
)

_REAL_BYTES: dict[str, bytes] = {}


def real_bytes(real_data: Path, relative: str) -> bytes:
    if relative not in _REAL_BYTES:
        _REAL_BYTES[relative] = (real_data / relative).read_bytes()
    return _REAL_BYTES[relative]


def corrupt_bytes(draw: Callable[..., Any], good: bytes) -> bytes:
    """A copy of ``good`` that differs from it: truncated, flipped, extended or replaced."""
    how = draw(st.sampled_from(["truncate", "flip", "append", "replace", "empty", "swap"]))
    if how == "truncate":
        return good[: draw(st.integers(0, len(good) - 1))]
    if how == "flip":
        at = draw(st.integers(0, len(good) - 1))
        return good[:at] + bytes([good[at] ^ draw(st.integers(1, 255))]) + good[at + 1 :]
    if how == "append":
        return good + draw(st.binary(min_size=1, max_size=64))
    if how == "replace":
        return draw(st.binary(min_size=1, max_size=256))
    if how == "empty":
        return b""
    at = draw(st.integers(1, len(good) - 1))
    swapped = good[at:] + good[:at]
    return swapped if swapped != good else good + b"\n"


@settings(max_examples=80, **FUZZ)
@given(
    which=st.sampled_from(REGISTERED_FILES),
    where=st.sampled_from(["offline", "cache"]),
    data=st.data(),
)
def test_registered_files_corrupted(
    real_data: Path, which: tuple[str, str], where: str, data: st.DataObject
):
    task_name, relative = which
    bad = corrupt_bytes(data.draw, real_bytes(real_data, relative))
    with sandbox() as box:
        folder = box.data if where == "offline" else box.cache
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(bad)
        result, _ = run_case(REGISTERED, box, lambda: load_task(task_name, seed=0))
        kept = target.exists()
    if where == "offline":
        assert result == CHECKSUM, f"corrupted {relative} offline: {result}"
    else:  # a wrong cached copy is deleted; offline, nothing replaces it
        assert result == NOT_FOUND and not kept, f"corrupted {relative} in the cache: {result}"


# -- unverified MedMNIST files (generic names) -----------------------------------------------------

MEDMNIST_MUTATIONS = (
    "intact",
    "rgb",
    "truncate",
    "flip",
    "missing-key",
    "float-images",
    "volume",
    "multi-label",
    "label-length",
    "negative-label",
    "label-beyond-classes",
    "huge-label",
    "empty-split",
    "no-pixels",
    "single-class",
    "object-labels",
    "shape-mismatch",
    "real-truncated",
)


@settings(max_examples=120, **FUZZ)
@given(
    mutation=st.sampled_from(MEDMNIST_MUTATIONS),
    stem=st.sampled_from(["breastmnist_32", "fuzzmnist"]),
    seed=st.integers(0, 2**32 - 1),
    data=st.data(),
)
def test_unverified_medmnist(
    real_data: Path, mutation: str, stem: str, seed: int, data: st.DataObject
):
    rng = np.random.default_rng(seed)
    sizes = {"train": 10, "val": 4, "test": 4}
    arrays: dict[str, Any] = {}
    for split, n in sizes.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 8, 8)).astype(np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(n, 1).astype(np.uint8)
    split = data.draw(st.sampled_from(sorted(sizes)))
    x, y = f"{split}_images", f"{split}_labels"
    expected = {CORRUPT}
    compression = zipfile.ZIP_STORED
    raw: bytes | None = None
    if mutation == "intact":
        expected = {ACCEPTED}
        compression = data.draw(st.sampled_from(COMPRESSIONS))
    elif mutation == "rgb":
        for s, n in sizes.items():
            arrays[f"{s}_images"] = rng.integers(0, 256, (n, 8, 8, 3)).astype(np.uint8)
        expected = {ACCEPTED}
    elif mutation == "missing-key":
        del arrays[data.draw(st.sampled_from(sorted(arrays)))]
    elif mutation == "float-images":
        arrays[x] = arrays[x].astype(np.float32) / 255
    elif mutation == "volume":
        arrays[x] = np.repeat(arrays[x][..., None], 8, axis=-1)
        expected = {PARAMETER}
    elif mutation == "multi-label":
        arrays[y] = np.repeat(arrays[y], 3, axis=1)
        expected = {PARAMETER}
    elif mutation == "label-length":
        arrays[y] = arrays[y][1:]
    elif mutation == "negative-label":
        arrays[y] = arrays[y].astype(np.int8)
        arrays[y][0] = -3
    elif mutation == "label-beyond-classes":
        arrays[y] = arrays[y].astype(np.int64)
        arrays[y][0] = 2
        expected = {CORRUPT} if stem.startswith("breastmnist") else {ACCEPTED}
    elif mutation == "huge-label":
        arrays[y] = arrays[y].astype(np.int64)
        arrays[y][0] = data.draw(st.sampled_from([10**6, 2**40, 2**62]))
    elif mutation == "empty-split":
        arrays[x], arrays[y] = arrays[x][:0], arrays[y][:0]
    elif mutation == "no-pixels":
        for s in sizes:
            arrays[f"{s}_images"] = arrays[f"{s}_images"][:, :0]
    elif mutation == "single-class":
        arrays["train_labels"] = np.zeros_like(arrays["train_labels"])
    elif mutation == "object-labels":
        arrays[y] = explosive_array(arrays[y].shape)
    elif mutation == "shape-mismatch":
        arrays[x] = arrays[x][:, :, :7]
    if mutation == "truncate":
        good = npz_bytes(arrays, data.draw(st.sampled_from(COMPRESSIONS)))
        raw = good[: data.draw(st.integers(0, len(good) - 1))]
    elif mutation == "flip":
        good = bytearray(npz_bytes(arrays, data.draw(st.sampled_from(COMPRESSIONS))))
        good[data.draw(st.integers(0, len(good) - 1))] ^= data.draw(st.integers(1, 255))
        raw, expected = bytes(good), {ACCEPTED, CORRUPT}
    elif mutation == "real-truncated":
        good = real_bytes(real_data, "medmnist/breastmnist.npz")
        raw = good[: data.draw(st.integers(0, len(good) - 1))]
    elif raw is None:
        raw = npz_bytes(arrays, compression)
    with sandbox() as box:
        (box.data / "medmnist").mkdir()
        (box.data / "medmnist" / f"{stem}.npz").write_bytes(raw)
        result, task = run_case(MEDMNIST, box, lambda: load_task(f"medmnist:{stem}", seed=0))
    assert not UNPICKLED, "a pickled object in a data file was unpickled"
    assert result in expected, f"{mutation} ({stem}): {result}, expected {expected}"
    if task is not None:
        check_task(task)
        assert task.modality is Modality.IMAGE and task.domain == Domain(0.0, 1.0)
        if mutation in ("intact", "rgb"):
            images = arrays["test_images"]
            wanted = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
            np.testing.assert_array_equal(task.test.x, wanted.astype(np.float32) / 255)


# -- unverified UCR files: generic ucr:<Name>, archives, and ECG5000's TEST file ------------------


def _ucr_parts(real_data: Path, fmt: str, rows: int) -> tuple[list[str], list[str]]:
    """(header lines, ``rows`` data lines) of the real ECG5000 TRAIN file in ``fmt``: every
    8th line, as the file is sorted by class."""
    lines = real_bytes(real_data, f"ecg5000/ECG5000_TRAIN.{fmt}").decode("utf-8").splitlines()
    start = 0
    if fmt in ("ts", "arff"):
        start = next(i for i, line in enumerate(lines) if line.strip().lower() == "@data") + 1
    return lines[:start], lines[start::8][:rows]


UCR_ACCEPTED = ("intact", "crlf", "bom", "blank-lines")
UCR_REFUSED = ("utf-16", "invalid-utf8", "non-numeric", "single-class", "too-few", "ragged")
UCR_EITHER = ("truncate", "flip", "nul", "missing-value", "drop-lines", "archive-damaged")


@settings(max_examples=160, **FUZZ)
@given(
    mutation=st.sampled_from(UCR_ACCEPTED + UCR_REFUSED + UCR_EITHER),
    fmt=st.sampled_from(["txt", "tsv", "ts", "arff"]),
    with_test=st.booleans(),
    data=st.data(),
)
def test_unverified_ucr(
    real_data: Path, mutation: str, fmt: str, with_test: bool, data: st.DataObject
):
    header, lines = _ucr_parts(real_data, fmt, 60)
    train, test = lines[:40], lines[40:]
    expected = {ACCEPTED} if mutation in UCR_ACCEPTED else {CORRUPT}
    if mutation in UCR_EITHER:
        expected = {ACCEPTED, CORRUPT, PARAMETER}
    sep = {"txt": None, "tsv": "\t", "ts": ",", "arff": ","}[fmt]

    def tokens(line: str) -> list[str]:
        return line.split(sep) if sep else line.split()

    terminator = "\n"
    edit = Edit()
    if mutation == "crlf":
        terminator = "\r\n"
    elif mutation == "bom":
        edit = Edit("prefix", data=codecs.BOM_UTF8)
    elif mutation == "blank-lines":
        train.insert(data.draw(st.integers(0, len(train))), "   ")
    elif mutation == "utf-16":
        edit = Edit("utf-16")
    elif mutation == "invalid-utf8":
        edit = Edit("insert", data.draw(position()), b"\xff\xfe")
    elif mutation == "non-numeric":
        i = data.draw(st.integers(0, len(train) - 1))
        parts = tokens(train[i])
        value_at = data.draw(st.integers(1, 20))
        if fmt == "arff":
            value_at = value_at - 1
        parts[value_at] = data.draw(st.sampled_from(["abc", "1.2.3", "0x1f", "--"]))
        train[i] = (sep or " ").join(parts)
    elif mutation == "single-class":
        if fmt in ("txt", "tsv"):
            train = [(sep or " ").join(["1", *tokens(line)[1:]]) for line in train]
        else:
            train = [line.rsplit(":" if fmt == "ts" else ",", 1)[0] for line in train]
            train = [line + (":1" if fmt == "ts" else ",1") for line in train]
        with_test = False
    elif mutation == "too-few":
        train, with_test = train[:2], False
    elif mutation == "ragged":
        i = data.draw(st.integers(0, len(train) - 1))
        parts = tokens(train[i])
        del parts[data.draw(st.integers(1, len(parts) - 2))]
        train[i] = (sep or " ").join(parts)
    elif mutation == "truncate":
        edit = Edit("truncate", data.draw(position()))
    elif mutation == "flip":
        edit = Edit("xor", data.draw(position()), bytes([data.draw(st.integers(1, 255))]))
    elif mutation == "nul":
        edit = Edit("insert", data.draw(position()), b"\x00")
    elif mutation == "missing-value":
        i = data.draw(st.integers(0, len(train) - 1))
        parts = tokens(train[i])
        parts[data.draw(st.integers(1, len(parts) - 2))] = data.draw(st.sampled_from(["?", "nan"]))
        train[i] = (sep or " ").join(parts)
    elif mutation == "drop-lines":
        keep = data.draw(st.lists(st.booleans(), min_size=len(train), max_size=len(train)))
        train = [line for line, k in zip(train, keep, strict=True) if k]

    def render(body: list[str]) -> bytes:
        return edit((terminator.join(header + body) + terminator).encode("utf-8"))

    files = {f"FuzzSet_TRAIN.{fmt}": render(train)}
    if with_test:
        files[f"FuzzSet_TEST.{fmt}"] = render(test)
    with sandbox() as box:
        folder = box.data / "fuzzset"
        folder.mkdir()
        if mutation == "archive-damaged" or data.draw(st.booleans(), label="as archive"):
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w", data.draw(st.sampled_from(COMPRESSIONS))) as zf:
                for name, content in files.items():
                    zf.writestr(f"FuzzSet/{name}", content)
            archive = buffer.getvalue()
            if mutation == "archive-damaged":
                at = data.draw(st.integers(0, len(archive) - 1))
                archive = (
                    archive[:at]
                    if data.draw(st.booleans())
                    else archive[:at] + bytes([archive[at] ^ 0x5A]) + archive[at + 1 :]
                )
                expected = {ACCEPTED, CORRUPT, NOT_FOUND, PARAMETER}
            (folder / "FuzzSet.zip").write_bytes(archive)
        else:
            for name, content in files.items():
                (folder / name).write_bytes(content)
        result, task = run_case(UCR, box, lambda: load_task("ucr:FuzzSet", seed=0))
    assert result in expected, f"{mutation} ({fmt}): {result}, expected {expected}"
    if task is not None:
        check_task(task)
        assert task.modality is Modality.ECG and task.input_shape == (1, 140)
        total = sum(len(s) for s in task.splits().values())
        written = sum(1 for line in train + (test if with_test else []) if line.strip())
        assert total <= written
        if mutation in UCR_ACCEPTED:
            assert total == written


@settings(max_examples=15, **FUZZ)
@given(
    mutation=st.sampled_from(["intact", "new-label", "truncate", "flip", "shorter"]),
    data=st.data(),
)
def test_ecg5000_unverified_test_file(real_data: Path, mutation: str, data: st.DataObject):
    """ECG5000's TEST file has no pinned checksum: a damaged one must not slip through."""
    train_text = real_bytes(real_data, "ecg5000/ECG5000_TRAIN.txt")
    lines = train_text.decode("utf-8").splitlines()[-60:]
    expected = {ACCEPTED}
    if mutation == "new-label":
        i = data.draw(st.integers(0, len(lines) - 1))
        lines[i] = " ".join(["7", *lines[i].split()[1:]])
        expected = {CORRUPT}
    elif mutation == "shorter":
        lines[0] = " ".join(lines[0].split()[:-1])
        expected = {CORRUPT}
    raw = ("\n".join(lines) + "\n").encode()
    if mutation == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
        expected = {ACCEPTED, CORRUPT, PARAMETER}
    elif mutation == "flip":
        at = data.draw(st.integers(0, len(raw) - 1))
        raw = raw[:at] + bytes([raw[at] ^ data.draw(st.integers(1, 255))]) + raw[at + 1 :]
        expected = {ACCEPTED, CORRUPT, PARAMETER}
    with sandbox() as box:
        (box.data / "ecg5000").mkdir()
        (box.data / "ecg5000" / "ECG5000_TRAIN.txt").write_bytes(train_text)
        (box.data / "ecg5000" / "ECG5000_TEST.txt").write_bytes(raw)
        result, task = run_case(UCR, box, lambda: load_task("ecg5000", seed=0))
    assert result in expected, f"{mutation}: {result}, expected {expected}"
    if task is not None:
        check_task(task)
        assert task.class_names == ("Normal", "R-on-T PVC", "PVC", "SP/EB", "Unclassified")
        assert task.metadata["official_test"] is True


# -- parsers behind a checksum, fuzzed directly --------------------------------------------------


@settings(max_examples=120, **FUZZ)
@given(
    texts=st.lists(st.text(TEXT_ALPHABET, max_size=40), min_size=1, max_size=6),
    labels=st.lists(
        st.sampled_from(["1", "2", "3", "4", "5", " 2 "] * 3 + ["x", "", "1.0", "9" * 30]),
        min_size=6,
    ),
    header=st.sampled_from(["condition_label,medical_abstract"] * 4 + ["label,text", ""]),
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1"]),
    cut=st.one_of(st.none(), st.integers(0, 400)),
)
def test_abstracts_parser(
    texts: list[str], labels: list[str], header: str, encoding: str, cut: int | None
):
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    out.write(header + "\r\n")
    writer.writerows(zip(labels, texts, strict=False))
    try:
        raw = out.getvalue().encode(encoding)
    except UnicodeEncodeError:
        raw = out.getvalue().encode("utf-8")
    raw = raw if cut is None else raw[:cut]
    with sandbox() as box:
        path = box.user / "medical_tc_test.csv"
        path.write_bytes(raw)
        _, parsed = run_case(ABSTRACTS, box, lambda: read_abstracts(path))
        labels_path = box.user / "medical_tc_labels.csv"
        labels_path.write_bytes(raw.replace(b"medical_abstract", b"condition_name"))
        run_case(ABSTRACTS, box, lambda: read_label_names(labels_path))
    if parsed is not None:
        read_texts, read_labels = parsed
        assert read_texts and all(t.strip() and t == t.strip() for t in read_texts)
        assert all(isinstance(label, int) for label in read_labels)


@settings(max_examples=20, **FUZZ)
@given(data=st.data())
def test_mitbih_record_header(real_data: Path, data: st.DataObject):
    """wfdb reads a header the test garbles: a readable record or CorruptDataError."""
    good = real_bytes(real_data, "mitdb/100.hea").decode("ascii")
    lines = good.splitlines()
    how = data.draw(st.sampled_from(["intact", "line", "token", "truncate", "lead"]))
    if how == "line":
        del lines[data.draw(st.integers(0, len(lines) - 1))]
    elif how == "token":
        i = data.draw(st.integers(0, min(len(lines), 3) - 1))
        parts = lines[i].split(" ")
        parts[data.draw(st.integers(0, len(parts) - 1))] = data.draw(
            st.sampled_from(["-1", "0", "abc", "99999999999", "1e9", ""])
        )
        lines[i] = " ".join(parts)
    elif how == "lead":
        lines = [line.replace("MLII", "MLIII") for line in lines]
    text = "\n".join(lines) + "\n"
    if how == "truncate":
        text = text[: data.draw(st.integers(0, len(text) - 1))]
    with sandbox() as box:
        for name in ("100.dat", "100.atr"):
            (box.user / name).write_bytes(real_bytes(real_data, f"mitdb/{name}"))
        (box.user / "100.hea").write_text(text, encoding="ascii")
        paths = {n: box.user / n for n in ("100.hea", "100.dat", "100.atr")}
        result, beats = run_case(MITBIH_HEADER, box, lambda: segment_record(100, paths))
    if how == "intact":
        assert result == ACCEPTED
    elif how == "lead":
        assert result == CORRUPT
    assert result in (ACCEPTED, CORRUPT)
    if beats is not None:
        x, y, sample = beats
        assert x.dtype == np.float32 and x.shape[1:] == (BEAT_LENGTH,) and np.isfinite(x).all()
        assert len(x) == len(y) == len(sample) and ((y >= 0) & (y < 5)).all()


BEAT_MUTATIONS = (
    "intact",
    "truncate",
    "flip",
    "missing-key",
    "extra-key",
    "x-float64",
    "x-short",
    "x-nan",
    "label-out-of-range",
    "unknown-record",
    "length-mismatch",
    "object-array",
    "not-a-zip",
)


@settings(max_examples=80, **FUZZ)
@given(
    mutation=st.sampled_from(BEAT_MUTATIONS),
    seed=st.integers(0, 2**32 - 1),
    data=st.data(),
)
def test_mitbih_beat_cache(mutation: str, seed: int, data: st.DataObject):
    """The derived beat cache lies in the cache folder: anything unusable is rebuilt, never used."""
    rng = np.random.default_rng(seed)
    n = 20
    beats: dict[str, Any] = {
        "x": rng.normal(size=(n, BEAT_LENGTH)).astype(np.float32),
        "y": rng.integers(0, 5, n).astype(np.int8),
        "record": rng.choice(np.array(RECORDS, dtype=np.int16), n),
        "sample": rng.integers(0, 650_000, n).astype(np.int64),
    }
    if mutation == "missing-key":
        del beats[data.draw(st.sampled_from(sorted(beats)))]
    elif mutation == "extra-key":
        beats["extra"] = np.zeros(3)
    elif mutation == "x-float64":
        beats["x"] = beats["x"].astype(np.float64)
    elif mutation == "x-short":
        beats["x"] = beats["x"][:, :-1]
    elif mutation == "x-nan":
        beats["x"][0, 0] = np.nan
    elif mutation == "label-out-of-range":
        beats["y"][0] = data.draw(st.sampled_from([5, -1, 100]))
    elif mutation == "unknown-record":
        beats["record"][0] = 999
    elif mutation == "length-mismatch":
        beats["sample"] = beats["sample"][:-1]
    elif mutation == "object-array":
        beats["y"] = explosive_array((n,))
    raw = npz_bytes(beats, data.draw(st.sampled_from(COMPRESSIONS)))
    if mutation == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif mutation == "flip":
        at = data.draw(st.integers(0, len(raw) - 1))
        raw = raw[:at] + bytes([raw[at] ^ data.draw(st.integers(1, 255))]) + raw[at + 1 :]
    elif mutation == "not-a-zip":
        raw = npy_bytes(beats["x"])
    with sandbox() as box:
        path = box.cache / "derived" / "mitbih-beats-0123456789abcdef.npz"
        path.parent.mkdir()
        path.write_bytes(raw)
        try:
            cached = read_beat_cache(path)
        except MedrobustError as err:  # pragma: no cover - a bug: it must return None
            raise AssertionError(f"read_beat_cache raised {err!r}") from err
    assert not UNPICKLED
    fuzz.record(BEAT_CACHE, ACCEPTED if cached is not None else "refused (rebuilt)")
    if mutation == "intact":
        assert cached is not None
        for key, value in beats.items():
            np.testing.assert_array_equal(cached[key], value)
    elif mutation != "flip":
        assert cached is None, mutation
    elif cached is not None:
        for key, value in beats.items():
            np.testing.assert_array_equal(cached[key], value)
