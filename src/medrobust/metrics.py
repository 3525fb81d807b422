"""Clean and adversarial metrics, with the clinical error rates for a declared positive class.

Models may output one logit (binary, positive logit = class 1) or one logit per class; the
helpers here turn either into class predictions and class-1 / per-class scores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from medrobust.errors import InputError


def predictions(logits: torch.Tensor) -> torch.Tensor:
    """Class predictions from logits of shape (N, 1) (binary) or (N, K)."""
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).long()
    return logits.argmax(dim=1)


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities, shape (N, K) with K >= 2 even for a one-logit binary model."""
    if logits.shape[1] == 1:
        p1 = torch.sigmoid(logits[:, 0])
        return torch.stack([1 - p1, p1], dim=1)
    return torch.softmax(logits, dim=1)


@dataclass(frozen=True)
class ClinicalMetrics:
    """Accuracy and the error rates a clinician asks for.

    Sensitivity, specificity, FNR and FPR are for the declared positive class against all others.
    ``auc`` is one-vs-rest macro AUC for multi-class tasks; NaN when a class is absent.
    """

    n: int
    accuracy: float
    balanced_accuracy: float
    sensitivity: float
    specificity: float
    fnr: float
    fpr: float
    auc: float

    def as_dict(self) -> dict[str, float]:
        """Plain dict (for storage)."""
        return {k: float(v) for k, v in asdict(self).items()}


def _ratio(num: int, den: int) -> float:
    return num / den if den else math.nan


def clinical_metrics(
    y: np.ndarray,
    pred: np.ndarray,
    *,
    positive_class: int,
    num_classes: int,
    scores: np.ndarray | None = None,
) -> ClinicalMetrics:
    """Metrics of predictions ``pred`` against labels ``y``.

    Args:
        y: true labels, shape (N,).
        pred: predicted labels, shape (N,).
        positive_class: the label that counts as disease for sensitivity/FNR.
        num_classes: number of classes.
        scores: optional class probabilities (N, K) for the AUC.
    """
    y = np.asarray(y, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    n = len(y)
    recalls = [
        _ratio(int(((pred == c) & (y == c)).sum()), int((y == c).sum())) for c in range(num_classes)
    ]
    present = [r for r in recalls if not math.isnan(r)]
    is_pos, said_pos = y == positive_class, pred == positive_class
    sensitivity = _ratio(int((is_pos & said_pos).sum()), int(is_pos.sum()))
    specificity = _ratio(int((~is_pos & ~said_pos).sum()), int((~is_pos).sum()))
    auc = math.nan
    if scores is not None and n and len(np.unique(y)) == num_classes:
        if num_classes == 2:
            auc = float(roc_auc_score(y, scores[:, 1]))
        else:
            auc = float(
                roc_auc_score(y, scores, multi_class="ovr", labels=list(range(num_classes)))
            )
    return ClinicalMetrics(
        n=n,
        accuracy=_ratio(int((y == pred).sum()), n),
        balanced_accuracy=float(np.mean(present)) if present else math.nan,
        sensitivity=sensitivity,
        specificity=specificity,
        fnr=1 - sensitivity,
        fpr=1 - specificity,
        auc=auc,
    )


def success_rate(y: np.ndarray, clean_pred: np.ndarray, adv_pred: np.ndarray) -> float:
    """Fraction of originally correct examples that the attack made wrong (NaN if none correct)."""
    correct = np.asarray(clean_pred) == np.asarray(y)
    return _ratio(
        int((correct & (np.asarray(adv_pred) != np.asarray(y))).sum()), int(correct.sum())
    )


def target_success_rate(
    y: np.ndarray, clean_pred: np.ndarray, adv_pred: np.ndarray, target: np.ndarray
) -> float:
    """Fraction of originally correct examples that the attack sent to their target class."""
    correct = np.asarray(clean_pred) == np.asarray(y)
    reached = np.asarray(adv_pred) == np.asarray(target)
    return _ratio(int((correct & reached).sum()), int(correct.sum()))


def perturbation_norms(x: torch.Tensor, x_adv: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-example L-inf, L2 and L0 norms of ``x_adv - x``."""
    delta = (x_adv.detach() - x.detach()).flatten(1).double().cpu()
    return {
        "linf": delta.abs().amax(dim=1).numpy(),
        "l2": delta.norm(dim=1).numpy(),
        "l0": (delta != 0).sum(dim=1).double().numpy(),
    }


def certified_accuracy(
    radii: torch.Tensor | np.ndarray | Sequence[float],
    correct: torch.Tensor | np.ndarray | Sequence[bool],
    radii_grid: Sequence[float] | torch.Tensor | np.ndarray,
) -> np.ndarray:
    """Fraction of examples both correctly classified and certified at radius ``>= r``, for each
    ``r`` of ``radii_grid``.

    Shape:
        radii (N,), correct (N,), radii_grid (R,) -> (R,)
    """
    radius = np.asarray(torch.as_tensor(radii).detach().cpu(), dtype=np.float64)
    right = np.asarray(torch.as_tensor(correct).detach().cpu()).astype(bool)
    grid = np.asarray(radii_grid, dtype=np.float64)
    if radius.ndim != 1 or right.shape != radius.shape or len(radius) == 0:
        raise InputError(
            "The 'radii' and 'correct' of certified_accuracy must be non-empty 1-D arrays of the "
            f"same length. Got shapes {radius.shape} and {right.shape} instead."
        )
    if grid.ndim != 1 or np.isnan(grid).any():
        raise InputError(
            "The 'radii_grid' of certified_accuracy must be a 1-D sequence of numbers. "
            f"Got shape {grid.shape} instead."
        )
    return np.asarray([(right & (radius >= r)).mean() for r in grid], dtype=np.float64)
