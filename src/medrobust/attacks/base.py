"""The evasion-attack contract shared by every attack.

An attack stores its hyperparameters unchanged (keyword-only in ``__init__``), so ``repr`` and a
config hash identify it. Calling it validates the inputs, puts the model in eval mode (restoring
the mode afterwards), never mutates the input, calls ``_perturb`` and projects the result onto the
threat model and the input domain.
"""

from __future__ import annotations

import abc
import math
from typing import Any, ClassVar, final

import torch
from torch import nn

from medrobust.errors import InputError, ParameterError
from medrobust.types import UNBOUNDED, Domain, Modality, Norm, ThreatModel

_INTEGER_DTYPES = (torch.int64, torch.int32)


def project(x_adv: torch.Tensor, x: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
    """Project ``x_adv`` onto the threat model's ball around ``x`` and then into its domain.

    For L-inf the result lies in both sets; for L2, clipping to the domain after the ball
    projection can only shrink the perturbation, so the result stays in both sets too.
    """
    delta = x_adv - x
    if threat.norm is Norm.LINF:
        delta = delta.clamp(-threat.eps, threat.eps)
    elif threat.norm is Norm.L2:
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        factor = (threat.eps / norms).clamp(max=1.0)
        delta = delta * factor.view(-1, *([1] * (delta.dim() - 1)))
    out = x + delta
    low, high = threat.domain.low, threat.domain.high
    if math.isfinite(low) or math.isfinite(high):
        out = out.clamp(
            min=low if math.isfinite(low) else None, max=high if math.isfinite(high) else None
        )
    return out


def _check_number(
    owner: str, name: str, value: Any, *, minimum: float, integer: bool = False
) -> None:
    kind = "an integer" if integer else "a number"
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok or math.isnan(value) or value < minimum:
        raise ParameterError(
            f"The '{name}' parameter of {owner} must be {kind} >= {minimum}. Got {value!r} instead."
        )


class Attack(abc.ABC):
    """Base class of evasion attacks.

    Subclasses set ``name``, ``norms`` (the norms they support) and ``modalities``, take their
    hyperparameters keyword-only and implement ``_perturb``.

    Args:
        norm: the perturbation norm.
        eps: the radius of the perturbation ball.
        domain: valid input range; the result is clipped into it.
        stop_when_adversarial: stop perturbing points once they are misclassified (saves
            compute in success-rate evaluation; it does not change which points succeed).
        seed: seed of the attack's randomness (random starts).
    """

    name: ClassVar[str] = "attack"
    norms: ClassVar[tuple[Norm, ...]] = (Norm.LINF, Norm.L2)
    modalities: ClassVar[frozenset[Modality]] = frozenset(
        {Modality.IMAGE, Modality.ECG, Modality.TABULAR}
    )

    def __init__(
        self,
        *,
        norm: Norm | str = Norm.LINF,
        eps: float,
        domain: Domain = UNBOUNDED,
        stop_when_adversarial: bool = True,
        seed: int = 0,
    ) -> None:
        parsed = Norm.parse(norm)
        if parsed not in self.norms:
            raise ParameterError(
                f"The 'norm' parameter of {type(self).__name__} must be one of "
                f"{[n.value for n in self.norms]}. Got {parsed.value!r} instead."
            )
        _check_number(type(self).__name__, "eps", eps, minimum=0)
        _check_number(type(self).__name__, "seed", seed, minimum=0, integer=True)
        self.threat = ThreatModel(parsed, float(eps), domain)
        self.stop_when_adversarial = bool(stop_when_adversarial)
        self.seed = seed

    @property
    def eps(self) -> float:
        """The perturbation budget."""
        return self.threat.eps

    def params(self) -> dict[str, Any]:
        """The hyperparameters that identify this attack (JSON-serialisable)."""
        return {
            "norm": self.threat.norm.value,
            "eps": self.threat.eps,
            "domain": [self.threat.domain.low, self.threat.domain.high],
            "stop_when_adversarial": self.stop_when_adversarial,
            "seed": self.seed,
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"

    def _validate_inputs(
        self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None
    ) -> None:
        """Checks that need no model: run before the model ever sees the inputs."""
        owner = type(self).__name__
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise InputError(f"{owner} needs torch tensors x and y. Got {type(x).__name__}.")
        if not x.is_floating_point():
            raise InputError(f"{owner} needs floating-point inputs. Got dtype {x.dtype} instead.")
        if x.dim() < 2 or len(x) == 0:
            raise InputError(
                f"{owner} needs a non-empty batch of shape (N, ...). Got shape {tuple(x.shape)}."
            )
        for name, labels in (("labels", y), ("targets", target)):
            if labels is None:
                continue
            if not isinstance(labels, torch.Tensor):
                raise InputError(f"{owner} needs {name} as a tensor. Got {type(labels).__name__}.")
            if labels.shape != (len(x),) or labels.dtype not in _INTEGER_DTYPES:
                raise InputError(
                    f"{owner} needs integer {name} of shape ({len(x)},). "
                    f"Got shape {tuple(labels.shape)} and dtype {labels.dtype} instead."
                )
        if not torch.isfinite(x).all():
            raise InputError(f"{owner} got inputs with NaN or Inf values.")
        domain = self.threat.domain
        if bool((x < domain.low).any()) or bool((x > domain.high).any()):
            raise InputError(
                f"{owner} got inputs outside the domain [{domain.low}, {domain.high}]."
            )

    def _validate_labels(
        self, y: torch.Tensor, target: torch.Tensor | None, num_outputs: int
    ) -> None:
        """Checks that need the model's number of outputs."""
        owner = type(self).__name__
        classes = max(num_outputs, 2)
        for name, labels in (("labels", y), ("targets", target)):
            if labels is not None and bool(((labels < 0) | (labels >= classes)).any()):
                raise InputError(
                    f"{owner} got {name} outside [0, {classes - 1}] for a model with "
                    f"{classes} classes."
                )

    def _num_outputs(self, model: nn.Module, x: torch.Tensor) -> int:
        """The model's number of logits, from one example; inputs it cannot eat are an error."""
        owner = type(self).__name__
        try:
            with torch.no_grad():
                logits = model(x[:1])
        except (RuntimeError, ValueError, IndexError) as exc:
            raise InputError(
                f"{owner} could not run the model on inputs of shape {tuple(x.shape)}: {exc}"
            ) from exc
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or len(logits) != 1:
            raise InputError(
                f"{owner} needs a model that returns logits of shape (N, K). Got "
                f"{tuple(getattr(logits, 'shape', ()))} for one input of shape {tuple(x.shape)}."
            )
        return int(logits.shape[1])

    @final
    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        target: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return adversarial examples for ``(x, y)``; targeted when ``target`` is given.

        Shape:
            x (N, ...) float, y (N,) int64, target (N,) int64 or None -> (N, ...) like x

        Raises:
            InputError: ``x`` is not a non-empty floating-point batch inside the domain and free
                of NaN/Inf, the model cannot run on it, or labels/targets are not integers of
                shape (N,) within the model's classes.
        """
        # Validate before the model runs, so that bad inputs fail with InputError and not with
        # whatever the first layer raises.
        self._validate_inputs(x, y, target)
        was_training = model.training
        model.eval()
        try:
            device = next(model.parameters()).device
            x_in = x.detach().to(device)
            self._validate_labels(y, target, self._num_outputs(model, x_in))
            y_in = y.to(device).long()
            t_in = target.to(device).long() if target is not None else None
            # cuDNN RNNs cannot backpropagate in eval mode; the native kernels can.
            with torch.backends.cudnn.flags(enabled=False):
                x_adv = self._perturb(model, x_in.clone(), y_in, t_in)
            x_adv = project(x_adv.detach(), x_in, self.threat)
        finally:
            model.train(was_training)
        return x_adv.to(x.device)

    @abc.abstractmethod
    def _perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None
    ) -> torch.Tensor:
        """Compute adversarial examples; ``x`` is a private copy on the model's device."""
