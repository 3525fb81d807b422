"""Models defined outside medrobust, for the audit tests: imported as 'file.py:factory'."""

from __future__ import annotations

from torch import nn


class TinyCNN(nn.Module):
    """A two-conv CNN for 1x28x28 images; ``outputs`` logits."""

    def __init__(self, outputs: int = 2, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
        )
        self.head = nn.Linear(2 * width * 16, outputs)

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.head(self.features(x))


def tiny_cnn(outputs: int = 2, width: int = 8) -> nn.Module:
    """The factory the audit imports."""
    return TinyCNN(outputs=outputs, width=width)


def tiny_mlp(features: int = 30, outputs: int = 2) -> nn.Module:
    """A small MLP for tabular features."""
    return nn.Sequential(nn.Linear(features, 16), nn.ReLU(), nn.Linear(16, outputs))


not_a_factory = 42
