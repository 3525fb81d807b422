"""Jacobian-based Saliency Map Attack (Papernot et al. 2016), an L0 attack.

The attack raises (``theta > 0``) or lowers (``theta < 0``) a few input features at a time,
chosen by a saliency map built from the gradients of the target logit (alpha) and of the other
logits (beta). The paper's search picks the *pair* of features whose joint change most increases
the target and decreases the others; done naively that is O(features^2) memory per example (84 GiB
for one 224 px image in a popular library). Here the pair search runs over the ``candidates``
features with the largest single-feature saliency (all features when there are fewer) and over
batch chunks sized so that the pair scores never exceed ``max_memory_mb``: peak extra memory is
about ``chunk * candidates^2 * 4`` bytes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from medrobust.attacks.base import Attack, _check_number
from medrobust.errors import ParameterError
from medrobust.metrics import predictions
from medrobust.types import Norm


def _class_logits(logits: torch.Tensor) -> torch.Tensor:
    """K >= 2 class scores; a one-logit binary model z becomes [-z/2, z/2] (same decision, and
    the "other class" gradient is not identically zero, which would leave no admissible pair)."""
    if logits.shape[1] == 1:
        return torch.cat([-logits / 2, logits / 2], dim=1)
    return logits


class JSMA(Attack):
    """Jacobian-based Saliency Map Attack (Papernot et al. 2016).

    Targeted when a target is given; untargeted otherwise (the saliency then lowers the true
    class against all others). Every chosen feature moves by ``theta`` once, clipped to the
    domain; the attack stops for an example once it is adversarial or has changed the largest
    allowed fraction of its features, the L0 budget ``eps`` (the paper's gamma).

    Args:
        theta: change applied to each selected feature (in input units; sign = direction).
        pairwise: the paper's pair search (True), or the single-feature heuristic that ART
            implements (False).
        candidates: features considered by the pair search (the most salient ones).
        max_memory_mb: bound on the memory of the pair scores.
        **kwargs: eps (fraction of features, in [0, 1]), norm (only "l0"), domain,
            stop_when_adversarial, seed (see :class:`Attack`).

    Shape:
        x (N, ...) -> (N, ...)
    """

    name = "jsma"
    norms = (Norm.L0,)

    def __init__(
        self,
        *,
        theta: float = 1.0,
        pairwise: bool = True,
        candidates: int = 1024,
        max_memory_mb: float = 256.0,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("norm", Norm.L0)
        super().__init__(**kwargs)
        if (
            isinstance(theta, bool)
            or not isinstance(theta, int | float)
            or not math.isfinite(theta)
            or theta == 0
        ):
            raise ParameterError(
                f"The 'theta' parameter of JSMA must be a non-zero number. Got {theta!r} instead."
            )
        _check_number("JSMA", "candidates", candidates, minimum=2, integer=True)
        _check_number("JSMA", "max_memory_mb", max_memory_mb, minimum=1)
        self.theta = float(theta)
        self.pairwise = bool(pairwise)
        self.candidates = candidates
        self.max_memory_mb = float(max_memory_mb)

    def params(self) -> dict[str, Any]:
        return {
            **super().params(),
            "theta": self.theta,
            "pairwise": self.pairwise,
            "candidates": self.candidates,
            "max_memory_mb": self.max_memory_mb,
        }

    def _saliency_inputs(
        self, model: nn.Module, x: torch.Tensor, cls: torch.Tensor, targeted: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits, alpha (gradient of the class to raise) and beta (of the others), flattened."""
        x_var = x.clone().requires_grad_(True)
        logits = _class_logits(model(x_var))
        chosen = logits.gather(1, cls[:, None]).sum()
        total = logits.sum()
        alpha = torch.autograd.grad(chosen, x_var, retain_graph=True)[0].flatten(1)
        beta = torch.autograd.grad(total, x_var)[0].flatten(1) - alpha
        if not targeted:  # lower the true class, raise the others
            alpha, beta = -alpha, -beta
        if self.theta < 0:  # lowering a feature flips the sign of its effect
            alpha, beta = -alpha, -beta
        return logits.detach(), alpha, beta

    def _pick(self, alpha: torch.Tensor, beta: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
        """Indices (B, 2) of the features to change (equal for the single-feature variant);
        -1 where no admissible choice exists."""
        neg_inf = torch.tensor(-math.inf, device=alpha.device)
        if not self.pairwise:
            score = torch.where(free & (alpha > 0) & (beta < 0), alpha * -beta, neg_inf)
            best, index = score.max(dim=1)
            index = torch.where(torch.isfinite(best), index, -1)
            return torch.stack([index, index], dim=1)
        k = min(self.candidates, alpha.shape[1])
        single = torch.where(free, alpha - beta, neg_inf)
        cand = single.topk(k, dim=1).indices  # (B, k)
        a, b = alpha.gather(1, cand), beta.gather(1, cand)
        ok = free.gather(1, cand)
        chunk = max(1, int(self.max_memory_mb * 2**20 // (4 * 4 * k * k)))
        picks = []
        eye = torch.eye(k, dtype=torch.bool, device=alpha.device)
        for i in range(0, len(a), chunk):
            ap = a[i : i + chunk, :, None] + a[i : i + chunk, None, :]
            bp = b[i : i + chunk, :, None] + b[i : i + chunk, None, :]
            valid = (ap > 0) & (bp < 0) & ~eye
            valid &= ok[i : i + chunk, :, None] & ok[i : i + chunk, None, :]
            score = torch.where(valid, ap * -bp, neg_inf).flatten(1)
            best, flat = score.max(dim=1)
            p, q = flat // k, flat % k
            pair = torch.stack(
                [
                    cand[i : i + chunk].gather(1, p[:, None])[:, 0],
                    cand[i : i + chunk].gather(1, q[:, None])[:, 0],
                ],
                dim=1,
            )
            picks.append(torch.where(torch.isfinite(best)[:, None], pair, -1))
        return torch.cat(picks)

    def _perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None
    ) -> torch.Tensor:
        targeted = target is not None
        cls = target if target is not None else y
        shape = x.shape
        flat = x.flatten(1).clone()
        features = flat.shape[1]
        budget = int(features * self.eps + 1e-9)
        low, high = self.threat.domain.low, self.threat.domain.high
        edge = high if self.theta > 0 else low
        free = flat != edge if math.isfinite(edge) else torch.ones_like(flat, dtype=torch.bool)
        changed = torch.zeros(len(flat), dtype=torch.long, device=flat.device)
        active = torch.ones(len(flat), dtype=torch.bool, device=flat.device)
        step = 1 if not self.pairwise else 2
        for _ in range(math.ceil(budget / step)):
            idx = active.nonzero().squeeze(1)
            if len(idx) == 0:
                break
            logits, alpha, beta = self._saliency_inputs(
                model, flat[idx].view(-1, *shape[1:]), cls[idx], targeted
            )
            pred = predictions(logits)
            fooled = pred == cls[idx] if targeted else pred != cls[idx]
            pick = self._pick(alpha, beta, free[idx])
            stuck = pick[:, 0] < 0
            stop = (fooled & self.stop_when_adversarial) | stuck | (changed[idx] + step > budget)
            move = idx[~stop]
            chosen = pick[~stop]
            rows = move[:, None].expand_as(chosen)
            flat[rows, chosen] = (flat[rows, chosen] + self.theta).clamp(low, high)
            free[rows, chosen] = False
            changed[move] += step
            active[idx[stop]] = False
        return flat.view(shape)
