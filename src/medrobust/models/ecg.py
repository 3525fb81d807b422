"""Reference ECG models: recurrent and 1D-convolutional beat classifiers, and an autoencoder
anomaly detector that acts as a one-logit classifier at its threshold."""

from __future__ import annotations

import torch
from torch import nn


class RecurrentClassifier(nn.Module):
    """A GRU or LSTM over the samples of a beat, classifying from the mean and last hidden states.

    RNNs on cuDNN cannot backpropagate in eval mode; the attacks disable cuDNN around their
    gradient computations, so this model needs no special handling.

    Shape:
        (N, C, T) -> (N, num_outputs)
    """

    def __init__(
        self,
        in_channels: int,
        num_outputs: int,
        *,
        cell: str = "gru",
        hidden: int = 64,
        layers: int = 1,
        bidirectional: bool = True,
        downsample: int = 1,
    ):
        super().__init__()
        rnn_cls = {"gru": nn.GRU, "lstm": nn.LSTM}[cell]
        self.downsample = downsample
        self.rnn = rnn_cls(
            in_channels, hidden, num_layers=layers, batch_first=True, bidirectional=bidirectional
        )
        out = hidden * (2 if bidirectional else 1)
        self.head = nn.Sequential(nn.Linear(2 * out, 64), nn.ReLU(), nn.Linear(64, num_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample > 1:
            x = nn.functional.avg_pool1d(x, self.downsample)
        seq, _ = self.rnn(x.transpose(1, 2))
        features = torch.cat([seq.mean(dim=1), seq[:, -1]], dim=1)
        return self.head(features)  # type: ignore[no-any-return]


class Conv1DClassifier(nn.Module):
    """Three 1D convolution blocks with global pooling.

    Shape:
        (N, C, T) -> (N, num_outputs)
    """

    def __init__(
        self, in_channels: int, num_outputs: int, *, width: int = 32, dropout: float = 0.2
    ):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv1d(cin, cout, 7, padding=3), nn.BatchNorm1d(cout), nn.ReLU(), nn.MaxPool1d(2)
            )

        self.features = nn.Sequential(
            block(in_channels, width), block(width, 2 * width), block(2 * width, 2 * width)
        )
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool1d(1),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(2 * width, 64),
            nn.ReLU(),
            nn.Linear(64, num_outputs),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # type: ignore[no-any-return]


class ConvAutoencoder(nn.Module):
    """A 1D convolutional autoencoder for beats of any length (padded inside to a multiple of 4).

    Shape:
        (N, C, T) -> (N, C, T)
    """

    def __init__(self, in_channels: int, *, width: int = 16, latent: int = 2):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv1d(in_channels, width, 7, padding=3),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Conv1d(width, width, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Conv1d(width, latent, 3, padding=1),
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose1d(latent, width, 2, stride=2),
            nn.ReLU(),
            nn.ConvTranspose1d(width, width, 2, stride=2),
            nn.ReLU(),
            nn.Conv1d(width, in_channels, 7, padding=3),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[-1]
        pad = (-length) % 4
        padded = nn.functional.pad(x, (0, pad), mode="replicate") if pad else x
        return self.decoder(self.encoder(padded))[..., :length]  # type: ignore[no-any-return]


class AnomalyDetector(nn.Module):
    """An autoencoder with a calibrated threshold, seen as a binary classifier with one logit.

    The logit is ``log(error) - log(threshold)``: positive means *abnormal* (class 1). Any
    gradient attack on classifiers therefore attacks the detector's decision directly: pushing an
    abnormal beat below the threshold is a missed detection, a normal one above it a false alarm.

    Shape:
        (N, C, T) -> (N, 1)
    """

    def __init__(self, autoencoder: ConvAutoencoder, threshold: float = 1.0):
        super().__init__()
        self.autoencoder = autoencoder
        self.log_threshold: torch.Tensor
        self.register_buffer("log_threshold", torch.tensor(float(threshold)).log())

    def set_threshold(self, threshold: float) -> None:
        """Set the reconstruction error above which a beat counts as abnormal."""
        self.log_threshold.fill_(float(torch.tensor(max(threshold, 1e-12)).log()))

    def reconstruction_error(self, x: torch.Tensor) -> torch.Tensor:
        """Mean squared reconstruction error per example, shape (N,)."""
        reconstruction: torch.Tensor = self.autoencoder(x)
        return (reconstruction - x).pow(2).flatten(1).mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        error = self.reconstruction_error(x).clamp_min(1e-12)
        return (error.log() - self.log_threshold).unsqueeze(1)
