"""The evasion-attack contract shared by every attack.

An attack stores its hyperparameters unchanged (keyword-only in ``__init__``), so ``repr`` and a
config hash identify it. Calling it validates the inputs, puts the model in eval mode (restoring
the mode afterwards), never mutates the input, calls ``_perturb`` and projects the result onto the
threat model and the input domain.

Two class attributes say what an attack consumes and what it returns:

- ``inputs = "continuous"`` (images, ECG, tabular features): float inputs inside the domain;
  ``inputs = "tokens"`` (text): int64 token ids of shape (N, L) within the vocabulary of a model
  that implements :class:`~medrobust.models.text.TextModel`.
- ``perturbs = "inputs"``: the result is an input of the same kind (floats, or token ids);
  ``perturbs = "embeddings"``: the result is a (N, L, dim) float tensor of perturbed token
  embeddings, which only ``model.forward_embeddings`` can score.

Whatever the kind, :meth:`Attack.adversarial_logits` scores the result and
:meth:`Attack.perturbation_sizes` measures it, so that a study runner needs no special cases.
"""

from __future__ import annotations

import abc
import math
from typing import Any, ClassVar, Literal, final

import numpy as np
import torch
from torch import nn

from medrobust.errors import InputError, ParameterError
from medrobust.metrics import perturbation_norms
from medrobust.models.text import TextModel
from medrobust.training import predict_logits
from medrobust.types import UNBOUNDED, Domain, Modality, Norm, ThreatModel
from medrobust.validation import check_number

_INTEGER_DTYPES = (torch.int64, torch.int32)


def project(x_adv: torch.Tensor, x: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
    """Project ``x_adv`` onto the threat model's ball around ``x`` and then into its domain.

    For L-inf the result lies in both sets; for L2, clipping to the domain after the ball
    projection can only shrink the perturbation, so the result stays in both sets too.
    """
    # In place after the first allocation: on large inputs a fresh tensor costs as much as the
    # arithmetic.
    delta = x_adv - x
    if threat.norm is Norm.LINF:
        delta.clamp_(-threat.eps, threat.eps)
    elif threat.norm is Norm.L2:
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        factor = (threat.eps / norms).clamp(max=1.0)
        delta.mul_(factor.view(-1, *([1] * (delta.dim() - 1))))
    out = delta.add_(x)
    low, high = threat.domain.low, threat.domain.high
    if math.isfinite(low) or math.isfinite(high):
        out.clamp_(
            min=low if math.isfinite(low) else None, max=high if math.isfinite(high) else None
        )
    return out


def text_model(model: nn.Module, owner: str) -> TextModel:
    """``model`` as a :class:`~medrobust.models.text.TextModel`; an InputError names what it
    lacks otherwise."""
    methods = ("embed", "forward_embeddings")
    missing = [m for m in ("vocab_size", "pad_id", *methods) if not hasattr(model, m)]
    missing += [m for m in methods if hasattr(model, m) and not callable(getattr(model, m))]
    if missing or not isinstance(model, TextModel):
        raise InputError(
            f"{owner} needs a text model with vocab_size, pad_id, embed(ids) and "
            f"forward_embeddings(embeddings, ids), such as TransformerClassifier or "
            f"HuggingFaceClassifier. {type(model).__name__} lacks {', '.join(missing)}."
        )
    return model


class Attack(abc.ABC):
    """Base class of evasion attacks.

    Subclasses set ``name``, ``norms`` (the norms they support), ``modalities``, ``inputs``
    (``"continuous"`` or ``"tokens"``) and ``perturbs`` (``"inputs"`` or ``"embeddings"``), take
    their hyperparameters keyword-only and implement ``_perturb``. Attacks that return embeddings
    or token ids override :meth:`_project`, :meth:`adversarial_logits` and
    :meth:`perturbation_sizes` as needed.

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
    inputs: ClassVar[Literal["continuous", "tokens"]] = "continuous"
    perturbs: ClassVar[Literal["inputs", "embeddings"]] = "inputs"

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
        check_number(type(self).__name__, "eps", eps, minimum=0)
        check_number(type(self).__name__, "seed", seed, minimum=0, integer=True)
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
        if self.inputs == "tokens":
            if x.dtype != torch.int64:
                raise InputError(
                    f"{owner} needs int64 token ids. Got dtype {x.dtype} instead (text attacks "
                    "take the ids of prepare_inputs, not embeddings or floats)."
                )
            if x.dim() != 2 or len(x) == 0 or x.shape[1] == 0:
                raise InputError(
                    f"{owner} needs a non-empty batch of token ids of shape (N, L). "
                    f"Got shape {tuple(x.shape)}."
                )
        else:
            if not x.is_floating_point():
                raise InputError(
                    f"{owner} needs floating-point inputs. Got dtype {x.dtype} instead."
                )
            if x.dim() < 2 or len(x) == 0:
                raise InputError(
                    f"{owner} needs a non-empty batch of shape (N, ...). "
                    f"Got shape {tuple(x.shape)}."
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
        if self.inputs == "tokens":
            return  # ids are checked against the model's vocabulary in _validate_model
        # One pass over the values: NaN propagates through the extremes, infinities show in them.
        seen_low, seen_high = (float(v) for v in torch.aminmax(x))
        if not (math.isfinite(seen_low) and math.isfinite(seen_high)):
            raise InputError(f"{owner} got inputs with NaN or Inf values.")
        domain = self.threat.domain
        if seen_low < domain.low or seen_high > domain.high:
            raise InputError(
                f"{owner} got inputs outside the domain [{domain.low}, {domain.high}]."
            )

    def _validate_model(self, model: nn.Module, x: torch.Tensor) -> None:
        """Checks of the inputs against the model: token ids must be a text model's ids."""
        if self.inputs != "tokens":
            return
        owner = type(self).__name__
        vocab = text_model(model, owner).vocab_size
        if bool(((x < 0) | (x >= vocab)).any()):
            raise InputError(
                f"{owner} got token ids outside [0, {vocab - 1}] for a model with a vocabulary "
                f"of {vocab} (min {int(x.min())}, max {int(x.max())})."
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
            continuous: x (N, ...) float -> (N, ...) like x;
            token attacks: x (N, L) int64 ids -> (N, L) int64 ids;
            embedding attacks: x (N, L) int64 ids -> (N, L, dim) float embeddings.
            y (N,) int64, target (N,) int64 or None.

        Raises:
            InputError: ``x`` is not a non-empty floating-point batch inside the domain and free
                of NaN/Inf (continuous attacks) or not int64 ids of shape (N, L) within the
                model's vocabulary (text attacks, whose model must be a ``TextModel``), the model
                cannot run on it, or labels/targets are not integers of shape (N,) within the
                model's classes.
        """
        # Validate before the model runs, so that bad inputs fail with InputError and not with
        # whatever the first layer raises.
        self._validate_inputs(x, y, target)
        was_training = model.training
        model.eval()
        try:
            device = next(model.parameters()).device
            x_in = x.detach().to(device)
            self._validate_model(model, x_in)
            self._validate_labels(y, target, self._num_outputs(model, x_in))
            y_in = y.to(device).long()
            t_in = target.to(device).long() if target is not None else None
            # cuDNN RNNs cannot backpropagate in eval mode; the native kernels can.
            with torch.backends.cudnn.flags(enabled=False):
                x_adv = self._perturb(model, x_in.clone(), y_in, t_in)
            with torch.no_grad():
                x_adv = self._project(model, x_in, x_adv.detach())
        finally:
            model.train(was_training)
        return x_adv.to(x.device)

    def _project(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        """The final projection of ``__call__``: onto the threat model's ball around ``x`` and
        into the domain. Embedding attacks project around ``model.embed(x)`` instead; token
        attacks enforce their budget while they search and return the ids unchanged."""
        del model
        return project(x_adv, x, self.threat)

    def adversarial_logits(
        self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, *, batch_size: int = 512
    ) -> torch.Tensor:
        """The model's logits on this attack's output ``x_adv`` for the clean inputs ``x``, in
        eval mode without gradients, batched; the model's mode is restored.

        For input-space attacks this is ``model(x_adv)``; embedding attacks score their
        embeddings with ``model.forward_embeddings(x_adv, x)``.

        Shape:
            x (N, ...), x_adv: this attack's output for x -> (N, K) on the CPU
        """
        del x
        with torch.no_grad():
            return predict_logits(model, x_adv, batch_size=batch_size)

    def perturbation_sizes(
        self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor
    ) -> dict[str, np.ndarray]:
        """Per-example sizes of the perturbation from ``x`` to this attack's output ``x_adv``.

        Every attack returns ``"linf"``, ``"l2"`` and ``"l0"`` (float arrays of shape (N,)), so
        that a runner can store them alike; the entry named by the attack's norm is the one its
        budget bounds. Continuous attacks measure ``x_adv - x`` (:func:`perturbation_norms`);
        embedding attacks measure ``x_adv - model.embed(x)``; token attacks give NaN for L-inf
        and L2 (id differences mean nothing) and add ``"tokens_changed"``, the number of
        positions whose id changed (equal to ``"l0"``).
        """
        del model
        return perturbation_norms(x, x_adv)

    @abc.abstractmethod
    def _perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None
    ) -> torch.Tensor:
        """Compute adversarial examples; ``x`` is a private copy on the model's device."""
