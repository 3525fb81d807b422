"""Jacobian-based Saliency Map Attack (Papernot et al. 2016), an L0 attack.

The attack raises (``theta > 0``) or lowers (``theta < 0``) a few input features at a time,
chosen by a saliency map built from the gradients of the target logit (alpha) and of the other
logits (beta). The paper's search picks the *pair* of features whose joint change most increases
the target and decreases the others; done naively that is O(features^2) memory per example (84 GiB
for one 224 px image in a popular library).

Here the pair search runs over the ``candidates`` features with the largest ``alpha - beta`` (all
features when there are fewer), and usually over far fewer: a pair's score
``(a_p + a_q) * -(b_p + b_q)`` is at most ``((c_p + c_q) / 2) ** 2`` with ``c = alpha - beta``
(AM-GM), so once the best pair among the top ``k`` candidates beats that bound for every pair that
involves a feature outside them, it is the best pair of all and the search stops; otherwise ``k``
doubles, up to ``candidates``. The pair scores are computed in tiles of examples and rows so that
they never take more than ``max_memory_mb`` (at most 16 bytes per scored pair).

Each step costs one forward pass and two backward passes (one per gradient) on the examples still
attacked; the forward also tells which of them are already adversarial.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from medrobust.attacks.base import Attack, check_finite, check_flag
from medrobust.errors import ParameterError
from medrobust.metrics import predictions
from medrobust.types import Norm
from medrobust.validation import check_number

# Bytes held per scored pair at the peak of the pair search (two float sums and two masks, with
# room to spare), and the first number of candidates the pair search tries.
_PAIR_BYTES = 16
_FIRST_CANDIDATES = 64


def _class_logits(logits: torch.Tensor) -> torch.Tensor:
    """K >= 2 class scores; a one-logit binary model z becomes [-z/2, z/2] (same decision, and
    the "other class" gradient is not identically zero, which would leave no admissible pair)."""
    if logits.shape[1] == 1:
        return torch.cat([-logits / 2, logits / 2], dim=1)
    return logits


class JSMA(Attack):
    """Jacobian-based Saliency Map Attack (Papernot et al. 2016).

    Targeted when a target is given; untargeted otherwise (the saliency then lowers the true
    class against all others, so any number of classes works). Every chosen feature moves by
    ``theta`` once, clipped to the domain; the attack stops for an example once it is adversarial
    or has changed the largest allowed fraction of its features, the L0 budget ``eps`` (the
    paper's gamma).

    Args:
        theta: change applied to each selected feature (in input units; sign = direction).
        pairwise: the paper's pair search (True), or one feature per step, the one with the
            largest single-feature saliency ``alpha * -beta`` among those with ``alpha > 0`` and
            ``beta < 0`` (False). ART's SaliencyMapMethod is a cruder single-feature heuristic:
            it ranks features by alpha alone and changes the top two per step.
        candidates: most features considered by the pair search (the most salient ones).
        max_memory_mb: bound on the memory of the pair scores (a finite number >= 1).
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
        check_number("JSMA", "candidates", candidates, minimum=2, integer=True)
        check_finite("JSMA", "max_memory_mb", max_memory_mb, minimum=1)
        self.theta = float(theta)
        self.pairwise = check_flag("JSMA", "pairwise", pairwise)
        self.candidates = int(candidates)
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
        """Logits, alpha (gradient of the class to raise) and beta (of the others), flattened:
        one forward pass and two backward passes (vector-Jacobian products)."""
        x_var = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = _class_logits(model(x_var))
            chosen = torch.zeros_like(logits).scatter_(1, cls[:, None], 1.0)
            alpha = torch.autograd.grad(logits, x_var, chosen, retain_graph=True)[0].flatten(1)
            beta = torch.autograd.grad(logits, x_var, 1.0 - chosen)[0].flatten(1)
        if not targeted:  # lower the true class, raise the others
            alpha, beta = -alpha, -beta
        if self.theta < 0:  # lowering a feature flips the sign of its effect
            alpha, beta = -alpha, -beta
        return logits.detach(), alpha, beta

    def _best_pairs(
        self, a: torch.Tensor, b: torch.Tensor, ok: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Best admissible pair among ``k`` candidates per example: its score (-inf if none) and
        its flat index ``p * k + q`` into the candidates. Tiled to stay in ``max_memory_mb``."""
        rows, k = a.shape
        budget = max(1, int(self.max_memory_mb * 2**20) // _PAIR_BYTES)  # pairs per tile
        chunk = max(1, min(rows, budget // (k * k)))
        block = k if chunk > 1 or k * k <= budget else max(1, budget // k)
        best = torch.full((rows,), -math.inf, device=a.device, dtype=a.dtype)
        argbest = torch.zeros(rows, dtype=torch.long, device=a.device)
        columns = torch.arange(k, device=a.device)
        for i in range(0, rows, chunk):
            j = min(i + chunk, rows)
            for p0 in range(0, k, block):
                p1 = min(p0 + block, k)
                ap = a[i:j, p0:p1, None] + a[i:j, None, :]  # (c, P, k)
                bp = b[i:j, p0:p1, None] + b[i:j, None, :]
                valid = ap > 0
                valid &= bp < 0
                valid &= ok[i:j, p0:p1, None]
                valid &= ok[i:j, None, :]
                valid &= (columns[p0:p1, None] != columns[None, :])[None]
                bp.mul_(ap)  # minus the score: the product is negative where valid
                del ap
                bp.masked_fill_(~valid, math.inf)
                low, flat = bp.flatten(1).min(dim=1)
                score = -low
                better = score > best[i:j]
                best[i:j] = torch.where(better, score, best[i:j])
                argbest[i:j] = torch.where(better, flat + p0 * k, argbest[i:j])
        return best, argbest

    def _pick(self, alpha: torch.Tensor, beta: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
        """Indices (B, 2) of the features to change (equal for the single-feature variant);
        -1 where no admissible choice exists."""
        neg_inf = torch.tensor(-math.inf, device=alpha.device)
        if not self.pairwise:
            score = torch.where(free & (alpha > 0) & (beta < 0), alpha * -beta, neg_inf)
            best, index = score.max(dim=1)
            index = torch.where(torch.isfinite(best), index, -1)
            return torch.stack([index, index], dim=1)
        features = alpha.shape[1]
        most = min(self.candidates, features)
        single = torch.where(free, alpha - beta, neg_inf)
        picks = torch.full((len(alpha), 2), -1, dtype=torch.long, device=alpha.device)
        pending = torch.arange(len(alpha), device=alpha.device)
        k = min(_FIRST_CANDIDATES, most)
        while len(pending):
            # One more than searched: the best feature left out bounds the pairs that use it.
            ranked = single[pending].topk(min(k + 1, features), dim=1)
            cand = ranked.indices[:, :k]
            best, flat = self._best_pairs(
                alpha[pending].gather(1, cand),
                beta[pending].gather(1, cand),
                free[pending].gather(1, cand),
            )
            if k < most:
                # Any pair with a feature outside the top k scores at most ((c1 + c_k+1) / 2)^2,
                # and no such pair is admissible when c1 + c_k+1 <= 0.
                top = ranked.values[:, 0] + ranked.values[:, k]
                bound = torch.where(top > 0, (top / 2) ** 2, neg_inf)
                settled = (best > bound) | torch.isneginf(bound)
            else:
                settled = torch.ones_like(best, dtype=torch.bool)
            rows = pending[settled]
            pair = torch.stack([flat // k, flat % k], dim=1)[settled]
            found = cand[settled].gather(1, pair)
            picks[rows] = torch.where(torch.isfinite(best[settled])[:, None], found, -1)
            pending = pending[~settled]
            k = min(2 * k, most)
        return picks

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
            stop = (fooled & self.stop_when_adversarial) | (changed[idx] + step > budget)
            go = ~stop
            pick = torch.full((len(idx), 2), -1, dtype=torch.long, device=flat.device)
            if bool(go.any()):
                pick[go] = self._pick(alpha[go], beta[go], free[idx[go]])
            stop |= pick[:, 0] < 0
            move = idx[~stop]
            chosen = pick[~stop]
            rows = move[:, None].expand_as(chosen)
            flat[rows, chosen] = (flat[rows, chosen] + self.theta).clamp(low, high)
            free[rows, chosen] = False
            changed[move] += step
            active[idx[stop]] = False
        return flat.view(shape)
