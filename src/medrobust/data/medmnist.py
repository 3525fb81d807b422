"""MedMNIST tasks: BreastMNIST, PneumoniaMNIST and any 2D subset as ``medmnist:<subset>``.

Each task uses the official split stored in the subset's ``.npz`` (keys ``train_images``,
``val_images``, ``test_images``, ``train_labels``, ``val_labels``, ``test_labels``); the seed
does not change it. Images are ``uint8`` grey (N, H, W) or RGB (N, H, W, 3); they become float32
(N, C, H, W) scaled to [0, 1] by dividing by 255. Labels (N, 1) become int64 (N,).

Positive class: BreastMNIST's label 0 is *malignant*, so its positive class is 0;
PneumoniaMNIST's is 1 (pneumonia). For other subsets the positive class is 1 when the task is
binary and 0 otherwise, and class names come from the official MedMNIST label names
(``"class <i>"`` for a subset medrobust does not know). Multi-label subsets (ChestMNIST) and the
3D subsets are not supported.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from medrobust.data._medmnist_info import MEDMNIST_2D, MEDMNIST_3D
from medrobust.data.catalogue import medmnist_file
from medrobust.data.files import describe, fetch
from medrobust.data.npzfile import NpzArchive
from medrobust.data.task import Split, Task, TaskSpec
from medrobust.errors import CorruptDataError, ParameterError
from medrobust.types import UNIT_INTERVAL, Modality, TaskKind

_SPLITS = ("train", "val", "test")
_POSITIVE = {"breastmnist": 0, "pneumoniamnist": 1}
# A subset medrobust does not know takes its class count from its labels; this bounds it.
MAX_CLASSES = 10_000


def subset_base(stem: str) -> str:
    """``"pathmnist_64"`` -> ``"pathmnist"``."""
    base, _, size = stem.rpartition("_")
    return base if base and size.isdigit() else stem


def check_supported(stem: str, task_name: str) -> None:
    """Raise ParameterError for subsets medrobust cannot turn into a task (multi-label, 3D)."""
    base = subset_base(stem)
    info = MEDMNIST_2D.get(base)
    if info is not None and info.multi_label:
        raise ParameterError(
            f"The task {task_name!r} is multi-label ({len(info.labels)} binary labels per image); "
            "medrobust supports single-label classification only."
        )
    if base in MEDMNIST_3D:
        raise ParameterError(
            f"The task {task_name!r} holds 3D volumes; medrobust supports the 2D MedMNIST subsets "
            f"only ({', '.join(sorted(MEDMNIST_2D))})."
        )


def medmnist_spec(stem: str, task_name: str, summary: str = "") -> TaskSpec:
    """The TaskSpec of the subset stored as ``medmnist/<stem>.npz``."""
    check_supported(stem, task_name)
    file = medmnist_file(stem)
    return TaskSpec(
        name=task_name,
        modality=Modality.IMAGE,
        kind=TaskKind.CLASSIFICATION,
        files=(file.path,),
        load=lambda seed: load_medmnist(stem, task_name),
        resplits=False,
        summary=summary or f"MedMNIST {stem} images, official train/val/test split",
        domain=UNIT_INTERVAL,
    )


def load_medmnist(stem: str, task_name: str) -> Task:
    """Load ``medmnist/<stem>.npz`` as a task with the official split.

    Args:
        stem: file stem, e.g. ``"breastmnist"`` or ``"pathmnist_64"``.
        task_name: the name the task is reported under.

    Raises:
        DataNotFoundError, ChecksumError: the file cannot be had or is wrong.
        CorruptDataError: the file is truncated or does not hold the official keys and layout.
        ParameterError: the file holds multi-label or 3D data.
    """
    check_supported(stem, task_name)
    file = medmnist_file(stem)
    path = fetch(file)
    images, labels = _read_npz(path, file.path, task_name)
    base = subset_base(stem)
    info = MEDMNIST_2D.get(base)
    highest = max(int(y.max()) if y.size else -1 for y in labels.values())
    if info is not None:
        class_names = info.labels
        if highest >= len(class_names):
            raise CorruptDataError(
                f"The file {path} ({file.path}) has label {highest}, but {base} has only "
                f"{len(class_names)} classes."
            )
    elif highest >= MAX_CLASSES:
        raise CorruptDataError(
            f"The file {path} ({file.path}) has label {highest}; labels are 0 .. K-1 for "
            f"K <= {MAX_CLASSES} classes."
        )
    else:
        class_names = tuple(f"class {i}" for i in range(max(highest + 1, 2)))
    num_classes = len(class_names)
    positive = _POSITIVE.get(base, 1 if num_classes == 2 else 0)
    splits = {name: Split(x=images[name], y=labels[name]) for name in _SPLITS}
    channels = splits["train"].x.shape[1]
    size = splits["train"].x.shape[2]
    counts = {name: splits[name].class_counts(num_classes) for name in _SPLITS}
    return Task(
        name=task_name,
        modality=Modality.IMAGE,
        kind=TaskKind.CLASSIFICATION,
        class_names=class_names,
        positive_class=positive,
        domain=UNIT_INTERVAL,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        description=(
            f"MedMNIST {base} ({channels}x{size}x{size}), official split, pixels scaled to [0, 1]."
        ),
        metadata={
            "source_files": [describe(file, path)],
            "verified": file.verifiable,
            "split_policy": "official MedMNIST train/val/test split (seed ignored)",
            "normalisation": "uint8 pixels / 255 -> float32 in [0, 1]; layout (N, C, H, W)",
            "positive_class_reason": (
                "label 0 is malignant"
                if base == "breastmnist"
                else "binary task: label 1"
                if num_classes == 2
                else "multi-class task: label 0 by convention (metrics also do one-vs-rest)"
            ),
            "class_counts": counts,
        },
    )


def _read_npz(
    path: Path, relative: str, task_name: str
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    def corrupt(reason: str) -> CorruptDataError:
        return CorruptDataError(
            f"The MedMNIST file {path} ({relative}) is not a valid MedMNIST .npz: {reason}. "
            "Replace it with the official file."
        )

    images: dict[str, np.ndarray] = {}
    labels: dict[str, np.ndarray] = {}
    with NpzArchive(path, corrupt) as npz:
        needed = {f"{s}_{kind}" for s in _SPLITS for kind in ("images", "labels")}
        if not needed <= npz.keys:
            raise corrupt(f"missing keys {sorted(needed - npz.keys)}")
        for split in _SPLITS:
            raw_x = npz.read(f"{split}_images")
            raw_y = npz.read(f"{split}_labels")
            images[split] = _to_nchw(raw_x, split, corrupt, task_name)
            labels[split] = _to_labels(raw_y, split, len(raw_x), corrupt, task_name)
    shapes = {images[s].shape[1:] for s in _SPLITS}
    if len(shapes) != 1:
        raise corrupt(f"the splits have different image shapes {sorted(shapes)}")
    if len(np.unique(labels["train"])) < 2:
        raise corrupt("the train split holds fewer than two classes")
    return images, labels


def _to_nchw(
    raw: np.ndarray, split: str, corrupt: Callable[[str], CorruptDataError], task_name: str
) -> np.ndarray:
    if raw.dtype != np.uint8:
        raise corrupt(f"{split}_images has dtype {raw.dtype}, expected uint8")
    if raw.ndim == 3:
        x = raw[:, None, :, :]
    elif raw.ndim == 4 and raw.shape[-1] == 3:
        x = raw.transpose(0, 3, 1, 2)
    elif raw.ndim == 4:
        raise ParameterError(
            f"The task {task_name!r} holds 3D volumes {raw.shape[1:]}; medrobust supports 2D "
            "grey (N, H, W) and RGB (N, H, W, 3) images only."
        )
    else:
        raise corrupt(f"{split}_images has shape {raw.shape}, expected (N, H, W) or (N, H, W, 3)")
    if x.size == 0:
        raise corrupt(f"{split}_images has shape {raw.shape}, with no images or no pixels")
    return np.ascontiguousarray(x, dtype=np.float32) / np.float32(255.0)


def _to_labels(
    raw: np.ndarray,
    split: str,
    n: int,
    corrupt: Callable[[str], CorruptDataError],
    task_name: str,
) -> np.ndarray:
    if raw.ndim == 2 and raw.shape[1] > 1:
        raise ParameterError(
            f"The task {task_name!r} is multi-label ({raw.shape[1]} labels per image); "
            "medrobust supports single-label classification only."
        )
    if raw.ndim not in (1, 2) or len(raw) != n or raw.size != n:
        raise corrupt(f"{split}_labels has shape {raw.shape} for {n} images")
    if not np.issubdtype(raw.dtype, np.integer):
        raise corrupt(f"{split}_labels has dtype {raw.dtype}, expected integers")
    if raw.size and int(raw.min()) < 0:
        raise corrupt(f"{split}_labels has a negative label {int(raw.min())}")
    if raw.size and int(raw.max()) >= MAX_CLASSES:
        raise corrupt(f"{split}_labels has label {int(raw.max())}, expected 0 .. K-1")
    return raw.reshape(-1).astype(np.int64)
