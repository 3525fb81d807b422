"""Checks for gradient masking, which makes a model look robust to gradient attacks without
being robust (Athalye et al. 2018; Carlini et al. 2019, "On evaluating adversarial robustness").

Each check returns True when it finds a symptom:

- ``randomized_output``: two forward passes on the same input disagree (randomness needs EOT);
- ``vanishing_gradients``: most examples have a zero, or any a non-finite, input gradient;
- ``unbounded_attack_fails``: PGD (100 steps, 3 restarts) with a budget far beyond any
  meaningful one (the domain width, or 10 standard deviations of the inputs where the domain is
  unbounded) still breaks fewer than 95 % of the correctly classified examples, although such an
  attack can always succeed: gradients mislead the attack, or it is too weak for this model.

A flagged model's robust accuracy is an upper bound until adaptive attacks confirm it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from medrobust.attacks.gradient import PGD
from medrobust.metrics import predictions
from medrobust.training import classification_loss
from medrobust.types import Domain

MASKING_CHECKS = ("randomized_output", "vanishing_gradients", "unbounded_attack_fails")


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
        eps = domain.width if domain.bounded else 10.0 * float(x.std())
        attack = PGD(norm="linf", eps=eps, steps=100, restarts=3, domain=domain, seed=seed)
        x_adv = attack(model, x, y)
        with torch.no_grad():
            clean = predictions(model(x)) == y
            broken = predictions(model(x_adv)) != y
        rate = float((clean & broken).sum()) / max(int(clean.sum()), 1)
        unbounded_fails = bool(clean.any()) and (math.isnan(rate) or rate < 0.95)
    finally:
        model.train(was_training)
    return {
        "randomized_output": randomized,
        "vanishing_gradients": vanishing,
        "unbounded_attack_fails": unbounded_fails,
    }
