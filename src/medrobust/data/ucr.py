"""UCR/UEA time-series tasks: ``ecg5000``, ``ecg5000_anomaly`` and any ``ucr:<Name>``.

Files are ``<name lower>/<Name>_TRAIN.<fmt>`` (and ``_TEST``), in any of the archive's formats:
``.txt`` (old UCR: whitespace separated, label first), ``.tsv`` (UCR 2018: tab separated, label
first), ``.ts`` (sktime/aeon: header lines, then ``v1,v2,...:label``; several dimensions separated
by ``:``) or ``.arff`` (Weka, univariate, class last). Series must have equal lengths and no
missing values. Labels are remapped to 0..K-1 in sorted order (numerically when all labels are
numbers). Inputs are float32 (N, D, T) (D = 1 for univariate data), as published: the archive has
z-normalised each ECG5000 series already, so nothing is rescaled and the domain is unbounded.

Split policy: when ``<Name>_TEST`` is present (offline, in the cache, or extracted from the
downloaded archive), the official TRAIN/TEST split is used and 20 % of TRAIN, stratified and
seeded, becomes the validation split. When only TRAIN is present (the offline folder holds only
ECG5000's TRAIN split), its series are split 60/20/20 into train/val/test, stratified and seeded.
The per-class split (:func:`medrobust.data.splits.stratified_split`) never fails on rare classes:
a class of at least 3 series reaches all three splits; one of 2 series goes to train and test;
one of 1 series to train. ``Task.metadata["official_test"]`` says which policy applied.

ECG5000 (chf07 of the BIDMC Congestive Heart Failure Database): classes from the literature,
1 Normal, 2 R-on-T PVC, 3 PVC, 4 SP/EB (supraventricular premature or ectopic beat),
5 Unclassified. Positive class: R-on-T PVC (1), the premature ventricular beat that can trigger
ventricular fibrillation, and the most frequent abnormal class.

ECG5000 anomaly detection (``ecg5000_anomaly``): label 0 = normal (class 1), 1 = abnormal (classes
2-5), positive class 1. The split is that of ``ecg5000`` for the same seed, then the abnormal beats
of its train split are moved out, so the training split holds normal beats only: without an
official test split they are dealt between val and test (half each, stratified by original class,
seeded); with one, they all go to val, leaving the official test split unchanged. Val and test
hold both labels, so a detection threshold can be calibrated on val.

Generic ``ucr:<Name>``: class names are the original label values; the positive class is 1 for
binary tasks and 0 otherwise. Its files have no known checksum: they are read unverified from the
offline folder or the cache (or extracted from a ``<Name>.zip`` placed there) and never downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medrobust.data.catalogue import ucr_file
from medrobust.data.files import DataFile, describe, fetch, find_local
from medrobust.data.splits import check_seed, stratified_split
from medrobust.data.task import Split, Task, TaskSpec
from medrobust.errors import CorruptDataError, ParameterError
from medrobust.types import UNBOUNDED, Modality, TaskKind

ECG5000_CLASS_NAMES = ("Normal", "R-on-T PVC", "PVC", "SP/EB", "Unclassified")
ECG5000_POSITIVE = 1
TRAIN_ONLY_FRACTIONS = (0.6, 0.2, 0.2)
VAL_FRACTION_OF_TRAIN = 0.2
# Splits that receive members of a class too small to reach all of them: train, test, val.
_PRIORITY = (0, 2, 1)


def ucr_spec(name: str, task_name: str, *, anomaly: bool = False, summary: str = "") -> TaskSpec:
    """The TaskSpec of UCR dataset ``name`` (classification, or ECG5000-style anomaly detection)."""
    return TaskSpec(
        name=task_name,
        modality=Modality.ECG,
        kind=TaskKind.ANOMALY_DETECTION if anomaly else TaskKind.CLASSIFICATION,
        files=(ucr_file(name, "TRAIN").path,),
        load=lambda seed: load_ucr(name, task_name, seed, anomaly=anomaly),
        resplits=True,
        summary=summary or f"UCR {name} series, seeded stratified split",
    )


def load_ucr(name: str, task_name: str, seed: int = 0, *, anomaly: bool = False) -> Task:
    """Load a UCR dataset as a task (see the module docstring for the split policy).

    Args:
        name: the dataset name as the archive spells it, e.g. ``"ECG5000"``.
        task_name: the name the task is reported under.
        seed: seed of the stratified split.
        anomaly: build the anomaly-detection task (class of the smallest label = normal).

    Raises:
        DataNotFoundError, ChecksumError: the TRAIN file cannot be had or is wrong.
        CorruptDataError: a file cannot be parsed (truncated, wrong format), holds too few
            series for three splits, or (ECG5000) holds labels other than 1 .. 5.
        ParameterError: missing values or series of unequal length.
    """
    seed = check_seed(seed)
    train_file = ucr_file(name, "TRAIN")
    test_file = ucr_file(name, "TEST")
    train_path = fetch(train_file)
    test_path = find_local(test_file)
    x_train, raw_train = read_ucr(train_path, train_file.path)
    sources: list[tuple[DataFile, Path]] = [(train_file, train_path)]
    if test_path is not None:
        x_test, raw_test = read_ucr(test_path, test_file.path)
        sources.append((test_file, test_path))
        if x_test.shape[1:] != x_train.shape[1:]:
            raise CorruptDataError(
                f"The UCR files {train_path} and {test_path} hold series of different shapes "
                f"{x_train.shape[1:]} and {x_test.shape[1:]}."
            )
    else:
        x_test, raw_test = x_train[:0], raw_train[:0]
    keys = sorted(set(raw_train.tolist()) | set(raw_test.tolist()), key=_label_sort_key)
    index = {key: i for i, key in enumerate(keys)}
    y_train = np.array([index[k] for k in raw_train], dtype=np.int64)
    y_test = np.array([index[k] for k in raw_test], dtype=np.int64)
    official = test_path is not None
    if official:
        tr, va = stratified_split(
            y_train, (1 - VAL_FRACTION_OF_TRAIN, VAL_FRACTION_OF_TRAIN), seed, priority=(0, 1)
        )
        x_all, y_all = np.concatenate([x_train, x_test]), np.concatenate([y_train, y_test])
        te = np.arange(len(y_train), len(y_all))
        policy = (
            f"official TRAIN/TEST split; val = {VAL_FRACTION_OF_TRAIN:.0%} of TRAIN, "
            "stratified, seeded"
        )
    else:
        tr, va, te = stratified_split(y_train, TRAIN_ONLY_FRACTIONS, seed, priority=_PRIORITY)
        x_all, y_all = x_train, y_train
        policy = (
            "no official TEST file: TRAIN split 60/20/20 into train/val/test, stratified per "
            "class, seeded (classes of 2 series: train and test; of 1: train)"
        )
    is_ecg5000 = name.upper() == "ECG5000"
    if is_ecg5000 and keys != ["1", "2", "3", "4", "5"]:
        # the TEST file has no known checksum; its labels must still be ECG5000's
        raise CorruptDataError(
            f"The ECG5000 files {', '.join(str(p) for _, p in sources)} hold the labels {keys}; "
            "ECG5000's labels are 1 .. 5."
        )
    _check_not_empty(name, sources, y_all, (tr, va, te))
    if anomaly:
        return _anomaly_task(
            name, task_name, seed, x_all, y_all, (tr, va, te), official, policy, sources, keys
        )
    class_names = ECG5000_CLASS_NAMES if is_ecg5000 else tuple(keys)
    trained = sorted({keys[i] for i in y_all[tr]}, key=_label_sort_key)
    if len(trained) < 2:
        raise CorruptDataError(
            f"The UCR file {train_path} holds a single class {trained} for training; a task "
            "needs at least two."
        )
    positive = ECG5000_POSITIVE if is_ecg5000 else (1 if len(class_names) == 2 else 0)
    splits = [Split(x=x_all[i], y=y_all[i]) for i in (tr, va, te)]
    return Task(
        name=task_name,
        modality=Modality.ECG,
        kind=TaskKind.CLASSIFICATION,
        class_names=class_names,
        positive_class=positive,
        domain=UNBOUNDED,
        train=splits[0],
        val=splits[1],
        test=splits[2],
        description=(
            f"UCR {name}: {x_all.shape[2]}-sample series, {len(class_names)} classes, "
            f"{'official test split' if official else 'seeded 60/20/20 split of TRAIN'}."
        ),
        metadata={
            "source_files": [describe(f, p) for f, p in sources],
            "verified": all(f.verifiable for f, _ in sources),
            "official_test": official,
            "split_policy": policy,
            "seed": seed,
            "original_labels": keys,
            "normalisation": "none (values as published; UCR series are z-normalised)",
            "positive_class_reason": (
                "R-on-T PVC: a premature ventricular beat that can trigger fibrillation"
                if is_ecg5000
                else "binary task: label 1"
                if len(class_names) == 2
                else "multi-class task: label 0 by convention"
            ),
            "class_counts": {
                n: s.class_counts(len(class_names))
                for n, s in zip(("train", "val", "test"), splits, strict=True)
            },
        },
    )


def _anomaly_task(
    name: str,
    task_name: str,
    seed: int,
    x: np.ndarray,
    original: np.ndarray,
    parts: tuple[np.ndarray, np.ndarray, np.ndarray],
    official: bool,
    policy: str,
    sources: Sequence[tuple[DataFile, Path]],
    keys: Sequence[str],
) -> Task:
    tr, va, te = parts
    y = (original != 0).astype(np.int64)
    moved = tr[y[tr] == 1]
    train = tr[y[tr] == 0]
    if official:
        val, test = np.sort(np.concatenate([va, moved])), te
        move_policy = "abnormal TRAIN beats moved to val; official test unchanged"
    else:
        to_val, to_test = stratified_split(original[moved], (0.5, 0.5), seed, priority=(1, 0))
        val = np.sort(np.concatenate([va, moved[to_val]]))
        test = np.sort(np.concatenate([te, moved[to_test]]))
        move_policy = "abnormal beats of the train split dealt half to val, half to test (seeded)"
    splits = [Split(x=x[i], y=y[i]) for i in (train, val, test)]
    return Task(
        name=task_name,
        modality=Modality.ECG,
        kind=TaskKind.ANOMALY_DETECTION,
        class_names=("normal", "abnormal"),
        positive_class=1,
        domain=UNBOUNDED,
        train=splits[0],
        val=splits[1],
        test=splits[2],
        description=(
            f"UCR {name} anomaly detection: normal (class {keys[0]}) vs abnormal beats; "
            "train holds normal beats only."
        ),
        metadata={
            "source_files": [describe(f, p) for f, p in sources],
            "verified": all(f.verifiable for f, _ in sources),
            "official_test": official,
            "split_policy": f"{policy}; then {move_policy}",
            "seed": seed,
            "original_labels": list(keys),
            "label_map": {"normal": [keys[0]], "abnormal": list(keys[1:])},
            "normalisation": "none (values as published; UCR series are z-normalised)",
            "positive_class_reason": "abnormal beats are the ones to detect",
            "class_counts": {
                n: s.class_counts(2) for n, s in zip(("train", "val", "test"), splits, strict=True)
            },
        },
    )


def _check_not_empty(
    name: str,
    sources: Sequence[tuple[DataFile, Path]],
    y: np.ndarray,
    parts: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    for split, part in zip(("train", "val", "test"), parts, strict=True):
        if len(part) == 0:
            raise CorruptDataError(
                f"The UCR files of {name} ({', '.join(str(p) for _, p in sources)}) hold too few "
                f"series for a {split} split ({len(y)} series; a class reaches every split from "
                "3 series on)."
            )


def _label_sort_key(label: str) -> tuple[int, float, str]:
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def _canonical_label(text: str) -> str:
    label = text.strip().strip("'\"")
    try:
        value = float(label)
    except ValueError:
        return label
    return str(int(value)) if value.is_integer() else repr(value)


def read_ucr(path: Path, relative: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Parse one UCR file in any of the archive's formats.

    Args:
        path: the file (``.txt``, ``.tsv``, ``.ts`` or ``.arff``).
        relative: its catalogue path, for messages.

    Returns:
        ``(x, labels)``: float32 (N, D, T) series and the N labels as canonical strings.

    Raises:
        CorruptDataError: the file is not valid UTF-8 text in that format, or is truncated.
        ParameterError: it has missing values or series of unequal length.
    """
    where = f"{path} ({relative})" if relative else str(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise CorruptDataError(
            f"The UCR file {where} is not UTF-8 text ({err.reason} at byte {err.start})."
        ) from None
    suffix = path.suffix.lower()
    if suffix in (".ts", ".arff"):
        rows, labels = _parse_headed(text, suffix, where)
    elif suffix in (".txt", ".tsv"):
        rows, labels = _parse_label_first(text, suffix, where)
    else:
        raise CorruptDataError(f"The UCR file {where} has an unknown format {suffix!r}.")
    if not rows:
        raise CorruptDataError(f"The UCR file {where} holds no series (empty or truncated).")
    shapes = {(len(r), len(r[0])) for r in rows}
    if len(shapes) != 1 or any(len(dim) != len(r[0]) for r in rows for dim in r):
        raise CorruptDataError(
            f"The UCR file {where} has rows of unequal length: it may be truncated (series of "
            "unequal length are not supported)."
        )
    try:
        x = np.asarray(rows, dtype=np.float64)
    except ValueError as err:
        raise CorruptDataError(f"The UCR file {where} has a non-numeric value: {err}.") from None
    with np.errstate(over="ignore"):  # checked below
        x32 = x.astype(np.float32)
    if not np.isfinite(x32).all():
        raise ParameterError(
            f"The UCR file {where} has missing or infinite values (or values beyond float32's "
            "range), which medrobust does not support."
        )
    canonical = [_canonical_label(lab) for lab in labels]
    if not all(canonical):
        raise CorruptDataError(
            f"The UCR file {where} has a blank label on data row {canonical.index('') + 1}."
        )
    return x32, np.array(canonical, dtype=object)


def _parse_label_first(
    text: str, suffix: str, where: str
) -> tuple[list[list[list[str]]], list[str]]:
    rows: list[list[list[str]]] = []
    labels: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped:
            continue
        tokens = stripped.split("\t") if suffix == ".tsv" else stripped.split()
        tokens = [t.strip() for t in tokens]
        if len(tokens) < 2:
            raise CorruptDataError(
                f"The UCR file {where} line {number} has no values after the label."
            )
        labels.append(tokens[0])
        rows.append([[_missing_to_nan(t) for t in tokens[1:]]])
    return rows, labels


def _parse_headed(text: str, suffix: str, where: str) -> tuple[list[list[list[str]]], list[str]]:
    rows: list[list[list[str]]] = []
    labels: list[str] = []
    comment = "#" if suffix == ".ts" else "%"
    in_data = False
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith(comment):
            continue
        if not in_data:
            if stripped.lower().startswith("@data"):
                in_data = True
            elif not stripped.startswith("@"):
                raise CorruptDataError(
                    f"The UCR file {where} line {number} is neither a header nor data."
                )
            continue
        if suffix == ".ts":
            *dims, label = stripped.split(":")
            values = [[_missing_to_nan(v) for v in dim.split(",")] for dim in dims]
        else:
            *tokens, label = stripped.split(",")
            values = [[_missing_to_nan(v) for v in tokens]]
        if not values or not values[0] or values[0] == [""]:
            raise CorruptDataError(f"The UCR file {where} line {number} has no values.")
        labels.append(label)
        rows.append(values)
    if not in_data:
        raise CorruptDataError(f"The UCR file {where} has no @data section (truncated?).")
    return rows, labels


def _missing_to_nan(token: str) -> str:
    token = token.strip()
    return "nan" if token in ("?", "") else token
