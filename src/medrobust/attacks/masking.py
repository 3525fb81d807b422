"""Checks for gradient masking, which makes a model look robust to gradient attacks without
being robust (Athalye et al. 2018; Carlini et al. 2019, "On evaluating adversarial robustness").

Each check returns True when it finds a symptom:

- ``randomized_output``: two forward passes on the same input disagree (randomness needs EOT);
- ``vanishing_gradients``: most examples have a zero, or any a non-finite, input gradient;
- ``unbounded_attack_fails``: PGD (100 steps, 3 restarts, logit-margin loss) with a budget far
  beyond any meaningful one (the domain width, or 10 standard deviations of the inputs where the
  domain is unbounded) still breaks fewer than 95 % of the correctly classified examples,
  although such an attack can always succeed: gradients mislead the attack, or it is too weak
  for this model (an autoencoder detector, whose "normal" region is a thin manifold that
  fixed-size sign steps overshoot, is one);
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
from collections.abc import Callable

import torch
from torch import nn

from medrobust.attacks.base import Attack, text_model
from medrobust.attacks.gradient import FGSM, PGD
from medrobust.attacks.text import EmbeddingFGSM, EmbeddingPGD
from medrobust.metrics import predictions
from medrobust.models.text import PAD_ID
from medrobust.training import classification_loss
from medrobust.types import UNBOUNDED, Domain

MASKING_CHECKS = (
    "randomized_output",
    "vanishing_gradients",
    "unbounded_attack_fails",
    "iterative_weaker_than_single_step",
)


def _broken_share(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: Attack, x_adv: torch.Tensor
) -> float:
    """Share of the correctly classified examples that ``x_adv`` makes wrong (NaN if none)."""
    with torch.no_grad():
        clean = predictions(model(x)).to(y.device) == y
    broken = predictions(attack.adversarial_logits(model, x, x_adv)).to(y.device) != y
    return float((clean & broken).sum()) / int(clean.sum()) if bool(clean.any()) else math.nan


def _input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Loss gradient with respect to the inputs, or to the token embeddings of text, (N, -1)."""
    with torch.backends.cudnn.flags(enabled=False):
        if x.is_floating_point():
            x_var = x.clone().requires_grad_(True)
            logits = model(x_var)
        else:
            text = text_model(model, "masking_checks")
            x_var = text.embed(x).detach().requires_grad_(True)
            logits = text.forward_embeddings(x_var, x)
        loss = classification_loss(logits, y) * len(y)
        return torch.autograd.grad(loss, x_var)[0].flatten(1)


def masking_checks(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, domain: Domain, *, seed: int = 0
) -> dict[str, bool]:
    """Run the gradient-masking checks on a batch of inputs.

    Continuous inputs are attacked with FGSM and PGD; token ids of a text model in embedding
    space (EmbeddingFGSM, EmbeddingPGD), where the unbounded budget is 10 standard deviations
    of the token embeddings.

    Args:
        model: the evaluated model (its mode is restored).
        x: inputs, shape (N, ...), inside ``domain``; or int64 token ids (N, L).
        y: their labels, shape (N,).
        domain: the input domain.
        seed: seed of the unbounded attack's random start.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            randomized = not torch.equal(model(x), model(x))
        grad = _input_gradient(model, x, y)
        vanishing = bool((~torch.isfinite(grad)).any()) or bool(
            ((grad.abs().amax(dim=1) == 0).float().mean() > 0.5).item()
        )
        single_step: Callable[..., Attack] = FGSM
        iterative: Callable[..., Attack] = PGD
        if x.is_floating_point():
            scale = domain.width if domain.bounded else 10.0 * float(x.std())
        else:
            single_step, iterative, domain = EmbeddingFGSM, EmbeddingPGD, UNBOUNDED
            with torch.no_grad():
                embedded = text_model(model, "masking_checks").embed(x)
            scale = 10.0 * float(embedded[x != PAD_ID].std())
        # The margin loss: cross-entropy saturates on confident points and would stall the
        # attack there, a false symptom.
        unbounded = iterative(
            eps=scale, steps=100, restarts=3, loss="margin", domain=domain, seed=seed
        )
        rate = _broken_share(model, x, y, unbounded, unbounded(model, x, y))
        unbounded_fails = not math.isnan(rate) and rate < 0.95
        small = 0.03 * scale
        fgsm = single_step(eps=small, domain=domain)
        pgd = iterative(eps=small, steps=10, domain=domain, seed=seed)
        iterative_weaker = _broken_share(model, x, y, pgd, pgd(model, x, y)) < _broken_share(
            model, x, y, fgsm, fgsm(model, x, y)
        )
    finally:
        model.train(was_training)
    return {
        "randomized_output": randomized,
        "vanishing_gradients": vanishing,
        "unbounded_attack_fails": unbounded_fails,
        "iterative_weaker_than_single_step": iterative_weaker,
    }
