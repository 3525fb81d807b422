"""The Medical Abstracts text-classification task (Schopf, Braun and Matthes, 2022).

Only the official test file (``medical_tc_test.csv``, 2,888 labelled abstracts) has a known
checksum (the official train file publishes none), so the task re-splits it: 70/10/20 into
train/val/test, stratified per class and seeded. Labels 1..5 become 0..4; class names come from
``medical_tc_labels.csv`` (neoplasms, digestive system diseases, nervous system diseases,
cardiovascular diseases, general pathological conditions). Inputs are an object array of ``str``
(the abstract with surrounding whitespace stripped); the model works on token ids, so the
domain is unbounded. Positive class: neoplasms (0).

The CSV files are read with the :mod:`csv` module (quoted, multi-line fields), strictly as UTF-8:
a file that is not UTF-8 or not in the expected layout raises
:class:`~medrobust.errors.CorruptDataError`.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from medrobust.data.catalogue import ABSTRACTS_LABELS, ABSTRACTS_TEST
from medrobust.data.files import describe, fetch_all
from medrobust.data.splits import check_seed, stratified_split
from medrobust.data.task import Split, Task, TaskSpec
from medrobust.errors import CorruptDataError
from medrobust.types import UNBOUNDED, Modality, TaskKind

FRACTIONS = (0.7, 0.1, 0.2)
POSITIVE_CLASS = 0


def abstracts_spec() -> TaskSpec:
    """The TaskSpec of ``medical_abstracts``."""
    return TaskSpec(
        name="medical_abstracts",
        modality=Modality.TEXT,
        kind=TaskKind.CLASSIFICATION,
        files=(ABSTRACTS_TEST.path, ABSTRACTS_LABELS.path),
        load=load_abstracts,
        resplits=True,
        summary="Medical abstracts, 5 disease classes, seeded stratified 70/10/20 split",
    )


def load_abstracts(seed: int = 0) -> Task:
    """Load the Medical Abstracts task.

    Args:
        seed: seed of the stratified 70/10/20 split.

    Raises:
        DataNotFoundError, ChecksumError: a file cannot be had or is wrong.
        CorruptDataError: a file is not UTF-8 or not in the expected layout.
    """
    seed = check_seed(seed)
    paths = fetch_all([ABSTRACTS_TEST, ABSTRACTS_LABELS])
    test_path = paths[ABSTRACTS_TEST.path]
    labels_path = paths[ABSTRACTS_LABELS.path]
    names = read_label_names(labels_path)
    texts, raw = read_abstracts(test_path)
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise CorruptDataError(
            f"The file {test_path} has labels {unknown} that {labels_path} does not name."
        )
    order = sorted(names)
    y = np.array([order.index(label) for label in raw], dtype=np.int64)
    x = np.empty(len(texts), dtype=object)
    x[:] = texts
    parts = stratified_split(y, FRACTIONS, seed, priority=(0, 2, 1))
    splits = [Split(x=x[i], y=y[i]) for i in parts]
    class_names = tuple(names[label] for label in order)
    return Task(
        name="medical_abstracts",
        modality=Modality.TEXT,
        kind=TaskKind.CLASSIFICATION,
        class_names=class_names,
        positive_class=POSITIVE_CLASS,
        domain=UNBOUNDED,
        train=splits[0],
        val=splits[1],
        test=splits[2],
        description=(
            "Medical Abstracts TC corpus, official test file (2,888 abstracts, 5 classes), "
            "re-split 70/10/20."
        ),
        metadata={
            "source_files": [
                describe(ABSTRACTS_TEST, test_path),
                describe(ABSTRACTS_LABELS, labels_path),
            ],
            "verified": True,
            "split_policy": (
                "official test file re-split 70/10/20 into train/val/test, stratified, seeded"
            ),
            "seed": seed,
            "normalisation": "text with surrounding whitespace stripped; labels 1..5 -> 0..4",
            "positive_class_reason": "neoplasms",
            "class_counts": {
                n: s.class_counts(len(class_names))
                for n, s in zip(("train", "val", "test"), splits, strict=True)
            },
        },
    )


def _read_csv(path: Path, header: tuple[str, str]) -> list[tuple[int, list[str]]]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise CorruptDataError(
            f"The file {path} is not UTF-8 text ({err.reason} at byte {err.start}); replace it "
            "with the official file."
        ) from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[tuple[int, list[str]]] = []
    try:
        first = next(reader, None)
        if first is None or tuple(c.strip() for c in first) != header:
            raise CorruptDataError(
                f"The file {path} must start with the header {','.join(header)}. Got {first!r}."
            )
        for row in reader:
            if row:
                rows.append((reader.line_num, row))
    except csv.Error as err:
        raise CorruptDataError(
            f"The file {path} is not valid CSV near line {reader.line_num}: {err}."
        ) from None
    return rows


def _label(path: Path, line: int, row: list[str]) -> int:
    if len(row) != 2:
        raise CorruptDataError(
            f"The file {path} line {line} has {len(row)} fields, expected 2 (truncated?)."
        )
    try:
        return int(row[0].strip())
    except ValueError:
        raise CorruptDataError(
            f"The file {path} line {line} has a non-integer label {row[0]!r}."
        ) from None


def read_label_names(path: Path) -> dict[int, str]:
    """Read ``medical_tc_labels.csv``: ``{label: name}``."""
    names = {}
    for line, row in _read_csv(path, ("condition_label", "condition_name")):
        names[_label(path, line, row)] = row[1].strip()
    if not names:
        raise CorruptDataError(f"The file {path} names no labels.")
    return names


def read_abstracts(path: Path) -> tuple[list[str], list[int]]:
    """Read ``medical_tc_test.csv``: the abstracts and their labels (1..5)."""
    texts: list[str] = []
    labels: list[int] = []
    for line, row in _read_csv(path, ("condition_label", "medical_abstract")):
        labels.append(_label(path, line, row))
        text = row[1].strip()
        if not text:
            raise CorruptDataError(f"The file {path} line {line} has an empty abstract.")
        texts.append(text)
    if not texts:
        raise CorruptDataError(f"The file {path} holds no abstracts.")
    return texts, labels
