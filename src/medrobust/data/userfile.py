"""A user's own data file as a task: ``file:<path>[?option=value&...]``.

Two formats:

- ``.npz`` (Python objects are never unpickled): ``x_train``, ``y_train``, ``x_test``,
  ``y_test`` and optionally ``x_val``, ``y_val`` (both or neither), and no other array. Inputs
  are integer or float (float32 or wider) with the same shape per example in every split:
  (N, F) tabular features, (N, C, T) ECG signals (or (N, T) with ``modality=ecg``), (N, C, H, W)
  images (or (N, H, W) with ``modality=image``); finite in float32 and no dimension 0. ``uint8``
  images are divided by 255; other images must lie in [0, 1] (or in the ``domain`` option).
  Labels are integers (or booleans) 0 .. K-1, K <= 10,000, shape (N,) or (N, 1).
- ``.csv`` (tabular, UTF-8, with a header row of distinct, non-blank names): one label column
  (option ``label``, default ``label``), an optional split column (option ``split``, default
  ``split``) holding ``train``, ``val`` or ``test``, and numeric feature columns (every other
  column). Labels are integers 0 .. K-1 or class names (sorted, unless ``classes`` gives their
  order); no row may have a blank label. Blank lines are skipped.
- ``.csv`` of text (clinical notes, abstracts): the same label and split columns and one text
  column (option ``text``, default ``text``) and no other column. A CSV whose header has the text
  column is text (or say ``modality=text``); each text is one field of up to 131,072 characters
  (quote it if it holds commas, quotes or line breaks) and must not be blank. Text models
  tokenize it (a tokenizer trained on the training split, or a Hugging Face model's own).

Without a validation split, a stratified 20 % of the training split is held out (seed 0); a CSV
without a split column is split 60/20/20 into train/val/test, stratified and seeded by the trial
(``TaskSpec.resplits``). Every split must end up non-empty, and the training split must hold two
or more classes. Values are used as given (no standardisation), so attack budgets are in the
file's units.

Options (URL query after the path, e.g. ``file:/data/scans.npz?classes=benign,malignant&
positive=1``): ``modality`` (image, ecg, tabular, text; default from the shape: 4-D image, 3-D
ECG, 2-D tabular; a CSV with a text column is text), ``classes`` (comma-separated names, default
``class 0``, ...), ``positive`` (the disease label for sensitivity and FNR: an index or a class
name; default 1 for binary tasks, else 0), ``domain`` (``low,high``; default [0, 1] for images,
unbounded otherwise; not for text), ``label``, ``split`` and ``text`` (three different CSV
columns; not for a .npz) and ``sha256`` (the file's checksum, 64 hex digits: a different file
fails with :class:`~medrobust.errors.ChecksumError`, and the name, stored with every result,
identifies the data). Bad files raise :class:`~medrobust.errors.CorruptDataError` saying what
was wrong and what is allowed.
"""

from __future__ import annotations

import codecs
import csv
import functools
import hashlib
import io
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode

import numpy as np

from medrobust.data.npzfile import NpzArchive
from medrobust.data.splits import stratified_split
from medrobust.data.task import Split, Task, TaskSpec
from medrobust.errors import ChecksumError, ConfigError, CorruptDataError
from medrobust.types import UNBOUNDED, UNIT_INTERVAL, Domain, Modality, TaskKind

PREFIX = "file:"
OPTIONS = ("modality", "classes", "positive", "domain", "label", "split", "text", "sha256")
SPLITS = ("train", "val", "test")
FORMATS = (".npz", ".csv")
VAL_FRACTION = 0.2
CSV_FRACTIONS = (0.6, 0.2, 0.2)
_MODALITIES = {m.value for m in (Modality.IMAGE, Modality.ECG, Modality.TABULAR, Modality.TEXT)}
_NDIM = {2: Modality.TABULAR, 3: Modality.ECG, 4: Modality.IMAGE}
# Labels are 0 .. K-1; a bound on K keeps a stray huge label from building millions of classes.
MAX_CLASSES = 10_000
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_CSV_COLUMNS = ("label", "split", "text")
_WIDE_BOMS = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_task_name(path: str | Path, **options: Any) -> str:
    """The task name of a data file: ``file:<absolute path>`` with its options, if any.

    Options that are ``None`` are left out; ``classes`` may be a sequence of names.

    Raises:
        ConfigError: an option is unknown.
    """
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"Unknown data file option(s) {unknown}. Allowed: {list(OPTIONS)}.")
    query: dict[str, str] = {}
    for key in OPTIONS:
        value = options.get(key)
        if value is None:
            continue
        if key in ("classes", "domain") and not isinstance(value, str):
            value = ",".join(str(v) for v in value)
        query[key] = str(value)
    name = PREFIX + quote(str(Path(path).expanduser().resolve()), safe="/:\\._-~")
    return name + ("?" + urlencode(query) if query else "")


def _parse_name(name: str) -> tuple[Path, dict[str, str]]:
    rest = name[len(PREFIX) :].strip()
    path_text, sep, query = rest.partition("?")
    options: dict[str, str] = {}
    if sep:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=False)
        for key, value in pairs:
            if key not in OPTIONS:
                raise ConfigError(
                    f"Unknown option {key!r} in the task {name!r}. Allowed: {list(OPTIONS)}."
                )
            options[key] = value
    path = Path(unquote(path_text))
    if not path_text or path.suffix.lower() not in FORMATS:
        raise ConfigError(
            f"A data file task is 'file:<path>.npz' or 'file:<path>.csv'. Got {name!r} instead."
        )
    try:
        path = path.expanduser()
        exists = path.is_file()
    except (OSError, RuntimeError, ValueError):  # unknown ~user, a name too long, a NUL byte
        exists = False
    if not exists:
        raise ConfigError(f"The data file {str(path)!r} of task {name!r} does not exist.")
    expected = options.get("sha256")
    if expected is not None and not _SHA256.match(expected):
        raise ConfigError(
            f"The 'sha256' option of task {name!r} must be 64 hexadecimal digits. "
            f"Got {expected!r} instead."
        )
    return path, options


def _domain(name: str, options: dict[str, str], modality: Modality) -> Domain:
    if modality is Modality.TEXT and "domain" in options:
        raise ConfigError(f"The 'domain' option of task {name!r} does not apply to text.")
    if "domain" not in options:
        return UNIT_INTERVAL if modality is Modality.IMAGE else UNBOUNDED
    parts = options["domain"].split(",")
    try:
        low, high = (float(p) for p in parts)
        return Domain(low, high)
    except ValueError:
        raise ConfigError(
            f"The 'domain' option of task {name!r} must be 'low,high' with low < high. "
            f"Got {options['domain']!r} instead."
        ) from None


def _modality_option(name: str, options: dict[str, str]) -> Modality | None:
    value = options.get("modality")
    if value is None:
        return None
    if value not in _MODALITIES:
        raise ConfigError(
            f"The 'modality' option of task {name!r} must be one of {sorted(_MODALITIES)}. "
            f"Got {value!r} instead."
        )
    return Modality(value)


@functools.lru_cache(maxsize=32)
def _npz_ndim(path: str, mtime_ns: int, size: int) -> int:
    """The number of dimensions of ``x_train`` (cached per file version)."""
    del mtime_ns, size
    with _open_npz(Path(path)) as npz:
        if "x_train" not in npz.keys:
            raise _corrupt(Path(path), "it has no 'x_train'", _NPZ_ALLOWED)
        return len(npz.header("x_train")[0])


def _check_columns(name: str, path: Path, options: dict[str, str]) -> None:
    """The CSV column options: for a CSV only, and naming three different columns."""
    given = [key for key in _CSV_COLUMNS if key in options]
    if path.suffix.lower() != ".csv":
        if given:
            raise ConfigError(
                f"The option(s) {given} of task {name!r} name CSV columns; a .npz file has "
                "none. Leave them out."
            )
        return
    columns = {key: options.get(key, key).strip() for key in _CSV_COLUMNS}
    if len(set(columns.values())) < len(columns) or not all(columns.values()):
        raise ConfigError(
            f"The 'label', 'split' and 'text' options of task {name!r} must name three different "
            f"columns. Got {columns} instead."
        )


def file_task_spec(name: str) -> TaskSpec:
    """The TaskSpec of a ``file:`` task name.

    Raises:
        ConfigError: the name is malformed, an option is unknown or bad, or the file is missing.
        CorruptDataError: the file cannot be read.
    """
    path, options = _parse_name(name)
    modality = _modality_option(name, options)
    _check_columns(name, path, options)
    if path.suffix.lower() == ".csv":
        is_text = _csv_is_text(path, options)
        if modality not in (None, Modality.TABULAR, Modality.TEXT):
            raise ConfigError(
                "A CSV data file holds tabular features or text. Got modality "
                f"{modality.value!r} for {name!r}."
            )
        if modality is Modality.TEXT and not is_text:
            column = options.get("text", "text")
            raise ConfigError(
                f"A text CSV needs a text column {column!r} (name it with the 'text' option); "
                f"the file of task {name!r} has none."
            )
        modality = Modality.TEXT if is_text and modality is not Modality.TABULAR else modality
        modality = modality or Modality.TABULAR
    elif modality is Modality.TEXT:
        raise ConfigError(f"Text data must be a .csv file with a text column. Got {name!r}.")
    elif modality is None:
        stat = path.stat()
        ndim = _npz_ndim(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
        if ndim not in _NDIM:
            raise _corrupt(path, f"x_train has {ndim} dimensions", _NPZ_ALLOWED)
        modality = _NDIM[ndim]
    resplits = path.suffix.lower() == ".csv" and not _csv_has_split(path, options)
    return TaskSpec(
        name=name,
        modality=modality,
        kind=TaskKind.CLASSIFICATION,
        files=(),
        load=lambda seed: load_file_task(name, seed),
        resplits=resplits,
        summary=f"your data file {path.name} ({modality.value})",
        domain=_domain(name, options, modality),
    )


_NPZ_ALLOWED = (
    "a .npz needs x_train, y_train, x_test, y_test and optionally x_val, y_val; inputs (N, F), "
    "(N, C, T) or (N, C, H, W) of numbers, labels (N,) of integers 0 .. K-1"
)
_CSV_ALLOWED = (
    "a .csv needs a header row, a label column, optionally a split column of train/val/test, "
    "and numeric feature columns (or, for text, one text column)"
)


def _corrupt(path: Path, reason: str, allowed: str) -> CorruptDataError:
    return CorruptDataError(f"The data file {path} cannot be used: {reason}. Allowed: {allowed}.")


def _open_npz(path: Path) -> NpzArchive:
    return NpzArchive(path, lambda reason: _corrupt(path, reason, _NPZ_ALLOWED))


def load_file_task(name: str, seed: int = 0) -> Task:
    """Load a ``file:`` task (see the module docstring for the formats and options).

    Raises:
        ConfigError: the name or an option is bad, or the file is missing.
        ChecksumError: the file's SHA-256 differs from the ``sha256`` option.
        CorruptDataError: the file's keys, shapes, values or labels are not as documented.
    """
    spec = file_task_spec(name)
    path, options = _parse_name(name)
    try:
        digest = file_sha256(path)
    except OSError as exc:
        raise _corrupt(path, f"it cannot be read ({exc})", "a readable file") from None
    expected = options.get("sha256")
    if expected is not None and expected.lower() != digest:
        raise ChecksumError(
            f"The data file {path} has sha256 {digest}, not {expected} as task {name!r} "
            "records: the file changed. Audit the new file into a new output folder."
        )
    if path.suffix.lower() == ".csv":
        xs, ys, names, policy = _read_csv(path, options, seed, spec.modality)
    else:
        xs, ys, names, policy = _read_npz(path, options, spec.modality)
    class_names = _class_names(path, name, options, names, ys)
    positive = _positive(name, options, class_names)
    for split in SPLITS:
        if len(ys[split]) == 0:
            raise _corrupt(
                path,
                f"its {split} split is empty ({policy})",
                "enough examples for a non-empty train, val and test split: a class needs 3 "
                "examples to reach all three (2 in the train split of a .npz without x_val), "
                "or give the split explicitly",
            )
    splits = {split: Split(x=xs[split], y=ys[split]) for split in SPLITS}
    domain = spec.domain
    for split, x in xs.items():
        if (
            spec.modality is not Modality.TEXT
            and x.size
            and (x.min() < domain.low or x.max() > domain.high)
        ):
            raise _corrupt(
                path,
                f"x_{split} has values in [{x.min():g}, {x.max():g}], outside the domain "
                f"[{domain.low:g}, {domain.high:g}]",
                "images in [0, 1] (or uint8), or a 'domain' option that holds every value",
            )
    k = len(class_names)
    return Task(
        name=name,
        modality=spec.modality,
        kind=TaskKind.CLASSIFICATION,
        class_names=class_names,
        positive_class=positive,
        domain=domain,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        description=f"Your data file {path.name} ({spec.modality.value}, {k} classes).",
        metadata={
            "source_files": [{"path": str(path), "sha256": digest}],
            "verified": expected is not None,
            "split_policy": policy,
            "normalisation": "none: values as in the file (uint8 images / 255)"
            if spec.modality is not Modality.TEXT
            else "none: texts as in the file",
            "positive_class_reason": (
                "the 'positive' option"
                if "positive" in options
                else "binary task: label 1"
                if k == 2
                else "multi-class task: label 0 by convention"
            ),
            "class_counts": {s: splits[s].class_counts(k) for s in SPLITS},
        },
    )


def _read_npz(
    path: Path, options: dict[str, str], modality: Modality
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], tuple[str, ...], str]:
    xs: dict[str, np.ndarray] = {}
    ys: dict[str, np.ndarray] = {}
    with _open_npz(path) as npz:
        keys = set(npz.keys)
        needed = {"x_train", "y_train", "x_test", "y_test"}
        if not needed <= keys:
            raise _corrupt(path, f"it lacks the keys {sorted(needed - keys)}", _NPZ_ALLOWED)
        if ("x_val" in keys) != ("y_val" in keys):
            raise _corrupt(path, "it has only one of x_val and y_val", _NPZ_ALLOWED)
        extra = sorted(keys - needed - {"x_val", "y_val"})
        if extra:
            raise _corrupt(path, f"it has unknown keys {extra}", _NPZ_ALLOWED)
        present = [s for s in SPLITS if f"x_{s}" in keys]
        for split in present:
            xs[split] = _inputs(path, split, npz.read(f"x_{split}"), modality)
            ys[split] = _labels(path, split, npz.read(f"y_{split}"), len(xs[split]))
    shapes = {s: xs[s].shape[1:] for s in xs}
    if len(set(shapes.values())) != 1:
        raise _corrupt(path, f"the splits have different input shapes {shapes}", _NPZ_ALLOWED)
    policy = "the file's train/val/test split"
    if "val" not in xs:
        xs, ys = _hold_out_val(xs, ys)
        policy = f"the file's train/test split; val: a stratified {VAL_FRACTION:.0%} of train"
    return xs, ys, (), policy


def _inputs(path: Path, split: str, raw: np.ndarray, modality: Modality) -> np.ndarray:
    if raw.dtype.kind not in "iuf" or raw.dtype == np.float16:
        raise _corrupt(path, f"x_{split} has dtype {raw.dtype}", _NPZ_ALLOWED)
    x = raw
    if modality is Modality.IMAGE and x.ndim == 3:
        x = x[:, None]
    if modality is Modality.ECG and x.ndim == 2:
        x = x[:, None]
    wanted = {Modality.IMAGE: 4, Modality.ECG: 3, Modality.TABULAR: 2}[modality]
    if x.ndim != wanted or x.size == 0:
        raise _corrupt(
            path,
            f"x_{split} has shape {raw.shape}, which is no non-empty {modality.value} input "
            f"({wanted}-D, no dimension 0)",
            _NPZ_ALLOWED,
        )
    with np.errstate(over="ignore", invalid="ignore"):  # checked below
        if modality is Modality.IMAGE and x.dtype == np.uint8:
            out = x.astype(np.float32) / np.float32(255.0)
        else:
            out = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(out).all():
        raise _corrupt(
            path,
            f"x_{split} has NaN or infinite values, or values beyond float32's range",
            _NPZ_ALLOWED,
        )
    return out


def _labels(path: Path, split: str, raw: np.ndarray, n: int) -> np.ndarray:
    if raw.ndim == 2 and raw.shape[1] == 1:
        raw = raw[:, 0]
    if raw.ndim != 1 or len(raw) != n:
        raise _corrupt(
            path, f"y_{split} has shape {raw.shape} for {n} inputs (one label each)", _NPZ_ALLOWED
        )
    if raw.dtype.kind not in "iub":
        raise _corrupt(path, f"y_{split} has dtype {raw.dtype}, not integers", _NPZ_ALLOWED)
    low, high = int(raw.min()), int(raw.max())
    if low < 0 or high >= MAX_CLASSES:
        raise _corrupt(
            path,
            f"y_{split} has labels in [{low}, {high}]",
            f"labels 0 .. K-1 for K classes, K <= {MAX_CLASSES}",
        )
    return raw.astype(np.int64)


def _hold_out_val(
    xs: dict[str, np.ndarray], ys: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    keep, val = stratified_split(ys["train"], (1 - VAL_FRACTION, VAL_FRACTION), 0)
    return (
        {"train": xs["train"][keep], "val": xs["train"][val], "test": xs["test"]},
        {"train": ys["train"][keep], "val": ys["train"][val], "test": ys["test"]},
    )


_CSV_TEXT = "UTF-8 text (with or without a byte order mark) and no NUL characters"


def _csv_text(path: Path, limit: int = -1) -> str:
    """The CSV's text (its first ``limit`` bytes, or all): UTF-8, checked before parsing."""
    try:
        with path.open("rb") as handle:
            data = handle.read(limit)
    except OSError as exc:
        raise _corrupt(path, f"it cannot be read ({exc})", _CSV_ALLOWED) from None
    if data.startswith(_WIDE_BOMS):
        raise _corrupt(path, "it is UTF-16 or UTF-32 text; save it as UTF-8", _CSV_TEXT)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if limit < 0 or exc.end != len(data):  # not a character cut at the limit
            raise _corrupt(
                path, f"it is not UTF-8 text ({exc.reason} at byte {exc.start})", _CSV_TEXT
            ) from None
        text = data[: exc.start].decode("utf-8-sig")
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise _corrupt(path, f"it holds a NUL character on line {line} (a binary file?)", _CSV_TEXT)
    return text


def _parse_csv(path: Path, text: str) -> list[list[str]]:
    """The non-blank rows of a CSV text (strict: a quote must close its field)."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        return [row for row in reader if any(field.strip() for field in row)]
    except csv.Error as exc:
        hint = ""
        if "field limit" in str(exc):
            hint = (
                f"; fields may hold up to {csv.field_size_limit()} characters, and an unbalanced "
                "quote makes one field of the rest of the file"
            )
        raise _corrupt(
            path, f"it is not valid CSV near line {reader.line_num} ({exc}{hint})", _CSV_ALLOWED
        ) from None


def _check_header(path: Path, header: list[str]) -> list[str]:
    header = [h.strip() for h in header]
    if any(not h for h in header):
        raise _corrupt(
            path,
            f"the header {header} has a blank column name (such as the index column pandas "
            "writes; save with index=False)",
            _CSV_ALLOWED,
        )
    duplicates = sorted({h for h in header if header.count(h) > 1})
    if duplicates:
        raise _corrupt(path, f"the header names the columns {duplicates} twice", _CSV_ALLOWED)
    return header


def _csv_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    rows = _parse_csv(path, _csv_text(path))
    if len(rows) < 2:
        raise _corrupt(path, "it has no header row and data rows", _CSV_ALLOWED)
    return _check_header(path, rows[0]), rows[1:]


def _csv_header(path: Path) -> list[str]:
    """The header row, read from the start of the file only."""
    text = _csv_text(path, 1 << 16)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        first = next((row for row in reader if any(f.strip() for f in row)), [])
    except csv.Error:
        first = []  # a header longer than the sample: the full read reports the problem
    return [h.strip() for h in first]


def _csv_has_split(path: Path, options: dict[str, str]) -> bool:
    return options.get("split", "split") in _csv_header(path)


def _csv_is_text(path: Path, options: dict[str, str]) -> bool:
    """Whether the CSV's header has the text column (option ``text``, default ``text``)."""
    return options.get("text", "text") in _csv_header(path)


def _text_column(
    path: Path, header: list[str], rows: list[list[str]], column: str, others: tuple[str, str]
) -> np.ndarray:
    """The texts of a text CSV, an object array of N strings."""
    extra = [c for c in header if c not in (column, *others)]
    if extra:
        raise _corrupt(
            path,
            f"a text CSV has columns {extra} beside the text, label and split columns",
            "a text CSV with one text column (option 'text'), a label column and optionally a "
            "split column",
        )
    at = header.index(column)
    x = np.empty(len(rows), dtype=object)
    for r, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise _corrupt(
                path, f"line {r} has {len(row)} fields, the header {len(header)}", _CSV_ALLOWED
            )
        if not row[at].strip():
            raise _corrupt(path, f"row {r - 1} has a blank text", "a non-blank text in every row")
        x[r - 2] = row[at]
    return x


def _read_csv(
    path: Path, options: dict[str, str], seed: int, modality: Modality = Modality.TABULAR
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], tuple[str, ...], str]:
    header, rows = _csv_rows(path)
    label_col = options.get("label", "label")
    split_col = options.get("split", "split")
    if label_col not in header:
        raise _corrupt(
            path,
            f"it has no label column {label_col!r} (columns: {header}); name it with the "
            "'label' option",
            _CSV_ALLOWED,
        )
    index = {c: i for i, c in enumerate(header)}
    if modality is Modality.TEXT:
        texts = _text_column(
            path, header, rows, options.get("text", "text"), (label_col, split_col)
        )
        return _csv_splits(path, options, seed, header, rows, texts)
    features = [c for c in header if c not in (label_col, split_col)]
    if not features:
        raise _corrupt(path, "it has no feature columns", _CSV_ALLOWED)
    x = np.empty((len(rows), len(features)), dtype=np.float64)
    for r, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise _corrupt(
                path, f"line {r} has {len(row)} fields, the header {len(header)}", _CSV_ALLOWED
            )
        for c, column in enumerate(features):
            try:
                x[r - 2, c] = float(row[index[column]])
            except ValueError:
                raise _corrupt(
                    path,
                    f"line {r}, column {column!r} holds {row[index[column]]!r}, not a number",
                    _CSV_ALLOWED,
                ) from None
    with np.errstate(over="ignore"):  # checked below
        x32 = x.astype(np.float32)
    if not np.isfinite(x32).all():
        raise _corrupt(
            path,
            "it has NaN or infinite feature values, or values beyond float32's range",
            _CSV_ALLOWED,
        )
    return _csv_splits(path, options, seed, header, rows, x32)


def _csv_splits(
    path: Path,
    options: dict[str, str],
    seed: int,
    header: list[str],
    rows: list[list[str]],
    x32: np.ndarray,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], tuple[str, ...], str]:
    """The CSV's inputs ``x32`` (one per row) split by its split column or a seeded split."""
    label_col = options.get("label", "label")
    split_col = options.get("split", "split")
    index = {c: i for i, c in enumerate(header)}
    raw_labels = [row[index[label_col]].strip() for row in rows]
    if not all(raw_labels):
        raise _corrupt(
            path,
            f"line {raw_labels.index('') + 2} has a blank label",
            "a label (an integer 0 .. K-1 or a class name) in every row",
        )
    y, names = _encode_labels(path, raw_labels, options)
    if split_col in header:
        where = np.array([row[index[split_col]].strip().lower() for row in rows])
        bad = sorted(set(where) - set(SPLITS))
        if bad:
            raise _corrupt(path, f"the split column holds {bad}", _CSV_ALLOWED)
        xs = {s: x32[where == s] for s in SPLITS if (where == s).any()}
        ys = {s: y[where == s] for s in SPLITS if (where == s).any()}
        for needed in ("train", "test"):
            if needed not in xs:
                raise _corrupt(path, f"the split column has no {needed!r} rows", _CSV_ALLOWED)
        policy = "the file's split column"
        if "val" not in xs:
            xs, ys = _hold_out_val(xs, ys)
            policy += f"; val: a stratified {VAL_FRACTION:.0%} of train"
        return xs, ys, names, policy
    parts = stratified_split(y, CSV_FRACTIONS, seed, priority=(0, 2, 1))
    xs = {s: x32[i] for s, i in zip(SPLITS, parts, strict=True)}
    ys = {s: y[i] for s, i in zip(SPLITS, parts, strict=True)}
    return xs, ys, names, "60/20/20 train/val/test, stratified, seeded by the trial"


def _encode_labels(
    path: Path, raw: list[str], options: dict[str, str]
) -> tuple[np.ndarray, tuple[str, ...]]:
    given = tuple(c.strip() for c in options["classes"].split(",")) if "classes" in options else ()
    try:
        values = [int(v) for v in raw]
    except ValueError:
        pass
    else:
        low, high = min(values), max(values)
        if low < 0 or high >= MAX_CLASSES:
            raise _corrupt(
                path,
                f"the labels range over [{low}, {high}]",
                f"integer labels 0 .. K-1 for K classes, K <= {MAX_CLASSES}, or class names",
            )
        return np.asarray(values, dtype=np.int64), ()
    names = given or tuple(sorted(set(raw)))
    lookup = {n: i for i, n in enumerate(names)}
    unknown = sorted(set(raw) - set(lookup))
    if unknown:
        raise _corrupt(
            path, f"the labels {unknown[:5]} are not among the classes {list(names)}", _CSV_ALLOWED
        )
    return np.asarray([lookup[v] for v in raw], dtype=np.int64), names


def _class_names(
    path: Path,
    name: str,
    options: dict[str, str],
    names: tuple[str, ...],
    ys: dict[str, np.ndarray],
) -> tuple[str, ...]:
    labels = np.concatenate(list(ys.values()))
    low, high = int(labels.min()), int(labels.max())
    if "classes" in options:
        names = tuple(c.strip() for c in options["classes"].split(","))
        if len(names) < 2 or not all(names) or len(set(names)) < len(names):
            raise ConfigError(
                f"The 'classes' option of task {name!r} must name two or more distinct classes, "
                f"comma-separated. Got {options['classes']!r} instead."
            )
    elif not names:
        names = tuple(f"class {i}" for i in range(max(high + 1, 2)))
    if low < 0 or high >= len(names):
        raise _corrupt(
            path,
            f"the labels range over [{low}, {high}], outside [0, {len(names) - 1}] for the "
            f"{len(names)} classes {list(names)}",
            "labels 0 .. K-1 for K classes (name them with the 'classes' option)",
        )
    if len(np.unique(ys["train"])) < 2:
        raise _corrupt(path, "the training split holds a single class", "two or more classes")
    return names


def _positive(name: str, options: dict[str, str], class_names: tuple[str, ...]) -> int:
    k = len(class_names)
    if "positive" not in options:
        return 1 if k == 2 else 0
    value = options["positive"].strip()
    if value in class_names:
        return class_names.index(value)
    try:
        index = int(value)
    except ValueError:  # not an integer (also '²', or too many digits)
        index = -1
    if 0 <= index < k:
        return index
    raise ConfigError(
        f"The 'positive' option of task {name!r} must be a label in [0, {k - 1}] or one of the "
        f"classes {list(class_names)}. Got {value!r} instead."
    )


def is_file_task(name: str) -> bool:
    """Whether ``name`` is a ``file:`` task name."""
    return str(name).strip().lower().startswith(PREFIX)


__all__ = [
    "PREFIX",
    "file_task_name",
    "file_task_spec",
    "is_file_task",
    "load_file_task",
]
