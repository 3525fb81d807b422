"""Property-based fuzz tests of what is given to the defenses at each entry point: ``certify``,
``wrap``, ``adaptive``, the forward pass of the inference wrappers they return, ``fit`` on tiny
data for one epoch, :class:`~medrobust.defenses.SmoothedClassifier` and the constructors.

Every case ends in a documented error (:class:`~medrobust.errors.InputError` for unusable
tensors or models, :class:`~medrobust.errors.ParameterError` for a model, task, seed, config or
hyperparameter of the wrong kind) or in a correct result, whose properties are checked:
certificates are accuracies in [0, 1] that do not grow with the radius, wrappers return logits
of shape (N, K), training runs its epoch and leaves finite weights, and the inputs and shared
models are left as they were. Cases run through :func:`tests.fuzz.outcome` (family "defense
inputs"), which lets any other exception fail the test.

The tasks are synthetic (8 examples per split) and the models tiny and untrained; the point is
input validation, not robustness. The decisions pinned down here are those of the attacks
(``tests/attacks/test_fuzz_inputs.py``): inputs are never cast (a dtype other than the model's
is an InputError), NaN/Inf, values outside the task's domain, empty batches, non-tensors,
sparse and meta tensors are InputErrors, non-contiguous, expanded and ``requires_grad`` inputs
are accepted. The forward pass of a wrapper checks only what costs no pass over the values (it
runs inside attack loops): a NaN in gives NaN logits out, as any module's would, and an empty
batch gives empty logits.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from functools import cache
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from medrobust.data.task import Split, Task
from medrobust.defenses import DEFENSES, Defense, SmoothedClassifier, TrainingData
from medrobust.errors import InputError
from medrobust.metrics import certified_accuracy
from medrobust.models import TensorSplits
from medrobust.models.ecg import Conv1DClassifier
from medrobust.models.image import SmallCNN
from medrobust.models.tabular import MLP
from medrobust.models.text import TransformerClassifier
from medrobust.training import FitConfig, FitResult
from medrobust.types import UNBOUNDED, UNIT_INTERVAL, Modality, TaskKind
from tests.fuzz import ACCEPTED, describe, outcome

FAMILY = "defense inputs"
VOCAB = 40
MAX_LENGTH = 12
EXAMPLES = 8
# One input of each modality; the Lipschitz convolutions need ECG5000's and MedMNIST's sizes.
SHAPES = {
    Modality.IMAGE: (1, 28, 28),
    Modality.ECG: (1, 140),
    Modality.TABULAR: (6,),
    Modality.TEXT: (MAX_LENGTH,),
}
CLASSES = {Modality.IMAGE: 2, Modality.ECG: 3, Modality.TABULAR: 2, Modality.TEXT: 3}
DOMAINS = {
    Modality.IMAGE: UNIT_INTERVAL,
    Modality.ECG: UNBOUNDED,
    Modality.TABULAR: UNBOUNDED,
    Modality.TEXT: UNBOUNDED,
}
ONE_EPOCH = FitConfig(epochs=1, batch_size=4, patience=0)


def valid_inputs(modality: Modality, n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    shape = (n, *SHAPES[modality])
    if modality is Modality.TEXT:
        ids = torch.randint(4, VOCAB, shape, generator=generator)
        ids[:, MAX_LENGTH // 2 :] = 0  # [PAD]
        return ids
    if modality is Modality.IMAGE:
        return torch.rand(shape, generator=generator)
    return torch.randn(shape, generator=generator)


def valid_labels(modality: Modality, n: int, seed: int) -> torch.Tensor:
    return torch.arange(seed, seed + n) % CLASSES[modality]


@cache
def task(modality: Modality) -> Task:
    """A synthetic task of ``modality`` with 8 examples per split."""
    x = valid_inputs(modality, EXAMPLES, 0).numpy()
    if modality is Modality.TEXT:
        x = np.array(["some clinical words"] * EXAMPLES, dtype=object)
    split = Split(x, valid_labels(modality, EXAMPLES, 0).numpy())
    names = tuple(f"class{c}" for c in range(CLASSES[modality]))
    return Task(
        f"fuzz_{modality.value}",
        modality,
        TaskKind.CLASSIFICATION,
        names,
        0,
        DOMAINS[modality],
        split,
        split,
        split,
    )


PARAMS: dict[str, dict[str, Any]] = {
    "adversarial_training": {"eps": 0.05, "attack_params": {"steps": 1}},
    "trades": {"eps": 0.05, "attack_params": {"steps": 1}},
    "lipschitz": {"width": 4, "hidden": (8,)},
    "randomized_smoothing": {"sigma": 0.25, "samples": 4, "n0": 8, "n": 32, "eot_samples": 2},
    "stochastic_activation_pruning": {"eot_samples": 2},
    "input_quantization": {"levels": 8},
}
TEXT_PARAMS = {"eps": 0.1, "attack": "embedding_pgd", "attack_params": {"steps": 1}}


def defense(name: str, modality: Modality) -> Defense:
    params = TEXT_PARAMS if modality is Modality.TEXT else PARAMS[name]
    return DEFENSES.get(name)(**params)


def fresh_model(name: str, modality: Modality) -> nn.Module:
    """A new untrained model for ``name`` on ``modality`` (the Lipschitz architecture for the
    Lipschitz defense), in eval mode."""
    torch.manual_seed(0)
    classes = CLASSES[modality]
    if name == "lipschitz":
        x = valid_inputs(modality, 2, 0)
        inputs = TensorSplits({"train": x}, {"train": valid_labels(modality, 2, 0)})
        model = defense(name, modality).build("unused", task(modality), inputs, {})
    elif modality is Modality.IMAGE:
        model = SmallCNN(1, classes, width=4)
    elif modality is Modality.ECG:
        model = Conv1DClassifier(1, classes, width=4)
    elif modality is Modality.TABULAR:
        model = MLP(6, classes, hidden=(8,))
    else:
        model = TransformerClassifier(
            VOCAB, classes, max_length=MAX_LENGTH, dim=8, heads=2, layers=1
        )
    return model.eval()


@cache
def shared_model(name: str, modality: Modality) -> nn.Module:
    return fresh_model(name, modality)


# Every defense on each modality it serves. The Lipschitz convolutions measure their operator
# norms to convergence (half a second per certificate), so the fuzz tests certify and train
# the Lipschitz MLP; test_lipschitz_certifies_convolutions covers the others once.
SERVED = sorted(
    (name, modality)
    for name in DEFENSES.names()
    for modality in sorted(DEFENSES.get(name).modalities)
)
FAST = [(n, m) for n, m in SERVED if n != "lipschitz" or m is Modality.TABULAR]


def test_every_defense_and_modality_is_fuzzed() -> None:
    assert {name for name, _ in FAST} == set(DEFENSES.names())
    assert set(PARAMETERS) == set(DEFENSES.names())


# -- corruptions ------------------------------------------------------------------------------
# Each maps valid inputs to a fuzzed value, with the outcome it must have: "accepted",
# "InputError", or "either" (a shape the model may or may not eat; a result must be correct).


def _with(x: torch.Tensor, value: float) -> torch.Tensor:
    out = x.clone()
    out.view(-1)[len(out.view(-1)) // 2] = value
    return out


Corruptions = dict[str, tuple[Callable[[torch.Tensor], Any], str]]

CONTINUOUS: Corruptions = {
    "valid": (lambda x: x, ACCEPTED),
    "non-contiguous": (lambda x: x.movedim(0, -1).contiguous().movedim(-1, 0), ACCEPTED),
    "expanded": (lambda x: x[:1].expand_as(x), ACCEPTED),
    "requires-grad": (lambda x: x.clone().requires_grad_(True), ACCEPTED),
    "nan": (lambda x: _with(x, math.nan), "InputError"),
    "inf": (lambda x: _with(x, math.inf), "InputError"),
    "-inf": (lambda x: _with(x, -math.inf), "InputError"),
    "float64": (lambda x: x.double(), "InputError"),
    "float16": (lambda x: x.half(), "InputError"),
    "int64": (lambda x: x.round().long(), "InputError"),
    "bool": (lambda x: x > 0, "InputError"),
    "complex": (lambda x: x.to(torch.complex64), "InputError"),
    "empty": (lambda x: x[:0], "InputError"),
    "one-input-unbatched": (lambda x: x[0], "either"),
    "missing-channel": (lambda x: x[:, 0] if x.dim() > 2 else x[:, :-1], "either"),
    "extra-dim": (lambda x: x[:, None], "either"),
    "numpy": (lambda x: x.numpy(), "InputError"),
    "list": (lambda x: x.tolist(), "InputError"),
    "none": (lambda x: None, "InputError"),
    "sparse": (lambda x: x.to_sparse(), "InputError"),
    "meta": (lambda x: torch.empty_like(x, device="meta"), "InputError"),
}
BOUNDED: Corruptions = {
    "outside-domain": (lambda x: _with(x, 1.5), "InputError"),
    "below-domain": (lambda x: _with(x, -0.5), "InputError"),
    "on-the-domain-edge": (lambda x: _with(x, 1.0), ACCEPTED),
}
TOKENS: Corruptions = {
    "valid": (lambda x: x, ACCEPTED),
    "non-contiguous": (lambda x: x.T.contiguous().T, ACCEPTED),
    "all-padding": (lambda x: torch.zeros_like(x), ACCEPTED),
    "outside-vocabulary": (lambda x: _with(x, VOCAB), "InputError"),
    "negative-id": (lambda x: _with(x, -1), "InputError"),
    "int32": (lambda x: x.int(), "InputError"),
    "float": (lambda x: x.float(), "InputError"),
    "empty": (lambda x: x[:0], "InputError"),
    "no-tokens": (lambda x: x[:, :0], "InputError"),
    "extra-dim": (lambda x: x[:, :, None], "InputError"),
    "longer-than-the-model": (lambda x: torch.cat([x, x], dim=1), "InputError"),
    "numpy": (lambda x: x.numpy(), "InputError"),
    "none": (lambda x: None, "InputError"),
    "meta": (lambda x: torch.empty_like(x, device="meta"), "InputError"),
}
LABELS: Corruptions = {
    "valid": (lambda y: y, ACCEPTED),
    "int32": (lambda y: y.int(), ACCEPTED),
    "out-of-range": (lambda y: y + 5, "InputError"),
    "negative": (lambda y: y - 5, "InputError"),
    "float": (lambda y: y.float(), "InputError"),
    "bool": (lambda y: y > 0, "InputError"),
    "2-d": (lambda y: y[:, None], "InputError"),
    "one-short": (lambda y: y[:-1], "InputError"),
    "scalar": (lambda y: y[0], "InputError"),
    "numpy": (lambda y: y.numpy(), "InputError"),
    "list": (lambda y: y.tolist(), "InputError"),
    "none": (lambda y: None, "InputError"),
    "meta": (lambda y: torch.empty_like(y, device="meta"), "InputError"),
}
SEEDS: dict[str, tuple[Any, str]] = {
    "0": (0, ACCEPTED),
    "large": (2**63, ACCEPTED),
    "numpy": (np.int64(3), ACCEPTED),
    "negative": (-1, "ParameterError"),
    "too-large": (2**64, "ParameterError"),
    "float": (1.5, "ParameterError"),
    "bool": (True, "ParameterError"),
    "string": ("0", "ParameterError"),
    "none": (None, "ParameterError"),
}


def input_corruptions(modality: Modality) -> Corruptions:
    if modality is Modality.TEXT:
        return TOKENS
    return {**CONTINUOUS, **BOUNDED} if DOMAINS[modality].bounded else CONTINUOUS


def combined(*expected: str) -> str:
    """The outcome of a case from the outcome each fuzzed part must have, in the order the
    entry point checks them."""
    for result in expected:
        if result not in (ACCEPTED, "either"):
            return result
    return "either" if "either" in expected else ACCEPTED


def same(a: Any, b: Any) -> bool:
    """Equal tensors, NaN equal to NaN."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point():
        return bool((a.eq(b) | (a.isnan() & b.isnan())).all())
    return torch.equal(a, b)


def snapshot(value: Any) -> Any:
    """A copy to check later that ``value`` was not mutated (None if it cannot be read)."""
    if isinstance(value, torch.Tensor) and value.layout == torch.strided and not value.is_meta:
        return value.detach().clone()
    return None


def check_unchanged(context: str, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state), f"{context} changed the model"
    assert not model.training, f"{context} left the model in training mode"
    assert all(p.grad is None for p in model.parameters()), f"{context} left gradients"


def radius_of(key: str) -> float:
    return float(key.removeprefix("certified_r"))


def check_certificate(context: str, name: str, result: Any) -> None:
    assert isinstance(result, dict), describe(result)
    assert all(isinstance(v, float) and math.isfinite(v) for v in result.values()), result
    curve = sorted(
        ((radius_of(k), v) for k, v in result.items() if re.fullmatch(r"certified_r[\d.e+-]+", k)),
    )
    if name in ("lipschitz", "randomized_smoothing"):
        radii = DEFENSES.get(name)(**PARAMS[name]).params()["radii"]
        assert [r for r, _ in curve] == sorted(radii), f"{context}: {result}"
        assert result["certified_mean_radius"] >= 0
    else:
        assert result == {}, f"{context}: a defense without a certificate returned {result}"
    accuracies = [a for _, a in curve]
    assert all(0.0 <= a <= 1.0 for a in accuracies), f"{context}: {result}"
    assert accuracies == sorted(accuracies, reverse=True), f"{context}: {result}"


# -- certify --------------------------------------------------------------------------------------


@st.composite
def certify_cases(draw: st.DrawFn) -> tuple[Any, ...]:
    name, modality = draw(st.sampled_from(FAST))
    table = input_corruptions(modality)
    x_kind = draw(st.sampled_from(["valid"] * 4 + sorted(table)))
    y_kind = draw(st.sampled_from(["valid"] * 8 + sorted(LABELS)))
    seed_kind = draw(st.sampled_from(["0"] * 12 + sorted(SEEDS)))
    return (
        name,
        modality,
        draw(st.integers(1, 4)),
        draw(st.integers(0, 99)),
        x_kind,
        y_kind,
        seed_kind,
    )


@settings(max_examples=350)
@given(certify_cases())
def test_certify_ends_in_a_documented_error_or_a_certificate(case: tuple[Any, ...]) -> None:
    name, modality, n, seed, x_kind, y_kind, seed_kind = case
    fuzz_x, x_expected = input_corruptions(modality)[x_kind]
    fuzz_y, y_expected = LABELS[y_kind]
    seed_value, seed_expected = SEEDS[seed_kind]
    x, y = fuzz_x(valid_inputs(modality, n, seed)), fuzz_y(valid_labels(modality, n, seed))
    model, built = shared_model(name, modality), defense(name, modality)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    before = snapshot(x)
    result, certificate = outcome(
        FAMILY, lambda: built.certify(model, task(modality), x, y, seed=seed_value)
    )
    context = f"{built!r}.certify on {modality.value}: x={describe(x, 100)}, y={describe(y, 60)}"
    expected = combined(seed_expected, x_expected, y_expected)
    if expected != "either":
        assert result == expected, f"{context} ended in {result}, expected {expected}"
    check_unchanged(context, model, state)
    if before is not None:
        assert same(x.detach(), before), f"{context} mutated its input"
    if result == ACCEPTED:
        check_certificate(context, name, certificate)


@pytest.mark.parametrize("modality", [Modality.IMAGE, Modality.ECG])
def test_lipschitz_certifies_convolutions_after_checking_inputs(modality: Modality) -> None:
    model, built = shared_model("lipschitz", modality), defense("lipschitz", modality)
    x, y = valid_inputs(modality, 3, 0), valid_labels(modality, 3, 0)
    result, certificate = outcome(
        FAMILY, lambda: built.certify(model, task(modality), x, y, seed=0)
    )
    assert result == ACCEPTED
    check_certificate(f"lipschitz on {modality.value}", "lipschitz", certificate)
    bad = _with(x, math.nan)
    result, _ = outcome(FAMILY, lambda: built.certify(model, task(modality), bad, y, seed=0))
    assert result == "InputError"


# -- wrap and adaptive ----------------------------------------------------------------------------

MODEL_KINDS: dict[str, tuple[Callable[[str, Modality], Any], str]] = {
    "the-model": (shared_model, ACCEPTED),
    "none": (lambda n, m: None, "ParameterError"),
    "a-string": (lambda n, m: "model", "ParameterError"),
    "a-function": (lambda n, m: lambda x: x, "ParameterError"),
    "an-array": (lambda n, m: np.zeros(3), "ParameterError"),
}


def _other_task(name: str, modality: Modality) -> Any:
    served = DEFENSES.get(name).modalities
    others = [m for m in SHAPES if m not in served]
    return task(others[0]) if others else task(modality)


TASK_KINDS: dict[str, tuple[Callable[[str, Modality], Any], str]] = {
    "the-task": (lambda n, m: task(m), ACCEPTED),
    "none": (lambda n, m: None, "ParameterError"),
    "a-name": (lambda n, m: f"fuzz_{m.value}", "ParameterError"),
    "a-dict": (lambda n, m: {"modality": m.value}, "ParameterError"),
    "a-modality-not-served": (
        _other_task,
        "ParameterError",
    ),
}
WRAPPED_KINDS: dict[str, tuple[Callable[[nn.Module], Any], str]] = {
    "the-wrapper": (lambda w: w, ACCEPTED),
    "none": (lambda w: None, "ParameterError"),
    "a-string": (lambda w: "wrapped", "ParameterError"),
    "a-function": (lambda w: lambda x: x, "ParameterError"),
    "another-module": (lambda w: nn.Linear(6, 2), "either"),
}


@settings(max_examples=150)
@given(
    st.sampled_from(SERVED),
    st.sampled_from(["the-model"] * 3 + sorted(MODEL_KINDS)),
    st.sampled_from(["the-task"] * 3 + sorted(TASK_KINDS)),
    st.sampled_from(["the-wrapper"] * 3 + sorted(WRAPPED_KINDS)),
)
def test_wrap_and_adaptive_end_in_parameter_error_or_a_module(
    served: tuple[str, Modality], model_kind: str, task_kind: str, wrapped_kind: str
) -> None:
    name, modality = served
    built = defense(name, modality)
    make_model, model_expected = MODEL_KINDS[model_kind]
    make_task, task_expected = TASK_KINDS[task_kind]
    if task_kind == "a-modality-not-served" and len(DEFENSES.get(name).modalities) == 4:
        task_expected = ACCEPTED  # adversarial training serves every modality
    model, fuzzed_task = make_model(name, modality), make_task(name, modality)
    result, wrapped = outcome(FAMILY, lambda: built.wrap(model, fuzzed_task))
    expected = combined(model_expected, task_expected)
    assert result == expected, f"{built!r}.wrap({describe(model, 40)}, {describe(fuzzed_task, 40)})"
    if result != ACCEPTED:
        return
    assert isinstance(wrapped, nn.Module) and not wrapped.training
    make_wrapped, wrapped_expected = WRAPPED_KINDS[wrapped_kind]
    given_wrapped = make_wrapped(wrapped)
    result, adaptive = outcome(FAMILY, lambda: built.adaptive(given_wrapped))
    if wrapped_expected != "either":
        assert result == wrapped_expected, f"{built!r}.adaptive({describe(given_wrapped, 60)})"
    if result == ACCEPTED:
        assert isinstance(adaptive, nn.Module)


# -- the forward pass of inference wrappers --------------------------------------------------------

# The defenses whose wrap returns a module of their own (the others return the model itself,
# whose forward is the model's business).
WRAPPING = [(n, m) for n, m in SERVED if not DEFENSES.get(n).retrains]
WRAPPING += [(n, m) for n, m in SERVED if n == "randomized_smoothing"]


@st.composite
def forward_cases(draw: st.DrawFn) -> tuple[Any, ...]:
    name, modality = draw(st.sampled_from(sorted(WRAPPING)))
    x_kind = draw(st.sampled_from(["valid"] * 3 + sorted(input_corruptions(modality))))
    return (
        name,
        modality,
        draw(st.integers(1, 3)),
        draw(st.integers(0, 99)),
        x_kind,
        draw(st.booleans()),
    )


@settings(max_examples=250)
@given(forward_cases())
def test_inference_wrappers_end_in_input_error_or_logits(case: tuple[Any, ...]) -> None:
    """The wrapper (or its adaptive module) checks the kind of its input; NaN and Inf pass
    through (values are checked by the attacks and certificates that call it), and an empty
    batch gives empty logits."""
    name, modality, n, seed, x_kind, use_adaptive = case
    fuzz_x, expected = input_corruptions(modality)[x_kind]
    if expected == "InputError" and x_kind in ("nan", "inf", "-inf", *BOUNDED):
        expected = ACCEPTED
    if x_kind == "empty":
        expected = ACCEPTED
    model, built = shared_model(name, modality), defense(name, modality)
    wrapped = built.wrap(model, task(modality))
    module = built.adaptive(wrapped) if use_adaptive else wrapped
    x = fuzz_x(valid_inputs(modality, n, seed))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        result, logits = outcome(FAMILY, lambda: module(x))
    context = f"{type(module).__name__} of {name} on {modality.value}: x={describe(x, 100)}"
    if expected != "either":
        assert result == expected, f"{context} ended in {result}, expected {expected}"
    check_unchanged(context, model, state)
    if result == ACCEPTED:
        assert isinstance(logits, torch.Tensor) and logits.dim() == 2, describe(logits)
        assert logits.shape == (len(x), CLASSES[modality]), f"{context}: {tuple(logits.shape)}"
        if bool(torch.isfinite(x).all()):
            assert bool(torch.isfinite(logits).all()), f"{context}: non-finite logits"


# -- fit ------------------------------------------------------------------------------------------

DATA_PARTS = ("x_train", "y_train", "x_val", "y_val")
GROUPS: dict[str, tuple[Any, str]] = {
    "none": (None, ACCEPTED),
    "one-per-example": (np.arange(EXAMPLES) % 2, ACCEPTED),
    "one-short": (np.arange(EXAMPLES - 1), "InputError"),
    "a-number": (3, "InputError"),
    "a-string": ("abcdefgh", "InputError"),
}
CONFIGS: dict[str, tuple[Any, str]] = {
    "one-epoch": (ONE_EPOCH, ACCEPTED),
    "none": (None, "ParameterError"),
    "a-dict": ({"epochs": 1}, "ParameterError"),
}
FIT_CASES = [(n, m) for n, m in FAST if m in (Modality.TABULAR, Modality.TEXT)]
FIT_CASES += [(n, m) for n, m in FAST if n == "adversarial_training"]


@st.composite
def fit_cases(draw: st.DrawFn) -> tuple[Any, ...]:
    name, modality = draw(st.sampled_from(sorted(set(FIT_CASES))))
    part = draw(st.sampled_from([None, None, *DATA_PARTS, "groups", "config", "seed", "data"]))
    kind = None
    if part in ("x_train", "x_val"):
        kind = draw(st.sampled_from(sorted(input_corruptions(modality))))
    elif part in ("y_train", "y_val"):
        kind = draw(st.sampled_from(sorted(LABELS)))
    elif part == "groups":
        kind = draw(st.sampled_from(sorted(GROUPS)))
    elif part == "config":
        kind = draw(st.sampled_from(sorted(CONFIGS)))
    elif part == "seed":
        kind = draw(st.sampled_from(sorted(SEEDS)))
    return name, modality, part, kind


@settings(max_examples=120)
@given(fit_cases())
def test_fit_ends_in_a_documented_error_or_one_epoch_of_training(case: tuple[Any, ...]) -> None:
    name, modality, part, kind = case
    built = defense(name, modality)
    parts: dict[str, Any] = {
        "x_train": valid_inputs(modality, EXAMPLES, 1),
        "y_train": valid_labels(modality, EXAMPLES, 1),
        "x_val": valid_inputs(modality, 4, 2),
        "y_val": valid_labels(modality, 4, 2),
    }
    groups, config, seed, expected = None, ONE_EPOCH, 0, ACCEPTED
    if part in ("x_train", "x_val"):
        fuzz, expected = input_corruptions(modality)[kind]
        parts[part] = fuzz(parts[part])
    elif part in ("y_train", "y_val"):
        fuzz, expected = LABELS[kind]
        parts[part] = fuzz(parts[part])
    elif part == "groups":
        groups, expected = GROUPS[kind]
    elif part == "config":
        config, expected = CONFIGS[kind]
    elif part == "seed":
        seed, expected = SEEDS[kind]
    data: Any = TrainingData(**parts, groups=groups)
    if part == "data":
        data, expected = tuple(parts.values()), "ParameterError"
    before = {k: snapshot(v) for k, v in parts.items()}
    model = fresh_model(name, modality)
    result, fitted = outcome(
        FAMILY, lambda: built.fit(model, task(modality), data, config=config, seed=seed)
    )
    context = f"{built!r}.fit with {part}={kind} on {modality.value}"
    if expected != "either":
        assert result == expected, f"{context} ended in {result}, expected {expected}"
    for key, value in parts.items():
        if before[key] is not None:
            assert same(value.detach(), before[key]), f"{context} mutated {key}"
            assert getattr(value, "grad", None) is None, f"{context} left a gradient on {key}"
    if result == ACCEPTED:
        assert isinstance(fitted, FitResult) and fitted.epochs_run == 1
        assert not model.training
        assert all(bool(torch.isfinite(p).all()) for p in model.parameters()), context


# -- SmoothedClassifier ---------------------------------------------------------------------------


@settings(max_examples=120)
@given(
    st.sampled_from(["valid"] * 4 + sorted(CONTINUOUS)),
    st.sampled_from(["predict", "certify"]),
    st.sampled_from([1, 1, 8, 0, -1, 2.5, True, None]),
    st.sampled_from([0.001, 0.001, 0.5, 0.0, 1.0, math.nan, "0.1"]),
    st.integers(1, 4),
)
def test_smoothed_classifier_ends_in_a_documented_error_or_labels_and_radii(
    x_kind: str, method: str, n: Any, alpha: Any, batch: int
) -> None:
    model = shared_model("randomized_smoothing", Modality.TABULAR)
    smoothed = SmoothedClassifier(model, 0.5, num_classes=2, batch_size=7)
    fuzz_x, x_expected = CONTINUOUS[x_kind]
    x = fuzz_x(valid_inputs(Modality.TABULAR, batch, 5))
    n_ok = isinstance(n, int) and not isinstance(n, bool) and n >= 1
    alpha_ok = isinstance(alpha, float) and 0 < alpha < 1
    expected = combined(
        ACCEPTED if n_ok else "ParameterError",
        ACCEPTED if alpha_ok else "ParameterError",
        x_expected,
    )
    if method == "predict":
        result, labels = outcome(FAMILY, lambda: smoothed.predict(x, n=n, alpha=alpha, seed=1))
        radii = None
    else:
        result, answer = outcome(
            FAMILY, lambda: smoothed.certify(x, n0=4, n=n, alpha=alpha, seed=1)
        )
        labels, radii = answer if answer is not None else (None, None)
    context = f"SmoothedClassifier.{method}(x={describe(x, 80)}, n={n!r}, alpha={alpha!r})"
    if expected != "either":
        assert result == expected, f"{context} ended in {result}, expected {expected}"
    if result != ACCEPTED:
        return
    assert isinstance(labels, np.ndarray) and labels.dtype == np.int64
    assert labels.shape == (len(x),) and set(labels.tolist()) <= {-1, 0, 1}
    if radii is not None:
        assert radii.shape == (len(x),) and bool(np.isfinite(radii).all())
        assert bool((radii >= 0).all()) and bool((radii[labels == -1] == 0).all())


# -- constructors ---------------------------------------------------------------------------------

COUNTS = ([1, 2, 3, np.int64(2)], [0, -1, 2.5, math.nan, math.inf, True, "2", None, [2]])
POSITIVE = ([0.05, 0.5, 1, 3.0, 1e6], [0, -1, math.nan, math.inf, -math.inf, True, "1", None])
PARAMETERS: dict[str, dict[str, tuple[list[Any], list[Any]]]] = {
    "adversarial_training": {
        "eps": POSITIVE,
        "attack": (["pgd", "fgsm", "embedding_pgd"], ["jsma", "hotflip", "nope", None, 3]),
        "norm": (["linf", "l2", "inf"], ["l1", "nope", None, 2.5]),
        "attack_params": (
            [None, {}, {"steps": 1}, {"random_start": False}],
            [
                {"steps": 0},
                {"step_size": math.inf},
                {"eps": 1},
                {"nope": 1},
                [],
                "steps=1",
                {"random_start": "no"},
                {"steps": True},
            ],
        ),
        "policy": (["fixed", "curriculum", "class"], ["nope", None, 1, "FIXED"]),
        "quality_bins": ([2, 3], [1, 0, -1, 2.5, math.nan, True, "2", None]),
        "quality_low_scale": ([0, 0.5, 1], [1.5, -0.1, math.nan, math.inf, True, "0.5"]),
        "curriculum_epochs": COUNTS,
    },
    "trades": {
        "beta": ([0.5, 6, 1e6], [0, -1, math.nan, math.inf, True, "6", None]),
        "eps": POSITIVE,
        "norm": (["linf", "l2"], ["l0", "l1", None]),
        "attack_params": (
            [None, {"steps": 1}, {"steps": 2, "step_size": 0.01}],
            [{"steps": 0}, {"step_size": math.inf}, {"random_start": True}, {"steps": 1.5}],
        ),
    },
    "lipschitz": {
        "bound": ([0.5, 1, 1e6], [0, -1, math.nan, math.inf, True, "1", None]),
        "activation": (["maxmin", "relu"], ["tanh", None, 1, "ReLU"]),
        "width": ([2, 4], [1, 0, 2.5, True, "4", None]),
        "hidden": ([(8,), [4, 4]], [(), [0], [2.5], None, 8, "8", [True]]),
        "power_iterations": COUNTS,
        "radii": (
            [(0.0, 0.5), [0.1], (0, 1e6)],
            [[], [-1], [math.nan], [math.inf], None, "0.5", [True], 0.5],
        ),
    },
    "randomized_smoothing": {
        "sigma": ([0.1, 1, 1e3], [0, -1, math.nan, math.inf, True, "0.1", None]),
        "samples": COUNTS,
        "n0": COUNTS,
        "n": COUNTS,
        "eot_samples": COUNTS,
        "batch_size": COUNTS,
        "alpha": ([0.001, 0.5], [0, 1, 1.5, -0.1, math.nan, True, "0.1", None]),
        "radii": ([(0.0, 0.5), [0.25]], [[], [-1], [math.nan], None, "0.5"]),
    },
    "stochastic_activation_pruning": {
        "draws": ([0.5, 1, 4, 1e6], [0, -1, math.nan, math.inf, True, "4", None]),
        "eot_samples": COUNTS,
    },
    "input_quantization": {"levels": ([2, 8, 256], [1, 0, -2, 2.5, math.inf, True, "8", None])},
}


@st.composite
def parameter_cases(draw: st.DrawFn) -> tuple[str, dict[str, Any], bool]:
    name = draw(st.sampled_from(DEFENSES.names()))
    params = dict(PARAMS[name])
    bad = False
    keys = sorted(PARAMETERS[name])
    for key in draw(st.lists(st.sampled_from(keys), min_size=1, max_size=2, unique=True)):
        good, wrong = PARAMETERS[name][key]
        if draw(st.booleans()):
            params[key], bad = draw(st.sampled_from(wrong)), True
        else:
            params[key] = draw(st.sampled_from(good))
    return name, params, bad


@settings(max_examples=300)
@given(parameter_cases())
def test_defense_parameters_end_in_parameter_error_or_a_working_defense(
    case: tuple[str, dict[str, Any], bool],
) -> None:
    """Clearly bad hyperparameters raise ParameterError at construction; an accepted defense
    identifies itself in JSON, and its wrapper, certificate and training adversary work on
    tabular data (or refuse it with a documented error)."""
    name, params, bad = case
    result, built = outcome(FAMILY, lambda: DEFENSES.get(name)(**params))
    if bad:
        assert result == "ParameterError", f"{name}({describe(params)}) ended in {result}"
    if built is None:
        return
    json.dumps(built.params())
    modality = Modality.IMAGE if name == "input_quantization" else Modality.TABULAR
    model = fresh_model(name, modality)
    if name == "lipschitz":
        inputs = TensorSplits({"train": valid_inputs(modality, 2, 0)}, {"train": torch.zeros(2)})
        model = built.build("unused", task(modality), inputs, {}).eval()
    x, y = valid_inputs(modality, 3, 0), valid_labels(modality, 3, 0)
    result, wrapped = outcome(FAMILY, lambda: built.wrap(model, task(modality)))
    assert result in (ACCEPTED, "ParameterError"), result
    if wrapped is None:
        return  # e.g. adversarial training with a text attack, on tabular data
    with torch.no_grad():
        logits = wrapped(x)
        adaptive_logits = built.adaptive(wrapped)(x)
    assert logits.shape == adaptive_logits.shape == (3, CLASSES[modality])
    assert bool(torch.isfinite(logits).all() and torch.isfinite(adaptive_logits).all())
    result, certificate = outcome(
        FAMILY, lambda: built.certify(model, task(modality), x, y, seed=0)
    )
    assert result == ACCEPTED
    if certificate:
        assert all(0 <= v <= 1 for k, v in certificate.items() if k.startswith("certified_r"))
    data = TrainingData(x, y, x, y)
    result, adversary = outcome(FAMILY, lambda: built.adversary(task(modality), data, seed=0))
    assert result in (ACCEPTED, "ParameterError"), result
    if adversary is not None:
        model.train()
        try:
            x_adv = adversary(model, x, y)
        finally:
            model.eval()
        assert x_adv.shape == x.shape and bool(torch.isfinite(x_adv).all())


def test_wrappers_refuse_inputs_on_another_device_or_in_another_dtype() -> None:
    """The wrapper checks cost no pass over the values but still name the problem."""
    model = shared_model("stochastic_activation_pruning", Modality.TABULAR)
    wrapped = defense("stochastic_activation_pruning", Modality.TABULAR).wrap(
        model, task(Modality.TABULAR)
    )
    x = valid_inputs(Modality.TABULAR, 2, 0)
    with pytest.raises(InputError, match=r"in the model's dtype torch\.float32\. Got dtype"):
        wrapped(x.double())
    with pytest.raises(InputError, match=r"needs x with values\. Got a tensor on the meta"):
        wrapped(torch.empty_like(x, device="meta"))
    with pytest.raises(InputError, match=r"needs x as a torch tensor\. Got ndarray instead"):
        wrapped(x.numpy())


# -- the metric of certificates -------------------------------------------------------------------

METRICS = "metric inputs"
RADII: dict[str, tuple[Callable[[np.ndarray], Any], str]] = {
    "array": (lambda r: r, ACCEPTED),
    "tensor": (lambda r: torch.from_numpy(r), ACCEPTED),
    "list": (lambda r: r.tolist(), ACCEPTED),
    "with-inf": (lambda r: np.where(r > 0.5, np.inf, r), ACCEPTED),
    "float32": (lambda r: r.astype(np.float32), ACCEPTED),
    "nan": (lambda r: np.concatenate([[np.nan], r[1:]]), "InputError"),
    "negative": (lambda r: r - 1.0, "InputError"),
    "2-d": (lambda r: r[:, None], "InputError"),
    "empty": (lambda r: r[:0], "InputError"),
    "strings": (lambda r: [str(v) + "x" for v in r], "InputError"),
    "none": (lambda r: None, "InputError"),
}
CORRECT: dict[str, tuple[Callable[[np.ndarray], Any], str]] = {
    "booleans": (lambda c: c, ACCEPTED),
    "zeros-and-ones": (lambda c: c.astype(np.int64), ACCEPTED),
    "a-tensor": (lambda c: torch.from_numpy(c), ACCEPTED),
    "halves": (lambda c: np.full(len(c), 0.5), "InputError"),
    "one-short": (lambda c: c[:-1], "InputError"),
    "strings": (lambda c: c.astype(str), "InputError"),
    "none": (lambda c: None, "InputError"),
}
GRIDS: dict[str, tuple[Any, str]] = {
    "radii": ([0.0, 0.25, 0.5, 1.0], ACCEPTED),
    "unsorted": ((1.0, 0.0, 0.5), ACCEPTED),
    "with-inf": ([0.0, math.inf], ACCEPTED),
    "empty": ([], ACCEPTED),
    "nan": ([0.0, math.nan], "InputError"),
    "2-d": ([[0.0, 0.5]], "InputError"),
    "strings": (["zero"], "InputError"),
    "none": (None, "InputError"),
}


@settings(max_examples=80)
@given(
    st.sampled_from(["array"] * 10 + sorted(RADII)),
    st.sampled_from(["booleans"] * 10 + sorted(CORRECT)),
    st.sampled_from(["radii"] * 10 + sorted(GRIDS)),
    st.integers(1, 6),
    st.integers(0, 99),
)
def test_certified_accuracy_ends_in_input_error_or_a_curve(
    radii_kind: str, correct_kind: str, grid_kind: str, n: int, seed: int
) -> None:
    generator = np.random.default_rng(seed)
    radii, correct = generator.random(n), generator.random(n) > 0.3
    make_radii, radii_expected = RADII[radii_kind]
    make_correct, correct_expected = CORRECT[correct_kind]
    grid, grid_expected = GRIDS[grid_kind]
    given_radii, given_correct = make_radii(radii), make_correct(correct)
    result, curve = outcome(METRICS, lambda: certified_accuracy(given_radii, given_correct, grid))
    expected = combined(radii_expected, correct_expected, grid_expected)
    assert result == expected, f"{radii_kind}, {correct_kind}, {grid_kind}: {result}"
    if curve is None:
        return
    reference_radii = np.asarray(torch.as_tensor(given_radii), dtype=np.float64)
    reference = [float((correct & (reference_radii >= r)).mean()) for r in grid]
    np.testing.assert_allclose(curve, reference)
    assert curve.shape == (len(grid),) and bool(((curve >= 0) & (curve <= 1)).all())
