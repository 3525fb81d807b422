"""Evasion attacks and their registry."""

from __future__ import annotations

from medrobust.attacks.base import Attack, project
from medrobust.attacks.gradient import FGSM, PGD
from medrobust.attacks.jsma import JSMA
from medrobust.attacks.poisoning import (
    POISONINGS,
    Backdoor,
    BlipTrigger,
    FeatureCollision,
    LabelFlip,
    PatchTrigger,
    PoisonedData,
    Poisoning,
    TokenTrigger,
    Trigger,
    attack_success_rate,
    poison_task,
)
from medrobust.attacks.text import EmbeddingFGSM, EmbeddingPGD, HotFlip
from medrobust.registry import Registry

ATTACKS: Registry[type[Attack]] = Registry("attack")
ATTACKS.add(FGSM.name, FGSM)
ATTACKS.add(PGD.name, PGD)
ATTACKS.add(JSMA.name, JSMA)
ATTACKS.add(EmbeddingFGSM.name, EmbeddingFGSM)
ATTACKS.add(EmbeddingPGD.name, EmbeddingPGD)
ATTACKS.add(HotFlip.name, HotFlip)

__all__ = [
    "ATTACKS",
    "FGSM",
    "JSMA",
    "PGD",
    "POISONINGS",
    "Attack",
    "Backdoor",
    "BlipTrigger",
    "EmbeddingFGSM",
    "EmbeddingPGD",
    "FeatureCollision",
    "HotFlip",
    "LabelFlip",
    "PatchTrigger",
    "PoisonedData",
    "Poisoning",
    "TokenTrigger",
    "Trigger",
    "attack_success_rate",
    "poison_task",
    "project",
]
