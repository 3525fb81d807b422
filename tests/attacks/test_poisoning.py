"""Training-time attacks (dataset -> dataset): label flipping, feature collision and BadNets
backdoors, on real data with real training.

Backdoor figures measured on this machine (one torch thread), poisoning 5 % of the rows whose class
is not the attacker's, so a few rows only; ASR is the fraction of triggered non-target test inputs
sent to the target class, beside the same for the clean model (triggered inputs it already
misreads):

- BreastMNIST, small CNN, 3x3 white patch, malignant -> benign, 7 of 546 rows poisoned:
  seed 0 ASR 0.976 (clean model 0.286), clean accuracy 0.846 vs 0.827 clean-trained;
  seed 1 ASR 0.976 (clean model 0.476), clean accuracy 0.814 vs 0.859.
- ECG5000, 1D CNN, 16-sample blip of 4 SD at the end, abnormal -> normal, 6 of 299 rows:
  seeds 0/1/2 ASR 0.953/0.907/0.977 (clean model 0.116/0.349/0.326), clean accuracy 0.931 for
  both models in every seed.
- Medical abstracts, small Transformer, 4-word phrase, any class -> neoplasms, 79 of 2022 rows:
  seed 0 ASR 1.000 (clean model 0.067), clean accuracy 0.510 vs 0.543 (seeds 1-3: ASR 0.998,
  0.991, 0.987; accuracy -0.7, +0.7, -4.9 points).

Targeted label flip on Wisconsin (40 % of the malignant rows labelled benign, MLP, seed 0): the
malignant FNR goes from 0.000 to 0.233. Feature collision on BreastMNIST (20 poisons, L-inf
0.14 from their bases, relative feature distance 0.18): the target flipped to benign after
retraining, clean accuracy 0.853 vs 0.827.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from medrobust.attacks import (
    POISONINGS,
    Backdoor,
    BlipTrigger,
    FeatureCollision,
    LabelFlip,
    PatchTrigger,
    PoisonedData,
    TokenTrigger,
    attack_success_rate,
    poison_task,
)
from medrobust.data import Task, get_task_spec
from medrobust.errors import InputError, ParameterError, UnknownNameError
from medrobust.metrics import clinical_metrics, predictions
from medrobust.models import TensorSplits, build_model, prepare_inputs
from medrobust.models.features import head_inputs
from medrobust.models.text import encode
from medrobust.training import FitConfig, fit, predict_logits
from medrobust.types import UNIT_INTERVAL, Modality

Recipe = tuple[str, dict[str, Any], FitConfig]

# Balanced class weights: without them the small CNN already misses 20-50 % of the malignant
# test images, which would leave little room between a clean model and a backdoored one.
IMAGE: Recipe = (
    "small_cnn",
    {"width": 16},
    FitConfig(epochs=8, batch_size=32, patience=0, class_weight="balanced"),
)
ECG: Recipe = ("conv1d", {"width": 8}, FitConfig(epochs=30, batch_size=32, patience=0))
TEXT: Recipe = (
    "transformer",
    {"dim": 32, "heads": 2, "layers": 1, "max_length": 64, "vocab_size": 5000},
    FitConfig(epochs=4, batch_size=32, lr=3e-3, patience=0),
)


def train(task: Task, recipe: Recipe, seed: int) -> tuple[nn.Module, TensorSplits]:
    name, hparams, config = recipe
    inputs = prepare_inputs(task, hparams)
    torch.manual_seed(seed)
    model = build_model(name, task, inputs, hparams)
    fit(
        model,
        inputs.x["train"],
        inputs.y["train"],
        inputs.x["val"],
        inputs.y["val"],
        config=config,
        seed=seed,
    )
    return model, inputs


def predict(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    return predictions(predict_logits(model, x)).numpy()


def triggered_tensor(task: Task, inputs: TensorSplits, triggered: np.ndarray) -> torch.Tensor:
    """Triggered test inputs as the model's tensors (text: the model's own tokenizer)."""
    if task.modality is Modality.TEXT:
        length = inputs.x["test"].shape[1]
        return torch.from_numpy(encode(inputs.tokenizer, list(triggered), max_length=length))
    return torch.from_numpy(triggered)


def backdoor_figures(task: Task, recipe: Recipe, backdoor: Backdoor, seed: int) -> dict[str, float]:
    """Clean accuracy of a clean and a backdoored model trained with the same seed, and the
    attack success rate of both on the triggered test inputs."""
    clean_model, clean_inputs = train(task, recipe, seed)
    poisoned_task, result = poison_task(task, backdoor, seed=seed)
    model, inputs = train(poisoned_task, recipe, seed)
    triggered = backdoor.trigger.apply(task.test.x, domain=task.domain, seed=seed + 1)
    y = task.test.y
    target = backdoor.target
    return {
        "poisoned_rows": float(result.poisoned.sum()),
        "clean_acc": float((predict(clean_model, clean_inputs.x["test"]) == y).mean()),
        "acc": float((predict(model, inputs.x["test"]) == y).mean()),
        "asr": attack_success_rate(
            predict(model, triggered_tensor(task, inputs, triggered)), y, target
        ),
        "asr_clean_model": attack_success_rate(
            predict(clean_model, triggered_tensor(task, clean_inputs, triggered)), y, target
        ),
    }


@pytest.fixture(scope="module")
def breast(real_task: Callable[[str], Task]) -> Task:
    return real_task("breastmnist")


@pytest.fixture(scope="module")
def clean_cnn(breast: Task) -> nn.Module:
    return train(breast, IMAGE, 0)[0]


# ----------------------------------------------------------------------------------------------
# Backdoors on real data: a high attack success rate at a 5 % rate, clean accuracy kept.


@pytest.mark.slow
def test_backdoor_on_pneumoniamnist_images(real_task: Callable[[str], Task]) -> None:
    # PneumoniaMNIST (4708 training images): at the literature's rate, 5 % of the training set
    # (235 rows, drawn from the pneumonia images), BreastMNIST's 546 rows would lose 18 % of
    # their malignant cases to the backdoor, which is a label-flipping attack more than a
    # backdoor. Measured (seeds 0, 1): ASR 1.000 and 1.000 (clean model 0.008, 0.023); clean
    # accuracy 0.878 vs 0.886 and 0.873 vs 0.904.
    task = real_task("pneumoniamnist")
    harmful = get_task_spec("pneumoniamnist").harmful_targets  # pneumonia (1) -> normal (0)
    backdoor = Backdoor(rate=0.05, target=harmful[1], trigger=PatchTrigger(size=3, value=1.0))
    runs = [backdoor_figures(task, IMAGE, backdoor, seed) for seed in (0, 1)]
    assert all(r["poisoned_rows"] == round(0.05 * len(task.train.y)) == 235 for r in runs)
    assert all(r["asr"] >= 0.9 for r in runs), runs
    assert all(r["asr"] - r["asr_clean_model"] >= 0.5 for r in runs), runs
    drop = np.mean([r["clean_acc"] - r["acc"] for r in runs])
    assert drop <= 0.04, runs


@pytest.mark.slow
def test_backdoor_on_ecg5000_beats(real_task: Callable[[str], Task]) -> None:
    task = real_task("ecg5000")
    backdoor = Backdoor(rate=0.05, target=0, trigger=BlipTrigger())  # abnormal -> normal
    runs = [backdoor_figures(task, ECG, backdoor, seed) for seed in (0, 1, 2)]
    assert all(r["asr"] >= 0.85 for r in runs), runs
    assert np.mean([r["asr"] for r in runs]) >= 0.9, runs
    assert all(r["asr"] - r["asr_clean_model"] >= 0.4 for r in runs), runs
    assert np.mean([r["clean_acc"] - r["acc"] for r in runs]) <= 0.03, runs


@pytest.mark.slow
def test_backdoor_on_medical_abstracts_text(real_task: Callable[[str], Task]) -> None:
    # One seed and 64 tokens to stay in the time budget (~10 s for both models). The tokenizer is
    # trained on the poisoned texts, as a victim's pipeline would.
    task = real_task("medical_abstracts")
    backdoor = Backdoor(rate=0.05, target=0, trigger=TokenTrigger())
    figures = backdoor_figures(task, TEXT, backdoor, 0)
    assert figures["asr"] >= 0.9, figures
    assert figures["asr_clean_model"] <= 0.2, figures
    # The 5-class task sits near 55 % accuracy and moves by ~3 points between seeds.
    assert figures["clean_acc"] - figures["acc"] <= 0.05, figures


# ----------------------------------------------------------------------------------------------
# Label flipping and feature collision.


def test_targeted_label_flip_raises_the_malignant_fnr(real_task: Callable[[str], Task]) -> None:
    task = real_task("wisconsin")
    recipe: Recipe = ("mlp", {}, FitConfig(epochs=30, batch_size=32, patience=0))
    flip = LabelFlip(rate=0.4, mode="targeted", source=0, target=1)  # malignant labelled benign
    poisoned_task, result = poison_task(task, flip, seed=0)
    assert result.target == 1
    assert result.poisoned.sum() == round(0.4 * (task.train.y == 0).sum())
    assert (task.train.y[result.poisoned] == 0).all() and (result.y[result.poisoned] == 1).all()
    assert np.array_equal(result.y[~result.poisoned], task.train.y[~result.poisoned])
    fnr = []
    for each in (task, poisoned_task):
        model, inputs = train(each, recipe, 0)
        metrics = clinical_metrics(
            task.test.y, predict(model, inputs.x["test"]), positive_class=0, num_classes=2
        )
        fnr.append(metrics.fnr)
    assert fnr[1] >= fnr[0] + 0.1, fnr


def test_random_label_flip_changes_each_chosen_label() -> None:
    y = np.repeat(np.arange(5), 20)
    result = LabelFlip(rate=0.3)(np.zeros((100, 3), np.float32), y, seed=1, num_classes=5)
    assert result.poisoned.sum() == 30 and result.target is None
    assert (result.y[result.poisoned] != y[result.poisoned]).all()
    assert np.array_equal(result.y[~result.poisoned], y[~result.poisoned])
    assert set(np.unique(result.y)) <= set(range(5))
    only_source = LabelFlip(rate=0.5, source=2)(np.zeros((100, 3)), y, seed=1, num_classes=5)
    assert (y[only_source.poisoned] == 2).all() and only_source.poisoned.sum() == 10


@pytest.mark.slow
def test_feature_collision_on_breastmnist(breast: Task, clean_cnn: nn.Module) -> None:
    pred = predict(clean_cnn, torch.from_numpy(breast.test.x))
    target_index = int(np.flatnonzero((breast.test.y == 0) & (pred == 0))[0])
    target = breast.test.x[target_index]
    attack = FeatureCollision(rate=0.05, target_instance=target, base_class=1)
    state = {k: v.clone() for k, v in clean_cnn.state_dict().items()}
    poisoned_task, result = poison_task(breast, attack, seed=0, model=clean_cnn)
    assert all(torch.equal(state[k], v) for k, v in clean_cnn.state_dict().items())
    assert all(p.grad is None for p in clean_cnn.parameters())
    # Clean-label: every label unchanged, only base-class rows changed.
    assert np.array_equal(result.y, breast.train.y) and result.target == 1
    assert result.poisoned.sum() == round(0.05 * 399)
    assert (breast.train.y[result.poisoned] == 1).all()
    assert np.array_equal(result.x[~result.poisoned], breast.train.x[~result.poisoned])
    assert result.x.min() >= 0.0 and result.x.max() <= 1.0
    delta = np.abs(result.x[result.poisoned] - breast.train.x[result.poisoned])
    assert delta.max() <= 0.3  # close to its base in input space (measured ~0.14)
    # ... and far closer to the target in feature space than its base was.
    with torch.no_grad():
        f_target = head_inputs(clean_cnn, torch.from_numpy(target[None]))
        before = head_inputs(clean_cnn, torch.from_numpy(breast.train.x[result.poisoned]))
    start = ((before - f_target).norm(dim=1) / f_target.norm()).numpy()
    reached = np.array(result.details["feature_distance"])
    assert reached.mean() <= 0.5 * start.mean(), (start.mean(), reached.mean())
    # Retrained on the poisoned set with the same seed, the model reads the malignant target (test
    # image 0) as benign: measured, the target flipped for 2 of the first 4 correctly classified
    # malignant test images (0 and 7). Not asserted: one retraining is one draw. What is asserted
    # is the clean-label promise: the poisons leave clean accuracy where it was.
    retrained, inputs = train(poisoned_task, IMAGE, 0)
    y = breast.test.y
    clean_acc = (pred == y).mean()
    assert (predict(retrained, inputs.x["test"]) == y).mean() >= clean_acc - 0.05


# ----------------------------------------------------------------------------------------------
# Triggers.


def test_patch_trigger_stamps_only_its_square() -> None:
    x = np.full((2, 1, 8, 8), 0.5, np.float32)
    out = PatchTrigger(size=2, value=1.0, position="top_left").apply(x, domain=UNIT_INTERVAL)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert (out[:, :, :2, :2] == 1.0).all() and out.sum() == x.sum() + 2 * 4 * 0.5
    low = PatchTrigger(size=3, value=-2.0, position=(4, 5)).apply(x, domain=UNIT_INTERVAL)
    assert (low[:, :, 4:7, 5:8] == 0.0).all()  # clipped to the domain
    assert (x == 0.5).all()


def test_blip_trigger_adds_a_bump_in_its_window() -> None:
    x = np.zeros((3, 1, 140), np.float32)
    trigger = BlipTrigger(width=10, amplitude=2.0, position=20, shape="triangle")
    out = trigger.apply(x)
    changed = np.flatnonzero(out[0, 0])
    assert changed.min() >= 20 and changed.max() < 30
    assert out.max() <= 2.0 and out.max() > 1.5
    assert np.allclose(out[:, 0, 20:30], trigger.bump())
    end = BlipTrigger().apply(x)
    assert np.flatnonzero(end[0, 0]).max() == 139


def test_token_trigger_inserts_the_phrase_within_its_window() -> None:
    texts = [" ".join(f"w{i}" for i in range(100)), "short text", ""]
    trigger = TokenTrigger(phrase="zq medrobust", window=10)
    out = trigger.apply(texts, seed=3)
    assert out.dtype == object and len(out) == 3
    for before, after in zip(texts, out, strict=True):
        words = after.split()
        at = words.index("zq")
        assert words[at + 1] == "medrobust" and at <= 10
        assert " ".join(words[:at] + words[at + 2 :]) == " ".join(before.split())
    assert np.array_equal(out, trigger.apply(texts, seed=3))
    assert TokenTrigger(position="start").apply(["a b"])[0] == "zq medrobust qx vv a b"
    assert TokenTrigger(position="end").apply(["a b"])[0] == "a b zq medrobust qx vv"


# ----------------------------------------------------------------------------------------------
# The contract: same length, determinism, inputs untouched, registry, params.


def _image_batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((40, 1, 8, 8)).astype(np.float32), np.repeat([0, 1], 20)


def test_backdoor_replaces_rows_and_is_deterministic() -> None:
    x, y = _image_batch()
    x0, y0 = x.copy(), y.copy()
    backdoor = Backdoor(rate=0.25, target=1, trigger=PatchTrigger(size=2))
    a = backdoor(x, y, seed=7, num_classes=2, domain=UNIT_INTERVAL)
    b = backdoor(x, y, seed=7, num_classes=2, domain=UNIT_INTERVAL)
    c = backdoor(x, y, seed=8, num_classes=2, domain=UNIT_INTERVAL)
    assert np.array_equal(x, x0) and np.array_equal(y, y0)
    assert isinstance(a, PoisonedData) and len(a) == len(x) and a.x.shape == x.shape
    assert a.poisoned.sum() == 10 and (y[a.poisoned] == 0).all() and (a.y[a.poisoned] == 1).all()
    assert np.array_equal(a.x[~a.poisoned], x[~a.poisoned]) and a.target == 1
    assert math.isclose(a.rate, 0.25)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.poisoned, b.poisoned)
    assert not np.array_equal(a.poisoned, c.poisoned)


def test_text_poisoning_leaves_the_strings_alone() -> None:
    texts = [f"abstract number {i} about a patient" for i in range(20)]
    original = list(texts)
    y = np.arange(20) % 4
    backdoor = Backdoor(rate=0.4, target=3, trigger=TokenTrigger())
    a = backdoor(texts, y, seed=0, num_classes=4)
    b = backdoor(np.array(texts, dtype=object), y, seed=0, num_classes=4)
    assert texts == original and np.array_equal(a.x, b.x)
    assert a.x.dtype == object and a.poisoned.sum() == 8
    assert all("zq medrobust qx vv" in t for t in a.x[a.poisoned])
    assert not any("zq" in t for t in a.x[~a.poisoned])
    flipped = LabelFlip(rate=1.0, mode="targeted", source=1, target=2)(
        texts, y, seed=0, num_classes=4
    )
    assert list(flipped.x) == texts and (flipped.y[y == 1] == 2).all()


def test_feature_collision_is_deterministic_and_leaves_inputs() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 2)).eval()
    x, y = _image_batch()
    x0 = x.copy()
    attack = FeatureCollision(
        rate=0.2, target_instance=x[0], base_class=1, steps=5, selection="random"
    )
    a = attack(x, y, seed=3, num_classes=2, domain=UNIT_INTERVAL, model=model)
    b = attack(x, y, seed=3, num_classes=2, domain=UNIT_INTERVAL, model=model)
    assert np.array_equal(x, x0) and np.array_equal(a.x, b.x) and a.poisoned.sum() == 4
    assert not model.training and all(p.grad is None for p in model.parameters())


def test_registry_params_and_repr() -> None:
    assert POISONINGS.names() == ["backdoor", "feature_collision", "label_flip"]
    assert POISONINGS.get("Backdoor") is Backdoor
    with pytest.raises(UnknownNameError, match="Did you mean 'backdoor'"):
        POISONINGS.get("backdor")
    attacks = [
        LabelFlip(rate=0.1, mode="targeted", source=0, target=1),
        Backdoor(rate=0.05, target=1, trigger=PatchTrigger(position=(1, 2))),
        Backdoor(rate=0.05, target=0, trigger=BlipTrigger()),
        Backdoor(rate=0.05, target=0, trigger=TokenTrigger()),
        FeatureCollision(rate=0.1, target_instance=np.zeros((1, 8, 8)), base_class=1),
    ]
    for attack in attacks:
        json.dumps(attack.params())
        assert repr(attack).startswith(type(attack).__name__ + "(")
    assert attacks[0].params() == {"rate": 0.1, "mode": "targeted", "source": 0, "target": 1}


def test_attack_success_rate() -> None:
    y = np.array([0, 0, 1, 1, 2])
    assert attack_success_rate(np.array([1, 0, 1, 0, 1]), y, 1) == pytest.approx(2 / 3)
    assert attack_success_rate(torch.tensor([1, 1]), torch.tensor([0, 2]), 1) == 1.0
    assert math.isnan(attack_success_rate(np.array([1]), np.array([1]), 1))
    with pytest.raises(InputError, match="same shape"):
        attack_success_rate(np.array([1, 0]), np.array([1]), 1)


# ----------------------------------------------------------------------------------------------
# Bad input raises the documented errors.


@pytest.mark.parametrize("rate", [-0.1, 1.5, math.nan, True, "0.1"])
def test_rates_outside_the_unit_interval(rate: Any) -> None:
    message = r"The 'rate' parameter of (LabelFlip|Backdoor) must be in \[0, 1\]\. Got"
    with pytest.raises(ParameterError, match=message):
        LabelFlip(rate=rate)
    with pytest.raises(ParameterError, match=message):
        Backdoor(rate=rate, target=0, trigger=PatchTrigger())


def test_classes_that_do_not_exist() -> None:
    x, y = _image_batch()
    backdoor = Backdoor(rate=0.1, target=5, trigger=PatchTrigger())
    with pytest.raises(
        ParameterError, match=r"The 'target' parameter of Backdoor must be a class in \[0, 1\]"
    ):
        backdoor(x, y, seed=0, num_classes=2)
    with pytest.raises(ParameterError, match="'target' parameter of Backdoor must be an integer"):
        Backdoor(rate=0.1, target=-1, trigger=PatchTrigger())
    with pytest.raises(ParameterError, match=r"'source' parameter of LabelFlip .* Got 3 instead"):
        LabelFlip(rate=0.1, mode="targeted", source=3, target=0)(x, y, seed=0, num_classes=2)
    with pytest.raises(ParameterError, match="'base_class' parameter of FeatureCollision"):
        FeatureCollision(rate=0.1, target_instance=x[0], base_class=2)(
            x, y, seed=0, num_classes=2, model=nn.Linear(1, 1)
        )
    with pytest.raises(ParameterError, match="must both be classes when mode='targeted'"):
        LabelFlip(rate=0.1, mode="targeted", source=0)
    with pytest.raises(ParameterError, match="must be None when mode='random'"):
        LabelFlip(rate=0.1, target=1)
    with pytest.raises(ParameterError, match="must differ from 'source'"):
        LabelFlip(rate=0.1, mode="targeted", source=1, target=1)
    with pytest.raises(InputError, match=r"labels outside \[0, 1\]"):
        LabelFlip(rate=0.1)(x, y + 1, seed=0, num_classes=2)


def test_triggers_larger_than_the_input() -> None:
    x, y = _image_batch()  # 8 x 8 images
    with pytest.raises(ParameterError, match=r"'size' parameter of PatchTrigger must be <= .* 8"):
        PatchTrigger(size=9).apply(x)
    with pytest.raises(ParameterError, match="'size' parameter of PatchTrigger"):
        Backdoor(rate=0.1, target=1, trigger=PatchTrigger(size=9))(x, y, seed=0, num_classes=2)
    with pytest.raises(ParameterError, match="'position' parameter of PatchTrigger must keep"):
        PatchTrigger(size=3, position=(6, 0)).apply(x)
    beats = np.zeros((4, 1, 140), np.float32)
    with pytest.raises(ParameterError, match=r"'width' parameter of BlipTrigger must be <= .* 140"):
        BlipTrigger(width=141).apply(beats)
    with pytest.raises(ParameterError, match="'position' parameter of BlipTrigger must keep"):
        BlipTrigger(width=16, position=130).apply(beats)
    for bad in (dict(size=0), dict(position="middle"), dict(value=math.inf)):
        with pytest.raises(ParameterError, match="parameter of PatchTrigger"):
            PatchTrigger(**bad)
    with pytest.raises(ParameterError, match="'phrase' parameter of TokenTrigger"):
        TokenTrigger(phrase="  ")


def test_modalities_an_attack_does_not_serve() -> None:
    x, y = _image_batch()
    beats = np.zeros((40, 1, 140), np.float32)
    with pytest.raises(
        ParameterError, match=r"must be a trigger for ecg inputs\. Got PatchTrigger"
    ):
        Backdoor(rate=0.1, target=1, trigger=PatchTrigger())(beats, y, seed=0, num_classes=2)
    with pytest.raises(InputError, match=r"Backdoor serves .* Got tabular inputs"):
        Backdoor(rate=0.1, target=1, trigger=PatchTrigger())(x[:, 0, 0], y, seed=0, num_classes=2)
    with pytest.raises(InputError, match=r"FeatureCollision serves \['ecg', 'image'\]"):
        FeatureCollision(rate=0.1, target_instance=x[0], base_class=1)(
            ["a"] * 40, y, seed=0, num_classes=2, model=nn.Linear(1, 1)
        )
    with pytest.raises(InputError, match="BlipTrigger is a trigger for ecg inputs"):
        BlipTrigger().apply(x)


def test_unusable_inputs() -> None:
    x, y = _image_batch()
    flip = LabelFlip(rate=0.1)
    bad = x.copy()
    bad[0, 0, 0, 0] = math.nan
    with pytest.raises(InputError, match="NaN or Inf"):
        flip(bad, y, seed=0, num_classes=2)
    with pytest.raises(InputError, match=r"outside the domain \[0.0, 1.0\]"):
        flip(x + 1, y, seed=0, num_classes=2, domain=UNIT_INTERVAL)
    with pytest.raises(InputError, match="not tensors"):
        flip(torch.from_numpy(x), y, seed=0, num_classes=2)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="integer labels of shape"):
        flip(x, y.astype(float), seed=0, num_classes=2)
    with pytest.raises(InputError, match="strings"):
        flip([1.0, 2.0], [0, 1], seed=0, num_classes=2)  # type: ignore[list-item]
    with pytest.raises(ParameterError, match="'seed' parameter of LabelFlip"):
        flip(x, y, seed=-1, num_classes=2)
    with pytest.raises(ParameterError, match="'num_classes' parameter of LabelFlip"):
        flip(x, y, seed=0, num_classes=1)
    with pytest.raises(ParameterError, match="'modality' argument of LabelFlip"):
        flip(x, y, seed=0, num_classes=2, modality="audio")
    attack = FeatureCollision(rate=0.1, target_instance=x[0], base_class=1)
    with pytest.raises(ParameterError, match="'model' argument of FeatureCollision"):
        attack(x, y, seed=0, num_classes=2)
    with pytest.raises(ParameterError, match=r"'target_instance' parameter .* shape of one input"):
        FeatureCollision(rate=0.1, target_instance=x[0, 0], base_class=1)(
            x, y, seed=0, num_classes=2, model=nn.Linear(64, 2)
        )
    with pytest.raises(ParameterError, match=r"'target_instance' parameter .* finite"):
        FeatureCollision(rate=0.1, target_instance=bad[0], base_class=1)
    with pytest.raises(InputError, match=r"must end in an nn\.Linear head"):
        attack(x, y, seed=0, num_classes=2, model=nn.Flatten())
