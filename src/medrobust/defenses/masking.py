r"""Defenses that mask gradients, and the adaptive attacks that see through them.

Both make plain gradient attacks look weak without making the model much more robust
(Athalye et al. 2018), which is why they are here: a study that evaluates them with plain and
with adaptive attacks shows the gap between apparent and real robustness.

- :class:`RandomizedActivations`: stochastic activation pruning (Dhillon et al. 2018). After
  every ReLU of the wrapped model, each unit survives with a probability that grows with its share
  of the layer's activation mass and is rescaled by the inverse of that probability, so the
  expected activation is unchanged. The randomness stays on in eval mode. Its adaptive attack is
  EOT (the expectation over the randomness).
- :class:`QuantizedInput`: the input is rounded to a few levels before the model sees it (a
  non-differentiable transform whose gradient is zero almost everywhere). Its adaptive attack is
  BPDA with the identity as the backward approximation.

Each exposes ``masks_gradients = True`` and ``adaptive()``, the model to attack instead.
:class:`StochasticActivationPruning` and :class:`InputQuantization` are the two as
:class:`~medrobust.defenses.base.Defense`\ s a study applies to trained models.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from medrobust.attacks.adaptive import BPDA, EOT
from medrobust.attacks.base import (
    check_finite,
    check_forward_input,
    check_logits,
    check_module,
    run_model,
)
from medrobust.data.task import Task
from medrobust.defenses.base import Defense
from medrobust.errors import ParameterError
from medrobust.types import Domain, Modality
from medrobust.validation import check_number


class RandomizedActivations(nn.Module):
    """Stochastic activation pruning after every ``nn.ReLU`` of ``model``.

    Each ReLU output a (per example, flattened, n units) keeps unit i with probability
    ``p_i = 1 - (1 - a_i / sum(a)) ** r`` with ``r = ceil(draws * n)`` draws, and rescales kept
    units by ``1 / p_i``.

    Args:
        model: the classifier; it must use ``nn.ReLU`` modules (the reference image, ECG 1D-CNN
            and tabular models do).
        draws: draws per layer as a multiple of its number of units (the paper uses about 1);
            more draws keep more units (less randomness, less masking). A finite number > 0.

    Shape:
        like ``model``; the input must be a floating-point batch (N, ...) on the model's device
        and in its dtype (an InputError otherwise; values are not checked).
    """

    masks_gradients: ClassVar[bool] = True

    def __init__(self, model: nn.Module, *, draws: float = 1.0):
        super().__init__()
        check_module(type(self).__name__, model)
        if (
            isinstance(draws, bool)
            or not isinstance(draws, int | float)
            or not math.isfinite(draws)
            or not draws > 0
        ):
            raise ParameterError(
                f"The 'draws' parameter of RandomizedActivations must be a finite number > 0. "
                f"Got {draws!r} instead."
            )
        relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
        if not relus:
            raise ParameterError(
                f"RandomizedActivations needs a model with nn.ReLU modules to prune after. "
                f"{type(model).__name__} has none."
            )
        self.model = model
        self.draws = float(draws)
        self.train(model.training)
        # The hooks act only inside this wrapper's forward: the model called on its own is the
        # plain model.
        self._active = False
        self._hooks = [relu.register_forward_hook(self._prune) for relu in relus]

    def _prune(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
        if not self._active:
            return None
        flat = output.flatten(1)
        share = flat / flat.sum(dim=1, keepdim=True).clamp_min(1e-12)
        draws = math.ceil(self.draws * flat.shape[1])
        keep = 1.0 - (1.0 - share).clamp(0.0, 1.0) ** draws
        mask = torch.rand_like(flat) < keep
        pruned = torch.where(mask, flat / keep.clamp_min(1e-12), torch.zeros_like(flat))
        return pruned.view_as(output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_forward_input(type(self).__name__, x, self.model)
        self._active = True
        try:
            logits = run_model(type(self).__name__, self.model, x)
            return check_logits(
                type(self).__name__, logits, len(x), f"inputs of shape {tuple(x.shape)}"
            )
        finally:
            self._active = False

    def remove(self) -> nn.Module:
        """Detach the pruning from the wrapped model and return it unchanged."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        return self.model

    def adaptive(self, samples: int = 16) -> nn.Module:
        """The model an adaptive attacker differentiates: EOT over ``samples`` passes."""
        return EOT(self, samples=samples)


class QuantizedInput(nn.Module):
    """The model behind an input rounded to ``levels`` evenly spaced values of ``domain``
    (bit-depth reduction, Xu et al. 2018, "Feature squeezing").

    Args:
        model: the classifier.
        domain: a bounded input domain (images in [0, 1]).
        levels: number of values each input feature can take, >= 2.

    Shape:
        like ``model``; the input must be a floating-point batch (N, ...) on the model's device
        and in its dtype (an InputError otherwise; values are not checked).
    """

    masks_gradients: ClassVar[bool] = True

    def __init__(self, model: nn.Module, domain: Domain, *, levels: int = 32):
        super().__init__()
        check_module("QuantizedInput", model)
        check_number("QuantizedInput", "levels", levels, minimum=2, integer=True)
        if not isinstance(domain, Domain):
            raise ParameterError(
                "The 'domain' parameter of QuantizedInput must be a medrobust.types.Domain. "
                f"Got {type(domain).__name__} instead."
            )
        if not (math.isfinite(domain.low) and math.isfinite(domain.high)):
            raise ParameterError(
                "QuantizedInput needs a bounded domain (such as images in [0, 1]) to spread its "
                f"levels over. Got [{domain.low}, {domain.high}]."
            )
        self.model = model
        self.domain = domain
        self.levels = levels
        self.train(model.training)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Round each feature to the nearest of the ``levels`` values."""
        low, width = self.domain.low, self.domain.high - self.domain.low
        steps = self.levels - 1
        return torch.round((x - low) / width * steps) / steps * width + low

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_forward_input(type(self).__name__, x, self.model)
        logits = run_model(type(self).__name__, self.model, self.transform(x))
        return check_logits(
            type(self).__name__, logits, len(x), f"inputs of shape {tuple(x.shape)}"
        )

    def adaptive(self) -> nn.Module:
        """The model an adaptive attacker differentiates: BPDA with the identity backward."""
        return BPDA(self.model, self.transform)


class StochasticActivationPruning(Defense):
    """Stochastic activation pruning as a defense (Dhillon et al. 2018): wraps the trained model
    in :class:`RandomizedActivations`. It masks gradients through its randomness; the adaptive
    attacker is EOT over ``eot_samples`` passes.

    The default of 4 draws per unit prunes less than the paper's 1. Measured on the reference
    CNN on BreastMNIST (PGD-20, L-inf 0.03, 150 test images, undefended robust accuracy 0.30):
    with 1 draw, EOT-16 PGD still leaves 0.57 (100 steps, margin loss and a detached keep
    probability in the backward pass change nothing), because the pruned network is another
    classifier that agrees with the trained one on only 87 % of clean images; with 4 draws it keeps
    the trained classifier (same clean accuracy), plain PGD leaves 0.37 and EOT PGD 0.32.

    Args:
        draws: draws per layer as a multiple of its units (see :class:`RandomizedActivations`).
        eot_samples: passes the adaptive (EOT) attacker averages per gradient.

    Shape:
        like the model
    """

    name = "stochastic_activation_pruning"
    modalities = frozenset({Modality.IMAGE, Modality.ECG, Modality.TABULAR})
    masks_gradients = True
    adaptive_attack = "eot"
    retrains = False

    def __init__(self, *, draws: float = 4.0, eot_samples: int = 16) -> None:
        self.draws = float(check_finite(type(self).__name__, "draws", draws, minimum=0.0))
        if not self.draws > 0:
            raise ParameterError(
                f"The 'draws' parameter of {type(self).__name__} must be > 0. Got {draws!r}."
            )
        self.eot_samples = int(
            check_number(type(self).__name__, "eot_samples", eot_samples, minimum=1, integer=True)
        )

    def params(self) -> dict[str, Any]:
        return {"draws": self.draws, "eot_samples": self.eot_samples}

    def wrap(self, model: nn.Module, task: Task) -> nn.Module:
        self._check_wrap(model, task)
        return RandomizedActivations(model, draws=self.draws).eval()

    def adaptive(self, wrapped: nn.Module) -> nn.Module:
        return EOT(super().adaptive(wrapped), samples=self.eot_samples)


class InputQuantization(Defense):
    """Input quantisation as a defense (Xu et al. 2018, bit-depth reduction): wraps the trained
    model in :class:`QuantizedInput`. Its gradient is zero almost everywhere; the adaptive
    attacker is BPDA with the identity backward (Athalye et al. 2018). It needs a bounded input
    domain, so it applies to images.

    Args:
        levels: values each input feature can take (>= 2).

    Shape:
        like the model
    """

    name = "input_quantization"
    modalities = frozenset({Modality.IMAGE})
    masks_gradients = True
    adaptive_attack = "bpda"
    retrains = False

    def __init__(self, *, levels: int = 32) -> None:
        self.levels = int(
            check_number(type(self).__name__, "levels", levels, minimum=2, integer=True)
        )

    def params(self) -> dict[str, Any]:
        return {"levels": self.levels}

    def wrap(self, model: nn.Module, task: Task) -> nn.Module:
        self._check_wrap(model, task)
        return QuantizedInput(model, task.domain, levels=self.levels).eval()

    def adaptive(self, wrapped: nn.Module) -> nn.Module:
        if not isinstance(wrapped, QuantizedInput):
            raise ParameterError(
                f"{type(self).__name__}.adaptive needs the QuantizedInput its wrap returned. "
                f"Got {type(wrapped).__name__}."
            )
        return wrapped.adaptive()
