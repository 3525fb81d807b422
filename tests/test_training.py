"""The training loop: determinism, early stopping, checkpoints, class weights, the detector."""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from medrobust.data import Task
from medrobust.errors import ParameterError
from medrobust.metrics import clinical_metrics, predictions, probabilities
from medrobust.models import AnomalyDetector, build_model, prepare_inputs
from medrobust.training import (
    FitConfig,
    _class_weights,
    classification_loss,
    evaluate_predictions,
    fit,
    load_checkpoint,
    predict_logits,
    save_checkpoint,
)
from tests.conftest import RECIPES, Recipe, Trained, fit_splits, train_recipe


def state_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# -- determinism ---------------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", ["mlp", "cnn"])
def test_fit_is_deterministic(recipe: str, real_task: Callable[[str], Task]):
    """Same initialisation seed and fit seed: identical weights (dropout and batch norm too)."""
    base = RECIPES[recipe]
    short = Recipe(base.task, base.model, base.hparams, FitConfig(epochs=2, batch_size=32))
    task = real_task(base.task)
    first, second = train_recipe(short, task), train_recipe(short, task)
    assert state_equal(first.model, second.model)
    assert first.result.history == second.result.history
    other = train_recipe(short, task, seed=1)
    assert not state_equal(first.model, other.model)


def test_fit_seed_alone_changes_the_weights(real_task: Callable[[str], Task]):
    """The fit seed drives shuffling and dropout: same initial weights, other seed, other result."""
    task = real_task("wisconsin")
    inputs = prepare_inputs(task)
    torch.manual_seed(0)
    initial = build_model("mlp", task, inputs)
    models = []
    for seed in (0, 0, 1):
        model = build_model("mlp", task, inputs)
        model.load_state_dict(initial.state_dict())
        config = FitConfig(epochs=2, batch_size=32)
        fit_splits(
            model,
            inputs,
            config=config,
            seed=seed,
        )
        models.append(model)
    assert state_equal(models[0], models[1])
    assert not state_equal(models[0], models[2])


# -- early stopping ------------------------------------------------------------------------------


def test_early_stopping_keeps_the_best_epoch(real_task: Callable[[str], Task]):
    task = real_task("wisconsin")
    inputs = prepare_inputs(task)
    torch.manual_seed(0)
    model = build_model("mlp", task, inputs, {"hidden": (128, 128), "dropout": 0.0})
    config = FitConfig(epochs=200, batch_size=16, lr=1e-2, patience=3)
    result = fit_splits(
        model,
        inputs,
        config=config,
    )
    assert result.epochs_run < 200
    assert result.epochs_run == result.best_epoch + 3
    assert len(result.history) == result.epochs_run
    val_losses = [row["val_loss"] for row in result.history]
    assert result.best_val_loss == min(val_losses) == val_losses[result.best_epoch - 1]
    assert all(v >= result.best_val_loss - 1e-6 for v in val_losses[result.best_epoch :])
    # The model holds the best epoch's weights, not the last epoch's.
    with torch.no_grad():
        restored = float(classification_loss(model.eval()(inputs.x["val"]), inputs.y["val"]))
    assert restored == pytest.approx(result.best_val_loss, rel=1e-5)
    assert restored < val_losses[-1]
    assert not model.training


def test_patience_zero_runs_every_epoch(real_task: Callable[[str], Task]):
    task = real_task("wisconsin")
    inputs = prepare_inputs(task)
    torch.manual_seed(0)
    model = build_model("mlp", task, inputs)
    config = FitConfig(epochs=25, batch_size=16, lr=1e-2, patience=0)
    result = fit_splits(
        model,
        inputs,
        config=config,
    )
    assert result.epochs_run == 25 == len(result.history)
    assert result.best_epoch < 25  # the validation loss stalled, yet training went on


def test_fit_rejects_empty_splits(real_task: Callable[[str], Task]):
    task = real_task("wisconsin")
    inputs = prepare_inputs(task)
    model = build_model("mlp", task, inputs)
    x, y = inputs.x["train"], inputs.y["train"]
    with pytest.raises(ParameterError, match=r"fit needs non-empty training and validation"):
        fit(model, x, y, x[:0], y[:0])
    with pytest.raises(ParameterError, match=r"fit needs non-empty training and validation"):
        fit(model, x[:0], y[:0], x, y)


# -- checkpoints ---------------------------------------------------------------------------------


def test_checkpoint_round_trip(real_task: Callable[[str], Task], tmp_path: Path):
    task = real_task("breastmnist")
    inputs = prepare_inputs(task)
    torch.manual_seed(0)
    model = build_model("small_cnn", task, inputs, {"width": 8})
    path = tmp_path / "runs" / "cnn.pt"
    fit_splits(
        model,
        inputs,
        config=FitConfig(epochs=2, batch_size=64),
        checkpoint=path,
    )
    assert sorted(p.name for p in path.parent.iterdir()) == ["cnn.pt"]  # no temporary left
    torch.manual_seed(1)
    fresh = build_model("small_cnn", task, inputs, {"width": 8})
    assert not state_equal(model, fresh)
    assert load_checkpoint(fresh, path) is fresh
    assert state_equal(model, fresh)
    x = inputs.x["test"]
    assert torch.equal(predict_logits(fresh, x), predict_logits(model, x))


class _UnpicklableState(nn.Module):
    """A real module whose extra state cannot be pickled, so that saving it fails midway."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)

    def get_extra_state(self) -> Any:
        return lambda: None

    def set_extra_state(self, state: Any) -> None:
        del state


def test_failed_save_keeps_the_old_checkpoint(tmp_path: Path):
    path = tmp_path / "model.pt"
    good = nn.Linear(3, 2)
    save_checkpoint(good, path)
    before = path.read_bytes()
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        save_checkpoint(_UnpicklableState(), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    restored = load_checkpoint(nn.Linear(3, 2), path)
    assert state_equal(restored, good)


class _Payload:
    """Not a tensor: a weights-only load must refuse to unpickle it."""


def test_load_checkpoint_runs_no_code(tmp_path: Path):
    path = tmp_path / "evil.pt"
    torch.save({"weight": _Payload()}, path)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_checkpoint(nn.Linear(3, 2), path)


# -- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epochs": 0}, r"The 'epochs' of fit must be an integer >= 1\. Got 0\."),
        ({"epochs": 2.5}, r"The 'epochs' of fit must be an integer >= 1\. Got 2\.5\."),
        ({"epochs": True}, r"The 'epochs' of fit must be an integer >= 1\. Got True\."),
        ({"batch_size": -4}, r"The 'batch_size' of fit must be an integer >= 1\. Got -4\."),
        ({"patience": -1}, r"The 'patience' of fit must be an integer >= 0\. Got -1\."),
        ({"lr": 0}, r"The 'lr' of fit must be > 0\. Got 0 instead\."),
        ({"lr": math.nan}, r"The 'lr' of fit must be > 0\. Got nan instead\."),
        ({"lr": "0.1"}, r"The 'lr' of fit must be > 0\. Got '0\.1' instead\."),
        ({"weight_decay": -1e-4}, r"The 'weight_decay' of fit must be >= 0\. Got -0\.0001\."),
        ({"weight_decay": None}, r"The 'weight_decay' of fit must be >= 0\. Got None\."),
        ({"class_weight": "inverse"}, r"must be None, 'balanced' or 'sqrt'\. Got 'inverse'"),
        ({"objective": "mse"}, r"The 'objective' of fit must be one of .* Got 'mse'\."),
    ],
)
def test_fit_config_rejects_bad_values(kwargs: dict[str, Any], match: str):
    with pytest.raises(ParameterError, match=match):
        FitConfig(**kwargs)


def test_fit_config_accepts_its_documented_values():
    for class_weight in (None, "balanced", "sqrt"):
        for objective in ("classification", "reconstruction"):
            config = FitConfig(epochs=1, patience=0, class_weight=class_weight, objective=objective)
            assert config.class_weight == class_weight


# -- class weights and the loss ------------------------------------------------------------------


def test_class_weight_values():
    y = torch.tensor([0, 1, 1, 1])  # counts 1 and 3
    assert _class_weights(y, 2, FitConfig()) is None
    # balanced: n / (K * count) = [2, 2/3], normalised to mean 1.
    torch.testing.assert_close(
        _class_weights(y, 2, FitConfig(class_weight="balanced")), torch.tensor([1.5, 0.5])
    )
    root = torch.tensor([math.sqrt(2), math.sqrt(2 / 3)])
    torch.testing.assert_close(
        _class_weights(y, 2, FitConfig(class_weight="sqrt")), root / root.mean()
    )
    # A one-logit model still has two classes; an absent class counts as one example.
    torch.testing.assert_close(
        _class_weights(y, 1, FitConfig(class_weight="balanced")), torch.tensor([1.5, 0.5])
    )
    three = _class_weights(torch.tensor([0, 0, 1, 1]), 3, FitConfig(class_weight="balanced"))
    assert three is not None and three.shape == (3,) and bool(three[2] > three[0])


def test_one_logit_loss_equals_two_logit_loss():
    """BCE on z is cross-entropy on the logits (0, z), with and without class weights."""
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(20, 1, generator=generator)
    y = torch.randint(0, 2, (20,), generator=generator)
    two = torch.cat([torch.zeros_like(z), z], dim=1)
    torch.testing.assert_close(classification_loss(z, y), classification_loss(two, y))
    weight = torch.tensor([3.0, 0.5])
    torch.testing.assert_close(
        classification_loss(z, y, weight), classification_loss(two, y, weight)
    )
    manual = -(weight[y] * torch.log_softmax(two, 1)[torch.arange(20), y]).sum() / weight[y].sum()
    torch.testing.assert_close(classification_loss(two, y, weight), manual)


def test_class_weights_raise_minority_sensitivity(real_task: Callable[[str], Task]):
    """Train on Wisconsin with only 8 malignant tumours: weighting finds more of them."""
    task = real_task("wisconsin")
    inputs = prepare_inputs(task)
    y_train = inputs.y["train"]
    keep = torch.cat([torch.nonzero(y_train == 0)[:8, 0], torch.nonzero(y_train == 1)[:, 0]])
    sensitivity = {}
    for class_weight in (None, "sqrt", "balanced"):
        torch.manual_seed(0)
        model = build_model("mlp", task, inputs)
        config = FitConfig(epochs=20, batch_size=32, patience=0, class_weight=class_weight)
        fit(
            model,
            inputs.x["train"][keep],
            y_train[keep],
            inputs.x["val"],
            inputs.y["val"],
            config=config,
        )
        pred, _ = evaluate_predictions(model, inputs.x["test"])
        metrics = clinical_metrics(inputs.y["test"].numpy(), pred, positive_class=0, num_classes=2)
        sensitivity[class_weight] = metrics.sensitivity
    assert sensitivity[None] < sensitivity["sqrt"] < sensitivity["balanced"]
    assert sensitivity["balanced"] - sensitivity[None] > 0.05


# -- prediction helpers --------------------------------------------------------------------------


def test_predict_logits_batches_and_restores_the_mode(trained: Callable[[str], Trained]):
    cnn = trained("cnn")
    x, _ = cnn.split("test", 40)
    with torch.no_grad():
        expected = cnn.model.eval()(x)
    cnn.model.train()
    try:
        small_batches = predict_logits(cnn.model, x, batch_size=7)
        assert cnn.model.training
    finally:
        cnn.model.eval()
    torch.testing.assert_close(small_batches, expected)
    pred, logits = evaluate_predictions(cnn.model, x)
    assert isinstance(pred, np.ndarray) and pred.dtype == np.int64
    np.testing.assert_array_equal(pred, expected.argmax(1).numpy())
    torch.testing.assert_close(logits, expected)


def test_shared_models_learned_their_tasks(trained: Callable[[str], Trained]):
    """The small models the attack suite uses are real classifiers, not chance."""
    floors = {"cnn": 0.78, "gru": 0.85, "conv1d": 0.85, "mlp": 0.93, "mlp_1logit": 0.93}
    for name, floor in floors.items():
        model = trained(name)
        x, y = model.split("test")
        pred, _ = evaluate_predictions(model.model, x)
        accuracy = float((pred == y.numpy()).mean())
        assert accuracy > floor, (name, accuracy)


# -- the anomaly detector ------------------------------------------------------------------------


def test_detector_threshold_is_calibrated_on_validation(trained: Callable[[str], Trained]):
    detector = trained("detector")
    model = detector.model
    assert isinstance(model, AnomalyDetector)
    x_val, y_val = detector.split("val")
    with torch.no_grad():
        errors = model.reconstruction_error(x_val).numpy()
    threshold = float(model.log_threshold.exp())
    assert threshold != pytest.approx(1.0)
    assert errors.min() <= threshold < errors.max()
    labels = y_val.numpy()

    def balanced(t: float) -> float:
        flagged = errors > t
        return (flagged[labels == 1].mean() + (~flagged[labels == 0]).mean()) / 2

    # The chosen threshold is the best cut of the validation errors.
    assert balanced(threshold) >= max(balanced(t) for t in np.unique(errors)) - 1e-12
    # The logit is log(error / threshold): positive exactly when the error is above threshold.
    pred, logits = evaluate_predictions(model, x_val)
    assert logits.shape == (len(x_val), 1)
    np.testing.assert_array_equal(pred, (errors > threshold).astype(np.int64))


def test_detector_validation_loss_uses_normal_beats_only(trained: Callable[[str], Trained]):
    detector = trained("detector")
    x_val, y_val = detector.split("val")
    model = detector.model
    assert isinstance(model, AnomalyDetector)
    with torch.no_grad():
        errors = model.reconstruction_error(x_val)
    normal, abnormal = errors[y_val == 0], errors[y_val == 1]
    assert detector.result.best_val_loss == pytest.approx(float(normal.mean()), rel=1e-4)
    assert float(abnormal.mean()) > 2 * float(normal.mean())


def test_detector_finds_abnormal_ecg5000_beats(trained: Callable[[str], Trained]):
    detector = trained("detector")
    x, y = detector.split("test")
    logits = predict_logits(detector.model, x)
    metrics = clinical_metrics(
        y.numpy(),
        predictions(logits).numpy(),
        positive_class=detector.task.positive_class,
        num_classes=2,
        scores=probabilities(logits).numpy(),
    )
    assert detector.task.positive_class == 1
    assert metrics.balanced_accuracy > 0.8
    assert metrics.sensitivity > 0.75 and metrics.specificity > 0.75
    assert metrics.auc > 0.9
