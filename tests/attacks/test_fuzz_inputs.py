"""Property-based fuzz tests of what is given to the evasion attacks: tensors, models and
hyperparameters.

Every case ends in a documented error (an :class:`~medrobust.errors.InputError` for unusable
tensors or models, a :class:`~medrobust.errors.ParameterError` for bad hyperparameters) or in a
correct result, whose properties are checked: the adversarial example has the shape, dtype and
device of ``x``, is finite, lies inside the domain and within the budget in the attack's norm,
and the input and the model are left as they were. Cases run through :func:`tests.fuzz.outcome`,
which counts them for the session summary (family "attack inputs") and lets any other exception
fail the test.

The victims are tiny untrained models of every modality (the point is input validation, not
robustness): a CNN on 1x8x8 images in [0, 1], a GRU and a 1D CNN on 1x16 ECG beats (unbounded),
an MLP with two logits, one logit and in float64 on 6 tabular features in [-4, 4], and a
Transformer on token ids. The decisions the tests pin down:

- float inputs are never cast: a dtype other than the model's (float16, bfloat16, float64 for a
  float32 model; float32 for a float64 model) is an InputError, and so are integer, bool and
  complex inputs;
- NaN, Inf, values outside the domain, empty batches, NumPy arrays, lists, None, sparse tensors
  and tensors on the meta device (which hold no values) are InputErrors; a model whose weights
  are on the meta device, or that is not an ``nn.Module``, is one too;
- non-contiguous, expanded (stride 0) and ``requires_grad`` inputs are accepted; the result never
  requires grad and the input gets no gradient;
- inputs of a shape the model cannot eat are an InputError that says so ("could not run the
  model"); a shape it does eat is a correct result.

Only the meta device exists besides the CPU on a machine without a GPU: moving between real
devices (``x`` on the GPU, the model on the CPU) returns the result on the device of ``x`` and
is covered by the GPU tests.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from medrobust.attacks import ATTACKS, Attack, HotFlip
from medrobust.errors import InputError
from medrobust.metrics import perturbation_norms, predictions, probabilities
from medrobust.models.ecg import Conv1DClassifier, RecurrentClassifier
from medrobust.models.image import SmallCNN
from medrobust.models.tabular import MLP
from medrobust.models.text import TransformerClassifier
from medrobust.types import UNBOUNDED, UNIT_INTERVAL, Domain, Modality, Norm
from tests.fuzz import ACCEPTED, describe, outcome

FAMILY = "attack inputs"
BATCH = 3
VOCAB = 40
MAX_LENGTH = 12


@dataclass(frozen=True)
class Victim:
    """A tiny model with the inputs it eats."""

    key: str
    model: nn.Module
    shape: tuple[int, ...]  # one input; (L,) token ids for text
    domain: Domain
    classes: int  # label values (2 for a one-logit model)
    modality: Modality
    dtype: torch.dtype = torch.float32


@cache
def victims() -> dict[str, Victim]:
    torch.manual_seed(0)
    tabular = Domain(-4.0, 4.0)
    found = [
        Victim("cnn", SmallCNN(1, 3, width=4), (1, 8, 8), UNIT_INTERVAL, 3, Modality.IMAGE),
        Victim("gru", RecurrentClassifier(1, 4, hidden=4), (1, 16), UNBOUNDED, 4, Modality.ECG),
        Victim("conv1d", Conv1DClassifier(1, 4, width=4), (1, 16), UNBOUNDED, 4, Modality.ECG),
        Victim("mlp", MLP(6, 2, hidden=(8,)), (6,), tabular, 2, Modality.TABULAR),
        Victim("mlp_1logit", MLP(6, 1, hidden=(8,)), (6,), tabular, 2, Modality.TABULAR),
        Victim(
            "mlp_float64",
            MLP(6, 3, hidden=(8,)).double(),
            (6,),
            tabular,
            3,
            Modality.TABULAR,
            torch.float64,
        ),
        Victim(
            "transformer",
            TransformerClassifier(VOCAB, 3, max_length=MAX_LENGTH, dim=8, heads=2, layers=1),
            (MAX_LENGTH,),
            UNBOUNDED,
            3,
            Modality.TEXT,
            torch.int64,
        ),
    ]
    for victim in found:
        victim.model.eval()
    return {victim.key: victim for victim in found}


def victims_of(name: str) -> list[str]:
    """The victims attack ``name`` applies to."""
    cls = ATTACKS.get(name)
    return sorted(k for k, v in victims().items() if v.modality in cls.modalities)


def make_attack(name: str, norm: Norm, eps: float, victim: Victim, **extra: Any) -> Attack:
    """Attack ``name`` with few steps (the tests are about inputs, not strength)."""
    cls = ATTACKS.get(name)
    params: dict[str, Any] = {"norm": norm, "eps": eps, "domain": victim.domain}
    if name in ("pgd", "embedding_pgd"):
        params["steps"] = 3
    if name == "jsma":
        params["candidates"] = 16
        params["theta"] = 0.5
    params.update(extra)
    return cls(**params)


def valid_inputs(victim: Victim, n: int, seed: int) -> torch.Tensor:
    """``n`` inputs ``victim`` accepts: inside its domain, or token ids with trailing padding."""
    generator = torch.Generator().manual_seed(seed)
    if victim.modality is Modality.TEXT:
        ids = torch.randint(4, VOCAB, (n, *victim.shape), generator=generator)
        lengths = torch.randint(2, victim.shape[0] + 1, (n,), generator=generator)
        ids[torch.arange(victim.shape[0])[None, :] >= lengths[:, None]] = 0  # [PAD]
        return ids
    if victim.domain.bounded:
        low, high = victim.domain.low, victim.domain.high
        x = low + (high - low) * torch.rand((n, *victim.shape), generator=generator)
    else:
        x = torch.randn((n, *victim.shape), generator=generator)
    return x.to(victim.dtype)


def valid_labels(victim: Victim, n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed + 1)
    return torch.randint(0, victim.classes, (n,), generator=generator)


# -- corruptions ------------------------------------------------------------------------------
# Each maps valid inputs (and the victim) to a fuzzed value, with the outcome it must have:
# "accepted", "InputError", or "either" (a shape the model may or may not eat; a result must
# still be correct).


def _with(x: torch.Tensor, value: float) -> torch.Tensor:
    out = x.clone()
    out.view(-1)[len(out.view(-1)) // 2] = value
    return out


def _other_float(x: torch.Tensor, victim: Victim) -> torch.Tensor:
    return x.to(torch.float32 if victim.dtype == torch.float64 else torch.float64)


def _outside(x: torch.Tensor, victim: Victim) -> torch.Tensor:
    return _with(x, victim.domain.high + 1.0)


def _non_contiguous(x: torch.Tensor, victim: Victim) -> torch.Tensor:
    # The same values laid out backwards in memory: a transpose of a transposed copy.
    out = x.movedim(0, -1).contiguous().movedim(-1, 0)
    assert not out.is_contiguous() or out.dim() < 2 or len(out) == 1
    return out


CONTINUOUS: dict[str, tuple[Callable[[torch.Tensor, Victim], Any], str]] = {
    "valid": (lambda x, v: x, ACCEPTED),
    "non-contiguous": (_non_contiguous, ACCEPTED),
    "expanded": (lambda x, v: x[:1].expand_as(x), ACCEPTED),
    "requires-grad": (lambda x, v: x.clone().requires_grad_(True), ACCEPTED),
    "on-the-domain-edge": (
        lambda x, v: _with(x, v.domain.high) if v.domain.bounded else x,
        ACCEPTED,
    ),
    "nan": (lambda x, v: _with(x, math.nan), "InputError"),
    "inf": (lambda x, v: _with(x, math.inf), "InputError"),
    "-inf": (lambda x, v: _with(x, -math.inf), "InputError"),
    "all-nan": (lambda x, v: torch.full_like(x, math.nan), "InputError"),
    "outside-domain": (_outside, "InputError"),
    "other-float-dtype": (_other_float, "InputError"),
    "float16": (lambda x, v: x.half(), "InputError"),
    "bfloat16": (lambda x, v: x.bfloat16(), "InputError"),
    "int64": (lambda x, v: x.round().long(), "InputError"),
    "int32": (lambda x, v: x.round().int(), "InputError"),
    "bool": (lambda x, v: x > 0, "InputError"),
    "complex": (lambda x, v: x.to(torch.complex64), "InputError"),
    "empty": (lambda x, v: x[:0], "InputError"),
    "scalar": (lambda x, v: x.view(-1)[0], "InputError"),
    "one-input-unbatched": (lambda x, v: x[0], "either"),
    "missing-channel": (lambda x, v: x[:, 0] if x.dim() > 2 else x[:, :-1], "either"),
    "extra-dim": (lambda x, v: x[:, None], "either"),
    "too-few-features": (lambda x, v: x[..., :-1], "either"),
    "numpy": (lambda x, v: x.numpy(), "InputError"),
    "list": (lambda x, v: x.tolist(), "InputError"),
    "none": (lambda x, v: None, "InputError"),
    "sparse": (lambda x, v: x.to_sparse(), "InputError"),
    "meta": (lambda x, v: torch.empty_like(x, device="meta"), "InputError"),
}

TOKENS: dict[str, tuple[Callable[[torch.Tensor, Victim], Any], str]] = {
    "valid": (lambda x, v: x, ACCEPTED),
    "non-contiguous": (lambda x, v: x.T.contiguous().T, ACCEPTED),
    "expanded": (lambda x, v: x[:1].expand_as(x), ACCEPTED),
    "all-padding": (lambda x, v: torch.zeros_like(x), ACCEPTED),
    "no-padding": (lambda x, v: x.clamp_min(4), ACCEPTED),
    "shorter": (lambda x, v: x[:, : v.shape[0] // 2], ACCEPTED),
    "outside-vocabulary": (lambda x, v: _with(x, VOCAB), "InputError"),
    "negative-id": (lambda x, v: _with(x, -1), "InputError"),
    "int32": (lambda x, v: x.int(), "InputError"),
    "float": (lambda x, v: x.float(), "InputError"),
    "embeddings": (lambda x, v: v.model.embed(x).detach(), "InputError"),  # type: ignore[operator]
    "empty": (lambda x, v: x[:0], "InputError"),
    "no-tokens": (lambda x, v: x[:, :0], "InputError"),
    "one-input-unbatched": (lambda x, v: x[0], "InputError"),
    "extra-dim": (lambda x, v: x[:, :, None], "InputError"),
    "longer-than-the-model": (lambda x, v: torch.cat([x, x], dim=1), "InputError"),
    "numpy": (lambda x, v: x.numpy(), "InputError"),
    "list": (lambda x, v: x.tolist(), "InputError"),
    "none": (lambda x, v: None, "InputError"),
    "sparse": (lambda x, v: x.to_sparse(), "InputError"),
    "meta": (lambda x, v: torch.empty_like(x, device="meta"), "InputError"),
}

LABELS: dict[str, tuple[Callable[[torch.Tensor, Victim], Any], str]] = {
    "valid": (lambda y, v: y, ACCEPTED),
    "int32": (lambda y, v: y.int(), ACCEPTED),
    "non-contiguous": (lambda y, v: torch.stack([y, y], 1)[:, 0], ACCEPTED),
    "out-of-range": (lambda y, v: torch.full_like(y, v.classes), "InputError"),
    "negative": (lambda y, v: torch.full_like(y, -1), "InputError"),
    "float": (lambda y, v: y.float(), "InputError"),
    "bool": (lambda y, v: y > 0, "InputError"),
    "uint8": (lambda y, v: y.to(torch.uint8), "InputError"),
    "2-d": (lambda y, v: y[:, None], "InputError"),
    "one-short": (lambda y, v: y[:-1], "InputError"),
    "one-too-many": (lambda y, v: torch.cat([y, y[:1]]), "InputError"),
    "scalar": (lambda y, v: y[0], "InputError"),
    "numpy": (lambda y, v: y.numpy(), "InputError"),
    "list": (lambda y, v: y.tolist(), "InputError"),
    "none": (lambda y, v: None, "InputError"),
    "meta": (lambda y, v: torch.empty_like(y, device="meta"), "InputError"),
}


# Targets: the label corruptions, and a valid target twice as often; None (untargeted) is drawn
# separately.
TARGET_KINDS = ["valid", *sorted(k for k in LABELS if k != "none")]


def combined(*expected: str) -> str:
    """The outcome a case must have given the outcome each fuzzed part must have."""
    if "InputError" in expected:
        return "InputError"
    return "either" if "either" in expected else ACCEPTED


# -- checks of a result -------------------------------------------------------------------------


def tolerance(x: torch.Tensor, eps: float) -> float:
    """Rounding slack of ``x + delta - x`` in ``x``'s dtype."""
    scale = 1.0 + float(x.detach().abs().max()) + eps
    return 8 * torch.finfo(x.dtype).eps * scale


def check_continuous(attack: Attack, victim: Victim, x: torch.Tensor, x_adv: Any) -> None:
    assert isinstance(x_adv, torch.Tensor), describe(x_adv)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv.device == x.device
    assert not x_adv.requires_grad
    assert bool(torch.isfinite(x_adv).all()), "the adversarial example is not finite"
    domain = attack.threat.domain
    assert float(x_adv.min()) >= domain.low and float(x_adv.max()) <= domain.high
    delta = (x_adv - x.detach()).flatten(1).double()
    eps, slack = attack.eps, tolerance(x, attack.eps)
    if attack.threat.norm is Norm.LINF:
        assert float(delta.abs().max()) <= eps + slack
    elif attack.threat.norm is Norm.L2:
        assert float(delta.norm(dim=1).max()) <= eps * (1 + 1e-5) + slack
    else:
        features = x[0].numel()
        budget = int(features * eps + 1e-9)
        assert int((delta != 0).sum(dim=1).max()) <= budget


def check_tokens(attack: Attack, victim: Victim, x: torch.Tensor, out: Any) -> None:
    model = victim.model
    assert isinstance(out, torch.Tensor) and not out.requires_grad
    if attack.perturbs == "embeddings":
        with torch.no_grad():
            clean = model.embed(x)  # type: ignore[operator]
        assert out.shape == clean.shape and out.dtype == clean.dtype
        assert bool(torch.isfinite(out).all())
        delta = out - clean
        assert bool((delta[x == model.pad_id] == 0).all()), "padding was perturbed"
        flat = delta.flatten(1).double()
        slack = tolerance(clean, attack.eps)
        if attack.threat.norm is Norm.LINF:
            assert float(flat.abs().max()) <= attack.eps + slack
        else:
            assert float(flat.norm(dim=1).max()) <= attack.eps * (1 + 1e-5) + slack
        return
    assert isinstance(attack, HotFlip)
    assert out.shape == x.shape and out.dtype == torch.int64
    assert int(out.min()) >= 0 and int(out.max()) < VOCAB
    special = torch.tensor(attack.special_ids)
    changed = out != x
    assert not bool(torch.isin(x[changed], special).any()), "a special token was replaced"
    assert not bool(torch.isin(out[changed], special).any()), "a special token was inserted"
    assert bool((changed.sum(dim=1) <= attack.budget(model, x)).all())


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal shapes, dtypes and values, NaN equal to NaN."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point() or a.is_complex():
        return bool((a.eq(b) | (a.isnan() & b.isnan())).all())
    return torch.equal(a, b)


def run_case(
    attack: Attack,
    victim: Victim,
    model: Any,
    x: Any,
    y: Any,
    target: Any,
    expected: str,
) -> None:
    """Attack, check the outcome against ``expected`` and a result's properties."""
    before = None
    if isinstance(x, torch.Tensor) and x.layout == torch.strided and not x.is_meta:
        before = x.detach().clone()
    state = {k: v.clone() for k, v in victim.model.state_dict().items()}
    result, x_adv = outcome(FAMILY, lambda: attack(model, x, y, target=target))
    context = f"{attack!r} on {victim.key}: x={describe(x, 120)}, y={describe(y, 80)}"
    if expected != "either":
        assert result == expected, f"{context} ended in {result}, expected {expected}"
    assert not victim.model.training, f"{context} left the model in training mode"
    assert all(p.grad is None for p in victim.model.parameters()), context
    after = victim.model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state), f"{context} changed the model"
    if before is not None:
        assert same(x.detach(), before), f"{context} mutated its input"
        assert x.grad is None, f"{context} left a gradient on x"
    if result == ACCEPTED:
        if attack.inputs == "tokens":
            check_tokens(attack, victim, x, x_adv)
        else:
            check_continuous(attack, victim, x, x_adv)


# -- the fuzz tests -----------------------------------------------------------------------------


def eps_for(norm: Norm, victim: Victim, draw: st.DrawFn) -> float:
    if norm is Norm.L0:
        return draw(st.sampled_from([0.0, 0.05, 0.2, 0.5, 1.0]))
    if norm is Norm.LINF and victim.domain.bounded:
        return draw(st.floats(0.0, victim.domain.width, allow_nan=False))
    return draw(st.sampled_from([0.0, 1e-6, 0.05, 0.5, 3.0, 1e3]))


@st.composite
def input_cases(draw: st.DrawFn, names: list[str]) -> tuple[Any, ...]:
    """An attack of ``names``, a victim it applies to, a budget and a batch in which at most one
    part (x, the labels or the targets) is fuzzed, so that each outcome is pinned down; a third
    of the cases are targeted."""
    name = draw(st.sampled_from(names))
    key = draw(st.sampled_from(victims_of(name)))
    victim = victims()[key]
    norm = draw(st.sampled_from(ATTACKS.get(name).norms))
    eps = eps_for(norm, victim, draw)
    seed = draw(st.integers(0, 2**16))
    n = draw(st.integers(1, BATCH))
    part = draw(st.sampled_from(["nothing"] * 2 + ["x"] * 4 + ["labels", "targets"]))
    table = TOKENS if victim.modality is Modality.TEXT else CONTINUOUS
    x_kind = draw(st.sampled_from(sorted(table))) if part == "x" else "valid"
    y_kind = draw(st.sampled_from(sorted(LABELS))) if part == "labels" else "valid"
    t_kind = draw(st.sampled_from([None, None, "valid"]))
    if part == "targets":
        t_kind = draw(st.sampled_from(TARGET_KINDS))
    return name, key, norm, eps, n, seed, x_kind, y_kind, t_kind


def run_input_case(case: tuple[Any, ...]) -> None:
    name, key, norm, eps, n, seed, x_kind, y_kind, t_kind = case
    victim = victims()[key]
    attack = make_attack(name, norm, eps, victim, seed=seed)
    table = TOKENS if victim.modality is Modality.TEXT else CONTINUOUS
    fuzz_x, x_expected = table[x_kind]
    fuzz_y, y_expected = LABELS[y_kind]
    target, t_expected = None, ACCEPTED
    if t_kind is not None:
        fuzz_t, t_expected = LABELS[t_kind]
        target = fuzz_t(valid_labels(victim, n, seed + 7), victim)
    x, y = (
        fuzz_x(valid_inputs(victim, n, seed), victim),
        fuzz_y(valid_labels(victim, n, seed), victim),
    )
    expected = combined(x_expected, y_expected, t_expected)
    run_case(attack, victim, victim.model, x, y, target, expected)


@settings(max_examples=700)
@given(input_cases(["fgsm", "pgd", "jsma"]))
def test_continuous_attacks_end_in_input_error_or_a_correct_result(case: tuple[Any, ...]) -> None:
    run_input_case(case)


@settings(max_examples=350)
@given(input_cases(["embedding_fgsm", "embedding_pgd", "hotflip"]))
def test_text_attacks_end_in_input_error_or_a_correct_result(case: tuple[Any, ...]) -> None:
    run_input_case(case)


def test_every_attack_is_fuzzed_on_its_inputs() -> None:
    fuzzed = {"fgsm", "pgd", "jsma", "embedding_fgsm", "embedding_pgd", "hotflip"}
    assert fuzzed == set(ATTACKS.names())


# -- models -------------------------------------------------------------------------------------


def _meta_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).to("meta")


class _Flat(nn.Module):
    """Returns one score per example as a 1-D tensor: not logits of shape (N, K)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[:, 0]  # type: ignore[no-any-return]


MODELS: dict[str, tuple[Callable[[Victim], Any], str]] = {
    "the-victim": (lambda v: v.model, ACCEPTED),
    "on-the-meta-device": (lambda v: _meta_copy(v.model), "InputError"),
    "none": (lambda v: None, "InputError"),
    "a-function": (lambda v: lambda x: v.model(x), "InputError"),
    "a-string": (lambda v: "model", "InputError"),
    "returns-1-d-scores": (lambda v: _Flat(v.model).eval(), "InputError"),
    "another-modality": (
        lambda v: victims()["mlp" if v.modality is Modality.TEXT else "transformer"].model,
        "InputError",
    ),
}


@settings(max_examples=120)
@given(
    st.sampled_from(ATTACKS.names()),
    st.sampled_from(sorted(MODELS)),
    st.booleans(),
    st.integers(0, 2**16),
)
def test_attacks_refuse_models_they_cannot_run(
    name: str, model_kind: str, training: bool, seed: int
) -> None:
    """Unusable models are InputErrors; a model in training mode is attacked in eval mode and
    given back in training mode."""
    victim = victims()[victims_of(name)[seed % len(victims_of(name))]]
    norm = ATTACKS.get(name).norms[0]
    attack = make_attack(name, norm, 0.1 if norm is not Norm.L0 else 0.2, victim)
    x, y = valid_inputs(victim, BATCH, seed), valid_labels(victim, BATCH, seed)
    build, expected = MODELS[model_kind]
    model = build(victim)
    if training and expected == ACCEPTED:
        model.train()
        try:
            result, _ = outcome(FAMILY, lambda: attack(model, x, y))
            assert result == ACCEPTED
            assert model.training, "the model's training mode was not restored"
        finally:
            model.eval()
        return
    run_case(attack, victim, model, x, y, None, expected)


# -- hyperparameters ----------------------------------------------------------------------------

# Values a hyperparameter may be given, by kind; "clearly bad" ones must raise ParameterError.
NUMBERS = [0, 0.0, 1e-6, 0.05, 0.3, 1, 3, 1e30, np.float64(0.1), np.int64(2)]
BAD_NUMBERS = [-1, -1e-9, math.nan, math.inf, -math.inf, True, "0.1", None, [0.1], 1 + 1j]
BAD_NUMBERS += [torch.tensor(0.1)]
COUNTS = [1, 2, 3, 5, np.int64(3)]
BAD_COUNTS = [0, -1, 2.5, 3.0, math.nan, math.inf, True, False, "3", None, [3], 2**70 + 0.5]
FLAGS = [True, False, np.bool_(True)]
BAD_FLAGS = ["false", "no", 0, 1, None, 0.0, [True]]
NORMS = ["linf", "l2", "l0", "inf", "2", Norm.LINF, Norm.L2, Norm.L0]
BAD_NORMS = ["l1", "l3", "max", "", None, 1, 2.0, [Norm.L2]]
DOMAINS = [UNIT_INTERVAL, UNBOUNDED, Domain(-4.0, 4.0)]
BAD_DOMAINS = [(0, 1), [0.0, 1.0], None, 1.0, "unit", {"low": 0, "high": 1}]
SEEDS = [0, 1, 2**31, 2**64 - 1, np.int64(5)]
BAD_SEEDS = [-1, 2**64, 2**70, 1.5, math.nan, True, "0", None]

PARAMETERS: dict[str, tuple[list[Any], list[Any]]] = {
    "eps": (NUMBERS, BAD_NUMBERS),
    "norm": (NORMS, BAD_NORMS),
    "domain": (DOMAINS, BAD_DOMAINS),
    "stop_when_adversarial": (FLAGS, BAD_FLAGS),
    "seed": (SEEDS, BAD_SEEDS),
    "steps": (COUNTS, BAD_COUNTS),
    "restarts": (COUNTS[:3], BAD_COUNTS),
    "step_size": ([None, *NUMBERS], [x for x in BAD_NUMBERS if x is not None]),
    "random_start": (FLAGS, BAD_FLAGS),
    "loss": (["ce", "margin"], ["CE", "hinge", "", None, 1, ["ce"]]),
    "theta": ([0.5, -0.5, 1, -1.0, 1e30], [0, 0.0, math.nan, math.inf, True, "1", None]),
    "pairwise": (FLAGS, BAD_FLAGS),
    "candidates": ([1, 2, 3, 16, 10**9], [0, -1, 2.5, math.inf, True, "8", None]),
    "max_memory_mb": ([1, 1.5, 256, 1e9], [0, 0.5, -1, math.nan, math.inf, True, "256", None]),
    "max_tokens": ([None, 0, 1, 3, 10**9], [-1, 1.5, math.inf, True, "2", [1]]),
    "special_ids": ([(), [0], (0, 1, 2, 3), [5, 39]], [[-1], "[PAD]", None, [0.5], [True], 3]),
}
OWN_PARAMETERS = {
    "fgsm": (),
    "pgd": ("steps", "restarts", "step_size", "random_start", "loss"),
    "embedding_fgsm": (),
    "embedding_pgd": ("steps", "restarts", "step_size", "random_start", "loss"),
    "jsma": ("theta", "pairwise", "candidates", "max_memory_mb"),
    "hotflip": ("candidates", "max_tokens", "special_ids", "max_memory_mb"),
}
BASE_PARAMETERS = ("eps", "norm", "domain", "stop_when_adversarial", "seed")


def test_every_attack_and_parameter_is_fuzzed() -> None:
    assert set(OWN_PARAMETERS) == set(ATTACKS.names())
    assert all(p in PARAMETERS for ps in OWN_PARAMETERS.values() for p in ps)


@st.composite
def parameter_cases(draw: st.DrawFn) -> tuple[str, dict[str, Any], bool]:
    """An attack, its hyperparameters with one or two of them fuzzed, and whether one of those
    is clearly bad (and must raise ParameterError)."""
    name = draw(st.sampled_from(ATTACKS.names()))
    cls = ATTACKS.get(name)
    l0 = cls.norms == (Norm.L0,)
    params: dict[str, Any] = {"eps": 0.2 if l0 else 0.1}
    if name in ("pgd", "embedding_pgd"):
        params["steps"] = 2
    if name == "jsma":
        params.update(candidates=8, theta=0.5)
    names = (*BASE_PARAMETERS, *OWN_PARAMETERS[name])
    bad = False
    for key in draw(st.lists(st.sampled_from(names), min_size=1, max_size=2, unique=True)):
        good, wrong = PARAMETERS[key]
        if draw(st.booleans()):
            params[key] = draw(st.sampled_from(wrong))
            bad = True
        else:
            params[key] = draw(st.sampled_from(good))
    return name, params, bad


@settings(max_examples=400)
@given(parameter_cases())
def test_attack_parameters_end_in_parameter_error_or_a_working_attack(
    case: tuple[str, dict[str, Any], bool],
) -> None:
    """Clearly bad hyperparameters raise ParameterError at construction; whatever is accepted
    (including a huge eps) gives an attack whose results are correct."""
    name, params, bad = case
    cls = ATTACKS.get(name)
    result, attack = outcome(FAMILY, lambda: cls(**params))
    if bad:
        assert result == "ParameterError", f"{name}({describe(params)}) ended in {result}"
    assert result in (ACCEPTED, "ParameterError"), result
    if attack is None:
        return
    assert repr(attack).startswith(type(attack).__name__)
    json.dumps(attack.params())  # the hyperparameters that identify it are JSON
    keys = victims_of(name)
    fits = [k for k in keys if attack.threat.domain in (victims()[k].domain, UNBOUNDED)]
    victim = victims()[fits[0] if fits else keys[0]]
    x, y = valid_inputs(victim, 2, 0), valid_labels(victim, 2, 0)
    domain = attack.threat.domain
    if victim.modality is not Modality.TEXT and (
        float(x.min()) < domain.low or float(x.max()) > domain.high
    ):
        x = x.clamp(domain.low, domain.high)
    run_case(attack, victim, victim.model, x, y, None, ACCEPTED)


CONTINUOUS_ATTACKS = [n for n in ATTACKS.names() if ATTACKS.get(n).inputs == "continuous"]


@pytest.mark.parametrize("name", CONTINUOUS_ATTACKS)
def test_a_float64_model_is_attacked_in_float64(name: str) -> None:
    """The dtype rule both ways: float64 inputs of a float64 model are accepted and the result
    is float64; float32 inputs of it are refused with a message that says how to cast."""
    victim = victims()["mlp_float64"]
    attack = make_attack(name, ATTACKS.get(name).norms[0], 0.2, victim)
    x, y = valid_inputs(victim, BATCH, 3), valid_labels(victim, BATCH, 3)
    run_case(attack, victim, victim.model, x, y, None, ACCEPTED)
    with pytest.raises(InputError, match=r"in the model's dtype torch\.float64\. Got dtype"):
        attack(victim.model, x.float(), y)


@pytest.mark.parametrize(("name", "key"), [(n, k) for n in ATTACKS.names() for k in victims_of(n)])
def test_accepted_results_are_real_attacks(name: str, key: str) -> None:
    """The fuzz tests' accepted results are not trivially correct: on valid inputs each attack
    moves them (within the budget the fuzz tests check), on every victim."""
    victim = victims()[key]
    norm = ATTACKS.get(name).norms[0]
    eps = {Norm.LINF: 0.1, Norm.L2: 0.5, Norm.L0: 1.0}[norm]
    attack = make_attack(name, norm, eps, victim, stop_when_adversarial=False)
    x, y = valid_inputs(victim, BATCH, 11), valid_labels(victim, BATCH, 11)
    result, out = outcome(FAMILY, lambda: attack(victim.model, x, y))
    assert result == ACCEPTED
    if attack.perturbs == "embeddings":
        with torch.no_grad():
            assert not torch.equal(out, victim.model.embed(x))  # type: ignore[operator]
    else:
        assert not torch.equal(out, x), f"{attack!r} left every input of {key} as it was"


# -- the metrics that measure attacks ------------------------------------------------------------

METRICS = "metric inputs"
PAIRS: dict[str, tuple[Callable[[torch.Tensor], tuple[Any, Any]], str]] = {
    "same-shape": (lambda x: (x, x + 0.1 * torch.randn_like(x)), ACCEPTED),
    "identical": (lambda x: (x, x.clone()), ACCEPTED),
    "one-number-each": (lambda x: (x.flatten()[:3], x.flatten()[3:6]), ACCEPTED),
    "float64-and-float32": (lambda x: (x.double(), x.float() + 1), ACCEPTED),
    "integers": (lambda x: (x.round().long(), x.round().long() + 1), ACCEPTED),
    "empty-batch": (lambda x: (x[:0], x[:0]), ACCEPTED),
    "with-inf": (lambda x: (x, _with(x, math.inf)), ACCEPTED),
    "shapes-differ": (lambda x: (x, x[:, :-1]), "InputError"),
    "batches-differ": (lambda x: (x, x[:-1]), "InputError"),
    "scalars": (lambda x: (x[0, 0], x[0, 1]), "InputError"),
    "bool": (lambda x: (x > 0, x < 0), "InputError"),
    "complex": (lambda x: (x.to(torch.complex64), x.to(torch.complex64)), "InputError"),
    "meta": (lambda x: (x, torch.empty_like(x, device="meta")), "InputError"),
    "numpy": (lambda x: (x.numpy(), x.numpy()), "InputError"),
    "none": (lambda x: (x, None), "InputError"),
}


@settings(max_examples=60)
@given(st.sampled_from(sorted(PAIRS)), st.integers(2, 4), st.integers(0, 99))
def test_perturbation_norms_end_in_input_error_or_the_norms(kind: str, n: int, seed: int) -> None:
    x = torch.randn((n, 6), generator=torch.Generator().manual_seed(seed))
    make, expected = PAIRS[kind]
    a, b = make(x)
    result, norms = outcome(METRICS, lambda: perturbation_norms(a, b))
    assert result == expected, f"perturbation_norms on {kind} ended in {result}"
    if norms is None:
        return
    delta = (b.double() - a.double()).numpy()
    delta = delta.reshape(len(a), int(np.prod(delta.shape[1:])))
    with np.errstate(invalid="ignore"):
        np.testing.assert_allclose(norms["linf"], np.abs(delta).max(axis=1, initial=0.0))
        np.testing.assert_allclose(norms["l2"], np.linalg.norm(delta, axis=1), rtol=1e-6)
    np.testing.assert_array_equal(norms["l0"], (delta != 0).sum(axis=1))


LOGITS: dict[str, tuple[Callable[[torch.Tensor], Any], str]] = {
    "several": (lambda z: z, ACCEPTED),
    "one-logit": (lambda z: z[:, :1], ACCEPTED),
    "float64": (lambda z: z.double(), ACCEPTED),
    "nan": (lambda z: _with(z, math.nan), ACCEPTED),
    "empty-batch": (lambda z: z[:0], ACCEPTED),
    "no-logits": (lambda z: z[:, :0], "InputError"),
    "1-d": (lambda z: z[:, 0], "InputError"),
    "3-d": (lambda z: z[:, :, None], "InputError"),
    "integers": (lambda z: z.round().long(), "InputError"),
    "numpy": (lambda z: z.numpy(), "InputError"),
    "none": (lambda z: None, "InputError"),
}


@settings(max_examples=40)
@given(st.sampled_from(sorted(LOGITS)), st.sampled_from(["predictions", "probabilities"]))
def test_predictions_end_in_input_error_or_classes(kind: str, function: str) -> None:
    z = torch.randn((4, 3), generator=torch.Generator().manual_seed(len(kind)))
    make, expected = LOGITS[kind]
    logits = make(z)
    call = predictions if function == "predictions" else probabilities
    result, out = outcome(METRICS, lambda: call(logits))
    assert result == expected, f"{function} on {kind} ended in {result}"
    if out is None:
        return
    classes = max(logits.shape[1], 2)
    if function == "predictions":
        assert out.shape == (len(logits),) and out.dtype == torch.int64
        assert bool(((out >= 0) & (out < classes)).all())
    else:
        assert out.shape == (len(logits), classes)
        if bool(torch.isfinite(logits).all()):
            assert torch.allclose(out.sum(dim=1), torch.ones(len(out), dtype=out.dtype))
