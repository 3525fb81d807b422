"""The Task: what is evaluated — a dataset with its splits, modality, classes and positive class."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medrobust.errors import ParameterError
from medrobust.types import UNBOUNDED, Domain, Modality, TaskKind


@dataclass(frozen=True)
class Split:
    """One split of a task.

    Attributes:
        x: inputs. Float arrays for images (N, C, H, W), ECG beats (N, 1, T) and tabular data
            (N, F); for text, an object array of N strings.
        y: integer class labels, shape (N,).
        groups: optional group id per example (the patient record for MIT-BIH), shape (N,).
    """

    x: np.ndarray
    y: np.ndarray
    groups: np.ndarray | None = None

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ParameterError(
                f"A Split needs as many inputs as labels. Got {len(self.x)} inputs and "
                f"{len(self.y)} labels instead."
            )
        if self.groups is not None and len(self.groups) != len(self.y):
            raise ParameterError("A Split's groups must have one entry per example.")

    def __len__(self) -> int:
        return len(self.y)

    def class_counts(self, num_classes: int) -> list[int]:
        """Number of examples of each class."""
        return [int(c) for c in np.bincount(self.y.astype(np.int64), minlength=num_classes)]


@dataclass(frozen=True)
class Task:
    """A dataset ready for training and evaluation.

    Attributes:
        name: registry name, e.g. ``"breastmnist"``.
        modality: image, ecg, text or tabular.
        kind: classification or anomaly detection (for anomaly detection, class 0 is normal and
            the training split holds normal examples only).
        class_names: one name per label value.
        positive_class: the label that counts as positive (disease) for sensitivity and FNR.
            BreastMNIST's label 0 is *malignant*, so its positive class is 0.
        domain: the valid input range (images [0, 1]).
        train, val, test: the splits.
        description: one line on origin and preprocessing.
        metadata: free-form facts (split policy, normalisation, source files).
    """

    name: str
    modality: Modality
    kind: TaskKind
    class_names: tuple[str, ...]
    positive_class: int
    domain: Domain
    train: Split
    val: Split
    test: Split
    description: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 <= self.positive_class < len(self.class_names):
            raise ParameterError(
                f"The positive class of task {self.name!r} must be a label in "
                f"[0, {len(self.class_names) - 1}]. Got {self.positive_class} instead."
            )

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input (empty for text)."""
        return tuple(self.train.x.shape[1:]) if self.modality is not Modality.TEXT else ()

    def splits(self) -> dict[str, Split]:
        """The three splits by name."""
        return {"train": self.train, "val": self.val, "test": self.test}


@dataclass(frozen=True)
class TaskSpec:
    """How to build a task: its files are known before anything is loaded.

    Attributes:
        name: the task's registry name.
        modality: its modality.
        kind: classification or anomaly detection.
        files: names of the data files it needs (keys of the file catalogue).
        load: ``load(seed) -> Task``; the seed only matters for tasks that re-split.
        resplits: whether the seed changes the split (True where no official split exists).
        summary: one line for ``medrobust tasks``.
        domain: the valid input range, known before loading (so budgets can be checked early).
        harmful_targets: for targeted attacks, the clinically harmful misreading of each class
            that has one (true label -> label the attacker wants), e.g. malignant -> benign.
    """

    name: str
    modality: Modality
    kind: TaskKind
    files: Sequence[str]
    load: Callable[[int], Task]
    resplits: bool
    summary: str
    domain: Domain = UNBOUNDED
    harmful_targets: Mapping[int, int] = field(default_factory=dict)
