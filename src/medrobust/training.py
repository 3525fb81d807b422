"""One seeded, deterministic training loop with validation-based early stopping and checkpoints.

Objectives:
    ``classification``: (weighted) cross-entropy, or binary cross-entropy for one-logit models.
    ``reconstruction``: mean squared error of an autoencoder (``AnomalyDetector.autoencoder``);
        afterwards the detector's threshold is calibrated on the validation split.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from medrobust.atomic import write_atomically
from medrobust.errors import ParameterError
from medrobust.metrics import predictions
from medrobust.models.ecg import AnomalyDetector

logger = logging.getLogger(__name__)

OBJECTIVES = ("classification", "reconstruction")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    # A string or None would otherwise fail the comparisons below with a bare TypeError.
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class FitConfig:
    """Training hyperparameters.

    Attributes:
        epochs: maximum number of epochs.
        batch_size: examples per step.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        patience: epochs without validation improvement before stopping (0 = never stop early).
        class_weight: ``"balanced"`` weights classes by inverse frequency, ``"sqrt"`` by its
            square root (gentler where a class has a handful of examples); ``None`` does not.
        objective: ``"classification"`` or ``"reconstruction"``.
    """

    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 5
    class_weight: str | None = None
    objective: str = "classification"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ParameterError(f"The '{name}' of fit must be an integer >= 1. Got {value!r}.")
        if not _is_int(self.patience) or self.patience < 0:
            raise ParameterError(
                f"The 'patience' of fit must be an integer >= 0. Got {self.patience!r}."
            )
        if not _is_real(self.lr) or not self.lr > 0:
            raise ParameterError(f"The 'lr' of fit must be > 0. Got {self.lr!r} instead.")
        if not _is_real(self.weight_decay) or not self.weight_decay >= 0:
            raise ParameterError(
                f"The 'weight_decay' of fit must be >= 0. Got {self.weight_decay!r}."
            )
        if self.class_weight not in (None, "balanced", "sqrt"):
            raise ParameterError(
                "The 'class_weight' of fit must be None, 'balanced' or 'sqrt'. "
                f"Got {self.class_weight!r} instead."
            )
        if self.objective not in OBJECTIVES:
            raise ParameterError(
                f"The 'objective' of fit must be one of {OBJECTIVES}. Got {self.objective!r}."
            )


@dataclass
class FitResult:
    """What training did: epochs run, the best epoch, losses, and wall time."""

    epochs_run: int
    best_epoch: int
    best_val_loss: float
    train_seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's global generator and return a dedicated generator for shuffling."""
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def _class_weights(y: torch.Tensor, num_outputs: int, config: FitConfig) -> torch.Tensor | None:
    if config.class_weight is None:
        return None
    classes = max(num_outputs, 2)
    counts = torch.bincount(y, minlength=classes).double().clamp_min(1.0)
    weights = counts.sum() / (classes * counts)
    if config.class_weight == "sqrt":
        weights = weights.sqrt()
    return (weights / weights.mean()).float()


def per_example_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for K logits, binary cross-entropy for one logit, per example: (N,)."""
    if logits.shape[1] == 1:
        return nn.functional.binary_cross_entropy_with_logits(
            logits[:, 0], y.to(logits.dtype), reduction="none"
        )
    return nn.functional.cross_entropy(logits, y, reduction="none")


def classification_loss(
    logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy for K logits, binary cross-entropy for one logit (mean over the batch)."""
    if logits.shape[1] == 1:
        if weight is None:
            return nn.functional.binary_cross_entropy_with_logits(logits[:, 0], y.to(logits.dtype))
        return (per_example_loss(logits, y) * weight[y]).sum() / weight[y].sum()
    return nn.functional.cross_entropy(logits, y, weight=weight)


def _loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: FitConfig,
    weight: torch.Tensor | None,
) -> torch.Tensor:
    if config.objective == "reconstruction":
        autoencoder = model.autoencoder if isinstance(model, AnomalyDetector) else model
        return nn.functional.mse_loss(autoencoder(x), x)
    return classification_loss(model(x), y, weight)


class Adversary(Protocol):
    """What ``fit(adversary=...)`` calls on each batch: returns the batch to train on, e.g. a
    PGD attack's adversarial examples crafted against the current weights.

    Two optional methods refine it (looked up with ``getattr``):

    - ``set_epoch(epoch, epochs)``: called before each epoch (1-based), e.g. for a curriculum
      that grows the budget;
    - ``training_loss(model, x, x_adv, y, weight)``: the training loss from the clean and
      adversarial batches (default: :func:`classification_loss` of ``model(x_adv)``), e.g.
      TRADES, or a text model scoring adversarial embeddings.
    """

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...


def adversarial_loss(
    adversary: Adversary,
    model: nn.Module,
    x: torch.Tensor,
    x_adv: torch.Tensor,
    y: torch.Tensor,
    weight: torch.Tensor | None,
) -> torch.Tensor:
    """The training loss of ``adversary``'s batch: its own ``training_loss`` where it has one."""
    custom = getattr(adversary, "training_loss", None)
    if custom is not None:
        return custom(model, x, x_adv, y, weight)  # type: ignore[no-any-return]
    return classification_loss(model(x_adv), y, weight)


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, *, batch_size: int = 512) -> torch.Tensor:
    """Logits of ``model`` on ``x`` in eval mode, batched; the model's mode is restored."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        outputs = [
            model(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(outputs) if outputs else torch.empty(0)


def _evaluate_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: FitConfig,
    weight: torch.Tensor | None,
    adversary: Adversary | None = None,
) -> float:
    """Validation loss; with an ``adversary``, on the adversarial examples it crafts."""
    model.eval()
    device = next(model.parameters()).device
    if config.objective == "reconstruction" and bool((y == 0).any()):
        x, y = x[y == 0], y[y == 0]  # an autoencoder is judged on the normal beats it models
    total, count = 0.0, 0
    for i in range(0, len(x), 512):
        xb, yb = x[i : i + 512].to(device), y[i : i + 512].to(device)
        if adversary is None:
            with torch.no_grad():
                loss = _loss(model, xb, yb, config, weight)
        else:
            x_adv = adversary(model, xb, yb).detach()
            model.eval()
            with torch.no_grad():
                loss = adversarial_loss(adversary, model, xb, x_adv, yb, weight)
        total += float(loss) * len(xb)
        count += len(xb)
    return total / max(count, 1)


def save_checkpoint(model: nn.Module, path: Path) -> None:
    """Write the model's state dict atomically (temporary file, then rename)."""
    state = model.state_dict()
    write_atomically(path, lambda handle: torch.save(state, handle))


def load_checkpoint(model: nn.Module, path: Path) -> nn.Module:
    """Load a state dict saved by :func:`save_checkpoint` (``weights_only=True``: no code runs)."""
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model


def calibrate_threshold(detector: AnomalyDetector, x: torch.Tensor, y: torch.Tensor) -> float:
    """Set the detector's threshold to the validation error that maximises balanced accuracy.

    Args:
        detector: the anomaly detector.
        x: validation inputs with both normal (0) and abnormal (1) examples.
        y: their labels.
    """
    with torch.no_grad():
        detector.eval()
        chunks = [detector.reconstruction_error(x[i : i + 512]) for i in range(0, len(x), 512)]
        errors = torch.cat(chunks).cpu().numpy()
    labels = y.cpu().numpy()
    candidates = np.unique(errors)
    best, best_score = float(np.median(errors)), -1.0
    for threshold in candidates:
        flagged = errors > threshold
        tpr = flagged[labels == 1].mean() if (labels == 1).any() else 0.0
        tnr = (~flagged[labels == 0]).mean() if (labels == 0).any() else 0.0
        score = (tpr + tnr) / 2
        if score > best_score:
            best, best_score = float(threshold), float(score)
    detector.set_threshold(best)
    return best


def fit(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    *,
    config: FitConfig | None = None,
    seed: int = 0,
    checkpoint: Path | None = None,
    adversary: Adversary | None = None,
) -> FitResult:
    """Train ``model`` in place; keep the weights of the epoch with the lowest validation loss.

    The same model initialisation, data, config and seed give the same weights. For the
    ``reconstruction`` objective on an :class:`AnomalyDetector`, the threshold is calibrated on
    the validation split afterwards.

    Args:
        model: the network (its parameters define the device).
        x_train, y_train: training inputs and labels.
        x_val, y_val: validation inputs and labels (early stopping and calibration).
        config: hyperparameters.
        seed: seed of the shuffling and of dropout.
        checkpoint: where to save the best state dict (atomically), if given.
        adversary: adversarial training (Madry et al. 2018): each training batch is replaced by
            ``adversary(model, x, y)``, e.g. a PGD attack, crafted against the current weights
            (an :class:`~medrobust.attacks.Attack` runs in eval mode and restores training mode).
            The kept epoch is then the one with the lowest loss on adversarial validation inputs
            crafted by the same adversary (the most robust one, Rice et al. 2020). See
            :class:`Adversary` for its optional ``set_epoch`` and ``training_loss`` methods.
    """
    config = config or FitConfig()
    if len(x_train) == 0 or len(x_val) == 0:
        raise ParameterError("fit needs non-empty training and validation splits.")
    if adversary is not None and config.objective != "classification":
        raise ParameterError(
            "fit trains adversarially only with the 'classification' objective. "
            f"Got objective {config.objective!r}."
        )
    generator = seed_everything(seed)
    device = next(model.parameters()).device
    with torch.no_grad():
        num_outputs = int(model.eval()(x_train[:2].to(device)).shape[1])
    weight = _class_weights(y_train, num_outputs, config)
    weight = weight.to(device) if weight is not None else None
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    best_state = copy.deepcopy(model.state_dict())
    best_loss, best_epoch, stale = float("inf"), 0, 0
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    epoch = 0
    set_epoch = getattr(adversary, "set_epoch", None)
    for epoch in range(1, config.epochs + 1):
        if set_epoch is not None:
            set_epoch(epoch, config.epochs)
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        running = 0.0
        for i in range(0, len(order), config.batch_size):
            idx = order[i : i + config.batch_size]
            if len(idx) < 2 and len(order) > 1:
                continue  # a batch of one breaks batch normalisation
            xb, yb = x_train[idx].to(device), y_train[idx].to(device)
            optimizer.zero_grad(set_to_none=True)
            if adversary is None:
                loss = _loss(model, xb, yb, config, weight)
            else:
                x_adv = adversary(model, xb, yb).detach()
                model.train()  # whatever the adversary did with the mode
                optimizer.zero_grad(set_to_none=True)  # and with the gradients
                loss = adversarial_loss(adversary, model, xb, x_adv, yb, weight)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            running += float(loss.detach()) * len(idx)
        # With an adversary, keep the most robust epoch (Rice et al. 2020).
        val_loss = _evaluate_loss(model, x_val, y_val, config, weight, adversary)
        history.append({"epoch": epoch, "train_loss": running / len(order), "val_loss": val_loss})
        logger.debug("epoch %d train %.4f val %.4f", epoch, running / len(order), val_loss)
        if val_loss < best_loss - 1e-6:
            best_loss, best_epoch, stale = val_loss, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if config.patience and stale >= config.patience:
                break
    optimizer.zero_grad(set_to_none=True)  # the last batch's gradients mean nothing now
    model.load_state_dict(best_state)
    if config.objective == "reconstruction" and isinstance(model, AnomalyDetector):
        calibrate_threshold(model, x_val.to(device), y_val.to(device))
    model.eval()
    if checkpoint is not None:
        save_checkpoint(model, checkpoint)
    return FitResult(epoch, best_epoch, best_loss, time.perf_counter() - start, history)


def evaluate_predictions(model: nn.Module, x: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
    """Predicted labels (numpy) and logits (tensor) of ``model`` on ``x``."""
    logits = predict_logits(model, x)
    return predictions(logits).numpy(), logits
