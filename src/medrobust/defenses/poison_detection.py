"""Detecting and removing poisoned training samples from a trained model's penultimate layer.

Two detectors look at the representations a model trained on (possibly) poisoned data gives its
own training samples, class by class:

- :class:`SpectralSignature` (Tran, Li & Madry 2018, "Spectral signatures in backdoor attacks"):
  poisoned samples of a class leave a trace along the top singular vector of the class's centred
  representations, so each sample is scored by its squared projection on that vector and the
  highest ``removal_factor * expected_rate * n_class`` scores of each class are removed.
- :class:`ActivationClustering` (Chen et al. 2018, "Detecting backdoor attacks on deep neural
  networks by activation clustering"): the representations of each class are reduced to a few
  independent (or principal) components and split by k-means; a backdoor makes the poisoned
  samples a cluster of their own, which is flagged when it is small relative to the class.

The representation is the input of the model's last ``nn.Linear`` module
(:func:`penultimate_features`): every classifier of medrobust ends in a linear head, and its input
is the layer the papers use. :func:`detection_metrics` scores a detection against the known
poisoned rows (precision, recall, F1) and :func:`remove_and_retrain` trains a fresh model on the
rows that were not flagged, so that the accuracy and the backdoor's success after removal can be
measured. The detectors are registered in :data:`DETECTORS`.

Typical use::

    features = penultimate_features(model, x_train)
    detection = DETECTORS.get("spectral_signature")().detect(features, y_train.numpy(), seed=0)
    detection_metrics(detection.flagged, poisoned)  # when the poisoned rows are known
    clean_model, _ = remove_and_retrain(factory, x_train, y_train, x_val, y_val,
                                        detection.flagged, config=config, seed=0)

Shape:
    features (N, D) float, labels (N,) int -> flagged (N,) bool, scores (N,) float64
"""

from __future__ import annotations

import abc
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA, FastICA
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import silhouette_score
from torch import nn

from medrobust.errors import InputError, ParameterError
from medrobust.models.features import head_inputs, last_linear
from medrobust.registry import Registry
from medrobust.training import FitConfig, FitResult, fit
from medrobust.validation import check_number

logger = logging.getLogger(__name__)


def _is_real(value: object) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def _check_open_unit(owner: str, name: str, value: Any) -> float:
    if not _is_real(value) or not 0 < value < 1:
        raise ParameterError(
            f"The '{name}' parameter of {owner} must be a number in (0, 1). Got {value!r} instead."
        )
    return float(value)


@torch.no_grad()
def penultimate_features(
    model: nn.Module,
    x: torch.Tensor,
    *,
    batch_size: int = 512,
    layer: nn.Module | None = None,
) -> np.ndarray:
    """The penultimate representation of ``x``: the input of the model's last ``nn.Linear``.

    "Last" is the last ``nn.Linear`` in ``model.modules()`` order (registration order), which is
    the classification head of every medrobust model; pass ``layer`` to read the input of another
    module instead. The features are captured by a forward pre-hook, removed afterwards; the model
    runs in eval mode without gradients and is left in the mode it was found in. Where the layer
    sees more than one dimension per example (e.g. per time step), the input is flattened; where it
    is called several times in one forward pass, the last call counts.

    Args:
        model: the trained classifier.
        x: its inputs.
        batch_size: examples per forward pass.
        layer: the module whose input is the representation (default: the last ``nn.Linear``).

    Returns:
        float32 array of the representations, one row per example.

    Raises:
        InputError: the model has no ``nn.Linear`` (and no ``layer`` is given), or ``x`` is not
            a tensor.
        ParameterError: ``batch_size`` is not an integer >= 1.

    Shape:
        (N, ...) -> (N, D)
    """
    check_number("penultimate_features", "batch_size", batch_size, minimum=1, integer=True)
    if not isinstance(x, torch.Tensor):
        raise InputError(
            "The 'x' parameter of penultimate_features must be a torch.Tensor. "
            f"Got {type(x).__name__} instead."
        )
    target = layer if layer is not None else last_linear(model)
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    was_training = model.training
    chunks: list[torch.Tensor] = []
    model.eval()
    try:
        for i in range(0, len(x), batch_size):
            features = head_inputs(model, x[i : i + batch_size].to(device), target)
            chunks.append(features.float().cpu())
    finally:
        model.train(was_training)
    if not chunks:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(chunks).numpy()


@dataclass(frozen=True)
class ClassReport:
    """What a detector found in one class.

    Attributes:
        label: the class.
        count: its samples.
        flagged: how many of them were flagged as poisoned.
        threshold: the score at or above which a sample of the class is flagged (``inf`` when
            none is).
        cluster_sizes: activation clustering: the size of each cluster; ``()`` otherwise.
        silhouette: activation clustering: the silhouette score of the clustering (Chen et al.
            2018 read a high score as a sign of poisoning); NaN otherwise or when the class was
            too small to cluster.
    """

    label: int
    count: int
    flagged: int
    threshold: float
    cluster_sizes: tuple[int, ...] = ()
    silhouette: float = math.nan


@dataclass(frozen=True)
class Detection:
    """The result of a poison detector over a training set.

    Attributes:
        detector: the detector's registry name.
        flagged: True where a sample is judged poisoned.
        scores: per sample, higher is more suspicious; comparable within a class only. Samples of
            classes that were not analysed score 0.
        per_class: a :class:`ClassReport` per analysed class, in increasing label order.

    Shape:
        flagged (N,) bool, scores (N,) float64
    """

    detector: str
    flagged: np.ndarray
    scores: np.ndarray
    per_class: tuple[ClassReport, ...] = field(default=())

    def for_class(self, label: int) -> ClassReport:
        """The report of class ``label``.

        Raises:
            InputError: the class was not analysed.
        """
        for report in self.per_class:
            if report.label == label:
                return report
        analysed = [report.label for report in self.per_class]
        raise InputError(
            f"The 'label' parameter of Detection.for_class must be an analysed class "
            f"{analysed}. Got {label!r} instead."
        )


def _check_inputs(
    owner: str, features: Any, labels: Any, classes: Sequence[int] | None
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    feats = np.asarray(features)
    labs = np.asarray(labels)
    if feats.ndim != 2 or not np.issubdtype(feats.dtype, np.number):
        raise InputError(
            f"The 'features' parameter of {owner} must be a 2-D numeric array (N, D). "
            f"Got shape {feats.shape} and dtype {feats.dtype} instead."
        )
    if labs.ndim != 1 or not np.issubdtype(labs.dtype, np.integer):
        raise InputError(
            f"The 'labels' parameter of {owner} must be a 1-D integer array (N,). "
            f"Got shape {labs.shape} and dtype {labs.dtype} instead."
        )
    if len(labs) != len(feats):
        raise InputError(
            f"The 'labels' parameter of {owner} must have one label per row of 'features' "
            f"({len(feats)}). Got {len(labs)} instead."
        )
    feats = feats.astype(np.float64)
    if not np.isfinite(feats).all():
        bad = int((~np.isfinite(feats)).any(axis=1).sum())
        raise InputError(
            f"The 'features' parameter of {owner} must be finite. Got {bad} row(s) with NaN or "
            "infinite values instead."
        )
    present = sorted(int(c) for c in np.unique(labs))
    if classes is None:
        chosen = present
    else:
        chosen = sorted({int(c) for c in classes})
        missing = [c for c in chosen if c not in present]
        if missing or not chosen:
            raise InputError(
                f"The 'classes' parameter of {owner} must name classes present in 'labels' "
                f"{present}. Got {list(classes)!r} instead."
            )
    return feats, labs.astype(np.int64), chosen


class PoisonDetector(abc.ABC):
    """A detector of poisoned training samples from their representations.

    Hyperparameters are keyword-only in ``__init__``, validated there and stored unchanged, so
    ``repr`` and :meth:`params` identify the detector.
    """

    name: ClassVar[str]

    @abc.abstractmethod
    def params(self) -> dict[str, Any]:
        """The hyperparameters that identify this detector."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"

    def detect(
        self,
        features: np.ndarray,
        labels: np.ndarray,
        *,
        seed: int = 0,
        classes: Sequence[int] | None = None,
    ) -> Detection:
        """Flag the samples judged poisoned, class by class.

        Args:
            features: the representations of the training samples (:func:`penultimate_features`).
            labels: their (possibly poisoned) training labels.
            seed: seed of any randomness (the same inputs and seed give the same detection).
            classes: the classes to analyse (default: every class present); samples of other
                classes are never flagged.

        Raises:
            InputError: features not 2-D, numeric and finite; labels not 1-D integers of the same
                length; ``classes`` naming an absent class.

        Shape:
            features (N, D), labels (N,) -> flagged (N,) bool, scores (N,) float64
        """
        check_number(type(self).__name__, "seed", seed, minimum=0, integer=True)
        feats, labs, chosen = _check_inputs(
            f"{type(self).__name__}.detect", features, labels, classes
        )
        flagged = np.zeros(len(labs), dtype=bool)
        scores = np.zeros(len(labs), dtype=np.float64)
        reports = []
        for label in chosen:
            rows = np.flatnonzero(labs == label)
            class_flagged, class_scores, report = self._detect_class(
                feats[rows], label, seed=int(seed)
            )
            flagged[rows] = class_flagged
            scores[rows] = class_scores
            reports.append(report)
        return Detection(self.name, flagged, scores, tuple(reports))

    @abc.abstractmethod
    def _detect_class(
        self, features: np.ndarray, label: int, *, seed: int
    ) -> tuple[np.ndarray, np.ndarray, ClassReport]:
        """Flags, scores and report of one class's (validated, float64) features."""


class SpectralSignature(PoisonDetector):
    """Spectral signatures (Tran, Li & Madry 2018, "Spectral signatures in backdoor attacks").

    For each class, the representations are centred on the class mean and projected on their top
    right singular vector; a sample's score is its squared projection (its outlier score). The
    ``ceil(removal_factor * expected_rate * n_class)`` highest scores of each class are flagged
    (the paper removes 1.5 times the expected number of poisoned samples). A class of fewer than
    two samples has no direction and is not flagged. The method is deterministic: ``seed`` is
    accepted for the common interface only.

    Args:
        expected_rate: the expected share of poisoned samples in a class, in (0, 1).
        removal_factor: how many times the expected number to remove, > 0; with
            ``expected_rate`` it must flag less than the whole class
            (``removal_factor * expected_rate < 1``).

    Raises:
        ParameterError: a rate outside (0, 1), a factor <= 0, or a product >= 1.

    Shape:
        features (N, D), labels (N,) -> flagged (N,) bool, scores (N,) float64
    """

    name: ClassVar[str] = "spectral_signature"

    def __init__(self, *, expected_rate: float = 0.05, removal_factor: float = 1.5) -> None:
        _check_open_unit("SpectralSignature", "expected_rate", expected_rate)
        if not _is_real(removal_factor) or not 0 < removal_factor < math.inf:
            raise ParameterError(
                "The 'removal_factor' parameter of SpectralSignature must be a finite number > 0. "
                f"Got {removal_factor!r} instead."
            )
        if removal_factor * expected_rate >= 1:
            raise ParameterError(
                "The 'removal_factor' parameter of SpectralSignature times 'expected_rate' must "
                f"be < 1 (else every sample is removed). Got {removal_factor!r} * "
                f"{expected_rate!r} = {removal_factor * expected_rate!r} instead."
            )
        self.expected_rate = expected_rate
        self.removal_factor = removal_factor

    def params(self) -> dict[str, Any]:
        return {"expected_rate": self.expected_rate, "removal_factor": self.removal_factor}

    def _detect_class(
        self, features: np.ndarray, label: int, *, seed: int
    ) -> tuple[np.ndarray, np.ndarray, ClassReport]:
        del seed
        count = len(features)
        flagged = np.zeros(count, dtype=bool)
        if count < 2:
            return flagged, np.zeros(count), ClassReport(label, count, 0, math.inf)
        centred = features - features.mean(axis=0, keepdims=True)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        scores = (centred @ vt[0]) ** 2
        remove = min(count - 1, math.ceil(self.removal_factor * self.expected_rate * count))
        # A stable sort on the negated scores breaks ties by row order, deterministically.
        order = np.argsort(-scores, kind="stable")
        flagged[order[:remove]] = True
        threshold = float(scores[order[remove - 1]]) if remove else math.inf
        return flagged, scores, ClassReport(label, count, remove, threshold)


COLLAPSED = 1e-6  # relative spread below which a feature direction counts as collapsed


class ActivationClustering(PoisonDetector):
    """Activation clustering (Chen et al. 2018, "Detecting backdoor attacks on deep neural
    networks by activation clustering").

    For each class, the representations are reduced to ``n_components`` dimensions (FastICA, as
    in the paper, or PCA) and split into ``clusters`` clusters by k-means. Decision rule (the
    paper's relative-size analysis): a cluster holding less than ``size_threshold`` of the class
    is poisoned and all its samples are flagged; with two clusters, that is the smaller cluster
    when its share is below the threshold. A sample's score is one minus the share of its cluster,
    so samples of small clusters are the most suspicious. The silhouette score of each class's
    clustering is reported as well (the paper's other analysis: a high score means the class
    splits cleanly, as a poisoned class does).

    FastICA may stop before it converges (the paper's reference settings, ``max_iter=1000`` and
    ``tol=0.005``, are kept); that is logged at INFO level rather than warned, since the last
    iterate still serves the clustering. The number of components is capped, per class, at the
    numerical rank of the class's centred representations (dead ReLU units leave it below ``D``),
    since whitening a rank-deficient direction divides by zero. Classes with fewer than
    ``clusters + 1`` samples are not flagged.

    Args:
        n_components: dimensions kept before clustering, an integer >= 1.
        clusters: k of k-means, an integer >= 2.
        size_threshold: the largest share of a class a poisoned cluster may hold, in (0, 1).
        method: ``"ica"`` (FastICA, the paper's choice) or ``"pca"``.

    Raises:
        ParameterError: a bad component or cluster count, a threshold outside (0, 1), or an
            unknown method.

    Shape:
        features (N, D), labels (N,) -> flagged (N,) bool, scores (N,) float64
    """

    name: ClassVar[str] = "activation_clustering"
    METHODS: ClassVar[tuple[str, ...]] = ("ica", "pca")

    def __init__(
        self,
        *,
        n_components: int = 10,
        clusters: int = 2,
        size_threshold: float = 0.35,
        method: str = "ica",
    ) -> None:
        check_number("ActivationClustering", "n_components", n_components, minimum=1, integer=True)
        check_number("ActivationClustering", "clusters", clusters, minimum=2, integer=True)
        _check_open_unit("ActivationClustering", "size_threshold", size_threshold)
        if method not in self.METHODS:
            raise ParameterError(
                f"The 'method' parameter of ActivationClustering must be one of {self.METHODS}. "
                f"Got {method!r} instead."
            )
        self.n_components = n_components
        self.clusters = clusters
        self.size_threshold = size_threshold
        self.method = method

    def params(self) -> dict[str, Any]:
        return {
            "n_components": self.n_components,
            "clusters": self.clusters,
            "size_threshold": self.size_threshold,
            "method": self.method,
        }

    def _reduce(self, features: np.ndarray, seed: int) -> np.ndarray:
        centred = features - features.mean(axis=0, keepdims=True)
        spread = np.linalg.svd(centred, compute_uv=False)
        # Directions with a millionth of the main spread are collapsed (dead units, rounding):
        # whitening would blow their noise up to unit variance and cluster on it.
        rank = int((spread > spread[0] * COLLAPSED).sum()) if spread.size and spread[0] > 0 else 1
        components = max(1, min(int(self.n_components), rank))
        if self.method == "pca":
            projected: np.ndarray = PCA(n_components=components, random_state=seed).fit_transform(
                features
            )
            return projected
        # The settings of the paper's reference implementation (IBM ART).
        ica = FastICA(
            n_components=components,
            whiten="unit-variance",
            max_iter=1000,
            tol=0.005,
            random_state=seed,
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            try:
                reduced: np.ndarray = ica.fit_transform(features)
            except ValueError:  # whitening of near-degenerate features gives NaN inside sklearn
                reduced = np.full((len(features), components), np.nan)
        if not np.isfinite(reduced).all():
            # Features whose spread collapses in some direction (a dead unit, a class the model
            # maps almost to a point) break ICA's whitening: PCA separates the same clusters.
            logger.info("FastICA failed on degenerate features; reducing with PCA instead")
            fallback: np.ndarray = PCA(n_components=components, random_state=seed).fit_transform(
                features
            )
            return fallback
        for warning in caught:
            if issubclass(warning.category, ConvergenceWarning):
                # Unconverged components still separate clusters, the only use made of them;
                # the log keeps a study's warnings for what invalidates its numbers.
                logger.info(
                    "FastICA did not converge; clustering its last iterate: %s", warning.message
                )
            else:
                warnings.warn_explicit(
                    warning.message, warning.category, warning.filename, warning.lineno
                )
        return reduced

    def _detect_class(
        self, features: np.ndarray, label: int, *, seed: int
    ) -> tuple[np.ndarray, np.ndarray, ClassReport]:
        count = len(features)
        flagged = np.zeros(count, dtype=bool)
        if count <= self.clusters:
            return flagged, np.zeros(count), ClassReport(label, count, 0, math.inf)
        reduced = self._reduce(features, seed)
        kmeans = KMeans(n_clusters=int(self.clusters), n_init=10, random_state=seed)
        with warnings.catch_warnings():
            # Identical points (e.g. a class whose representations collapsed) make k-means find
            # fewer distinct clusters than asked; the sizes below then say so.
            warnings.filterwarnings("ignore", message="Number of distinct clusters")
            assignment = kmeans.fit_predict(reduced)
        sizes = np.bincount(assignment, minlength=int(self.clusters))
        shares = sizes / count
        poisoned_clusters = np.flatnonzero((shares < self.size_threshold) & (sizes > 0))
        flagged = np.isin(assignment, poisoned_clusters)
        scores = 1.0 - shares[assignment]
        distinct = len(np.unique(assignment))
        silhouette = (
            float(silhouette_score(reduced, assignment, random_state=seed))
            if 2 <= distinct <= count - 1
            else math.nan
        )
        threshold = float(scores[flagged].min()) if flagged.any() else math.inf
        report = ClassReport(
            label,
            count,
            int(flagged.sum()),
            threshold,
            tuple(int(s) for s in sizes),
            silhouette,
        )
        return flagged, scores.astype(np.float64), report


DETECTORS: Registry[type[PoisonDetector]] = Registry("poison detector")
for _detector in (SpectralSignature, ActivationClustering):
    DETECTORS.add(_detector.name, _detector)


def _as_mask(owner: str, name: str, value: Any) -> np.ndarray:
    array = np.asarray(value)
    ok = array.ndim == 1 and (
        array.dtype == bool
        or (np.issubdtype(array.dtype, np.integer) and bool(np.isin(array, (0, 1)).all()))
    )
    if not ok:
        raise InputError(
            f"The '{name}' parameter of {owner} must be a 1-D boolean mask. Got shape "
            f"{array.shape} and dtype {array.dtype} instead."
        )
    return array.astype(bool)


def detection_metrics(flagged: np.ndarray, poisoned: np.ndarray) -> dict[str, float]:
    """How well the flagged samples match the truly poisoned ones.

    ``precision`` = true positives / flagged and is NaN when nothing is flagged (there is no
    flagged sample to be right or wrong about); ``recall`` = true positives / poisoned and is NaN
    when nothing is poisoned; ``f1`` is their harmonic mean, NaN when either is NaN and 0 when
    both are 0.

    Args:
        flagged: the detector's mask (``Detection.flagged``).
        poisoned: the ground truth, True where a sample was poisoned.

    Returns:
        ``precision``, ``recall``, ``f1``, ``flagged`` (count), ``poisoned`` (count) and
        ``true_positives`` (count).

    Raises:
        InputError: the masks are not 1-D booleans (or 0/1 integers) of the same length.

    Shape:
        flagged (N,), poisoned (N,) -> dict of floats
    """
    found = _as_mask("detection_metrics", "flagged", flagged)
    truth = _as_mask("detection_metrics", "poisoned", poisoned)
    if len(found) != len(truth):
        raise InputError(
            "The 'poisoned' parameter of detection_metrics must have the length of 'flagged' "
            f"({len(found)}). Got {len(truth)} instead."
        )
    n_flagged, n_poisoned = int(found.sum()), int(truth.sum())
    true_positives = int((found & truth).sum())
    precision = true_positives / n_flagged if n_flagged else math.nan
    recall = true_positives / n_poisoned if n_poisoned else math.nan
    if math.isnan(precision) or math.isnan(recall):
        f1 = math.nan
    elif precision + recall == 0:
        f1 = 0.0
    else:
        f1 = 2 * precision * recall / (precision + recall)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "flagged": float(n_flagged),
        "poisoned": float(n_poisoned),
        "true_positives": float(true_positives),
    }


def remove_and_retrain(
    build: Callable[[], nn.Module],
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    flagged: np.ndarray,
    *,
    config: FitConfig | None = None,
    seed: int = 0,
) -> tuple[nn.Module, FitResult]:
    """Remove the flagged training rows and train a fresh model on the rest with
    :func:`~medrobust.training.fit` (the mitigation step of both papers).

    The fresh model comes from ``build()`` called with torch's global generator seeded by
    ``seed``, so the same arguments give the same weights; evaluate it as usual (e.g. clean
    accuracy and the backdoor's success rate on triggered test inputs).

    Args:
        build: makes the untrained model, e.g.
            ``lambda: build_model("small_cnn", task, inputs, {"width": 16})``.
        x_train, y_train: the (possibly poisoned) training set the detector examined.
        x_val, y_val: the validation split for early stopping.
        flagged: True for the rows to remove (``Detection.flagged``).
        config: training hyperparameters (default ``FitConfig()``).
        seed: seed of the initialisation and of the training.

    Returns:
        The trained model (eval mode) and its :class:`~medrobust.training.FitResult`.

    Raises:
        InputError: ``flagged`` is not a boolean mask of one entry per training row, or it
            flags every row.

    Shape:
        x_train (N, ...), flagged (N,) -> model trained on the (N - flagged) kept rows
    """
    check_number("remove_and_retrain", "seed", seed, minimum=0, integer=True)
    mask = _as_mask("remove_and_retrain", "flagged", flagged)
    if len(mask) != len(x_train) or len(y_train) != len(x_train):
        raise InputError(
            "The 'flagged' parameter of remove_and_retrain must have one entry per training row "
            f"({len(x_train)} inputs, {len(y_train)} labels). Got {len(mask)} instead."
        )
    if mask.all():
        raise InputError(
            "The 'flagged' parameter of remove_and_retrain must keep at least one training row. "
            f"Got all {len(mask)} rows flagged instead."
        )
    keep = torch.from_numpy(np.flatnonzero(~mask))
    torch.manual_seed(seed)
    model = build()
    result = fit(model, x_train[keep], y_train[keep], x_val, y_val, config=config, seed=seed)
    return model, result


__all__ = [
    "DETECTORS",
    "ActivationClustering",
    "ClassReport",
    "Detection",
    "PoisonDetector",
    "SpectralSignature",
    "detection_metrics",
    "penultimate_features",
    "remove_and_retrain",
]
