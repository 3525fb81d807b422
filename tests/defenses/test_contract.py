"""The defense contract, checked for every registered defense on a small real model of each
modality it serves (in the spirit of scikit-learn's common checks).

Per case: the defense builds and trains a model that still learns its task; its inference
wrapper keeps the output shape, leaves the input and the trained model untouched and is
seeded-deterministic; its adaptive attacker gets gradients; its certificate (if any) is a
non-increasing curve of accuracies; gradient-masking defenses are flagged by the masking checks
and do not survive their adaptive attack; parameters round-trip and bad ones raise.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

from medrobust.attacks import PGD
from medrobust.attacks.masking import masking_checks
from medrobust.defenses import DEFENSES, Defense, TrainingData
from medrobust.errors import ParameterError
from medrobust.metrics import predictions
from medrobust.training import predict_logits
from medrobust.types import Modality
from tests.conftest import RECIPES, Trained

# (defense, recipe) -> parameters. Every registered defense on each modality it serves.
CASES: dict[tuple[str, str], dict[str, Any]] = {
    ("adversarial_training", "mlp"): {"eps": 0.3, "attack_params": {"steps": 3}},
    ("adversarial_training", "cnn"): {"eps": 0.0157, "attack_params": {"steps": 3}},
    ("adversarial_training", "conv1d"): {"eps": 0.1, "attack_params": {"steps": 3}},
    ("adversarial_training", "transformer"): {"eps": 0.1, "attack": "embedding_fgsm"},
    ("trades", "mlp"): {"eps": 0.3, "attack_params": {"steps": 3}},
    ("trades", "cnn"): {"eps": 0.0157, "beta": 1.0, "attack_params": {"steps": 3}},
    ("trades", "conv1d"): {"eps": 0.1, "attack_params": {"steps": 3}},
    ("randomized_smoothing", "mlp"): {"sigma": 0.25, "samples": 8, "n": 200},
    ("randomized_smoothing", "cnn"): {"sigma": 0.12, "samples": 8, "n": 200},
    ("randomized_smoothing", "conv1d"): {"sigma": 0.25, "samples": 8, "n": 200},
    ("lipschitz", "mlp"): {"bound": 2.0},
    ("lipschitz", "cnn"): {"bound": 2.0, "width": 8},
    ("lipschitz", "conv1d"): {"bound": 4.0, "width": 8},
    ("stochastic_activation_pruning", "mlp"): {},
    ("stochastic_activation_pruning", "cnn"): {},
    ("stochastic_activation_pruning", "conv1d"): {},
    ("input_quantization", "cnn"): {},
}

# Parameters each defense refuses, with the message it must give.
BAD_PARAMS: dict[str, list[tuple[dict[str, Any], str]]] = {
    "adversarial_training": [
        ({"eps": -0.1}, r"'eps' parameter .* must be"),
        ({"eps": 0.1, "policy": "sometimes"}, "policy"),
        ({"eps": 0.1, "attack": "nope"}, "nope"),
    ],
    "trades": [({"eps": 0.1, "beta": 0.0}, "'beta' parameter"), ({"eps": "a"}, "'eps'")],
    "randomized_smoothing": [
        ({"sigma": 0.0}, "sigma"),
        ({"sigma": 0.1, "n": 0}, r"'n' parameter .* >= 1"),
        ({"sigma": 0.1, "radii": []}, "'radii' parameter"),
        ({"sigma": 0.1, "alpha": 1.5}, "alpha"),
    ],
    "lipschitz": [
        ({"bound": -1.0}, "'bound'"),
        ({"activation": "gelu"}, "'activation' parameter"),
        ({"hidden": []}, "'hidden' parameter"),
    ],
    "stochastic_activation_pruning": [
        ({"draws": 0}, "'draws' parameter"),
        ({"eot_samples": 0}, "'eot_samples' parameter"),
    ],
    "input_quantization": [({"levels": 1}, "'levels' parameter")],
}


def test_every_registered_defense_is_in_the_suite() -> None:
    covered = {name for name, _ in CASES}
    assert covered == set(DEFENSES.names())
    assert set(BAD_PARAMS) == set(DEFENSES.names())
    for name in DEFENSES.names():
        served = {RECIPES[recipe].task for defense, recipe in CASES if defense == name}
        modalities = DEFENSES.get(name).modalities
        assert len(served) >= len(modalities), f"{name} is not checked on every modality"


@dataclass(frozen=True)
class Defended:
    """A defense applied to one recipe: the trained defended model and its wrapper."""

    defense: Defense
    recipe: str
    base: Trained  # the undefended recipe model (shared; wrapping defenses wrap this one)
    model: nn.Module  # the trained defended model (before the inference wrapper)
    wrapped: nn.Module


_CACHE: dict[tuple[str, str], Defended] = {}


def defend(name: str, recipe_key: str, base: Trained) -> Defended:
    """Build, train (where the defense retrains) and wrap; once per session and case."""
    key = (name, recipe_key)
    if key not in _CACHE:
        defense = DEFENSES.get(name)(**CASES[key])
        recipe = RECIPES[recipe_key]
        model = base.model
        if defense.retrains:
            torch.manual_seed(0)
            model = defense.build(recipe.model, base.task, base.inputs, dict(recipe.hparams))
            data = TrainingData(
                base.inputs.x["train"],
                base.inputs.y["train"],
                base.inputs.x["val"],
                base.inputs.y["val"],
                base.task.train.groups,
            )
            defense.fit(model, base.task, data, config=recipe.config, seed=0)
        _CACHE[key] = Defended(defense, recipe_key, base, model, defense.wrap(model, base.task))
    return _CACHE[key]


@pytest.fixture(params=sorted(CASES), ids=lambda case: f"{case[0]}-{case[1]}")
def case(request: pytest.FixtureRequest, trained: Callable[[str], Trained]) -> Defended:
    name, recipe_key = request.param
    return defend(name, recipe_key, trained(recipe_key))


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    torch.manual_seed(0)
    return float((predictions(predict_logits(model, x)) == y).float().mean())


def majority_rate(y: torch.Tensor) -> float:
    return float(torch.bincount(y).max()) / len(y)


def test_defended_model_learns_its_task(case: Defended) -> None:
    x, y = case.base.split("test", 300)
    defended = accuracy(case.wrapped, x, y)
    undefended = accuracy(case.base.model, x, y)
    assert not case.model.training and not case.wrapped.training
    # A defense may cost clean accuracy, but the model must still learn the task.
    assert defended > majority_rate(y) + 0.02 or defended > undefended - 0.05, (
        defended,
        undefended,
        majority_rate(y),
    )


def test_wrapper_keeps_shape_and_leaves_input_and_model_alone(case: Defended) -> None:
    x, _ = case.base.split("test", 16)
    before = x.clone()
    state = {k: v.clone() for k, v in case.model.state_dict().items()}
    out = case.wrapped(x)
    assert out.shape == case.model(x).shape
    assert out.dtype == torch.float32 and bool(torch.isfinite(out).all())
    assert torch.equal(x, before)
    assert all(torch.equal(v, case.model.state_dict()[k]) for k, v in state.items())
    assert all(p.grad is None for p in case.model.parameters())


def test_wrapper_is_deterministic_for_a_seed(case: Defended) -> None:
    x, _ = case.base.split("test", 16)
    torch.manual_seed(3)
    first = case.wrapped(x)
    torch.manual_seed(3)
    assert torch.equal(first, case.wrapped(x))


def test_adaptive_attacker_gets_gradients(case: Defended) -> None:
    if case.base.task.modality is Modality.TEXT:
        pytest.skip("text models are attacked in embedding space, not through input gradients")
    x, y = case.base.split("test", 16)
    adaptive = case.defense.adaptive(case.wrapped)
    var = x.clone().requires_grad_(True)
    logits = adaptive(var)
    loss = nn.functional.cross_entropy(logits, y) if logits.shape[1] > 1 else logits.sum()
    (grad,) = torch.autograd.grad(loss, var)
    assert grad.shape == x.shape and float(grad.abs().sum()) > 0
    assert all(p.grad is None for p in case.model.parameters())


def test_certificate_is_a_non_increasing_accuracy_curve(case: Defended) -> None:
    x, y = case.base.split("test", 100)
    metrics = case.defense.certify(case.model, case.base.task, x, y, seed=0)
    curve = [v for k, v in sorted(metrics.items(), key=_radius) if k.startswith("certified_r")]
    if type(case.defense).certify is Defense.certify:
        assert metrics == {}
        return
    assert curve and all(0.0 <= v <= 1.0 for v in curve)
    assert all(a >= b for a, b in itertools.pairwise(curve)), curve
    # At radius 0 the certified accuracy is at most the clean accuracy.
    assert curve[0] <= accuracy(case.model, x, y) + 0.05


def _radius(item: tuple[str, float]) -> float:
    name = item[0]
    return float(name[len("certified_r") :]) if name.startswith("certified_r") else -1.0


def test_masking_defenses_are_flagged_and_fall_to_their_adaptive_attack(
    case: Defended,
) -> None:
    if not case.defense.masks_gradients:
        pytest.skip("not a gradient-masking defense")
    x, y = case.base.split("test", 150)
    domain = case.base.task.domain
    flags = masking_checks(case.wrapped, x[:50], y[:50], domain)
    assert any(flags.values()), flags
    eps = {"mlp": 0.3, "cnn": 0.03, "conv1d": 0.1}[case.recipe]
    plain = PGD(eps=eps, steps=20, domain=domain, seed=0)
    adaptive = PGD(eps=eps, steps=20, domain=domain, seed=0, stop_when_adversarial=False)
    undefended = accuracy(case.base.model, plain(case.base.model, x, y), y)
    torch.manual_seed(0)
    real = accuracy(case.wrapped, adaptive(case.defense.adaptive(case.wrapped), x, y), y)
    assert real < undefended + 0.05, (real, undefended)


@pytest.mark.parametrize("name", sorted({n for n, _ in CASES}))
def test_params_round_trip(name: str) -> None:
    params = next(p for (n, _), p in CASES.items() if n == name)
    defense = DEFENSES.get(name)(**params)
    again = DEFENSES.get(name)(**defense.params())
    assert again.params() == defense.params()
    assert type(defense).__name__ in repr(defense)


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [(name, params, message) for name, cases in BAD_PARAMS.items() for params, message in cases],
)
def test_bad_parameters_raise_parameter_error(
    name: str, params: dict[str, Any], message: str
) -> None:
    with pytest.raises(ParameterError, match=message):
        DEFENSES.get(name)(**params)


def test_defense_refuses_a_modality_it_does_not_serve(
    trained: Callable[[str], Trained],
) -> None:
    text = trained("transformer")
    with pytest.raises(ParameterError, match="applies to"):
        DEFENSES.get("lipschitz")().build("transformer", text.task, text.inputs, {})
