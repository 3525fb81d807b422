"""Reference tabular model: a multilayer perceptron for standardised biomarkers."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """Fully connected network with ReLU and dropout.

    Shape:
        (N, F) -> (N, num_outputs)
    """

    def __init__(
        self,
        in_features: int,
        num_outputs: int,
        *,
        hidden: tuple[int, ...] = (64, 32),
        dropout: float = 0.1,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, num_outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]
