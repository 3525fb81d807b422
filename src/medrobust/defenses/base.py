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
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from medrobust.data.task import Task
from medrobust.errors import ParameterError
from medrobust.models import TensorSplits, build_model
from medrobust.training import Adversary, FitConfig, FitResult, fit, save_checkpoint
from medrobust.types import Modality


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
        hooks; write its state dict to ``checkpoint`` (atomically) if given."""
        result = fit(
            self.training_module(model),
            data.x_train,
            data.y_train,
            data.x_val,
            data.y_val,
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
        """The module evaluated and attacked at inference: by default ``model`` itself."""
        return model

    def adaptive(self, wrapped: nn.Module) -> nn.Module:
        """The module the adaptive attacker differentiates: by default ``wrapped``."""
        return wrapped

    def certify(
        self, model: nn.Module, task: Task, x: torch.Tensor, y: torch.Tensor, *, seed: int
    ) -> dict[str, float]:
        """Certified accuracy at this defense's radii (metric name -> value); ``{}`` where it
        certifies nothing. ``model`` is the trained, unwrapped model."""
        return {}


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
