"""Checks for gradient masking, which makes a model look robust to gradient attacks without
being robust (Athalye et al. 2018; Carlini et al. 2019, "On evaluating adversarial robustness").

Each check returns True when it finds a symptom:

- ``randomized_output``: two forward passes on the same input disagree (randomness needs EOT);
- ``vanishing_gradients``: most examples have a zero, or any a non-finite, input gradient;
- ``unbounded_attack_fails``: PGD (100 steps, 3 restarts) with a budget far beyond any
  meaningful one (the domain width, or 10 standard deviations of the inputs where the domain is
  unbounded) still breaks fewer than 95 % of the correctly classified examples, although such an
  attack can always succeed: gradients mislead the attack, or it is too weak for this model;
- ``iterative_weaker_than_single_step``: PGD-10 breaks fewer correctly classified examples than
  FGSM at the same small budget (3 % of the domain width, or 0.3 standard deviations), although
  PGD's first step is FGSM's: the loss surface is too rugged for gradients to follow.

Two more symptoms need a study's other cells and are flagged by its report: a transferred attack
stronger than the white-box one, and the same iterative-vs-single-step comparison at the study's
own budgets.

A flagged model's robust accuracy is an upper bound until adaptive attacks (EOT, BPDA in
:mod:`medrobust.attacks.adaptive`) confirm it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from medrobust.attacks.gradient import FGSM, PGD
from medrobust.metrics import predictions
from medrobust.training import classification_loss
from medrobust.types import Domain

MASKING_CHECKS = (
    "randomized_output",
    "vanishing_gradients",
    "unbounded_attack_fails",
    "iterative_weaker_than_single_step",
)


def _broken_share(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor) -> float:
    """Share of the correctly classified examples that ``x_adv`` makes wrong (NaN if none)."""
    with torch.no_grad():
        clean = predictions(model(x)) == y
        broken = predictions(model(x_adv)) != y
    return float((clean & broken).sum()) / int(clean.sum()) if bool(clean.any()) else math.nan


def masking_checks(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, domain: Domain, *, seed: int = 0
) -> dict[str, bool]:
    """Run the gradient-masking checks on a batch of continuous inputs.

    Args:
        model: the evaluated model (its mode is restored).
        x: inputs, shape (N, ...), inside ``domain``.
        y: their labels, shape (N,).
        domain: the input domain.
        seed: seed of the unbounded attack's random start.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            randomized = not torch.equal(model(x), model(x))
        x_var = x.clone().requires_grad_(True)
        with torch.backends.cudnn.flags(enabled=False):
            loss = classification_loss(model(x_var), y) * len(y)
            grad = torch.autograd.grad(loss, x_var)[0].flatten(1)
        vanishing = bool((~torch.isfinite(grad)).any()) or bool(
            ((grad.abs().amax(dim=1) == 0).float().mean() > 0.5).item()
        )
        scale = domain.width if domain.bounded else 10.0 * float(x.std())
        attack = PGD(norm="linf", eps=scale, steps=100, restarts=3, domain=domain, seed=seed)
        rate = _broken_share(model, x, y, attack(model, x, y))
        unbounded_fails = not math.isnan(rate) and rate < 0.95
        small = 0.03 * scale
        single = FGSM(norm="linf", eps=small, domain=domain)(model, x, y)
        iterative = PGD(norm="linf", eps=small, steps=10, domain=domain, seed=seed)(model, x, y)
        iterative_weaker = _broken_share(model, x, y, iterative) < _broken_share(
            model, x, y, single
        )
    finally:
        model.train(was_training)
    return {
        "randomized_output": randomized,
        "vanishing_gradients": vanishing,
        "unbounded_attack_fails": unbounded_fails,
        "iterative_weaker_than_single_step": iterative_weaker,
    }
