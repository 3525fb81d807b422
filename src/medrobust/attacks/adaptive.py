"""Adaptive-attack wrappers (Athalye et al. 2018, "Obfuscated gradients give a false sense of
security"): they turn a model whose gradients mislead an attack into one that any gradient attack
of this package can attack as it is.

- :class:`ExpectationOverTransformation` (EOT) averages the logits of several forward passes, so
  the gradient of the attack's loss is that of the expected logits of a randomized model
  (randomized activations, input noise, random resizing).
- :class:`BPDA` (backward pass differentiable approximation) runs a non-differentiable input
  transformation (quantisation, JPEG, denoising) on the forward pass and differentiates a smooth
  approximation of it (by default the identity) on the backward pass.

Both are plain ``nn.Module`` s: ``PGD(eps=...)(EOT(model, samples=16), x, y)`` is an EOT-PGD.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from medrobust.attacks.base import check_forward_input, check_logits, check_module, run_model
from medrobust.errors import ParameterError
from medrobust.validation import check_number


class ExpectationOverTransformation(nn.Module):
    """A randomized model seen through the mean of ``samples`` forward passes.

    Averaging logits (rather than probabilities) keeps a one-logit detector a one-logit model and
    gives the attack the gradient of the expected logits. For a deterministic model the wrapper
    returns the model's own logits, at ``samples`` times the cost.

    Args:
        model: the randomized model (it stays random in eval mode, e.g. randomized activations).
        samples: forward passes averaged per call.

    Shape:
        (N, ...) -> (N, K), like ``model``

    Raises:
        ParameterError: ``model`` is not an ``nn.Module`` or ``samples`` is not an integer >= 1.
    """

    def __init__(self, model: nn.Module, *, samples: int = 16):
        super().__init__()
        check_module("ExpectationOverTransformation", model)
        check_number("ExpectationOverTransformation", "samples", samples, minimum=1, integer=True)
        self.model = model
        self.samples = samples
        self.train(model.training)  # a wrapper must not switch the model's mode when restored

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = self.model(x)
        for _ in range(self.samples - 1):
            total = total + self.model(x)
        return total / self.samples  # type: ignore[no-any-return]


EOT = ExpectationOverTransformation


class BPDA(nn.Module):
    """``model(transform(x))`` whose input gradient flows through ``approximation`` instead of
    ``transform``.

    Args:
        model: the classifier behind the transformation.
        transform: the (possibly non-differentiable, e.g. quantising) input transformation.
        approximation: a differentiable function close to ``transform``; ``None`` means the
            identity (the straight-through estimator), right when ``transform(x) ≈ x``.

    Shape:
        (N, ...) -> (N, K), like ``model``

    Raises:
        ParameterError: ``model`` is not an ``nn.Module``, or ``transform`` (or a given
            ``approximation``) is not callable.
        InputError: (forward) ``x`` is not a dense floating-point batch (N, ...) on the
            model's device and in its dtype.
    """

    def __init__(
        self,
        model: nn.Module,
        transform: Callable[[torch.Tensor], torch.Tensor],
        approximation: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        super().__init__()
        check_module("BPDA", model)
        for name, function in (("transform", transform), ("approximation", approximation)):
            if function is not None and not callable(function):
                raise ParameterError(
                    f"The '{name}' parameter of BPDA must be a function of a tensor. "
                    f"Got {type(function).__name__} instead."
                )
        if transform is None:
            raise ParameterError("The 'transform' parameter of BPDA must be a function. Got None.")
        self.model = model
        self.transform = transform
        self.approximation = approximation
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_forward_input("BPDA", x, self.model)
        with torch.no_grad():
            transformed = self.transform(x.detach())
        smooth = x if self.approximation is None else self.approximation(x)
        # The value of ``transformed``, the gradient of ``smooth``.
        logits = run_model("BPDA", self.model, smooth + (transformed - smooth).detach())
        return check_logits("BPDA", logits, len(x), f"inputs of shape {tuple(x.shape)}")
