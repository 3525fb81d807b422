"""The evasion-attack contract, checked for every registered attack, every norm it supports and a
small trained model of each modality it serves (in the spirit of scikit-learn's common checks).

Models (trained once per session, see ``tests/conftest.py``): a CNN on BreastMNIST images in
[0, 1]; a GRU and a 1D CNN on ECG5000 beats; an MLP (two logits and one logit) on the Wisconsin
features; the convolutional autoencoder detector on ECG5000 anomalies (one logit); a Transformer on
Medical Abstracts token ids (the text attacks: embedding FGSM/PGD and HotFlip). Each is attacked
on its first 100 test examples at a budget where it really loses accuracy.

What an attack returns depends on its kind: continuous attacks return inputs like ``x``, HotFlip
returns token ids like ``x``, the embedding attacks return (N, L, dim) embeddings. The suite
scores and measures every output through ``Attack.adversarial_logits`` and
``Attack.perturbation_sizes``, and checks those against independent computations.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from medrobust.attacks import ATTACKS, PGD, Attack, project
from medrobust.data import get_task_spec
from medrobust.errors import InputError, ParameterError
from medrobust.metrics import perturbation_norms, predictions, success_rate
from medrobust.models.text import PAD_ID, SPECIAL_TOKENS
from medrobust.training import classification_loss, predict_logits
from medrobust.types import UNBOUNDED, UNIT_INTERVAL, Domain, Norm, ThreatModel
from tests.conftest import RECIPES, Trained

# Hyperparameters each registered attack gets in this suite. A new attack must be added here (and
# to the tables below); test_every_registered_attack_is_in_the_suite fails until it is.
SUITE_PARAMS: dict[str, dict[str, Any]] = {
    "fgsm": {},
    "pgd": {"steps": 10},
    "jsma": {"candidates": 64},
    "embedding_fgsm": {},
    "embedding_pgd": {"steps": 10},
    "hotflip": {"candidates": 8},
}
# Per-model overrides: JSMA's full-range pixel jumps (theta = 1) step far outside the region where
# the CNN's gradients predict its output, so images get smaller steps.
MODEL_PARAMS: dict[tuple[str, str], dict[str, Any]] = {("jsma", "cnn"): {"theta": 0.3}}
# Whether the attack's seed changes its output (random starts, sampling).
RANDOMIZED = {
    "fgsm": False,
    "pgd": True,
    "jsma": False,
    "embedding_fgsm": False,
    "embedding_pgd": True,
    "hotflip": False,
}
# Smallest success rate on originally correct points at the budgets below (a single gradient step
# is weaker than an iterative attack, hence two floors), and smallest share of points pushed to a
# chosen target class in targeted mode.
# Whether the attack descends the cross-entropy of the target (JSMA works on the logits instead).
MINIMISES_LOSS = {
    "fgsm": True,
    "pgd": True,
    "jsma": False,
    "embedding_fgsm": True,
    "embedding_pgd": True,
    "hotflip": True,
}
# Text attacks on the Transformer measured (first 100 test abstracts, seed 0): embedding FGSM 0.45
# (L-inf 0.1) and 0.52 (L2 5); embedding PGD 0.52 and 0.73; HotFlip 0.59 (2 % of the tokens,
# 1-2 words). Targeted: embedding PGD 0.20 / 0.46, HotFlip 0.49.
MIN_SUCCESS = {
    "fgsm": 0.15,
    "pgd": 0.35,
    "jsma": 0.1,
    "embedding_fgsm": 0.25,
    "embedding_pgd": 0.3,
    "hotflip": 0.3,
}
MIN_TARGETED = {
    "fgsm": 0.0,
    "pgd": 0.3,
    "jsma": 0.0,
    "embedding_fgsm": 0.0,
    "embedding_pgd": 0.1,
    "hotflip": 0.25,
}
# Hyperparameters that each attack rejects, beyond the base class's, with the documented message.
BAD_PARAMS: dict[str, list[tuple[dict[str, Any], str]]] = {
    "fgsm": [],
    "jsma": [
        ({"theta": 0}, r"The 'theta' parameter of JSMA must be a non-zero number\. Got 0 inst"),
        ({"theta": math.inf}, r"The 'theta' parameter of JSMA must be a non-zero number"),
        ({"candidates": 1}, r"The 'candidates' parameter of JSMA must be an integer >= 2\."),
        ({"max_memory_mb": 0}, r"The 'max_memory_mb' parameter of JSMA must be a number >= 1"),
    ],
    "pgd": [
        ({"steps": 0}, r"The 'steps' parameter of PGD must be an integer >= 1\. Got 0 instead\."),
        ({"steps": 2.5}, r"The 'steps' parameter of PGD must be an integer >= 1\. Got 2\.5"),
        ({"restarts": 0}, r"The 'restarts' parameter of PGD must be an integer >= 1\. Got 0"),
        ({"step_size": -0.1}, r"The 'step_size' parameter of PGD must be a number >= 0\."),
        ({"step_size": math.nan}, r"The 'step_size' parameter of PGD must be a number >= 0\."),
    ],
    "embedding_fgsm": [],
    "embedding_pgd": [
        ({"steps": 0}, r"The 'steps' parameter of EmbeddingPGD must be an integer >= 1\. Got 0"),
        ({"restarts": 1.5}, r"The 'restarts' parameter of EmbeddingPGD must be an integer >= 1"),
        ({"step_size": -1}, r"The 'step_size' parameter of EmbeddingPGD must be a number >= 0"),
    ],
    "hotflip": [
        ({"candidates": 0}, r"The 'candidates' parameter of HotFlip must be an integer >= 1\. "),
        ({"max_tokens": -1}, r"The 'max_tokens' parameter of HotFlip must be an integer >= 0\."),
        ({"max_tokens": 2.0}, r"The 'max_tokens' parameter of HotFlip must be an integer >= 0"),
        ({"max_memory_mb": 0.5}, r"The 'max_memory_mb' parameter of HotFlip must be a number >="),
        ({"special_ids": [0, -1]}, r"'special_ids' parameter of HotFlip must be a sequence of in"),
        ({"special_ids": "[PAD]"}, r"'special_ids' parameter of HotFlip must be a sequence of in"),
        ({"special_ids": [0, 1.0]}, r"'special_ids' .* integers >= 0\. Got \[0, 1\.0\] inst"),
    ],
}

# Recipe name (tests/conftest.py) -> a budget per norm at which the model loses accuracy. ECG5000
# beats and Wisconsin features are z-scored (unbounded); images live in [0, 1].
# L0 budgets are fractions of the features (JSMA's gamma).
BUDGETS: dict[str, dict[Norm, float]] = {
    "cnn": {Norm.LINF: 0.03, Norm.L2: 1.0, Norm.L0: 0.1},
    "gru": {Norm.LINF: 0.5, Norm.L2: 4.0, Norm.L0: 0.2},
    "conv1d": {Norm.LINF: 0.3, Norm.L2: 3.0, Norm.L0: 0.2},
    "mlp": {Norm.LINF: 0.5, Norm.L2: 3.0, Norm.L0: 0.3},
    "mlp_1logit": {Norm.LINF: 0.5, Norm.L2: 3.0, Norm.L0: 0.3},
    "detector": {Norm.LINF: 0.1, Norm.L2: 1.0, Norm.L0: 0.2},
    # Embedding units (entries of about unit size; the L2 ball spans the whole (L, dim)
    # perturbation of an abstract); L0 is the fraction of an abstract's real tokens (HotFlip).
    "transformer": {Norm.LINF: 0.1, Norm.L2: 5.0, Norm.L0: 0.02},
}
# Below this clean accuracy on its first 100 test examples a model is too weak to attack. The
# Transformer separates 5 classes, the largest a third of the abstracts.
MIN_CLEAN_ACCURACY = {"transformer": 0.5}
N_EXAMPLES = 100
MODALITY = {model: get_task_spec(RECIPES[model].task).modality for model in BUDGETS}
CONTINUOUS_MODELS = [m for m in BUDGETS if m != "transformer"]
# The ids train_tokenizer gives [PAD], [UNK], [CLS], [SEP]; HotFlip must never touch them.
SPECIAL_IDS = list(range(len(SPECIAL_TOKENS)))

CASES = [
    pytest.param(attack, norm, model, id=f"{attack}-{norm.value}-{model}")
    for attack in ATTACKS.names()
    for norm in ATTACKS.get(attack).norms
    for model in BUDGETS
    if MODALITY[model] in ATTACKS.get(attack).modalities
]
NORM_MODEL_CASES = [
    pytest.param(norm, model, id=f"{norm.value}-{model}")
    for norm in (Norm.LINF, Norm.L2)
    for model in CONTINUOUS_MODELS
]
CONTINUOUS_ATTACKS = [a for a in ATTACKS.names() if ATTACKS.get(a).inputs == "continuous"]
TOKEN_ATTACKS = [a for a in ATTACKS.names() if ATTACKS.get(a).inputs == "tokens"]


def main_norm(attack: str) -> Norm:
    """The first norm an attack supports (for tests about something other than the budget)."""
    return ATTACKS.get(attack).norms[0]


def norm_budget(attack: Attack, x: torch.Tensor) -> np.ndarray:
    """The largest perturbation norm allowed per example: eps; for L0 the number of features eps
    allows, and for token ids the fraction eps of each example's real (non-special) tokens."""
    eps = attack.threat.eps
    if attack.threat.norm is not Norm.L0:
        return np.full(len(x), eps)
    if attack.inputs == "tokens":
        real = (~torch.isin(x, torch.tensor(SPECIAL_IDS))).sum(dim=1).numpy()
        return np.floor(real * eps + 1e-9)
    return np.full(len(x), float(int(eps * x[0].numel() + 1e-9)))


def unperturbed(attack: Attack, victim: Trained, x: torch.Tensor) -> torch.Tensor:
    """What ``attack`` returns when it changes nothing: ``x``, or for embedding attacks the
    embeddings of ``x``."""
    if attack.perturbs == "embeddings":
        with torch.no_grad():
            return victim.model.embed(x)
    return x


def adversarial_labels(attack: Attack, victim: Trained, x: torch.Tensor, x_adv: torch.Tensor):
    return predictions(attack.adversarial_logits(victim.model, x, x_adv)).numpy()


def make_attack(attack: str, norm: Norm, victim: Trained, **overrides: Any) -> Attack:
    """The suite's instance of ``attack`` for ``victim`` at the victim's budget for ``norm``."""
    kwargs: dict[str, Any] = {
        "norm": norm,
        "eps": BUDGETS[victim.key][norm],
        "domain": victim.task.domain,
        **SUITE_PARAMS[attack],
        **MODEL_PARAMS.get((attack, victim.key), {}),
    }
    kwargs.update(overrides)
    return ATTACKS.get(attack)(**kwargs)


@pytest.fixture
def victim(
    request: pytest.FixtureRequest,
    trained: Callable[[str], Trained],
    frozen_check: Callable[[nn.Module], nn.Module],
) -> Callable[[str], Trained]:
    """``victim(name)``: the shared trained model, watched so that no test may change it."""

    def get(name: str) -> Trained:
        model = trained(name)
        frozen_check(model.model)
        return model

    return get


def data(victim: Trained) -> tuple[torch.Tensor, torch.Tensor]:
    return victim.split("test", N_EXAMPLES)


def labels_of(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    return predictions(predict_logits(model, x)).numpy()


@pytest.fixture(scope="module")
def adversarial_cache() -> dict[tuple[str, Norm, str], torch.Tensor]:
    return {}


@pytest.fixture
def untargeted(
    victim: Callable[[str], Trained], adversarial_cache: dict[tuple[str, Norm, str], torch.Tensor]
) -> Callable[[str, Norm, str], torch.Tensor]:
    """``untargeted(attack, norm, model)``: the suite's untargeted output, computed once."""

    def get(attack: str, norm: Norm, model: str) -> torch.Tensor:
        key = (attack, norm, model)
        if key not in adversarial_cache:
            v = victim(model)
            x, y = data(v)
            adversarial_cache[key] = make_attack(attack, norm, v)(v.model, x, y)
        return adversarial_cache[key]

    return get


def test_every_registered_attack_is_in_the_suite():
    names = set(ATTACKS.names())
    assert names == set(SUITE_PARAMS) == set(RANDOMIZED) == set(MIN_SUCCESS) == set(BAD_PARAMS)
    assert names == set(MIN_TARGETED) == set(MINIMISES_LOSS)
    for name in names:
        assert ATTACKS.get(name).name == name
        assert ATTACKS.get(name).__doc__ and "Shape:" in ATTACKS.get(name).__doc__


# -- output, budget, domain, no side effects -----------------------------------------------------


@pytest.mark.parametrize(("attack", "norm", "model"), CASES)
def test_output_shape_dtype_budget_and_domain(
    attack: str, norm: Norm, model: str, victim, untargeted
):
    v = victim(model)
    x, _ = data(v)
    a = make_attack(attack, norm, v)
    x_adv = untargeted(attack, norm, model)
    reference = unperturbed(a, v, x)
    assert x_adv.shape == reference.shape
    assert x_adv.dtype == reference.dtype
    assert x_adv.device == x.device
    assert not x_adv.requires_grad
    if x_adv.is_floating_point():
        assert torch.isfinite(x_adv).all()
    sizes = a.perturbation_sizes(v.model, x, x_adv)
    assert {"linf", "l2", "l0"} <= set(sizes)
    assert all(values.shape == (len(x),) for values in sizes.values())
    # The sizes agree with the perturbation measured independently.
    if a.inputs == "tokens" and a.perturbs == "inputs":
        changed = (x_adv != x).sum(dim=1).double().numpy()
        np.testing.assert_array_equal(sizes["l0"], changed)
        np.testing.assert_array_equal(sizes["tokens_changed"], changed)
        assert np.isnan(sizes["linf"]).all() and np.isnan(sizes["l2"]).all()
    else:
        expected = perturbation_norms(reference, x_adv)
        for key in ("linf", "l2", "l0"):
            np.testing.assert_allclose(sizes[key], expected[key], rtol=1e-6)
    eps = norm_budget(a, x)
    norms = sizes[norm.value]
    assert (norms <= eps * (1 + 1e-5) + 1e-6).all()
    assert norms.max() > 0.5 * eps.max()  # it did perturb
    if a.inputs == "continuous":
        domain = v.task.domain
        assert float(x_adv.min()) >= domain.low and float(x_adv.max()) <= domain.high
    elif a.perturbs == "inputs":  # token ids: real vocabulary ids, special tokens untouched
        vocab = v.model.vocab_size
        assert int(x_adv.min()) >= 0 and int(x_adv.max()) < vocab
        special = torch.isin(x, torch.tensor(SPECIAL_IDS))
        assert torch.equal(x_adv[special], x[special])
        assert not torch.isin(x_adv[~special], torch.tensor(SPECIAL_IDS)).any()
    else:  # embeddings: padding positions keep their clean embedding
        padding = x == PAD_ID
        assert padding.any()
        assert torch.equal(x_adv[padding], reference[padding])


@pytest.mark.parametrize(("attack", "norm", "model"), CASES)
def test_input_not_mutated_and_model_mode_restored(attack: str, norm: Norm, model: str, victim):
    v = victim(model)
    x, y = data(v)
    x, y = x.clone(), y.clone()
    x_before, y_before = x.clone(), y.clone()
    target = (y + 1) % max(v.task.num_classes, 2)
    target_before = target.clone()
    v.model.train()
    try:
        make_attack(attack, norm, v)(v.model, x, y)
        make_attack(attack, norm, v)(v.model, x, y, target=target)
        assert v.model.training
        assert all(m.training for m in v.model.modules())
    finally:
        v.model.eval()
    assert torch.equal(x, x_before) and torch.equal(y, y_before)
    assert torch.equal(target, target_before)
    # An eval-mode model stays in eval mode. Weights, buffers (batch-norm statistics) and
    # gradients are checked after the test by frozen_check.
    make_attack(attack, norm, v)(v.model, x, y)
    assert not any(m.training for m in v.model.modules())


@pytest.mark.parametrize(("attack", "norm", "model"), CASES)
def test_zero_budget_returns_the_input(attack: str, norm: Norm, model: str, victim):
    v = victim(model)
    x, y = data(v)
    a = make_attack(attack, norm, v, eps=0.0)
    assert torch.equal(a(v.model, x, y), unperturbed(a, v, x))


# -- the attack works ----------------------------------------------------------------------------


@pytest.mark.parametrize(("attack", "norm", "model"), CASES)
def test_accuracy_drops(attack: str, norm: Norm, model: str, victim, untargeted):
    v = victim(model)
    x, y = data(v)
    clean = labels_of(v.model, x)
    adv = adversarial_labels(make_attack(attack, norm, v), v, x, untargeted(attack, norm, model))
    truth = y.numpy()
    clean_accuracy, adv_accuracy = (clean == truth).mean(), (adv == truth).mean()
    assert clean_accuracy > MIN_CLEAN_ACCURACY.get(model, 0.8)
    assert success_rate(truth, clean, adv) >= MIN_SUCCESS[attack]
    assert adv_accuracy < clean_accuracy - 0.1


@pytest.mark.parametrize(("norm", "model"), NORM_MODEL_CASES)
def test_pgd_is_at_least_as_strong_as_fgsm(norm: Norm, model: str, victim, untargeted):
    v = victim(model)
    x, y = data(v)
    clean, truth = labels_of(v.model, x), y.numpy()
    fgsm = success_rate(truth, clean, labels_of(v.model, untargeted("fgsm", norm, model)))
    pgd = success_rate(truth, clean, labels_of(v.model, untargeted("pgd", norm, model)))
    assert pgd >= fgsm - 0.02


@pytest.mark.parametrize(("attack", "norm", "model"), CASES)
def test_targeted_mode_reaches_the_target(attack: str, norm: Norm, model: str, victim, untargeted):
    v = victim(model)
    x, y = data(v)
    classes = max(v.task.num_classes, 2)
    target = (y + 1) % classes
    clean = labels_of(v.model, x)
    aimed = clean != target.numpy()  # points not already predicted as their target
    a = make_attack(attack, norm, v)
    x_aimed = a(v.model, x, y, target=target)
    hits = float((adversarial_labels(a, v, x, x_aimed) == target.numpy())[aimed].mean())
    assert hits > 0
    assert hits >= MIN_TARGETED[attack]

    def target_loss(inputs: torch.Tensor) -> float:
        logits = a.adversarial_logits(v.model, x, inputs)
        if not MINIMISES_LOSS[attack]:  # JSMA's objective: the target logit against the others
            logits = torch.cat([-logits / 2, logits / 2], 1) if logits.shape[1] == 1 else logits
            chosen = logits.gather(1, target[:, None])[:, 0]
            return float((logits.sum(1) - 2 * chosen).mean())
        return float(classification_loss(logits, target))

    assert target_loss(x_aimed) < target_loss(unperturbed(a, v, x))
    x_untargeted = untargeted(attack, norm, model)
    if classes > 2:
        # Aiming is not just breaking: the target's loss also falls below the untargeted one's.
        assert target_loss(x_aimed) < target_loss(x_untargeted)
    else:
        # With two classes the other class is the target: both modes break the same points.
        np.testing.assert_array_equal(
            adversarial_labels(a, v, x, x_aimed), adversarial_labels(a, v, x, x_untargeted)
        )


# -- seeds and early stopping --------------------------------------------------------------------


@pytest.mark.parametrize(("attack", "norm", "model"), CASES)
def test_seeded_determinism(attack: str, norm: Norm, model: str, victim):
    v = victim(model)
    x, y = data(v)
    first = make_attack(attack, norm, v, seed=3)(v.model, x, y)
    again = make_attack(attack, norm, v, seed=3)(v.model, x, y)
    assert torch.equal(first, again)
    other = make_attack(attack, norm, v, seed=4)(v.model, x, y)
    assert torch.equal(first, other) is not RANDOMIZED[attack]


@pytest.mark.parametrize(("attack", "norm", "model"), CASES)
def test_stop_when_adversarial_never_lowers_success(attack: str, norm: Norm, model: str, victim):
    """Stopping early only keeps points that already fool the model: every point broken without
    it is broken with it."""
    v = victim(model)
    x, y = data(v)
    truth = y.numpy()
    clean = labels_of(v.model, x)
    correct = clean == truth
    a = make_attack(attack, norm, v)
    full = adversarial_labels(
        a, v, x, make_attack(attack, norm, v, stop_when_adversarial=False)(v.model, x, y)
    )
    stop = adversarial_labels(
        a, v, x, make_attack(attack, norm, v, stop_when_adversarial=True)(v.model, x, y)
    )
    broken_full, broken_stop = correct & (full != truth), correct & (stop != truth)
    assert not (broken_full & ~broken_stop).any()
    assert success_rate(truth, clean, stop) >= success_rate(truth, clean, full)


@pytest.mark.parametrize(("norm", "model"), NORM_MODEL_CASES)
def test_pgd_leaves_already_adversarial_points_alone(norm: Norm, model: str, victim):
    """Without a random start, points the model already gets wrong are adversarial from the first
    step: with stopping they come back untouched, without it they are perturbed further."""
    v = victim(model)
    x, y = data(v)
    wrong = torch.from_numpy(labels_of(v.model, x) != y.numpy())
    assert wrong.any() and not wrong.all()
    outputs = {
        stop: make_attack("pgd", norm, v, random_start=False, stop_when_adversarial=stop)(
            v.model, x, y
        )
        for stop in (True, False)
    }
    assert torch.equal(outputs[True][wrong], x[wrong])
    assert not torch.equal(outputs[False][wrong], x[wrong])
    assert not torch.equal(outputs[True][~wrong], x[~wrong])


@pytest.mark.parametrize(("norm", "model"), NORM_MODEL_CASES)
def test_one_step_pgd_is_fgsm_with_or_without_stopping(norm: Norm, model: str, victim, untargeted):
    """PGD with one full step from the clean point is FGSM; stopping early cannot change which
    originally correct points it breaks, since they are not adversarial before the step."""
    v = victim(model)
    x, y = data(v)
    truth, clean = y.numpy(), labels_of(v.model, x)
    correct = clean == truth
    eps = BUDGETS[model][norm]
    broken = {}
    for stop in (False, True):
        one_step = make_attack(
            "pgd", norm, v, steps=1, step_size=eps, random_start=False, stop_when_adversarial=stop
        )
        broken[stop] = correct & (labels_of(v.model, one_step(v.model, x, y)) != truth)
    fgsm = correct & (labels_of(v.model, untargeted("fgsm", norm, model)) != truth)
    np.testing.assert_array_equal(broken[True], broken[False])
    np.testing.assert_array_equal(broken[False], fgsm)


# -- one-logit models ----------------------------------------------------------------------------


@pytest.mark.parametrize("attack", CONTINUOUS_ATTACKS)
def test_one_logit_models_take_binary_labels_only(attack: str, victim):
    for name in ("mlp_1logit", "detector"):
        v = victim(name)
        x, y = data(v)
        assert predict_logits(v.model, x[:2]).shape == (2, 1)
        with pytest.raises(InputError, match=r"got labels outside \[0, 1\] for a model with 2"):
            make_attack(attack, main_norm(attack), v)(v.model, x, torch.full_like(y, 2))
        with pytest.raises(InputError, match=r"got targets outside \[0, 1\]"):
            make_attack(attack, main_norm(attack), v)(v.model, x, y, target=torch.full_like(y, -1))


# -- bad hyperparameters -------------------------------------------------------------------------


@pytest.mark.parametrize("attack", ATTACKS.names())
def test_bad_budget_and_norm_are_rejected(attack: str):
    cls = ATTACKS.get(attack)
    owner = cls.__name__
    params = SUITE_PARAMS[attack]
    for eps in (-0.1, math.nan, "0.1", None, True):
        with pytest.raises(
            ParameterError, match=rf"The 'eps' parameter of {owner} must be a numbe"
        ):
            cls(eps=eps, **params)
    with pytest.raises(ParameterError, match=rf"The 'eps' parameter of {owner} .* Got -0\.1 inst"):
        cls(eps=-0.1, **params)
    if Norm.LINF in cls.norms:
        with pytest.raises(ParameterError, match=r"must be <= the domain width 1\.0\. Got 1\.5"):
            cls(norm="linf", eps=1.5, domain=UNIT_INTERVAL, **params)
        cls(norm="linf", eps=1.5, domain=UNBOUNDED, **params)  # fine where unbounded
    if Norm.L2 in cls.norms:
        cls(norm="l2", eps=1.5, domain=UNIT_INTERVAL, **params)  # an L2 ball may be wider
    with pytest.raises(ParameterError, match=r"The 'norm' must be one of 'linf', 'l2', 'l0'\. G"):
        cls(norm="l3", eps=0.1, **params)
    for norm in set(Norm) - set(cls.norms):
        supported = str([n.value for n in cls.norms]).replace("[", r"\[").replace("]", r"\]")
        with pytest.raises(
            ParameterError,
            match=rf"The 'norm' parameter of {owner} must be one of {supported}\. "
            rf"Got '{norm.value}' instead\.",
        ):
            cls(norm=norm, eps=0.1, **params)
    with pytest.raises(ParameterError, match=rf"The 'seed' parameter of {owner} must be an integ"):
        cls(eps=0.1, seed=-1, **params)
    with pytest.raises(TypeError):
        cls(0.1)  # hyperparameters are keyword-only


@pytest.mark.parametrize(
    ("attack", "kwargs", "match"),
    [
        pytest.param(attack, kwargs, match, id=f"{attack}-{'-'.join(kwargs)}")
        for attack, cases in BAD_PARAMS.items()
        for kwargs, match in cases
    ],
)
def test_attack_specific_bad_params(attack: str, kwargs: dict[str, Any], match: str):
    with pytest.raises(ParameterError, match=match):
        ATTACKS.get(attack)(eps=0.1, **{**SUITE_PARAMS[attack], **kwargs})


@pytest.mark.parametrize("attack", ATTACKS.names())
def test_params_identify_the_attack(attack: str):
    cls = ATTACKS.get(attack)
    norm = main_norm(attack)
    a = cls(norm=norm.value, eps=0.5, domain=UNIT_INTERVAL, seed=7, **SUITE_PARAMS[attack])
    b = cls(norm=norm, eps=0.5, domain=Domain(0.0, 1.0), seed=7, **SUITE_PARAMS[attack])
    params = a.params()
    assert json.loads(json.dumps(params)) == params
    assert params["norm"] == norm.value and params["eps"] == 0.5 and params["seed"] == 7
    assert repr(a) == repr(b) and repr(a).startswith(f"{cls.__name__}(")
    assert a.threat == ThreatModel(norm, 0.5, UNIT_INTERVAL)
    other = cls(norm=norm.value, eps=0.6, domain=UNIT_INTERVAL, seed=7, **SUITE_PARAMS[attack])
    assert repr(other) != repr(a)


# -- bad inputs ----------------------------------------------------------------------------------


def bad_labels(x: Any, y: torch.Tensor, classes: int) -> list[tuple[str, Any, Any, Any, str]]:
    """(case id, x, y, target, message) for labels and targets every attack must reject."""
    high = torch.full_like(y, classes)
    return [
        ("labels-shape", x, y[:, None], None, r"needs integer labels of shape \(8,\)\. Got shape"),
        ("labels-short", x, y[:5], None, r"needs integer labels of shape \(8,\)"),
        ("labels-float", x, y.float(), None, r"dtype torch\.float32 instead"),
        ("labels-high", x, high, None, rf"labels outside \[0, {classes - 1}"),
        ("labels-negative", x, y - 10, None, rf"labels outside \[0, {classes - 1}\]"),
        ("target-shape", x, y, y[:3], r"needs integer targets of shape \(8,\)"),
        ("target-float", x, y, y.double(), r"needs integer targets of shape \(8,\)"),
        ("target-list", x, y, y.tolist(), r"needs targets as a tensor\. Got list"),
        ("target-high", x, y, high, rf"targets outside \[0, {classes - 1}"),
    ]


def bad_inputs(v: Trained) -> list[tuple[str, Any, Any, Any, str]]:
    """(case id, x, y, target, message) for inputs an attack on ``v`` must reject."""
    x, y = data(v)
    x, y = x[:8], y[:8]
    nan = x.clone()
    nan[0].view(-1)[0] = math.nan
    inf = x.clone()
    inf[1].view(-1)[-1] = math.inf
    classes = max(v.task.num_classes, 2)
    cases: list[tuple[str, Any, Any, Any, str]] = [
        ("1-d", x[0].flatten(), y[:1], None, r"needs a non-empty batch of shape \(N, \.\.\.\)"),
        ("empty", x[:0], y[:0], None, r"needs a non-empty batch of shape \(N, \.\.\.\)\. Got"),
        ("misfit", x[:, 0] if x.dim() > 2 else x[:, :-1], y, None, r"could not run the model"),
        ("integer", x.long(), y, None, r"needs floating-point inputs\. Got dtype torch\.int64"),
        ("numpy", x.numpy(), y, None, r"needs torch tensors x and y\. Got ndarray"),
        ("nan", nan, y, None, r"got inputs with NaN or Inf values"),
        ("inf", inf, y, None, r"got inputs with NaN or Inf values"),
        *bad_labels(x, y, classes),
    ]
    if v.task.domain.bounded:
        cases.append(("above-domain", x + 0.5, y, None, r"got inputs outside the domain \[0\.0, 1"))
        cases.append(("below-domain", x - 0.5, y, None, r"got inputs outside the domain"))
    return cases


@pytest.mark.parametrize("attack", CONTINUOUS_ATTACKS)
@pytest.mark.parametrize("model", ["cnn", "gru", "mlp"])
def test_bad_inputs_raise_input_error(attack: str, model: str, victim):
    v = victim(model)
    owner = ATTACKS.get(attack).__name__
    for case, x, y, target, match in bad_inputs(v):
        with pytest.raises(InputError, match=rf"^{owner} .*{match}") as info:
            make_attack(attack, main_norm(attack), v)(v.model, x, y, target=target)
        assert isinstance(info.value, ValueError), case
        assert not v.model.training, case


def bad_token_inputs(v: Trained) -> list[tuple[str, Any, Any, Any, str]]:
    """(case id, x, y, target, message) for token-id inputs a text attack on ``v`` must reject."""
    x, y = data(v)
    x, y = x[:8], y[:8]
    vocab = v.model.vocab_size
    above, negative = x.clone(), x.clone()
    above[2, 1] = vocab
    negative[3, 1] = -1
    classes = v.task.num_classes
    with torch.no_grad():
        embeddings = v.model.embed(x)
    ids = r"needs int64 token ids\. Got dtype"
    shape = r"needs a non-empty batch of token ids of shape \(N, L\)\. Got shape"
    return [
        ("float-ids", x.float(), y, None, rf"{ids} torch\.float32 instead"),
        ("int32-ids", x.int(), y, None, rf"{ids} torch\.int32 instead"),
        ("embeddings", embeddings, y, None, rf"{ids} torch\.float32 instead"),
        ("numpy", x.numpy(), y, None, r"needs torch tensors x and y\. Got ndarray"),
        ("1-d", x[0], y[:1], None, rf"{shape} \(128,\)"),
        ("3-d", x[:, :, None], y, None, rf"{shape} \(8, 128, 1\)"),
        ("empty", x[:0], y[:0], None, rf"{shape} \(0, 128\)"),
        ("no-tokens", x[:, :0], y, None, rf"{shape} \(8, 0\)"),
        (
            "above-vocab",
            above,
            y,
            None,
            rf"token ids outside \[0, {vocab - 1}\] for a model with a",
        ),
        ("negative-id", negative, y, None, r"token ids outside \[0, .*\(min -1, max"),
        ("too-long", torch.cat([x, x], 1), y, None, r"could not run the model on inputs of shape"),
        *bad_labels(x, y, classes),
    ]


@pytest.mark.parametrize("attack", TOKEN_ATTACKS)
def test_bad_token_inputs_raise_input_error(attack: str, victim):
    v = victim("transformer")
    owner = ATTACKS.get(attack).__name__
    for case, x, y, target, match in bad_token_inputs(v):
        with pytest.raises(InputError, match=rf"^{owner} .*{match}") as info:
            make_attack(attack, main_norm(attack), v)(v.model, x, y, target=target)
        assert isinstance(info.value, ValueError), case
        assert not v.model.training, case


@pytest.mark.parametrize("attack", ATTACKS.names())
def test_attacks_reject_the_other_kind_of_input(attack: str, victim):
    """Continuous attacks refuse token ids; text attacks refuse models without the text
    interface (embed, forward_embeddings, vocab_size, pad_id) and continuous inputs."""
    text, cnn = victim("transformer"), victim("cnn")
    owner = ATTACKS.get(attack).__name__
    ids, y = data(text)
    images, y_images = data(cnn)
    if ATTACKS.get(attack).inputs == "continuous":
        with pytest.raises(InputError, match=rf"^{owner} needs floating-point inputs\. Got dtype"):
            make_attack(attack, main_norm(attack), cnn)(text.model, ids, y)
        return
    with pytest.raises(InputError, match=rf"^{owner} needs int64 token ids\. Got dtype torch\.fl"):
        make_attack(attack, main_norm(attack), text)(cnn.model, images, y_images)
    with pytest.raises(
        InputError,
        match=rf"^{owner} needs a text model with vocab_size, pad_id, embed\(ids\) and "
        r"forward_embeddings\(embeddings, ids\).* SmallCNN lacks vocab_size, pad_id, embed, "
        r"forward_embeddings\.",
    ):
        make_attack(attack, main_norm(attack), text)(cnn.model, ids[:, :28], y)
    assert not cnn.model.training


@pytest.mark.parametrize("attack", ATTACKS.names())
def test_model_mode_is_restored_when_an_attack_fails(attack: str, victim):
    tokens = ATTACKS.get(attack).inputs == "tokens"
    v = victim("transformer" if tokens else "cnn")
    x, y = data(v)
    misfit = torch.cat([x, x], 1) if tokens else x[:, 0]
    classes = v.task.num_classes
    v.model.train()
    try:
        with pytest.raises(InputError, match=rf"got labels outside \[0, {classes - 1}\]"):
            make_attack(attack, main_norm(attack), v)(v.model, x, torch.full_like(y, 5))
        assert v.model.training
        with pytest.raises(InputError, match=r"could not run the model"):
            make_attack(attack, main_norm(attack), v)(v.model, misfit, y)
        assert v.model.training
    finally:
        v.model.eval()


# -- projection ----------------------------------------------------------------------------------


@st.composite
def projection_case(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, ThreatModel]:
    bounded = draw(st.booleans())
    norm = draw(st.sampled_from([Norm.LINF, Norm.L2]))
    shape = (draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 6)))
    seed = draw(st.integers(0, 2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    scale = draw(st.sampled_from([1e-3, 0.1, 1.0, 10.0]))
    if bounded:
        x = torch.rand(shape, generator=generator)
        x[..., 0] = draw(st.sampled_from([0.0, 1.0, 0.5]))  # points on the domain's edge too
        domain = UNIT_INTERVAL
        eps = draw(st.floats(0.0, 1.0))
    else:
        x = torch.randn(shape, generator=generator) * 3
        domain = UNBOUNDED
        eps = draw(st.floats(0.0, 20.0))
    x_adv = x + torch.randn(shape, generator=generator) * scale
    return x, x_adv, ThreatModel(norm, eps, domain)


@settings(max_examples=60, deadline=None)
@given(projection_case())
def test_projection_lands_in_the_ball_and_the_domain(case):
    x, x_adv, threat = case
    projected = project(x_adv, x, threat)
    assert projected.shape == x.shape and projected.dtype == x.dtype
    norms = perturbation_norms(x, projected)[threat.norm.value]
    assert norms.max() <= threat.eps * (1 + 1e-5) + 1e-6
    assert float(projected.min()) >= threat.domain.low
    assert float(projected.max()) <= threat.domain.high
    # Projecting twice changes nothing, and points already inside both sets do not move.
    torch.testing.assert_close(project(projected, x, threat), projected, atol=1e-6, rtol=1e-5)
    inside = perturbation_norms(x, x_adv)[threat.norm.value] <= threat.eps
    inside &= (
        ((x_adv >= threat.domain.low) & (x_adv <= threat.domain.high)).flatten(1).all(1).numpy()
    )
    torch.testing.assert_close(projected[inside], x_adv[inside], atol=1e-6, rtol=1e-5)


def test_projection_direction_is_kept_for_l2():
    """L2 projection scales the perturbation down; it does not clip coordinates."""
    x = torch.zeros(1, 4)
    x_adv = torch.tensor([[3.0, 4.0, 0.0, 0.0]])
    projected = project(x_adv, x, ThreatModel(Norm.L2, 1.0))
    torch.testing.assert_close(projected, torch.tensor([[0.6, 0.8, 0.0, 0.0]]))
    clipped = project(x_adv, x, ThreatModel(Norm.LINF, 1.0))
    torch.testing.assert_close(clipped, torch.tensor([[1.0, 1.0, 0.0, 0.0]]))


def test_margin_loss_breaks_points_where_cross_entropy_saturates(victim) -> None:
    """A confidently classified point has a cross-entropy gradient of exactly zero in float32;
    the logit margin still moves it."""
    v = victim("mlp")
    x, y = data(v)
    x = x * 50  # far from the boundary: softmax saturates at 1
    ce = PGD(eps=60.0, steps=20, random_start=False, seed=0)
    margin = PGD(eps=60.0, steps=20, random_start=False, loss="margin", seed=0)
    broken = [
        float((labels_of(v.model, a(v.model, x, y)) != y.numpy()).mean()) for a in (ce, margin)
    ]
    assert broken[1] > 0.9 and broken[1] > broken[0] + 0.5, broken
    with pytest.raises(ParameterError, match=r"'loss' parameter of PGD must be one of"):
        PGD(eps=0.1, loss="hinge")
