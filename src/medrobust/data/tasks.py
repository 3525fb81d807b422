"""The task registry, generic task names, and the up-front check that every file is there.

Registered tasks: ``breastmnist``, ``pneumoniamnist``, ``mitbih``, ``ecg5000``,
``ecg5000_anomaly``, ``medical_abstracts``, ``wisconsin``. Generic names:

- ``medmnist:<subset>`` loads ``medmnist/<subset>.npz``, any 2D MedMNIST subset and size variant
  (``medmnist:pathmnist_64`` loads ``medmnist/pathmnist_64.npz``);
- ``ucr:<Name>`` loads a UCR/UEA dataset from ``<name lower>/<Name>_TRAIN.<fmt>`` (and
  ``_TEST``); use the archive's spelling, e.g. ``ucr:ECG200``;
- ``file:<path>.npz`` or ``file:<path>.csv`` (with options such as ``?classes=a,b&positive=1``)
  loads a user's own data file (:mod:`medrobust.data.userfile`).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import replace

from medrobust.data._medmnist_info import MEDMNIST_2D
from medrobust.data.catalogue import (
    canonical_ucr_name,
    lookup,
    valid_medmnist_stem,
    valid_ucr_name,
)
from medrobust.data.files import DataFile, FetchSession, fetch_all
from medrobust.data.medmnist import medmnist_spec
from medrobust.data.mitbih import mitbih_spec
from medrobust.data.splits import check_seed
from medrobust.data.tabular import wisconsin_spec
from medrobust.data.task import Task, TaskSpec
from medrobust.data.text import abstracts_spec
from medrobust.data.ucr import ucr_spec
from medrobust.data.userfile import file_task_spec, is_file_task
from medrobust.errors import UnknownNameError
from medrobust.registry import Registry

TASKS: Registry[TaskSpec] = Registry("task")

# The misreading a targeted attacker wants, per task: true label -> label it should be read as.
# Each sends a sick patient home: a missed cancer, pneumonia or arrhythmia.
HARMFUL_TARGETS: dict[str, dict[int, int]] = {
    "breastmnist": {0: 1},  # malignant -> normal/benign
    "pneumoniamnist": {1: 0},  # pneumonia -> normal
    "mitbih": {1: 0, 2: 0, 3: 0},  # S, V, F ectopic beats -> N
    "ecg5000": {1: 0, 2: 0, 3: 0, 4: 0},  # abnormal beats -> normal
    "ecg5000_anomaly": {1: 0},  # abnormal -> normal: a missed detection
    "wisconsin": {0: 1},  # malignant -> benign
}
GENERIC_PREFIXES = ("medmnist:", "ucr:", "file:")

for _spec in (
    medmnist_spec(
        "breastmnist",
        "breastmnist",
        "BreastMNIST ultrasound, malignant (positive, label 0) vs normal/benign, official split",
    ),
    medmnist_spec(
        "pneumoniamnist",
        "pneumoniamnist",
        "PneumoniaMNIST chest X-rays, normal vs pneumonia (positive), official split",
    ),
    mitbih_spec(),
    ucr_spec("ECG5000", "ecg5000", summary="ECG5000 beats, 5 classes, seeded stratified split"),
    ucr_spec(
        "ECG5000",
        "ecg5000_anomaly",
        anomaly=True,
        summary="ECG5000 anomaly detection: normal vs abnormal beats, normal-only training",
    ),
    abstracts_spec(),
    wisconsin_spec(),
):
    TASKS.add(_spec.name, replace(_spec, harmful_targets=HARMFUL_TARGETS.get(_spec.name, {})))
del _spec


def task_names() -> list[str]:
    """The registered (non-generic) task names, sorted."""
    return TASKS.names()


def get_task_spec(name: str) -> TaskSpec:
    """The TaskSpec called ``name``: a registered task or a generic ``medmnist:``/``ucr:``/
    ``file:`` name.

    Raises:
        UnknownNameError: the name is neither registered nor a valid generic name; the message
            suggests close matches.
        ParameterError: a MedMNIST subset that cannot be a task (multi-label, 3D).
        ConfigError, CorruptDataError: a ``file:`` name that is malformed or names a missing or
            unreadable file.
    """
    text = str(name).strip()
    if is_file_task(text):
        return file_task_spec(text)
    prefix, sep, rest = text.partition(":")
    if sep and prefix.lower() == "medmnist":
        stem = rest.strip().lower()
        if not valid_medmnist_stem(stem):
            raise UnknownNameError(
                f"Unknown task {name!r}: 'medmnist:<subset>' needs an official subset name such "
                f"as {', '.join(sorted(MEDMNIST_2D)[:4])}, ... (optionally with a size, "
                "'pathmnist_64')."
            )
        return medmnist_spec(stem, f"medmnist:{stem}")
    if sep and prefix.lower() == "ucr":
        dataset = rest.strip()
        if not valid_ucr_name(dataset):
            raise UnknownNameError(
                f"Unknown task {name!r}: 'ucr:<Name>' needs a UCR dataset name such as 'ECG200' "
                "(letters, digits, '_' and '-')."
            )
        dataset = canonical_ucr_name(dataset)
        return ucr_spec(dataset, f"ucr:{dataset}")
    if text in TASKS:
        return TASKS.get(text)
    known = TASKS.names()
    close = difflib.get_close_matches(text.lower(), known, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownNameError(
        f"Unknown task {name!r}.{hint} Known: {', '.join(known)}; or a generic name "
        "'medmnist:<subset>', 'ucr:<Name>' or 'file:<path>.npz|.csv'."
    )


def load_task(name: str, seed: int = 0) -> Task:
    """Load a task; the same name and seed give identical arrays.

    Args:
        name: a registered task or a generic ``medmnist:<subset>`` / ``ucr:<Name>``.
        seed: seed of the split; it matters only for tasks that re-split (``TaskSpec.resplits``).

    Raises:
        UnknownNameError: the name is unknown.
        ParameterError: the seed is not a non-negative integer, or the data are unsupported.
        DataNotFoundError: files are missing (the message says which, from where, and where to
            put them).
        ChecksumError, CorruptDataError: a file is wrong or unreadable.
    """
    spec = get_task_spec(name)
    return spec.load(check_seed(seed))


def required_files(names: Sequence[str]) -> list[DataFile]:
    """Every data file the named tasks need, without duplicates, in task order.

    Args:
        names: task names (registered or generic).

    Raises:
        UnknownNameError: a name is unknown.
    """
    if isinstance(names, str):
        names = [names]
    seen: dict[str, DataFile] = {}
    for name in names:
        for key in get_task_spec(name).files:
            if key not in seen:
                seen[key] = lookup(key)
    return list(seen.values())


def ensure_files(names: Sequence[str]) -> None:
    """Locate or download every file the named tasks need, before any compute.

    Files are verified against their checksums but not loaded. Unreachable hosts are tried once
    per call, with a short timeout (``MEDROBUST_DOWNLOAD_TIMEOUT``, 10 s).

    Args:
        names: task names (registered or generic).

    Raises:
        UnknownNameError: a name is unknown.
        DataNotFoundError: one error listing every file that could not be had, its URL, why, and
            where to put it.
        ChecksumError: files whose checksum is wrong.
    """
    files = required_files(names)
    fetch_all(files, FetchSession())
