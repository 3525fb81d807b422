"""Gradient attacks on continuous inputs: FGSM and PGD under L-inf and L2 budgets."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medrobust.attacks.base import Attack, _check_number, project
from medrobust.metrics import predictions
from medrobust.training import classification_loss
from medrobust.types import Norm


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


def _step_direction(grad: torch.Tensor, norm: Norm) -> torch.Tensor:
    if norm is Norm.LINF:
        return grad.sign()
    norms = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
    return grad / _expand(norms, grad)


class FGSM(Attack):
    """Fast Gradient Sign Method (Goodfellow et al. 2015); the L2 variant steps along the
    normalised gradient (the "fast gradient method").

    Shape:
        x (N, ...) -> (N, ...)
    """

    name = "fgsm"

    def _perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None
    ) -> torch.Tensor:
        x_var = x.clone().requires_grad_(True)
        grad = torch.autograd.grad(_objective(model(x_var), y, target), x_var)[0]
        return x + self.eps * _step_direction(grad, self.threat.norm)


class PGD(Attack):
    """Projected Gradient Descent (Madry et al. 2018), L-inf or L2, with an optional random start
    and restarts. Points that are already adversarial stop being perturbed when
    ``stop_when_adversarial`` is on, so evaluation spends no passes on them.

    Args:
        steps: gradient steps per restart.
        step_size: step length; default ``2.5 * eps / steps``.
        random_start: start from a uniform point of the ball.
        restarts: independent random restarts; a point counts as broken if any restart breaks it.
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
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _check_number("PGD", "steps", steps, minimum=1, integer=True)
        _check_number("PGD", "restarts", restarts, minimum=1, integer=True)
        if step_size is not None:
            _check_number("PGD", "step_size", step_size, minimum=0)
        self.steps = steps
        self.step_size = step_size
        self.random_start = bool(random_start)
        self.restarts = restarts

    def params(self) -> dict[str, Any]:
        return {
            **super().params(),
            "steps": self.steps,
            "step_size": self.step_size,
            "random_start": self.random_start,
            "restarts": self.restarts,
        }

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

    def _run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One restart; returns the adversarial inputs and which of them fool the model."""
        step = self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps
        x_adv = self._random_start(x, generator) if self.random_start else x.clone()
        done = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for _ in range(self.steps):
            active = (~done).nonzero().squeeze(1)
            if len(active) == 0:
                break
            x_var = x_adv[active].clone().requires_grad_(True)
            logits = model(x_var)
            t_active = target[active] if target is not None else None
            if self.stop_when_adversarial:
                fooled = _adversarial(logits.detach(), y[active], t_active)
                done[active[fooled]] = True
            grad = torch.autograd.grad(_objective(logits, y[active], t_active), x_var)[0]
            moved = project(
                x_var.detach() + step * _step_direction(grad, self.threat.norm),
                x[active],
                self.threat,
            )
            keep = done[active]
            x_adv[active] = torch.where(_expand(keep, moved), x_adv[active], moved)
        with torch.no_grad():
            fooled = _adversarial(model(x_adv), y, target)
        return x_adv, fooled

    def _perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None
    ) -> torch.Tensor:
        generator = torch.Generator(device=x.device)
        generator.manual_seed(self.seed)
        best, fooled = self._run(model, x, y, target, generator)
        for _ in range(self.restarts - 1):
            todo = (~fooled).nonzero().squeeze(1)
            if len(todo) == 0:
                break
            t_todo = target[todo] if target is not None else None
            candidate, hit = self._run(model, x[todo], y[todo], t_todo, generator)
            best[todo] = torch.where(_expand(hit, candidate), candidate, best[todo])
            fooled[todo] = hit
        return best
