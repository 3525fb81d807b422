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
import itertools
import math
from typing import Any, ClassVar, Literal, final

import numpy as np
import torch
from torch import nn

from medrobust.errors import InputError, MedrobustError, ParameterError
from medrobust.metrics import perturbation_norms
from medrobust.models.text import TextModel
from medrobust.training import predict_logits
from medrobust.types import UNBOUNDED, Domain, Modality, Norm, ThreatModel
from medrobust.validation import check_number, check_seed

_INTEGER_DTYPES = (torch.int64, torch.int32)
# What a model's forward raises on inputs it cannot eat (shape, dtype, index and unsupported
# operations): reported as an InputError that names the inputs, with the model's error chained.
MODEL_ERRORS = (RuntimeError, ValueError, IndexError, TypeError, NotImplementedError)


def check_finite(
    owner: str, name: str, value: Any, *, minimum: float, integer: bool = False
) -> Any:
    """``value`` if it is a finite number (an integer when ``integer``) >= ``minimum``.

    Raises:
        ParameterError: as :func:`~medrobust.validation.check_number`, and "The '<name>'
            parameter of <owner> must be a finite number >= <minimum>. Got inf instead." for an
            infinity (an infinite budget, step or memory bound overflows the arithmetic).
    """
    check_number(owner, name, value, minimum=minimum, integer=integer)
    if not math.isfinite(value):
        raise ParameterError(
            f"The '{name}' parameter of {owner} must be a finite number >= {minimum}. "
            f"Got {value!r} instead."
        )
    return value


def check_flag(owner: str, name: str, value: Any) -> bool:
    """``value`` as a bool if it is one (Python or NumPy); a ParameterError otherwise, so that
    a string such as ``"false"`` is not silently read as True."""
    if not isinstance(value, bool | np.bool_):
        raise ParameterError(
            f"The '{name}' parameter of {owner} must be True or False. Got {value!r} instead."
        )
    return bool(value)


def check_module(owner: str, model: Any, name: str = "model") -> nn.Module:
    """``model`` if it is an ``nn.Module``; a ParameterError otherwise (for a model given to
    a constructor or a defense; a model given to an attack call is an input, see
    :func:`model_placement`)."""
    if not isinstance(model, nn.Module):
        raise ParameterError(
            f"The '{name}' parameter of {owner} must be a torch.nn.Module. "
            f"Got {type(model).__name__} instead."
        )
    return model


def check_tensor(owner: str, name: str, value: Any) -> torch.Tensor:
    """``value`` if it is a dense torch tensor that holds values.

    Raises:
        InputError: ``value`` is not a ``torch.Tensor`` (NumPy arrays and lists included: convert
            them with ``torch.as_tensor``), is sparse, or lives on the ``meta`` device, which
            holds shapes but no values.
    """
    if not isinstance(value, torch.Tensor):
        raise InputError(
            f"{owner} needs {name} as a torch tensor. Got {type(value).__name__} instead."
        )
    if value.layout != torch.strided:
        raise InputError(
            f"{owner} needs {name} as a dense tensor. Got layout {value.layout} instead "
            "(convert it with .to_dense())."
        )
    if value.is_meta:
        raise InputError(
            f"{owner} needs {name} with values. Got a tensor on the meta device, which holds none."
        )
    return value


def check_labels(owner: str, name: str, labels: Any, n: int) -> torch.Tensor:
    """``labels`` if they are a dense int64 or int32 tensor of shape ``(n,)``; an InputError
    otherwise (their range needs the model: see :meth:`Attack._validate_labels`)."""
    if not isinstance(labels, torch.Tensor):
        raise InputError(f"{owner} needs {name} as a tensor. Got {type(labels).__name__}.")
    check_tensor(owner, name, labels)
    if labels.shape != (n,) or labels.dtype not in _INTEGER_DTYPES:
        raise InputError(
            f"{owner} needs integer {name} of shape ({n},). "
            f"Got shape {tuple(labels.shape)} and dtype {labels.dtype} instead."
        )
    return labels


def check_finite_inputs(owner: str, x: torch.Tensor, domain: Domain) -> None:
    """An InputError if floating-point ``x`` holds NaN or Inf or leaves ``domain``."""
    # One pass over the values: NaN propagates through the extremes, infinities show in them.
    seen_low, seen_high = (float(v) for v in torch.aminmax(x.detach()))
    if not (math.isfinite(seen_low) and math.isfinite(seen_high)):
        raise InputError(f"{owner} got inputs with NaN or Inf values.")
    if seen_low < domain.low or seen_high > domain.high:
        raise InputError(f"{owner} got inputs outside the domain [{domain.low}, {domain.high}].")


def model_placement(owner: str, model: Any) -> tuple[torch.device | None, torch.dtype | None]:
    """The device and floating-point dtype of ``model``'s first parameter (or buffer); ``None``
    for what a model without tensors does not fix.

    Raises:
        InputError: ``model`` is not an ``nn.Module``, or its tensors are on the meta device
            (built without weights: load them before attacking or evaluating it).
    """
    if not isinstance(model, nn.Module):
        raise InputError(
            f"{owner} needs a torch.nn.Module model. Got {type(model).__name__} instead."
        )
    device: torch.device | None = None
    dtype: torch.dtype | None = None
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if device is None:
            device = tensor.device
        if tensor.is_floating_point():
            dtype = tensor.dtype
            break
    if device is not None and device.type == "meta":
        raise InputError(
            f"{owner} needs a model with weights. Got {type(model).__name__} with its tensors on "
            "the meta device; load its weights first (e.g. to_empty() and load_state_dict())."
        )
    return device, dtype


def check_model_dtype(owner: str, x: torch.Tensor, dtype: torch.dtype | None) -> None:
    """An InputError if floating-point ``x`` is not in the model's floating-point ``dtype``.

    Inputs are not cast: a silent cast would change float64 values the caller measures the
    perturbation against (and lose precision both ways), so the caller casts, once.
    """
    if dtype is not None and x.dtype != dtype:
        raise InputError(
            f"{owner} needs inputs in the model's dtype {dtype}. Got dtype {x.dtype} instead "
            f"(cast them with x.to({dtype}))."
        )


def run_model(
    owner: str,
    model: nn.Module,
    x: torch.Tensor,
    *,
    what: str = "inputs",
    shape: tuple[int, ...] | None = None,
) -> Any:
    """``model(x)``; what a model raises on inputs it cannot eat (:data:`MODEL_ERRORS`) becomes
    an InputError that names the inputs and their ``shape`` (default ``x``'s), with the model's
    error chained. Medrobust's own errors (from a wrapper inside) and running out of GPU memory
    propagate as they are."""
    try:
        return model(x)
    except (MedrobustError, torch.cuda.OutOfMemoryError):
        raise
    except MODEL_ERRORS as exc:
        seen = tuple(x.shape) if shape is None else shape
        raise InputError(
            f"{owner} could not run the model on {what} of shape {seen}: {exc}"
        ) from exc


def check_logits(owner: str, logits: Any, n: int, inputs: str) -> torch.Tensor:
    """``logits`` if they are a tensor of shape (n, K); an InputError that names the ``inputs``
    the model ran on otherwise (e.g. a model that keeps an extra dimension of its input)."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or len(logits) != n:
        raise InputError(
            f"{owner} needs a model that returns logits of shape (N, K). Got "
            f"{tuple(getattr(logits, 'shape', ()))} for {inputs}."
        )
    return logits


def check_forward_input(owner: str, value: Any, model: nn.Module) -> torch.Tensor:
    """The checks of a wrapper module's ``forward`` that cost no pass over the values: ``x`` is
    a dense floating-point batch (N, ...) on the wrapped model's device and in its dtype.
    Values are not checked here (that would synchronise a GPU on every forward pass of an
    attack); attacks and certificates check them once per call."""
    x = check_tensor(owner, "x", value)
    if not x.is_floating_point() or x.dim() < 2:
        raise InputError(
            f"{owner} needs a floating-point batch of shape (N, ...). Got dtype {x.dtype} and "
            f"shape {tuple(x.shape)} instead."
        )
    device, dtype = model_placement(owner, model)
    if device is not None and x.device != device:
        raise InputError(
            f"{owner} needs inputs on the model's device {device}. Got {x.device} instead."
        )
    check_model_dtype(owner, x, dtype)
    return x


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
        eps: the radius of the perturbation ball, a finite number >= 0.
        domain: valid input range (a :class:`~medrobust.types.Domain`); the result is clipped
            into it.
        stop_when_adversarial: stop perturbing points once they are misclassified (saves
            compute in success-rate evaluation; it does not change which points succeed).
        seed: seed of the attack's randomness (random starts), an integer in [0, 2**64 - 1].

    Raises:
        ParameterError: a norm the attack does not support, a negative, NaN or infinite eps
            (or one its ThreatModel refuses), a domain that is not a ``Domain``, a
            non-boolean ``stop_when_adversarial`` or a seed outside [0, 2**64 - 1].
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
        owner = type(self).__name__
        check_finite(owner, "eps", eps, minimum=0)
        check_seed(owner, seed)
        if not isinstance(domain, Domain):
            raise ParameterError(
                f"The 'domain' parameter of {owner} must be a medrobust.types.Domain, such as "
                f"Domain(0.0, 1.0). Got {domain!r} instead."
            )
        self.threat = ThreatModel(parsed, float(eps), domain)
        self.stop_when_adversarial = check_flag(
            owner, "stop_when_adversarial", stop_when_adversarial
        )
        # NumPy integers become ints: params() is JSON and torch's manual_seed takes ints only.
        self.seed = int(seed)

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
        for name, value in (("x", x), ("y", y)):
            if not isinstance(value, torch.Tensor):
                suffix = "" if name == "x" else " for y"
                raise InputError(
                    f"{owner} needs torch tensors x and y. Got {type(value).__name__}{suffix}."
                )
            check_tensor(owner, name, value)
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
            if labels is not None:
                check_labels(owner, name, labels, len(x))
        if self.inputs == "tokens":
            return  # ids are checked against the model's vocabulary in _validate_model
        check_finite_inputs(owner, x, self.threat.domain)

    def _validate_model(self, model: nn.Module, x: torch.Tensor) -> None:
        """Checks of the inputs against the model: floats in the model's dtype; token ids
        within a text model's vocabulary."""
        owner = type(self).__name__
        if self.inputs != "tokens":
            check_model_dtype(owner, x, model_placement(owner, model)[1])
            return
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
        with torch.no_grad():
            logits = run_model(owner, model, x[:1], shape=tuple(x.shape))
        check_logits(owner, logits, 1, f"one input of shape {tuple(x.shape)}")
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
            y (N,) int64 or int32, target (N,) int64 or int32 or None.

        The inputs may be on any device and need not be contiguous; they are moved to the
        model's device and the result is returned on the device of ``x``. Floating-point inputs
        must already be in the model's dtype (they are not cast; see
        :func:`check_model_dtype`). The result never requires grad.

        Raises:
            InputError: ``x`` is not a non-empty floating-point batch in the model's dtype,
                inside the domain and free of NaN/Inf (continuous attacks) or not int64 ids of
                shape (N, L) within the model's vocabulary (text attacks, whose model must be a
                ``TextModel``); ``x``, ``y`` or ``target`` is not a dense torch tensor with
                values (NumPy arrays, lists, sparse and meta tensors are refused); the model is
                not an ``nn.Module`` with weights or cannot run on ``x``; or labels/targets are
                not integers of shape (N,) within the model's classes.
        """
        # Validate before the model runs, so that bad inputs fail with InputError and not with
        # whatever the first layer raises.
        self._validate_inputs(x, y, target)
        device = model_placement(type(self).__name__, model)[0] or x.device
        was_training = model.training
        model.eval()
        try:
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
