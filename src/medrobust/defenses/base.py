"""The contract every defense follows, so that a study can apply any of them to any model.

A defense acts at up to four points of a model's life, each a method with a neutral default:

- :meth:`Defense.build`: the architecture (Lipschitz-constrained layers replace the model's);
- :meth:`Defense.fit`: training through :func:`medrobust.training.fit`, shaped by three hooks:
  :meth:`Defense.training_module` (e.g. Gaussian noise on the inputs), :meth:`Defense.adversary`
  (adversarial examples for each batch) and :meth:`Defense.after_fit` (e.g. converged spectral
  norms);
- :meth:`Defense.wrap`: inference (randomized activations, input quantisation, the smoothed
  classifier), returning the module that is evaluated and attacked;
- :meth:`Defense.certify`: a certificate of robustness on test inputs, where it has one.

A defense that randomizes its output or breaks gradients says so (``masks_gradients``) and names
the adaptive attacker that sees through it (``adaptive_attack``: ``"eot"`` for randomness,
``"bpda"`` for a non-differentiable transform); :meth:`Defense.adaptive` returns the module that
attacker differentiates. A study evaluates such a defense with the plain and the adaptive attack,
so the report shows apparent and real robustness side by side.

A defense stores its hyperparameters unchanged (keyword-only in ``__init__``, validated there),
so ``repr`` and :meth:`Defense.params` identify it.

Every entry point checks what it is given before any computation, with the checks the attacks
use (:mod:`medrobust.attacks.base`): a model that is not an ``nn.Module`` or a task that is not a
:class:`~medrobust.data.task.Task` raise :class:`~medrobust.errors.ParameterError`; tensors that
cannot be what the task feeds its model raise :class:`~medrobust.errors.InputError` (see
:func:`check_batch`). Inputs are never cast: floating-point inputs must be in the model's dtype.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from medrobust.attacks.base import (
    check_finite_inputs,
    check_labels,
    check_logits,
    check_model_dtype,
    check_module,
    check_tensor,
    model_placement,
    run_model,
)
from medrobust.data.task import Task
from medrobust.errors import InputError, ParameterError
from medrobust.models import TensorSplits, build_model
from medrobust.training import Adversary, FitConfig, FitResult, fit, save_checkpoint
from medrobust.types import Modality
from medrobust.validation import check_seed


def check_task_value(owner: str, task: Any) -> Task:
    """``task`` if it is a :class:`~medrobust.data.task.Task`; a ParameterError otherwise."""
    if not isinstance(task, Task):
        raise ParameterError(
            f"The 'task' parameter of {owner} must be a medrobust Task (see "
            f"medrobust.data.load_task). Got {type(task).__name__} instead."
        )
    return task


def check_batch(
    owner: str,
    model: nn.Module,
    task: Task,
    x: Any,
    y: Any,
    *,
    names: tuple[str, str] = ("x", "y"),
) -> None:
    """Check that ``x`` and ``y`` are a batch of ``task`` that ``model`` can classify.

    ``x``: a non-empty dense tensor with values (on any device), for text int64 token ids of
    shape (N, L) within the model's vocabulary (where the model has a ``vocab_size``), otherwise
    floating-point inputs (N, ...) in the model's dtype, free of NaN/Inf and inside the task's
    domain. ``y``: int64 or int32 labels of shape (N,) in [0, num_classes). The model must run on
    one input and return logits of shape (1, K), K >= num_classes (or K = 1 for two classes).

    Raises:
        InputError: any of the above fails; the message names the tensor and what is allowed.
    """
    x_name, y_name = names
    check_tensor(owner, x_name, x)
    device, dtype = model_placement(owner, model)
    if task.modality is Modality.TEXT:
        if x.dtype != torch.int64 or x.dim() != 2 or len(x) == 0 or x.shape[1] == 0:
            raise InputError(
                f"{owner} needs {x_name} as a non-empty int64 tensor of token ids of shape "
                f"(N, L). Got dtype {x.dtype} and shape {tuple(x.shape)} instead."
            )
        vocab = getattr(model, "vocab_size", None)
        allowed = f"[0, {vocab - 1}]" if isinstance(vocab, int) else "[0, vocab_size)"
        if bool((x < 0).any()) or (isinstance(vocab, int) and bool((x >= vocab).any())):
            raise InputError(
                f"{owner} got token ids in {x_name} outside {allowed} (min {int(x.min())}, "
                f"max {int(x.max())})."
            )
    else:
        if not x.is_floating_point() or x.dim() < 2 or len(x) == 0:
            raise InputError(
                f"{owner} needs {x_name} as a non-empty floating-point batch of shape (N, ...). "
                f"Got dtype {x.dtype} and shape {tuple(x.shape)} instead."
            )
        check_model_dtype(owner, x, dtype)
        check_finite_inputs(owner, x, task.domain)
    check_labels(owner, y_name, y, len(x))
    classes = task.num_classes
    if bool(((y < 0) | (y >= classes)).any()):
        raise InputError(
            f"{owner} got {y_name} outside [0, {classes - 1}] for task {task.name!r} with "
            f"{classes} classes (min {int(y.min())}, max {int(y.max())})."
        )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = run_model(
                owner, model, x[:1].to(device or x.device), what=x_name, shape=tuple(x.shape)
            )
    finally:
        model.train(was_training)
    check_logits(owner, logits, 1, f"one input of shape {tuple(x.shape)}")
    if max(int(logits.shape[1]), 2) < classes:
        raise InputError(
            f"{owner} needs a model with a logit per class of task {task.name!r} ({classes}). "
            f"Got {int(logits.shape[1])} logit(s)."
        )


@dataclass(frozen=True)
class TrainingData:
    """The training and validation tensors a defense trains on.

    Attributes:
        x_train, y_train: training inputs and labels (a share of the split where the study asks).
        x_val, y_val: validation inputs and labels (early stopping, calibration).
        groups: the task's metadata group per training example (e.g. the MIT-BIH record), or
            ``None`` where the task has none.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    groups: np.ndarray | None = None


class Defense(abc.ABC):
    """A defense: hooks into building, training, inference and certification of a model.

    Class attributes:
        name: registry name.
        modalities: the input modalities it applies to.
        masks_gradients: it randomizes the output or breaks gradients, so plain gradient attacks
            overstate its robustness.
        adaptive_attack: ``"eot"`` or ``"bpda"``: the adaptive attacker a study adds; ``None``.
        retrains: the defended model is built or trained differently from the undefended one
            (``False``: it wraps the undefended model, which a study then trains once).
    """

    name: ClassVar[str]
    modalities: ClassVar[frozenset[Modality]]
    masks_gradients: ClassVar[bool] = False
    adaptive_attack: ClassVar[str | None] = None
    retrains: ClassVar[bool] = True

    @abc.abstractmethod
    def params(self) -> dict[str, Any]:
        """The hyperparameters that identify this defense (JSON-serialisable)."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"

    def check_task(self, task: Task) -> None:
        """Raise :class:`ParameterError` if the defense cannot serve ``task``."""
        if task.modality not in self.modalities:
            allowed = sorted(m.value for m in self.modalities)
            raise ParameterError(
                f"The {self.name} defense applies to {allowed} inputs. Task {task.name!r} is "
                f"{task.modality.value}."
            )

    def build(
        self, model_name: str, task: Task, inputs: TensorSplits, model_params: dict[str, Any]
    ) -> nn.Module:
        """The (untrained) model to defend: by default the registered model itself."""
        return build_model(model_name, task, inputs, model_params)

    def training_module(self, model: nn.Module) -> nn.Module:
        """The module :meth:`fit` trains, sharing ``model``'s parameters: by default itself."""
        return model

    def adversary(self, task: Task, data: TrainingData, *, seed: int) -> Adversary | None:
        """What crafts each training batch (see :class:`~medrobust.training.Adversary`);
        ``None`` (the default) trains on the batches as they are."""
        return None

    def after_fit(self, model: nn.Module, data: TrainingData) -> None:
        """Called on the trained ``model`` before its checkpoint is written; by default nothing."""
        del model, data

    def fit(
        self,
        model: nn.Module,
        task: Task,
        data: TrainingData,
        *,
        config: FitConfig,
        seed: int,
        checkpoint: Path | None = None,
    ) -> FitResult:
        """Train ``model`` in place with :func:`~medrobust.training.fit` and this defense's
        hooks; write its state dict to ``checkpoint`` (atomically) if given.

        Raises:
            ParameterError: ``model``, ``task``, ``data``, ``config`` or ``seed`` is of the wrong
                kind, or the defense cannot serve ``task`` (checked first).
            InputError: the training or validation tensors are not a batch of ``task`` that
                ``model`` can classify (:func:`check_batch`), or ``data.groups`` has not one
                entry per training example.
        """
        owner = f"{type(self).__name__}.fit"
        check_module(owner, model)
        check_task_value(owner, task)
        self.check_task(task)
        if not isinstance(data, TrainingData):
            raise ParameterError(
                f"The 'data' parameter of {owner} must be a TrainingData. "
                f"Got {type(data).__name__} instead."
            )
        if not isinstance(config, FitConfig):
            raise ParameterError(
                f"The 'config' parameter of {owner} must be a FitConfig. "
                f"Got {type(config).__name__} instead."
            )
        seed = check_seed(owner, seed)
        check_batch(owner, model, task, data.x_train, data.y_train, names=("x_train", "y_train"))
        check_batch(owner, model, task, data.x_val, data.y_val, names=("x_val", "y_val"))
        groups = data.groups
        if groups is not None and (
            isinstance(groups, str | bytes)
            or not hasattr(groups, "__len__")
            or len(groups) != len(data.x_train)
        ):
            count = len(groups) if hasattr(groups, "__len__") else type(groups).__name__
            raise InputError(
                f"{owner} needs data.groups as None or one group per training example "
                f"({len(data.x_train)}). Got {count} instead."
            )
        # Detached: training must not leave gradients on the caller's tensors; int32 labels
        # become the int64 that the losses take.
        result = fit(
            self.training_module(model),
            data.x_train.detach(),
            data.y_train.long(),
            data.x_val.detach(),
            data.y_val.long(),
            config=config,
            seed=seed,
            adversary=self.adversary(task, data, seed=seed),
        )
        self.after_fit(model, data)
        model.eval()
        if checkpoint is not None:
            save_checkpoint(model, checkpoint)
        return result

    def wrap(self, model: nn.Module, task: Task) -> nn.Module:
        """The module evaluated and attacked at inference: by default ``model`` itself.

        Raises:
            ParameterError: ``model`` is not an ``nn.Module``, ``task`` not a Task, or the
                defense cannot serve ``task``.
        """
        self._check_wrap(model, task)
        return model

    def _check_wrap(self, model: Any, task: Any) -> None:
        """The checks of :meth:`wrap`'s arguments, shared by every defense's ``wrap``."""
        owner = f"{type(self).__name__}.wrap"
        check_module(owner, model)
        check_task_value(owner, task)
        self.check_task(task)

    def adaptive(self, wrapped: nn.Module) -> nn.Module:
        """The module the adaptive attacker differentiates: by default ``wrapped``.

        Raises:
            ParameterError: ``wrapped`` is not an ``nn.Module``.
        """
        return check_module(f"{type(self).__name__}.adaptive", wrapped, "wrapped")

    def certify(
        self, model: nn.Module, task: Task, x: torch.Tensor, y: torch.Tensor, *, seed: int
    ) -> dict[str, float]:
        """Certified accuracy at this defense's radii (metric name -> value); ``{}`` where it
        certifies nothing. ``model`` is the trained, unwrapped model.

        Raises:
            ParameterError: ``model``, ``task`` or ``seed`` is of the wrong kind, or the
                defense cannot serve ``task``.
            InputError: ``x`` and ``y`` are not a batch of ``task`` that ``model`` can
                classify (:func:`check_batch`), whether or not the defense certifies anything.
        """
        self._check_certify(model, task, x, y, seed)
        return {}

    def _check_certify(self, model: Any, task: Any, x: Any, y: Any, seed: Any) -> int:
        """The checks of :meth:`certify`'s arguments, shared by every defense's ``certify``;
        returns the seed as an int."""
        owner = f"{type(self).__name__}.certify"
        check_module(owner, model)
        check_task_value(owner, task)
        self.check_task(task)
        checked = check_seed(owner, seed)
        check_batch(owner, model, task, x, y)
        return checked


def radius_metric(radius: float) -> str:
    """The metric name of the certified accuracy at ``radius`` (e.g. ``certified_r0.25``)."""
    return f"certified_r{radius:g}"


def check_radii(owner: str, radii: Any) -> tuple[float, ...]:
    """Validate a non-empty list of radii >= 0 (the certified-accuracy grid)."""
    ok = (
        isinstance(radii, list | tuple)
        and len(radii) > 0
        and all(
            isinstance(r, int | float) and not isinstance(r, bool) and 0 <= r < float("inf")
            for r in radii
        )
    )
    if not ok:
        raise ParameterError(
            f"The 'radii' parameter of {owner} must be a non-empty list of finite numbers >= 0. "
            f"Got {radii!r} instead."
        )
    return tuple(float(r) for r in radii)
