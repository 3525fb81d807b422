"""Defenses: randomized smoothing with certificates, and gradient-masking defenses with the
adaptive attacks that evaluate them honestly."""

from __future__ import annotations

from medrobust.defenses.masking import QuantizedInput, RandomizedActivations
from medrobust.defenses.smoothing import (
    ABSTAIN,
    GaussianNoiseAugmentation,
    SmoothedClassifier,
    certified_accuracy,
)

__all__ = [
    "ABSTAIN",
    "GaussianNoiseAugmentation",
    "QuantizedInput",
    "RandomizedActivations",
    "SmoothedClassifier",
    "certified_accuracy",
]
