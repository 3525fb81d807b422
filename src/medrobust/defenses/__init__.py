"""Defenses: randomized smoothing and Lipschitz-constrained networks with certificates, and
gradient-masking defenses with the adaptive attacks that evaluate them honestly.

Certified accuracy at a radius of either certificate: :func:`medrobust.metrics.certified_accuracy`.
"""

from __future__ import annotations

from medrobust.defenses.lipschitz import (
    LipschitzCNN,
    LipschitzCNN1d,
    LipschitzConv1d,
    LipschitzConv2d,
    LipschitzLinear,
    LipschitzMLP,
    MaxMin,
    certified_radius,
    lipschitz_bound,
    refresh_sigmas,
)
from medrobust.defenses.masking import QuantizedInput, RandomizedActivations
from medrobust.defenses.smoothing import (
    ABSTAIN,
    GaussianNoiseAugmentation,
    SmoothedClassifier,
    smoothed_certified_accuracy,
)

__all__ = [
    "ABSTAIN",
    "GaussianNoiseAugmentation",
    "LipschitzCNN",
    "LipschitzCNN1d",
    "LipschitzConv1d",
    "LipschitzConv2d",
    "LipschitzLinear",
    "LipschitzMLP",
    "MaxMin",
    "QuantizedInput",
    "RandomizedActivations",
    "SmoothedClassifier",
    "certified_radius",
    "lipschitz_bound",
    "refresh_sigmas",
    "smoothed_certified_accuracy",
]
