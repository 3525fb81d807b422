"""Adaptive attacks: EOT and BPDA recover the attack that masked gradients defeat, and the
masking checks flag an iterative attack that does worse than a single step."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from medrobust.attacks import PGD
from medrobust.attacks.adaptive import BPDA, EOT
from medrobust.attacks.masking import masking_checks
from medrobust.errors import ParameterError
from medrobust.metrics import predictions
from tests.conftest import Trained


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Four grey levels: a non-differentiable input "defense" with zero gradient."""
    return torch.round(x * 4) / 4


class _Quantized(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(quantize(x))  # type: ignore[no-any-return]


class _RandomProjectionNoise(nn.Module):
    """A randomized "defense": each forward pass adds a fresh zero-mean random linear term to the
    logits. Its expected logits are the inner model's, but a single pass's input gradient is
    mostly the random term's."""

    def __init__(self, inner: nn.Module, scale: float) -> None:
        super().__init__()
        self.inner, self.scale = inner, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.inner(x)
        projection = torch.randn(x[0].numel(), logits.shape[1])
        return logits + self.scale * (x.flatten(1) @ projection)


class _OffLatticeTrap(nn.Module):
    """Same predictions as ``inner`` everywhere, but a huge gradient term that points away from
    the nearest 1/255 grey level: useful at the clean (on-lattice) image, where FGSM takes its
    one step, and misleading at every point PGD visits after its random start."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset = x - torch.round(x * 255).detach() / 255
        gain = 1 + 1e6 * offset.pow(2).flatten(1).sum(1, keepdim=True)
        return self.inner(x) * gain  # type: ignore[no-any-return]


def _success(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor) -> float:
    with torch.no_grad():
        clean = predictions(model(x)) == y
        return float((clean & (predictions(model(x_adv)) != y)).sum()) / int(clean.sum())


def test_bpda_breaks_a_quantisation_defense_that_stops_plain_pgd(
    trained: Callable[[str], Trained],
) -> None:
    victim = trained("cnn")
    x, y = victim.split("test", 100)
    defended = _Quantized(victim.model).eval()
    attack = PGD(eps=0.3, steps=20, domain=victim.task.domain, seed=0)
    plain = _success(defended, x, y, attack(defended, x, y))
    adaptive = _success(defended, x, y, attack(BPDA(victim.model, quantize), x, y))
    assert plain < 0.2 < adaptive - plain, (plain, adaptive)


def test_bpda_with_an_approximation_uses_its_gradient(trained: Callable[[str], Trained]) -> None:
    # The MLP, not the CNN: max-pooling ties on quantised images would route gradients by
    # rounding differences in the last bit.
    victim = trained("mlp")
    x, _ = victim.split("test", 8)
    wrapped = BPDA(victim.model, quantize, approximation=lambda v: 2 * v)
    x_var = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(wrapped(x_var).sum(), x_var)  # no gradient left on the model
    reference = x.clone().requires_grad_(True)
    smooth = 2 * reference
    (expected,) = torch.autograd.grad(
        victim.model(quantize(x) + smooth - smooth.detach()).sum(), reference
    )
    assert torch.allclose(grad, expected, atol=1e-5)
    assert torch.allclose(wrapped(x), victim.model(quantize(x)), atol=1e-5)


def test_eot_is_stronger_than_pgd_on_a_randomized_model(
    trained: Callable[[str], Trained],
) -> None:
    victim = trained("mlp")
    x, y = victim.split("test", 100)
    noisy = _RandomProjectionNoise(victim.model, scale=1.0).eval()
    # Success is judged on the defense's expected logits (the inner model's); early stopping
    # would judge single noisy passes, so it is off.
    attack = PGD(eps=0.5, steps=10, seed=0, stop_when_adversarial=False)
    torch.manual_seed(0)
    single_pass = _success(victim.model, x, y, attack(noisy, x, y))
    torch.manual_seed(0)
    with_eot = _success(victim.model, x, y, attack(EOT(noisy, samples=32), x, y))
    assert with_eot > single_pass + 0.2, (single_pass, with_eot)


def test_eot_of_a_deterministic_model_is_the_model(trained: Callable[[str], Trained]) -> None:
    victim = trained("mlp")
    x, _ = victim.split("test", 10)
    with torch.no_grad():
        assert torch.allclose(EOT(victim.model, samples=3)(x), victim.model(x), atol=1e-6)
    with pytest.raises(ParameterError, match=r"'samples' parameter .* integer >= 1"):
        EOT(victim.model, samples=0)


def test_iterative_attack_weaker_than_single_step_is_flagged(
    trained: Callable[[str], Trained],
) -> None:
    victim = trained("cnn")
    x, y = victim.split("test", 100)
    assert not masking_checks(victim.model, x, y, victim.task.domain)[
        "iterative_weaker_than_single_step"
    ]
    trap = _OffLatticeTrap(victim.model).eval()
    assert masking_checks(trap, x, y, victim.task.domain)["iterative_weaker_than_single_step"]
