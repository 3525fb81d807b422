"""Defenses: adversarial training, randomized smoothing and Lipschitz-constrained networks with
certificates, and gradient-masking defenses with the adaptive attacks that evaluate them honestly.

Each registered defense follows :class:`~medrobust.defenses.base.Defense`, so that a study can
apply it to any model of the modalities it serves. Certified accuracy at a radius of either
certificate: :func:`medrobust.metrics.certified_accuracy`.
"""

from __future__ import annotations

from medrobust.defenses.adversarial_training import TRADES, AdversarialTraining, EpsilonPolicy
from medrobust.defenses.base import Defense, TrainingData
from medrobust.defenses.lipschitz import (
    LipschitzCNN,
    LipschitzCNN1d,
    LipschitzConstraint,
    LipschitzConv1d,
    LipschitzConv2d,
    LipschitzLinear,
    LipschitzMLP,
    MaxMin,
    certified_radius,
    lipschitz_bound,
    refresh_sigmas,
)
from medrobust.defenses.masking import (
    InputQuantization,
    QuantizedInput,
    RandomizedActivations,
    StochasticActivationPruning,
)
from medrobust.defenses.poison_detection import (
    DETECTORS,
    ActivationClustering,
    ClassReport,
    Detection,
    PoisonDetector,
    SpectralSignature,
    detection_metrics,
    penultimate_features,
    remove_and_retrain,
)
from medrobust.defenses.smoothing import (
    ABSTAIN,
    GaussianNoiseAugmentation,
    RandomizedSmoothing,
    SmoothedClassifier,
    SoftSmoothing,
    smoothed_certified_accuracy,
)
from medrobust.registry import Registry

DEFENSES: Registry[type[Defense]] = Registry("defense")
for _defense in (
    AdversarialTraining,
    TRADES,
    LipschitzConstraint,
    RandomizedSmoothing,
    StochasticActivationPruning,
    InputQuantization,
):
    DEFENSES.add(_defense.name, _defense)

__all__ = [
    "ABSTAIN",
    "DEFENSES",
    "DETECTORS",
    "TRADES",
    "ActivationClustering",
    "AdversarialTraining",
    "ClassReport",
    "Defense",
    "Detection",
    "EpsilonPolicy",
    "GaussianNoiseAugmentation",
    "InputQuantization",
    "LipschitzCNN",
    "LipschitzCNN1d",
    "LipschitzConstraint",
    "LipschitzConv1d",
    "LipschitzConv2d",
    "LipschitzLinear",
    "LipschitzMLP",
    "MaxMin",
    "PoisonDetector",
    "QuantizedInput",
    "RandomizedActivations",
    "RandomizedSmoothing",
    "SmoothedClassifier",
    "SoftSmoothing",
    "SpectralSignature",
    "StochasticActivationPruning",
    "TrainingData",
    "certified_radius",
    "detection_metrics",
    "lipschitz_bound",
    "penultimate_features",
    "refresh_sigmas",
    "remove_and_retrain",
    "smoothed_certified_accuracy",
]
