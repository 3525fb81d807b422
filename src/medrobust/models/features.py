"""The penultimate representation of a classifier: the input of its last ``nn.Linear``.

Every medrobust classifier ends in an ``nn.Linear`` head, so the input of the last registered
``nn.Linear`` is the feature space that clean-label poisoning collides in and that poisoning
detectors cluster. One place reads it, for the attacks (with gradients) and the detectors.
"""

from __future__ import annotations

import torch
from torch import nn

from medrobust.errors import InputError


def last_linear(model: nn.Module) -> nn.Linear:
    """The model's last registered ``nn.Linear`` (its classification head).

    Raises:
        InputError: the model has no ``nn.Linear``.
    """
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise InputError(
            "The model must end in an nn.Linear head (its input is the feature space). Got "
            f"{type(model).__name__} with none instead."
        )
    return linears[-1]


def head_inputs(model: nn.Module, x: torch.Tensor, layer: nn.Module | None = None) -> torch.Tensor:
    """The input of ``layer`` (default: :func:`last_linear`) when ``model`` runs on ``x``,
    flattened per example; the graph is kept, so gradients flow unless the caller disables
    them. Where the layer runs several times in one pass, the last call counts.

    Raises:
        InputError: the layer did not run in the model's forward pass.

    Shape:
        (N, ...) -> (N, D)
    """
    target = layer if layer is not None else last_linear(model)
    captured: list[torch.Tensor] = []

    def grab(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        del module
        captured.append(inputs[0])

    handle = target.register_forward_pre_hook(grab)
    try:
        model(x)
    finally:
        handle.remove()
    if not captured:
        raise InputError(
            f"The layer whose input is the feature space ({type(target).__name__}) did not run "
            f"in the forward pass of {type(model).__name__}."
        )
    return captured[-1].flatten(1)
