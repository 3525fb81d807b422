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


def _check_logits(owner: str, logits: object) -> torch.Tensor:
    if (
        not isinstance(logits, torch.Tensor)
        or logits.dim() != 2
        or logits.shape[1] == 0
        or not logits.is_floating_point()
    ):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else None
        raise InputError(
            f"{owner} needs logits as a floating-point tensor of shape (N, K) with K >= 1. "
            f"Got {type(logits).__name__} of shape {shape} instead."
        )
    return logits


def predictions(logits: torch.Tensor) -> torch.Tensor:
    """Class predictions from logits of shape (N, 1) (binary) or (N, K).

    Raises:
        InputError: ``logits`` is not a floating-point tensor of shape (N, K) with K >= 1.
    """
    logits = _check_logits("predictions", logits)
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).long()
    return logits.argmax(dim=1)


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities, shape (N, K) with K >= 2 even for a one-logit binary model.

    Raises:
        InputError: ``logits`` is not a floating-point tensor of shape (N, K) with K >= 1.
    """
    logits = _check_logits("probabilities", logits)
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
    """Per-example L-inf, L2 and L0 norms of ``x_adv - x``.

    Shape:
        x (N, ...), x_adv (N, ...) of the same shape, on one device -> (N,) float64 arrays (a
        1-D x holds one number per example)

    Raises:
        InputError: ``x`` or ``x_adv`` is not a dense tensor of real numbers (not bool) with a
            batch dimension holding values (meta tensors hold none), or their shapes or devices
            differ.
    """
    for name, value in (("x", x), ("x_adv", x_adv)):
        if (
            not isinstance(value, torch.Tensor)
            or value.dim() < 1
            or value.is_complex()
            or value.dtype == torch.bool
            or value.is_meta
            or value.layout != torch.strided
        ):
            what = (
                f"{value.dtype} {value.layout} of shape {tuple(value.shape)} on {value.device}"
                if isinstance(value, torch.Tensor)
                else type(value).__name__
            )
            raise InputError(
                f"perturbation_norms needs {name} as a dense real tensor of shape (N, ...). "
                f"Got {what} instead."
            )
    if x.shape != x_adv.shape or x.device != x_adv.device:
        raise InputError(
            f"perturbation_norms needs x and x_adv of the same shape on one device. Got "
            f"{tuple(x.shape)} on {x.device} and {tuple(x_adv.shape)} on {x_adv.device} instead."
        )
    delta = x_adv.detach() - x.detach()
    delta = (delta.flatten(1) if delta.dim() > 1 else delta[:, None]).double().cpu()
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

    Raises:
        InputError: the arguments are not numbers (booleans for ``correct``), ``radii`` and
            ``correct`` are not non-empty 1-D arrays of one length, a radius is NaN or negative,
            or ``radii_grid`` is not a 1-D sequence of numbers without NaN.
    """
    try:
        radius = np.asarray(torch.as_tensor(radii).detach().cpu(), dtype=np.float64)
        truth = np.asarray(torch.as_tensor(correct).detach().cpu())
        grid = np.asarray(radii_grid, dtype=np.float64)
    except (TypeError, ValueError, RuntimeError, NotImplementedError) as exc:
        raise InputError(
            "certified_accuracy needs numbers: radii and radii_grid of floats, correct of "
            f"booleans. Got {type(radii).__name__}, {type(correct).__name__} and "
            f"{type(radii_grid).__name__} ({exc})."
        ) from exc
    if truth.dtype != np.bool_ and not (
        np.issubdtype(truth.dtype, np.number) and np.isin(truth, (0, 1)).all()
    ):
        raise InputError(
            "The 'correct' of certified_accuracy must hold booleans (or 0 and 1). "
            f"Got dtype {truth.dtype} instead."
        )
    right = truth.astype(bool)
    if radius.ndim != 1 or right.shape != radius.shape or len(radius) == 0:
        raise InputError(
            "The 'radii' and 'correct' of certified_accuracy must be non-empty 1-D arrays of the "
            f"same length. Got shapes {radius.shape} and {right.shape} instead."
        )
    if np.isnan(radius).any() or (radius < 0).any():
        raise InputError(
            "The 'radii' of certified_accuracy must be radii >= 0 (inf allowed), not NaN. "
            f"Got min {np.nanmin(radius) if not np.isnan(radius).all() else 'NaN'} and "
            f"{int(np.isnan(radius).sum())} NaN instead."
        )
    if grid.ndim != 1 or np.isnan(grid).any():
        raise InputError(
            "The 'radii_grid' of certified_accuracy must be a 1-D sequence of numbers. "
            f"Got shape {grid.shape} instead."
        )
    return np.asarray([(right & (radius >= r)).mean() for r in grid], dtype=np.float64)


def finite_mean(values: np.ndarray) -> float:
    """Mean over the finite values (NaN when there are none, e.g. L2 of token changes)."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else math.nan
