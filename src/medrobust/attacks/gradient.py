"""Gradient attacks on continuous inputs: FGSM and PGD under L-inf and L2 budgets.

Their cost is the model's forward+backward passes and little else: FGSM makes one, PGD one per
step and point still attacked (no final check unless restarts need it). Where the first pass is
taken at the clean inputs (FGSM; PGD without a random start), the forward that validates the
model's outputs is run on the whole batch and its graph reused for that pass, so validation adds
no forward of its own.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from medrobust.attacks.base import MODEL_ERRORS, Attack, check_finite, check_flag, project
from medrobust.errors import MedrobustError, ParameterError
from medrobust.metrics import predictions
from medrobust.training import classification_loss
from medrobust.types import Norm
from medrobust.validation import check_number


def _expand(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *([1] * (like.dim() - 1)))


def _adversarial(
    logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None
) -> torch.Tensor:
    pred = predictions(logits)
    return pred == target if target is not None else pred != y


def _objective(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """Summed loss to ascend: the true-label loss, or minus the target-label loss."""
    if target is None:
        return classification_loss(logits, y) * len(y)
    return -classification_loss(logits, target) * len(y)


def _margin_objective(
    logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None
) -> torch.Tensor:
    """Summed logit margin to ascend (Carlini & Wagner 2017): the best other logit minus the
    true one, or the target logit minus the best other. Unlike cross-entropy it never saturates,
    so a confidently classified point still has a gradient. A one-logit model z is the pair
    [-z/2, z/2]."""
    if logits.shape[1] == 1:
        logits = torch.cat([-logits / 2, logits / 2], dim=1)
    label = (y if target is None else target).unsqueeze(1)
    own = logits.gather(1, label).squeeze(1)
    others = logits.scatter(1, label, float("-inf")).amax(dim=1)
    margin = others - own if target is None else own - others
    return margin.sum()


LOSSES = {"ce": _objective, "margin": _margin_objective}


class IterativeSettings:
    """The hyperparameters that PGD in input space and in embedding space share.

    Args:
        steps: gradient steps per restart.
        step_size: step length, a finite number >= 0; default ``2.5 * eps / steps``.
        random_start: start from a uniform point of the ball (True or False).
        restarts: independent random restarts; a point counts as broken if any restart breaks it.
        loss: ``"ce"`` (cross-entropy) or ``"margin"`` (the logit margin of Carlini & Wagner,
            which does not saturate on confidently classified points).
    """

    steps: int
    step_size: float | None
    random_start: bool
    restarts: int
    loss: str

    def _set_iterative(
        self,
        owner: str,
        steps: int,
        step_size: float | None,
        random_start: bool,
        restarts: int,
        loss: str,
    ) -> None:
        check_number(owner, "steps", steps, minimum=1, integer=True)
        check_number(owner, "restarts", restarts, minimum=1, integer=True)
        if step_size is not None:
            check_finite(owner, "step_size", step_size, minimum=0)
        if not isinstance(loss, str) or loss not in LOSSES:
            raise ParameterError(
                f"The 'loss' parameter of {owner} must be one of {sorted(LOSSES)}. "
                f"Got {loss!r} instead."
            )
        # NumPy numbers become Python ones, equal in value: params() must be JSON.
        self.steps, self.restarts = int(steps), int(restarts)
        self.step_size = float(step_size) if step_size is not None else None
        self.random_start = check_flag(owner, "random_start", random_start)
        self.loss = loss

    def _iterative_params(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "step_size": self.step_size,
            "random_start": self.random_start,
            "restarts": self.restarts,
            "loss": self.loss,
        }

    def _loss_to_ascend(
        self, logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None
    ) -> torch.Tensor:
        return LOSSES[self.loss](logits, y, target)


def _step_direction(grad: torch.Tensor, norm: Norm) -> torch.Tensor:
    if norm is Norm.LINF:
        return grad.sign()
    norms = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
    return grad / _expand(norms, grad)


def _step(x: torch.Tensor, grad: torch.Tensor, size: float, norm: Norm) -> torch.Tensor:
    """``x + size * direction(grad)``, written over ``grad`` where it is safe: on large inputs a
    fresh allocation costs as much as the arithmetic."""
    if norm is Norm.LINF and grad.is_contiguous() and grad.shape == x.shape:
        return torch.add(x, grad.sign_(), alpha=size, out=grad)
    return torch.add(x, _step_direction(grad, norm), alpha=size)


class _GradientAttack(Attack):
    """Shares the validation forward with the first gradient pass when both see the clean batch.

    ``Attack.__call__`` asks ``_num_outputs`` for the model's number of logits before it calls
    ``_perturb``. Here that forward runs on the whole batch with autograd on, and ``_perturb``
    takes its graph as the first pass (checked to be for the same model and inputs), so that
    validating costs no extra forward. The graph lives only between those two calls.
    """

    _first_pass: tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def _starts_at_clean_inputs(self) -> bool:
        """Whether the first gradient pass is taken at the clean inputs."""
        return True

    def _num_outputs(self, model: nn.Module, x: torch.Tensor) -> int:
        self._first_pass = None
        if not self._starts_at_clean_inputs():
            return super()._num_outputs(model, x)
        x_var = x.detach().requires_grad_(True)
        try:
            with torch.enable_grad(), torch.backends.cudnn.flags(enabled=False):
                logits = model(x_var)
        except (MedrobustError, torch.cuda.OutOfMemoryError):
            raise
        except MODEL_ERRORS:
            # The base class names the problem; if one input runs, _perturb meets it again.
            return super()._num_outputs(model, x)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or len(logits) != len(x):
            return super()._num_outputs(model, x)
        self._first_pass = (model, x, x_var, logits)
        return int(logits.shape[1])

    def _validate_labels(
        self, y: torch.Tensor, target: torch.Tensor | None, num_outputs: int
    ) -> None:
        try:
            super()._validate_labels(y, target, num_outputs)
        except Exception:
            self._first_pass = None  # do not keep the graph alive past a failed call
            raise

    def _take_first_pass(
        self, model: nn.Module, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The leaf and logits of the validation forward, if it was on ``model`` at ``x``."""
        cached, self._first_pass = self._first_pass, None
        if cached is None:
            return None
        owner, x_seen, x_var, logits = cached
        if owner is not model or x_seen.shape != x.shape or x_seen.dtype != x.dtype:
            return None
        # Attack.__call__ hands _perturb a copy of the inputs it validated; a strided sample of
        # them (a full comparison costs as much as a step) guards against any other caller.
        stride = max(1, x.numel() // 4096)
        if not torch.equal(x_seen.reshape(-1)[::stride], x.reshape(-1)[::stride]):
            return None
        return x_var, logits


class FGSM(_GradientAttack):
    """Fast Gradient Sign Method (Goodfellow et al. 2015); the L2 variant steps along the
    normalised gradient (the "fast gradient method"). One forward+backward pass.

    Shape:
        x (N, ...) -> (N, ...)
    """

    name = "fgsm"

    def _perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None
    ) -> torch.Tensor:
        first = self._take_first_pass(model, x)
        with torch.enable_grad():
            if first is None:
                x_var = x.clone().requires_grad_(True)
                first = x_var, model(x_var)
            grad = torch.autograd.grad(_objective(first[1], y, target), first[0])[0]
        return _step(x, grad, self.eps, self.threat.norm)


class PGD(_GradientAttack, IterativeSettings):
    """Projected Gradient Descent (Madry et al. 2018), L-inf or L2, with an optional random start
    and restarts. Points that are already adversarial stop being perturbed when
    ``stop_when_adversarial`` is on, so evaluation spends no passes on them: the check reuses the
    logits of each step's gradient pass. A run makes one forward+backward pass per step and
    point still attacked; only restarts add a forward, to find the points left to attack.

    Args:
        steps, step_size, random_start, restarts, loss: see :class:`IterativeSettings`.
        **kwargs: norm, eps, domain, stop_when_adversarial, seed (see :class:`Attack`).

    Shape:
        x (N, ...) -> (N, ...)
    """

    name = "pgd"

    def __init__(
        self,
        *,
        steps: int = 10,
        step_size: float | None = None,
        random_start: bool = True,
        restarts: int = 1,
        loss: str = "ce",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._set_iterative("PGD", steps, step_size, random_start, restarts, loss)

    def params(self) -> dict[str, Any]:
        return {**super().params(), **self._iterative_params()}

    def _starts_at_clean_inputs(self) -> bool:
        return not self.random_start

    def _random_start(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.threat.norm is Norm.LINF:
            noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            return project(x + (2 * noise - 1) * self.eps, x, self.threat)
        direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        direction = direction / _expand(direction.flatten(1).norm(dim=1).clamp_min(1e-12), x)
        dims = x[0].numel()
        radius = torch.rand(len(x), generator=generator, device=x.device, dtype=x.dtype)
        radius = radius.pow(1.0 / dims) * self.eps
        return project(x + direction * _expand(radius, x), x, self.threat)

    def _linf_box(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-coordinate bounds of the L-inf ball intersected with the domain: clamping to them
        is :func:`project` in one operation."""
        low, high = self.threat.domain.low, self.threat.domain.high
        lower, upper = x - self.eps, x + self.eps
        if math.isfinite(low):
            lower.clamp_(min=low)
        if math.isfinite(high):
            upper.clamp_(max=high)
        return lower, upper

    def _run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        generator: torch.Generator,
        *,
        first: tuple[torch.Tensor, torch.Tensor] | None = None,
        need_status: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One restart; returns the adversarial inputs and, if ``need_status``, which of them
        fool the model. ``first`` is a gradient pass already taken at the starting point."""
        step = self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps
        linf = self.threat.norm is Norm.LINF
        x_adv = self._random_start(x, generator) if self.random_start else x.clone()
        box = self._linf_box(x) if linf else None
        done = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        active: torch.Tensor | None = None  # indices still attacked; None while all are
        for i in range(self.steps):
            if active is None:
                x_cur, x_org, y_cur, t_cur, b_cur = x_adv, x, y, target, box
            else:
                x_cur, x_org, y_cur = x_adv[active], x[active], y[active]
                t_cur = target[active] if target is not None else None
                b_cur = (box[0][active], box[1][active]) if box is not None else None
            with torch.enable_grad():
                if i == 0 and first is not None:
                    x_var, logits = first
                else:
                    x_var = x_cur.detach().requires_grad_(True)
                    logits = model(x_var)
                grad = torch.autograd.grad(self._loss_to_ascend(logits, y_cur, t_cur), x_var)[0]
            moved = _step(x_cur, grad, step, self.threat.norm)
            if b_cur is not None:
                moved.clamp_(b_cur[0], b_cur[1])
            else:
                moved = project(moved, x_org, self.threat)
            fooled = None
            if self.stop_when_adversarial:
                fooled = _adversarial(logits.detach(), y_cur, t_cur)
                if bool(fooled.any()):
                    moved = torch.where(_expand(fooled, moved), x_cur, moved)
                else:
                    fooled = None
            if active is None:
                x_adv = moved
            else:
                x_adv[active] = moved
            if fooled is not None:
                done[fooled.nonzero().squeeze(1) if active is None else active[fooled]] = True
                active = (~done).nonzero().squeeze(1)
                if len(active) == 0:
                    break
        if not need_status:
            return x_adv, None
        fooled_now = done.clone()
        rest = (~done).nonzero().squeeze(1)
        if len(rest):
            with torch.no_grad():
                t_rest = target[rest] if target is not None else None
                fooled_now[rest] = _adversarial(model(x_adv[rest]), y[rest], t_rest)
        return x_adv, fooled_now

    def _perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None
    ) -> torch.Tensor:
        generator = torch.Generator(device=x.device)
        generator.manual_seed(self.seed)
        first = self._take_first_pass(model, x)
        need_status = self.restarts > 1  # only restarts need to know which points fool it
        best, fooled = self._run(
            model, x, y, target, generator, first=first, need_status=need_status
        )
        for _ in range(self.restarts - 1):
            if fooled is None or bool(fooled.all()):
                break
            todo = (~fooled).nonzero().squeeze(1)
            t_todo = target[todo] if target is not None else None
            candidate, hit = self._run(model, x[todo], y[todo], t_todo, generator)
            if hit is None:
                break
            best[todo] = torch.where(_expand(hit, candidate), candidate, best[todo])
            fooled[todo] = hit
        return best
