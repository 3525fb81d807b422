"""Gradient-masking defenses look robust to plain attacks; adaptive attacks (EOT, BPDA) take the
apparent robustness away, and the masking checks flag them."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from medrobust.attacks import PGD
from medrobust.attacks.adaptive import EOT
from medrobust.attacks.masking import masking_checks
from medrobust.defenses.masking import QuantizedInput, RandomizedActivations
from medrobust.errors import ParameterError
from medrobust.metrics import predictions
from medrobust.types import UNBOUNDED
from tests.conftest import Trained


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    torch.manual_seed(1)
    with torch.no_grad():
        return float((predictions(model(x)) == y).float().mean())


def test_quantized_input_masks_gradients_and_bpda_sees_through(
    trained: Callable[[str], Trained],
) -> None:
    victim = trained("cnn")
    x, y = victim.split("test", 150)
    defended = QuantizedInput(victim.model, victim.task.domain).eval()
    attack = PGD(eps=0.03, steps=20, domain=victim.task.domain, seed=0)
    undefended = accuracy(victim.model, attack(victim.model, x, y), y)
    apparent = accuracy(defended, attack(defended, x, y), y)
    real = accuracy(defended, attack(defended.adaptive(), x, y), y)
    assert apparent > undefended + 0.3, (apparent, undefended)  # measured 0.81 vs 0.30
    assert real < undefended + 0.05, (real, undefended)  # measured 0.34
    assert masking_checks(defended, x[:50], y[:50], victim.task.domain)["vanishing_gradients"]
    assert QuantizedInput.masks_gradients


def test_randomized_activations_mask_gradients_and_eot_sees_through(
    trained: Callable[[str], Trained],
) -> None:
    victim = trained("mlp")
    x, y = victim.split("test", 115)
    defended = RandomizedActivations(victim.model, draws=1.0).eval()
    try:
        judge = EOT(defended, samples=32)  # the defended model's expected prediction
        # The plain evaluation is the study's default PGD: it stops perturbing a point once one
        # noisy pass misreads it, and that pass is luck. The adaptive one attacks the expectation
        # and runs every step.
        plain = PGD(eps=0.3, steps=20, seed=0)
        adaptive = PGD(eps=0.3, steps=20, seed=0, stop_when_adversarial=False)
        undefended = accuracy(victim.model, plain(victim.model, x, y), y)
        torch.manual_seed(0)
        apparent = accuracy(judge, plain(defended, x, y), y)
        torch.manual_seed(0)
        real = accuracy(judge, adaptive(defended.adaptive(16), x, y), y)
        assert apparent > undefended + 0.05, (apparent, undefended)  # measured 0.84 vs 0.76
        assert real < undefended + 0.05, (real, undefended)  # measured 0.76
        assert masking_checks(defended, x, y, UNBOUNDED)["randomized_output"]
        assert accuracy(victim.model, x, y) == accuracy(victim.model, x, y)  # model left plain
    finally:
        defended.remove()


def test_bad_masking_defense_parameters() -> None:
    plain = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(ParameterError, match=r"needs a model with nn\.ReLU modules"):
        RandomizedActivations(plain)
    with pytest.raises(ParameterError, match=r"'draws' parameter .* number > 0"):
        RandomizedActivations(nn.Sequential(nn.Linear(3, 2), nn.ReLU()), draws=0)
    with pytest.raises(ParameterError, match="needs a bounded domain"):
        QuantizedInput(plain, UNBOUNDED)
    with pytest.raises(ParameterError, match=r"'levels' parameter of QuantizedInput"):
        QuantizedInput(plain, UNBOUNDED.__class__(0.0, 1.0), levels=1)
