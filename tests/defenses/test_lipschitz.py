"""Lipschitz-constrained networks: the bound is a true bound, training on real data certifies
examples, and no attack breaks a certified example inside its radius."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from medrobust.attacks import PGD
from medrobust.data import Task
from medrobust.defenses.lipschitz import (
    LipschitzCNN,
    LipschitzCNN1d,
    LipschitzConv1d,
    LipschitzConv2d,
    LipschitzLinear,
    LipschitzMLP,
    MaxMin,
    _Spectral,
    certified_radius,
    layer_norms,
    lipschitz_bound,
    refresh_sigmas,
)
from medrobust.errors import InputError, ParameterError
from medrobust.metrics import certified_accuracy
from medrobust.models import prepare_inputs
from medrobust.training import FitConfig, predict_logits
from tests.conftest import fit_splits

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Certified:
    """A Lipschitz model trained on a real task, with its bound and test-set certificates."""

    name: str
    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    lipschitz: float
    logits: torch.Tensor
    radii: torch.Tensor

    @property
    def correct(self) -> torch.Tensor:
        return self.logits.argmax(dim=1) == self.y


def _train(
    task: Task, model: nn.Module, config: FitConfig, name: str, target_bound: float
) -> Certified:
    inputs = prepare_inputs(task)
    fit_splits(
        model,
        inputs,
        config=config,
        seed=0,
    )
    shape = tuple(inputs.x["test"].shape[1:])
    refresh_sigmas(model, shape)
    model.eval()
    lipschitz = lipschitz_bound(model, shape)
    assert lipschitz <= target_bound * (1 + 1e-4)
    x, y = inputs.x["test"], inputs.y["test"]
    logits = predict_logits(model, x)
    return Certified(name, model, x, y, lipschitz, logits, certified_radius(logits, lipschitz))


@pytest.fixture(scope="module")
def mlp(real_task: Callable[[str], Task]) -> Certified:
    torch.manual_seed(0)
    model = LipschitzMLP(30, 2, bound=1.0)
    config = FitConfig(epochs=30, batch_size=32, lr=3e-3, patience=0)
    return _train(real_task("wisconsin"), model, config, "mlp/wisconsin", 1.0)


@pytest.fixture(scope="module")
def cnn(real_task: Callable[[str], Task]) -> Certified:
    torch.manual_seed(0)
    model = LipschitzCNN(1, 2, width=8, bound=2.0)
    config = FitConfig(epochs=10, batch_size=32, lr=3e-3, patience=0)
    return _train(real_task("breastmnist"), model, config, "cnn/breastmnist", 2.0)


@pytest.fixture(scope="module")
def ecg(real_task: Callable[[str], Task]) -> Certified:
    torch.manual_seed(0)
    model = LipschitzCNN1d(1, 5, width=8, bound=4.0)
    config = FitConfig(epochs=3, batch_size=32, lr=3e-3, patience=0)
    return _train(real_task("ecg5000"), model, config, "cnn1d/ecg5000", 4.0)


@pytest.fixture(params=["mlp", "cnn", "ecg"])
def certified(request: pytest.FixtureRequest) -> Certified:
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


# --- the bound is a true bound ---------------------------------------------------------------


def test_dense_power_iteration_matches_matrix_norm() -> None:
    torch.manual_seed(0)
    layer = LipschitzLinear(20, 12, bound=100.0)
    exact = float(torch.linalg.matrix_norm(layer.effective_weight().detach().double(), ord=2))
    assert layer.operator_norm() == pytest.approx(exact, rel=1e-12)
    # The generic power iteration (used for convolutions) converges to the same value.
    assert _Spectral.operator_norm(layer, None) == pytest.approx(exact, rel=1e-4)


def _dense_matrix(layer: LipschitzConv1d | LipschitzConv2d, shape: tuple[int, ...]) -> torch.Tensor:
    """The matrix of the layer's linear part at inputs of ``shape`` (bias removed)."""
    basis = torch.eye(math.prod(shape), dtype=torch.float64).view(-1, *shape)
    weight = layer.effective_weight().detach().double()
    with torch.no_grad():
        columns = layer._conv(basis, weight)
    return columns.flatten(1).T


CONVS: dict[str, tuple[Callable[[], LipschitzConv1d | LipschitzConv2d], tuple[int, ...]]] = {
    "conv2d-s2-odd": (
        lambda: LipschitzConv2d(3, 4, 3, stride=2, padding=1, bound=100.0),
        (3, 9, 9),
    ),
    "conv2d-k4-s2": (lambda: LipschitzConv2d(2, 4, 4, stride=2, padding=1, bound=100.0), (2, 8, 8)),
    "conv1d-k7": (lambda: LipschitzConv1d(2, 3, 7, stride=1, padding=3, bound=100.0), (2, 40)),
    "conv1d-s2-odd": (lambda: LipschitzConv1d(2, 4, 4, stride=2, padding=1, bound=100.0), (2, 35)),
}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind", sorted(CONVS))
def test_conv_power_iteration_is_the_operator_norm(kind: str, seed: int) -> None:
    # Clustered singular values made plain power iteration (1e-6 rule) up to 0.3 % low on the
    # 1D case; with the Lanczos refinement it matches the dense operator's norm.
    build, shape = CONVS[kind]
    torch.manual_seed(seed)
    layer = build().eval()
    norm = layer.operator_norm(shape)
    exact = float(torch.linalg.matrix_norm(_dense_matrix(layer, shape), ord=2))
    assert norm == pytest.approx(exact, rel=1e-9)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((256, *shape), generator=generator)
    with torch.no_grad():
        out = layer(x) - layer(torch.zeros_like(x))  # the linear part
    ratios = out.flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)
    assert float(ratios.max()) <= norm * (1 + 1e-5)
    # The reshaped-kernel matrix does not bound the convolution's norm.
    weight = layer.effective_weight().detach().double()
    kernel_norm = float(torch.linalg.matrix_norm(weight.flatten(1), ord=2))
    assert kernel_norm != pytest.approx(norm, rel=1e-3)


def _pairs_ratio(model: nn.Module, x: torch.Tensor, x2: torch.Tensor) -> float:
    distance = (x - x2).flatten(1).norm(dim=1)
    keep = distance > 0  # a shuffle leaves some points in place
    with torch.no_grad():
        out = (model(x[keep]) - model(x2[keep])).flatten(1).norm(dim=1)
    return float((out / distance[keep]).max())


def test_bound_holds_on_real_models(certified: Certified) -> None:
    model, x, lipschitz = certified.model, certified.x, certified.lipschitz
    generator = torch.Generator().manual_seed(1)
    shuffled = x[torch.randperm(len(x), generator=generator)]
    noise = torch.randn(x.shape, generator=generator)
    ratios = {
        "test pairs": _pairs_ratio(model, x, shuffled),
        "random pairs": _pairs_ratio(model, noise, torch.randn(x.shape, generator=generator)),
        "nearby pairs": _pairs_ratio(model, x, x + 1e-3 * noise),
    }
    # The steepest direction at a test point: the gradient of the top-two logit difference.
    x_var = x.clone().requires_grad_(True)
    logits = model(x_var)
    top = logits.topk(2, dim=1).indices
    gap = logits.gather(1, top[:, :1]) - logits.gather(1, top[:, 1:])
    (grad,) = torch.autograd.grad(gap.sum(), x_var)
    gradient_norm = float(grad.flatten(1).norm(dim=1).max())
    logger.info(
        f"{certified.name}: L={lipschitz:.4f}, largest ratios {ratios}, "
        f"largest margin-gradient norm {gradient_norm:.4f} (<= sqrt(2) L)"
    )
    for ratio in ratios.values():
        assert ratio <= lipschitz * (1 + 1e-5)
    assert gradient_norm <= math.sqrt(2) * lipschitz * (1 + 1e-5)


def test_layer_norms_match_dense_norms_of_trained_mlp(mlp: Certified) -> None:
    norms = dict(layer_norms(mlp.model, (30,)))
    for name, module in mlp.model.named_modules():
        if isinstance(module, LipschitzLinear):
            weight = module.effective_weight().detach().double()
            exact = float(torch.linalg.matrix_norm(weight, ord=2))
            assert norms[name] == pytest.approx(exact, rel=1e-10)
            assert exact <= module.bound * (1 + 1e-6)


@pytest.mark.parametrize(
    ("pool", "shape", "expected"),
    [
        (nn.MaxPool2d(2), (2, 8, 8), 1.0),
        (nn.AvgPool2d(2), (2, 8, 8), 0.5),
        (nn.MaxPool1d(3, stride=1), (1, 20), math.sqrt(3)),
        (nn.AdaptiveMaxPool2d(1), (3, 7, 7), 1.0),
        (nn.AdaptiveAvgPool1d(5), (2, 20), 0.5),
    ],
)
def test_pool_factors_bound_the_pools(
    pool: nn.Module, shape: tuple[int, ...], expected: float
) -> None:
    ((_, factor),) = layer_norms(pool, shape)
    assert factor == pytest.approx(expected)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((512, *shape), generator=generator)
    assert _pairs_ratio(pool, x, torch.randn(x.shape, generator=generator)) <= factor + 1e-6


# --- training on real data certifies examples ------------------------------------------------


@pytest.mark.parametrize(
    ("name", "grid", "min_accuracy", "radius", "min_certified"),
    [
        ("mlp", [0.0, 0.1, 0.25, 0.5, 1.0], 0.9, 0.5, 0.6),
        ("cnn", [0.0, 0.1, 0.25, 0.5, 1.0], 0.76, 0.25, 0.5),
        ("ecg", [0.0, 0.1, 0.25, 0.5, 1.0], 0.85, 0.5, 0.6),
    ],
)
def test_certified_accuracy_on_real_data(
    request: pytest.FixtureRequest,
    name: str,
    grid: list[float],
    min_accuracy: float,
    radius: float,
    min_certified: float,
) -> None:
    result: Certified = request.getfixturevalue(name)
    clean = float(result.correct.float().mean())
    majority = float(torch.bincount(result.y).max()) / len(result.y)
    curve = certified_accuracy(result.radii, result.correct, grid)
    logger.info(
        f"{result.name}: L={result.lipschitz:.4f}, clean {clean:.3f} (majority {majority:.3f}), "
        f"certified accuracy at {grid}: {np.round(curve, 3).tolist()}, "
        f"median radius {float(result.radii.median()):.3f}"
    )
    assert clean >= min_accuracy and clean > majority + 0.02
    assert curve[0] == pytest.approx(clean)
    assert np.all(np.diff(curve) <= 0)
    assert curve[grid.index(radius)] >= min_certified


# --- soundness: no attack breaks a certified example inside its radius ------------------------


@pytest.mark.parametrize(("name", "limit"), [("mlp", None), ("cnn", 24), ("ecg", 24)])
def test_pgd_never_breaks_a_certified_example(
    request: pytest.FixtureRequest, name: str, limit: int | None
) -> None:
    result: Certified = request.getfixturevalue(name)
    predicted = result.logits.argmax(dim=1)
    chosen = (result.radii > 1e-3).nonzero().squeeze(1)
    if limit is not None and len(chosen) > limit:  # spread over the range of radii
        by_radius = chosen[result.radii[chosen].argsort()]
        chosen = by_radius[torch.linspace(0, len(chosen) - 1, limit).round().long()]
    worst = 1.0  # the smallest margin left, as a fraction of the clean margin
    for i in chosen.tolist():
        eps = 0.99 * float(result.radii[i])
        attack = PGD(norm="l2", eps=eps, steps=50, restarts=2, loss="margin", seed=i)
        x_adv = attack(result.model, result.x[i : i + 1], predicted[i : i + 1])
        assert float((x_adv - result.x[i : i + 1]).norm()) <= eps * (1 + 1e-5)
        logits = predict_logits(result.model, x_adv)
        assert int(logits.argmax(dim=1)) == int(predicted[i]), f"example {i} broken at {eps}"
        top = logits[0].topk(2).values
        clean = result.logits[i].topk(2).values
        worst = min(worst, float((top[0] - top[1]) / (clean[0] - clean[1])))
    logger.info(
        f"{result.name}: {len(chosen)} certified examples attacked, none broken; "
        f"smallest margin left {worst:.3f} of the clean margin"
    )
    # The attack has teeth: with four times the radius it breaks some of the same examples.
    x, y = result.x[chosen], predicted[chosen]
    big = PGD(norm="l2", eps=4 * float(result.radii[chosen].median()), steps=50, loss="margin")
    broken = predict_logits(result.model, big(result.model, x, y)).argmax(dim=1) != y
    assert bool(broken.any())


# --- parameters ------------------------------------------------------------------------------


def test_smaller_bound_gives_smaller_lipschitz_bound() -> None:
    builders: list[tuple[Callable[[float], nn.Module], tuple[int, ...]]] = [
        (lambda b: LipschitzMLP(30, 2, bound=b), (30,)),
        (lambda b: LipschitzCNN(1, 2, width=8, bound=b), (1, 28, 28)),
        (lambda b: LipschitzCNN1d(1, 5, width=8, bound=b), (1, 140)),
    ]
    for build, shape in builders:
        bounds = []
        for target in (0.5, 2.0):
            torch.manual_seed(0)
            model = build(target)
            bounds.append(lipschitz_bound(model, shape))
            assert bounds[-1] <= target * (1 + 1e-6)
            refresh_sigmas(model, shape)
            assert lipschitz_bound(model, shape) <= target * (1 + 1e-4)
        assert bounds[0] < bounds[1]


def test_training_mode_updates_sigma_and_eval_is_deterministic() -> None:
    torch.manual_seed(0)
    layer = LipschitzConv2d(1, 4, 3, padding=1, bound=0.5)
    before = float(layer.sigma)
    layer.train()
    for _ in range(20):
        layer(torch.randn(2, 1, 10, 10))
    assert float(layer.sigma) != before
    assert float(layer.sigma) == pytest.approx(
        layer.eval().operator_norm((1, 10, 10)) * float(layer.scale()), rel=1e-2
    )
    x = torch.randn(3, 1, 10, 10)
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    assert torch.equal(layer(x), layer(x))
    assert all(torch.equal(state[k], v) for k, v in layer.state_dict().items())


def test_certified_radius_and_accuracy_by_hand() -> None:
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 0.5, 0.5]])
    radii = certified_radius(logits, 2.0)
    assert torch.allclose(radii, torch.tensor([2.0 / (math.sqrt(2) * 2.0), 0.0]))
    assert torch.allclose(
        certified_radius(torch.tensor([[-3.0], [1.0]]), 2.0), torch.tensor([1.5, 0.5])
    )
    curve = certified_accuracy(
        torch.tensor([0.0, 0.5, 1.0, 2.0]), [True, True, False, True], [0, 1]
    )
    assert curve.tolist() == [0.75, 0.25]


def test_maxmin_is_a_pairwise_sort() -> None:
    x = torch.tensor([[1.0, -2.0, 0.5, 3.0]])
    assert MaxMin()(x).tolist() == [[1.0, 3.0, 0.5, -2.0]]


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: LipschitzMLP(30, 2, bound=0.0), "'bound' parameter of LipschitzMLP must be"),
        (lambda: LipschitzMLP(30, 2, bound=-1.0), "finite number > 0. Got -1.0"),
        (lambda: LipschitzMLP(30, 2, bound=float("nan")), "'bound'"),
        (lambda: LipschitzCNN(1, 2, bound=0), "'bound' parameter of LipschitzCNN"),
        (lambda: LipschitzCNN1d(1, 2, bound=-2.0), "'bound' parameter of LipschitzCNN1d"),
        (lambda: LipschitzLinear(3, 2, bound=0.0), "'bound' parameter of LipschitzLinear"),
        (lambda: LipschitzMLP(30, 2, hidden=(7,)), "must be even"),
        (lambda: LipschitzCNN(1, 2, width=5), "must be even"),
        (lambda: LipschitzMLP(30, 2, activation="tanh"), "'activation'.*one of"),
        (lambda: LipschitzMLP(0, 2), "'in_features'.*integer >= 1"),
        (lambda: LipschitzConv2d(1, 2, 3, bound=1.0, power_iterations=0), "'power_iterations'"),
        (
            lambda: LipschitzConv1d(1, 2, 3, padding="same"),  # type: ignore[arg-type]
            "padding_mode='zeros'",
        ),
        (lambda: lipschitz_bound(LipschitzMLP(30, 2), (31,)), "cannot run on inputs"),
        (lambda: lipschitz_bound(LipschitzMLP(30, 2), ()), "tuple of positive integers"),
        (lambda: lipschitz_bound(LipschitzCNN(1, 2), (28, 28)), "needs inputs of shape"),
        (lambda: lipschitz_bound(nn.Sequential(nn.Linear(3, 2)), (3,)), "does not support"),
        (lambda: certified_radius(torch.zeros(4), 1.0), r"shape \(N, K\)"),
        (lambda: certified_radius(torch.zeros(4, 2), 0.0), "'lipschitz' parameter"),
    ],
)
def test_bad_parameters_raise_parameter_error(build: Callable[[], object], match: str) -> None:
    with pytest.raises(ParameterError, match=match):
        build()


def test_certified_accuracy_rejects_mismatched_inputs() -> None:
    with pytest.raises(InputError, match="same length"):
        certified_accuracy([0.1, 0.2], [True], [0.0])


def test_module_applied_twice_is_refused() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = LipschitzLinear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(self.layer(x))  # type: ignore[no-any-return]

    with pytest.raises(ParameterError, match="exactly once"):
        lipschitz_bound(Twice(), (4,))
