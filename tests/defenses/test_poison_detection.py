"""Poison detection: spectral signatures and activation clustering on planted synthetic outliers,
and on a BadNets-style backdoor in real BreastMNIST training data, then removal and retraining."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from medrobust.data import Task
from medrobust.defenses.poison_detection import (
    DETECTORS,
    ActivationClustering,
    Detection,
    SpectralSignature,
    detection_metrics,
    penultimate_features,
    remove_and_retrain,
)
from medrobust.errors import InputError, ParameterError, UnknownNameError
from medrobust.models import TensorSplits, build_model, prepare_inputs
from medrobust.training import FitConfig, fit, predict_logits

# --- synthetic features with a known answer ----------------------------------------------------


def planted(
    *, clean: int = 200, poisoned: int = 20, dim: int = 16, shift: float = 6.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class 0: Gaussian features; class 1: the same plus ``poisoned`` rows shifted along one
    direction (the trace a backdoor leaves). Returns features, labels and the poisoned mask."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(2 * clean + poisoned, dim))
    labels = np.r_[np.zeros(clean, np.int64), np.ones(clean + poisoned, np.int64)]
    poison = np.zeros(len(labels), dtype=bool)
    poison[-poisoned:] = True
    direction = rng.normal(size=dim)
    features[poison] += shift * direction / np.linalg.norm(direction)
    return features, labels, poison


def test_spectral_signature_ranks_planted_points_first() -> None:
    features, labels, poison = planted()
    # 20 of 220 rows of class 1 are poisoned (9 %): a 10 % expected rate removes 33.
    detection = SpectralSignature(expected_rate=0.1, removal_factor=1.5).detect(
        features, labels, seed=0
    )
    class1 = labels == 1
    top = np.argsort(-detection.scores[class1], kind="stable")[: int(poison.sum())]
    assert poison[class1][top].all()
    report = detection.for_class(1)
    assert report.flagged == math.ceil(1.5 * 0.1 * 220) == int(detection.flagged[class1].sum())
    assert detection_metrics(detection.flagged[class1], poison[class1])["recall"] == 1.0
    assert detection.detector == "spectral_signature"
    assert detection.flagged.shape == detection.scores.shape == labels.shape
    assert detection.flagged.dtype == bool and detection.scores.dtype == np.float64


@pytest.mark.parametrize("method", ["ica", "pca"])
def test_activation_clustering_separates_a_small_planted_cluster(method: str) -> None:
    features, labels, poison = planted(shift=10.0)
    detection = ActivationClustering(n_components=5, method=method).detect(features, labels, seed=0)
    # Class 1's planted cluster (20 of 220 rows, 9 %) is flagged exactly; class 0, one Gaussian,
    # splits into two halves of similar size, both above the 35 % threshold, so nothing is.
    np.testing.assert_array_equal(detection.flagged, poison)
    report = detection.for_class(1)
    assert sorted(report.cluster_sizes) == [20, 200]
    assert 0 < report.silhouette <= 1
    assert detection.for_class(0).flagged == 0
    assert min(detection.for_class(0).cluster_sizes) > 0.35 * 200
    assert detection.scores[poison].min() > detection.scores[~poison & (labels == 1)].max()


def test_classes_restrict_the_analysis() -> None:
    features, labels, _ = planted()
    detection = SpectralSignature().detect(features, labels, classes=[1])
    assert [r.label for r in detection.per_class] == [1]
    assert not detection.flagged[labels == 0].any()
    assert (detection.scores[labels == 0] == 0).all()
    with pytest.raises(InputError, match="analysed class"):
        detection.for_class(0)


def test_detection_is_deterministic_for_a_seed() -> None:
    features, labels, _ = planted(shift=3.0)
    for detector in (
        ActivationClustering(),
        ActivationClustering(method="pca"),
        SpectralSignature(),
    ):
        first = detector.detect(features, labels, seed=3)
        second = detector.detect(features, labels, seed=3)
        np.testing.assert_array_equal(first.flagged, second.flagged)
        np.testing.assert_array_equal(first.scores, second.scores)
        assert first.per_class == second.per_class


def test_detection_metrics_on_hand_examples() -> None:
    metrics = detection_metrics(
        np.array([True, True, False, False, True]), np.array([True, False, True, False, True])
    )
    assert metrics["true_positives"] == 2 and metrics["flagged"] == 3 and metrics["poisoned"] == 3
    assert metrics["precision"] == pytest.approx(2 / 3)
    assert metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["f1"] == pytest.approx(2 / 3)

    metrics = detection_metrics(np.array([1, 0, 0, 0]), np.array([1, 1, 0, 0]))
    assert (metrics["precision"], metrics["recall"]) == (1.0, 0.5)
    assert metrics["f1"] == pytest.approx(2 / 3)

    nothing = detection_metrics(np.zeros(3, bool), np.array([True, False, False]))
    assert math.isnan(nothing["precision"]) and nothing["recall"] == 0.0
    assert math.isnan(nothing["f1"]) and nothing["flagged"] == 0

    clean = detection_metrics(np.array([True, False]), np.zeros(2, bool))
    assert clean["precision"] == 0.0 and math.isnan(clean["recall"])

    miss = detection_metrics(np.array([True, False]), np.array([False, True]))
    assert (miss["precision"], miss["recall"], miss["f1"]) == (0.0, 0.0, 0.0)


def test_registry() -> None:
    assert DETECTORS.names() == ["activation_clustering", "spectral_signature"]
    assert DETECTORS.get("Spectral_Signature") is SpectralSignature
    with pytest.raises(UnknownNameError, match="spectral_signature"):
        DETECTORS.get("spectral_signatures")
    assert repr(SpectralSignature()) == "SpectralSignature(expected_rate=0.05, removal_factor=1.5)"


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: SpectralSignature(expected_rate=0.0), "'expected_rate' parameter of Spectral"),
        (lambda: SpectralSignature(expected_rate=1.0), r"must be a number in \(0, 1\)"),
        (lambda: SpectralSignature(expected_rate=True), "'expected_rate'"),
        (lambda: SpectralSignature(removal_factor=0), "'removal_factor' parameter"),
        (lambda: SpectralSignature(expected_rate=0.5, removal_factor=2.0), "must be < 1"),
        (lambda: ActivationClustering(n_components=0), "'n_components' parameter"),
        (lambda: ActivationClustering(n_components=2.5), "'n_components' parameter"),
        (lambda: ActivationClustering(clusters=1), "'clusters' parameter"),
        (lambda: ActivationClustering(size_threshold=1.5), "'size_threshold' parameter"),
        (lambda: ActivationClustering(method="kmeans"), "'method' parameter"),
    ],
)
def test_bad_parameters_raise(make: Callable[[], object], match: str) -> None:
    with pytest.raises(ParameterError, match=match):
        make()


def test_bad_inputs_raise() -> None:
    features, labels, _ = planted()
    detector = SpectralSignature()
    with pytest.raises(InputError, match="one label per row of 'features' \\(420\\)"):
        detector.detect(features, labels[:-1])
    with pytest.raises(InputError, match="2-D numeric array"):
        detector.detect(features[:, 0], labels)
    with pytest.raises(InputError, match="1-D integer array"):
        detector.detect(features, labels.astype(float))
    broken = features.copy()
    broken[3, 2] = np.nan
    with pytest.raises(InputError, match=r"must be finite\. Got 1 row"):
        ActivationClustering().detect(broken, labels)
    with pytest.raises(InputError, match="'classes' parameter"):
        detector.detect(features, labels, classes=[7])
    with pytest.raises(ParameterError, match="'seed' parameter"):
        detector.detect(features, labels, seed=-1)
    with pytest.raises(InputError, match="length of 'flagged' \\(3\\)"):
        detection_metrics(np.zeros(3, bool), np.zeros(4, bool))
    with pytest.raises(InputError, match="1-D boolean mask"):
        detection_metrics(np.array([0.5, 1.0]), np.zeros(2, bool))


def test_penultimate_features_reads_the_head_input() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Dropout(0.5), nn.Linear(6, 2))
    model.train()
    x = torch.randn(10, 4)
    features = penultimate_features(model, x, batch_size=3)
    expected = torch.relu(model[0](x)).detach().numpy()  # dropout off: eval mode
    np.testing.assert_allclose(features, expected, rtol=1e-6)
    assert features.shape == (10, 6) and features.dtype == np.float32
    assert model.training  # left as found
    assert not model[3]._forward_pre_hooks  # hook removed
    np.testing.assert_allclose(penultimate_features(model, x, layer=model[0]), x.numpy())
    with pytest.raises(InputError, match=r"must end in an nn\.Linear head"):
        penultimate_features(nn.Sequential(nn.ReLU()), x)
    with pytest.raises(ParameterError, match="'batch_size' parameter"):
        penultimate_features(model, x, batch_size=0)


def test_remove_and_retrain_validates_the_mask() -> None:
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 0, 1, 0, 1])
    with pytest.raises(InputError, match="one entry per training row"):
        remove_and_retrain(lambda: nn.Linear(4, 2), x, y, x, y, np.zeros(5, bool))
    with pytest.raises(InputError, match="keep at least one training row"):
        remove_and_retrain(lambda: nn.Linear(4, 2), x, y, x, y, np.ones(6, bool))


# --- a BadNets backdoor in real BreastMNIST -----------------------------------------------------

# Target: malignant (label 0). Poisons: copies of benign training images with a 3x3 white patch
# in the bottom-right corner, labelled malignant (Gu et al. 2017, BadNets). The other direction
# (triggered malignant -> benign) is the more dangerous one, but a clean model of this size
# already calls 55-90 % of correctly classified malignant test images benign once the corner
# patch is added, which hides what removal buys; benign images with the patch it never calls
# malignant, so the backdoor's success rate measures the backdoor alone.
TARGET, SOURCE, N_POISON, SEED = 0, 1, 25, 0
CONFIG = FitConfig(epochs=8, batch_size=32, patience=0, class_weight="sqrt")
WIDTH = {"width": 16}


def trigger(x: torch.Tensor) -> torch.Tensor:
    patched = x.clone()
    patched[..., -4:-1, -4:-1] = 1.0
    return patched


@dataclass(frozen=True)
class Backdoor:
    task: Task
    inputs: TensorSplits
    x: torch.Tensor
    y: torch.Tensor
    poisoned: np.ndarray
    model: nn.Module


@pytest.fixture(scope="module")
def backdoor(real_task: Callable[[str], Task]) -> Backdoor:
    task = real_task("breastmnist")
    inputs = prepare_inputs(task)
    x, y = inputs.x["train"], inputs.y["train"]
    rng = np.random.default_rng(SEED)
    rows = torch.from_numpy(rng.choice(np.flatnonzero(y.numpy() == SOURCE), N_POISON, False))
    x_poisoned = torch.cat([x, trigger(x[rows])])
    y_poisoned = torch.cat([y, torch.full((N_POISON,), TARGET)])
    poisoned = np.r_[np.zeros(len(x), bool), np.ones(N_POISON, bool)]
    torch.manual_seed(SEED)
    model = build_model("small_cnn", task, inputs, WIDTH)
    fit(
        model,
        x_poisoned,
        y_poisoned,
        inputs.x["val"],
        inputs.y["val"],
        config=CONFIG,
        seed=SEED,
    )
    return Backdoor(task, inputs, x_poisoned, y_poisoned, poisoned, model)


def accuracy_and_attack_success(model: nn.Module, inputs: TensorSplits) -> tuple[float, float]:
    """Clean test accuracy, and the share of correctly classified source-class test images that
    the trigger sends to the target class."""
    x, y = inputs.x["test"], inputs.y["test"]
    predicted = predict_logits(model, x).argmax(1)
    source = (y == SOURCE) & (predicted == SOURCE)
    triggered = predict_logits(model, trigger(x[source])).argmax(1)
    return float((predicted == y).float().mean()), float((triggered == TARGET).float().mean())


def test_detectors_find_a_backdoor_and_removal_disarms_it(backdoor: Backdoor) -> None:
    accuracy, success = accuracy_and_attack_success(backdoor.model, backdoor.inputs)
    assert success >= 0.8  # measured at seed 0: 0.98, clean accuracy 0.81

    features = penultimate_features(backdoor.model, backdoor.x)
    assert features.shape == (len(backdoor.x), 128)
    labels = backdoor.y.numpy()
    target = labels == TARGET  # 147 clean + 25 poisoned malignant rows (15 %)

    spectral = SpectralSignature(expected_rate=0.1).detect(features, labels, classes=[TARGET])
    clustering = ActivationClustering().detect(features, labels, seed=SEED, classes=[TARGET])
    found = {
        d.detector: detection_metrics(d.flagged[target], backdoor.poisoned[target])
        for d in (spectral, clustering)
    }
    # Measured at seed 0: spectral signatures flag 26, precision 0.92, recall 0.96; activation
    # clustering (ICA) finds clusters of 147 and 25, precision 1.0, recall 1.0. Over training
    # seeds 0-2 spectral recall stayed in 0.92-0.96; activation clustering found every poison at
    # seeds 0 and 1 and none at seed 2 (its 2-means split the clean images), so only spectral
    # signatures, with a 0.7 floor, carry the assertion.
    assert found["spectral_signature"]["recall"] >= 0.7
    assert found["spectral_signature"]["precision"] >= 0.5
    assert max(m["recall"] for m in found.values()) >= 0.7
    assert spectral.for_class(TARGET).flagged == math.ceil(1.5 * 0.1 * int(target.sum()))
    assert isinstance(clustering, Detection)
    assert sum(clustering.for_class(TARGET).cluster_sizes) == int(target.sum())

    retrained, _ = remove_and_retrain(
        lambda: build_model("small_cnn", backdoor.task, backdoor.inputs, WIDTH),
        backdoor.x,
        backdoor.y,
        backdoor.inputs.x["val"],
        backdoor.inputs.y["val"],
        spectral.flagged,
        config=CONFIG,
        seed=SEED,
    )
    accuracy_after, success_after = accuracy_and_attack_success(retrained, backdoor.inputs)
    # Measured at seed 0: success 0.98 -> 0.17 (one poison left), clean accuracy 0.81 -> 0.85.
    assert success_after <= success - 0.5
    assert accuracy_after >= accuracy - 0.05


def test_activation_clustering_survives_degenerate_features() -> None:
    """A class whose representation is nearly one point in most directions (dead units, a
    collapsed class) breaks ICA's whitening; the detector falls back to PCA and still separates
    a planted cluster."""
    rng = np.random.default_rng(0)
    features = np.zeros((60, 12))
    features[:, 0] = rng.normal(0.0, 1.0, 60)
    features[:6, 0] += 12.0  # a small planted cluster
    features[:, 1:] = 1e-12 * rng.normal(size=(60, 11))  # all but one direction collapsed
    found = ActivationClustering(n_components=10).detect(features, np.zeros(60, dtype=int), seed=0)
    assert np.isfinite(found.scores).all()
    assert found.flagged[:6].all() and not found.flagged[6:].any()
