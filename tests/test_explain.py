"""Explanations under attack: Captum attributions for every modality, their properties
(shape, Integrated Gradients' completeness, Grad-CAM's spatial map), the stability metrics, the
validation of inputs, and the pictures.

Most tests use tiny untrained models built here (the properties do not need training); one test
attacks the small CNN trained on BreastMNIST (``tests/conftest.py``) and checks that the attack
moves its explanations.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import matplotlib.image
import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from medrobust.attacks import PGD
from medrobust.attacks.adaptive import EOT
from medrobust.defenses.masking import RandomizedActivations
from medrobust.defenses.smoothing import SoftSmoothing
from medrobust.errors import InputError, ParameterError
from medrobust.explain import (
    EXPLAINERS,
    attribute,
    compare_attributions,
    explanation_stability,
    last_conv_layer,
    model_agreement,
    spearman,
    top_k_overlap,
)
from medrobust.models.ecg import Conv1DClassifier, RecurrentClassifier
from medrobust.models.image import SmallCNN
from medrobust.models.tabular import MLP
from medrobust.models.text import PAD_ID, TransformerClassifier, encode, train_tokenizer
from medrobust.study.explain_figures import explanation_figure
from medrobust.study.figures import FigureImage
from medrobust.types import UNBOUNDED, UNIT_INTERVAL, Domain, Modality

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _seeded(build: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return build().eval()


def image_case() -> tuple[nn.Module, torch.Tensor, torch.Tensor, Domain]:
    model = _seeded(lambda: SmallCNN(1, 2, width=8))
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    return model, x, torch.tensor([0, 1, 1]), UNIT_INTERVAL


def rgb_case() -> tuple[nn.Module, torch.Tensor, torch.Tensor, Domain]:
    model = _seeded(lambda: SmallCNN(3, 4, width=8))
    x = torch.rand(2, 3, 28, 28, generator=torch.Generator().manual_seed(2))
    return model, x, torch.tensor([3, 0]), UNIT_INTERVAL


def ecg_conv_case() -> tuple[nn.Module, torch.Tensor, torch.Tensor, Domain]:
    model = _seeded(lambda: Conv1DClassifier(1, 5, width=8))
    x = torch.randn(3, 1, 140, generator=torch.Generator().manual_seed(3))
    return model, x, torch.tensor([0, 2, 4]), UNBOUNDED


def ecg_gru_case() -> tuple[nn.Module, torch.Tensor, torch.Tensor, Domain]:
    model = _seeded(lambda: RecurrentClassifier(1, 5, hidden=8, downsample=4))
    x = torch.randn(3, 1, 140, generator=torch.Generator().manual_seed(4))
    return model, x, torch.tensor([1, 2, 3]), UNBOUNDED


def tabular_case(outputs: int = 2) -> tuple[nn.Module, torch.Tensor, torch.Tensor, Domain]:
    model = _seeded(lambda: MLP(30, outputs))
    x = torch.randn(4, 30, generator=torch.Generator().manual_seed(5))
    return model, x, torch.tensor([0, 1, 1, 0]), UNBOUNDED


CASES = {
    "image": (Modality.IMAGE, image_case),
    "rgb": (Modality.IMAGE, rgb_case),
    "ecg_conv1d": (Modality.ECG, ecg_conv_case),
    "ecg_gru": (Modality.ECG, ecg_gru_case),
    "tabular": (Modality.TABULAR, tabular_case),
    "tabular_1logit": (Modality.TABULAR, lambda: tabular_case(1)),
}
HAS_CONV = {"image", "rgb", "ecg_conv1d"}


def text_case() -> tuple[TransformerClassifier, torch.Tensor, torch.Tensor]:
    model = _seeded(lambda: TransformerClassifier(50, 3, max_length=12, dim=16, heads=2, layers=1))
    assert isinstance(model, TransformerClassifier)
    ids = torch.randint(4, 50, (3, 12), generator=torch.Generator().manual_seed(6))
    ids[0, 8:] = PAD_ID
    ids[1, 5:] = PAD_ID
    return model, ids, torch.tensor([0, 1, 2])


# --- shapes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", EXPLAINERS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_attributions_have_the_inputs_shape(case: str, method: str) -> None:
    modality, build = CASES[case]
    model, x, y, domain = build()
    if method == "grad_cam" and case not in HAS_CONV:
        with pytest.raises(ParameterError, match=r"Grad-CAM needs a model with an nn\.Conv2d"):
            attribute(model, x, y, method=method, modality=modality, domain=domain)
        return
    result = attribute(model, x, y, method=method, modality=modality, domain=domain, steps=8)
    assert result.shape == x.shape
    assert result.dtype == x.dtype
    assert torch.isfinite(result).all()
    assert result.abs().sum() > 0
    if method in ("saliency", "grad_cam"):
        assert (result >= 0).all()  # absolute gradients; Grad-CAM's ReLU


@pytest.mark.parametrize("method", ["saliency", "integrated_gradients"])
def test_text_attributions_are_one_score_per_token(method: str) -> None:
    model, ids, y = text_case()
    result = attribute(model, ids, y, method=method, modality="text", steps=8)
    assert result.shape == ids.shape
    assert result.is_floating_point()
    assert (result[ids == PAD_ID] == 0).all()
    assert (result[ids != PAD_ID] != 0).all()
    # An embedding-space attack's output is explained at its embeddings, with the same shape.
    moved = model.embed(ids).detach() + 0.2
    at_embeddings = attribute(model, ids, y, method=method, modality="text", embeddings=moved)
    assert at_embeddings.shape == ids.shape
    assert not torch.allclose(at_embeddings, result)


def test_grad_cam_is_one_spatial_map_repeated_over_channels() -> None:
    model, x, y, domain = rgb_case()
    result = attribute(model, x, y, method="grad_cam", modality="image", domain=domain)
    assert result.shape == x.shape
    assert torch.equal(result[:, 0], result[:, 1]) and torch.equal(result[:, 0], result[:, 2])
    assert last_conv_layer(model) is [m for m in model.modules() if isinstance(m, nn.Conv2d)][-1]
    # A chosen layer is used as given.
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    early = attribute(model, x, y, method="grad_cam", modality="image", domain=domain, layer=first)
    assert early.shape == x.shape and not torch.allclose(early, result)


# --- Integrated Gradients' completeness -------------------------------------------------------


@pytest.mark.parametrize("outputs", [2, 1])
def test_integrated_gradients_completeness(outputs: int) -> None:
    """Sundararajan et al. (2017): attributions sum to f(x) - f(baseline) for the target class;
    a one-logit model's class-0 score is -logit."""
    model, x, y, _ = tabular_case(outputs)
    domain = Domain(-10.0, 10.0)
    result = attribute(
        model, x, y, method="integrated_gradients", modality="tabular", domain=domain, steps=128
    )
    with torch.no_grad():
        logits, base = model(x), model(torch.zeros_like(x))
    if outputs == 1:
        logits, base = torch.cat([-logits, logits], 1), torch.cat([-base, base], 1)
    rows = torch.arange(len(y))
    expected = logits[rows, y] - base[rows, y]
    torch.testing.assert_close(result.sum(dim=1), expected, atol=2e-3, rtol=1e-3)
    # A given baseline is used instead of the default.
    baseline = torch.full((1, 30), 0.5)
    moved = attribute(
        model, x, y, method="integrated_gradients", modality="tabular", baseline=baseline, steps=128
    )
    with torch.no_grad():
        reference = model(baseline.expand_as(x))
    if outputs == 1:
        reference = torch.cat([-reference, reference], 1)
    torch.testing.assert_close(
        moved.sum(dim=1), logits[rows, y] - reference[rows, y], atol=2e-3, rtol=1e-3
    )


def test_integrated_gradients_baseline_is_the_domain_low_end_for_images() -> None:
    """The default image baseline is black (0 in [0, 1]); in a domain without 0 it is clipped."""
    model, x, y, _ = image_case()
    result = attribute(model, x, y, method="integrated_gradients", modality="image", steps=64)
    with torch.no_grad():
        gap = model(x)[torch.arange(3), y] - model(torch.zeros_like(x))[torch.arange(3), y]
    torch.testing.assert_close(result.sum(dim=(1, 2, 3)), gap, atol=5e-3, rtol=1e-2)
    shifted = Domain(0.25, 1.0)
    inside = x.clamp(0.25, 1.0)
    result = attribute(
        model, inside, y, method="integrated_gradients", modality="image", domain=shifted, steps=64
    )
    with torch.no_grad():
        rows = torch.arange(3)
        gap = model(inside)[rows, y] - model(torch.full_like(x, 0.25))[rows, y]
    torch.testing.assert_close(result.sum(dim=(1, 2, 3)), gap, atol=5e-3, rtol=1e-2)


def test_text_integrated_gradients_completeness() -> None:
    model, ids, y = text_case()
    result = attribute(model, ids, y, method="integrated_gradients", modality="text", steps=128)
    with torch.no_grad():
        embedded = model.embed(ids)
        baseline = torch.where((ids == PAD_ID).unsqueeze(-1), embedded, 0.0)
        rows = torch.arange(len(y))
        gap = (
            model.forward_embeddings(embedded, ids)[rows, y]
            - model.forward_embeddings(baseline, ids)[rows, y]
        )
    torch.testing.assert_close(result.sum(dim=1), gap, atol=5e-3, rtol=1e-2)


# --- randomized and wrapped models ------------------------------------------------------------


def test_randomized_model_is_seeded_and_averaged() -> None:
    model, x, y, domain = image_case()
    noisy = RandomizedActivations(model).eval()
    kwargs = {"method": "saliency", "modality": "image", "domain": domain}
    state = torch.get_rng_state()
    first = attribute(noisy, x, y, seed=3, **kwargs)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's generator is left alone
    assert torch.equal(first, attribute(noisy, x, y, seed=3, **kwargs))
    assert not torch.equal(first, attribute(noisy, x, y, seed=4, **kwargs))
    averaged = attribute(noisy, x, y, seed=3, samples=4, **kwargs)
    assert averaged.shape == x.shape and not torch.equal(averaged, first)
    # Grad-CAM works through a wrapper that runs the model once per pass...
    cam = attribute(noisy, x, y, method="grad_cam", modality="image", domain=domain, samples=2)
    assert cam.shape == x.shape
    # ...but not through one that repeats the batch or the pass.
    for wrapper in (SoftSmoothing(model, 0.25, samples=4).eval(), EOT(noisy, samples=3)):
        with pytest.raises(ParameterError, match="runs its layer once per forward pass"):
            attribute(wrapper, x, y, method="grad_cam", modality="image", domain=domain)
    smooth = attribute(SoftSmoothing(model, 0.25, samples=4).eval(), x, y, **kwargs)
    assert smooth.shape == x.shape


def test_model_mode_input_and_weights_unchanged() -> None:
    model, x, y, domain = image_case()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x_before = x.clone()
    for method in EXPLAINERS:
        attribute(model, x, y, method=method, modality="image", domain=domain, steps=4)
    assert model.training
    assert torch.equal(x, x_before) and not x.requires_grad
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    text, ids, labels = text_case()
    ids_before = ids.clone()
    attribute(text, ids, labels, method="integrated_gradients", modality="text", steps=4)
    assert torch.equal(ids, ids_before) and not text.training


def test_batches_give_the_same_attributions() -> None:
    model, x, y, domain = ecg_conv_case()
    kwargs = {"method": "integrated_gradients", "modality": "ecg", "domain": domain, "steps": 8}
    whole = attribute(model, x, y, batch_size=64, **kwargs)
    torch.testing.assert_close(attribute(model, x, y, batch_size=1, **kwargs), whole)


# --- validation -------------------------------------------------------------------------------


def test_invalid_parameters_raise_parameter_error() -> None:
    model, x, y, domain = image_case()
    ok = {"method": "saliency", "modality": "image", "domain": domain}
    bad: list[tuple[dict[str, object], str]] = [
        ({"method": "lime"}, "The 'method' parameter of attribute must be one of"),
        ({"modality": "video"}, "The 'modality' parameter of attribute must be one of"),
        ({"domain": (0, 1)}, "The 'domain' parameter of attribute must be a"),
        ({"steps": 0}, "The 'steps' parameter of attribute must be an integer >= 1"),
        ({"samples": 1.5}, "The 'samples' parameter of attribute must be an integer"),
        ({"seed": -1}, "The 'seed' parameter of attribute"),
        ({"batch_size": 0}, "The 'batch_size' parameter"),
        ({"layer": nn.Conv2d(1, 1, 3)}, "The 'layer' parameter of attribute is for Grad-CAM"),
        ({"embeddings": torch.zeros(3, 4, 2)}, "'embeddings' parameter of attribute is for text"),
    ]
    for change, message in bad:
        with pytest.raises(ParameterError, match=message):
            attribute(model, x, y, **{**ok, **change})  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match="'layer' parameter of attribute must be a module"):
        attribute(model, x, y, **{**ok, "method": "grad_cam", "layer": nn.Conv2d(1, 1, 3)})
    with pytest.raises(ParameterError, match="'model' parameter of attribute"):
        attribute("cnn", x, y, **ok)  # type: ignore[arg-type]
    text, ids, labels = text_case()
    with pytest.raises(ParameterError, match="text models are explained in embedding space"):
        attribute(text, ids, labels, method="grad_cam", modality="text")


def test_invalid_inputs_raise_input_error() -> None:
    model, x, y, domain = image_case()
    ok = {"method": "integrated_gradients", "modality": "image", "domain": domain}
    cases: list[tuple[object, object, dict[str, object], str]] = [
        (x.numpy(), y, {}, "needs x as a torch tensor"),
        (x.double(), y, {}, "in the model's dtype"),
        (x + 2, y, {}, "outside the domain"),
        (x[0, 0, 0], y, {}, "batch of shape"),
        (x, y[:2], {}, "integer target of shape"),
        (x, y.float(), {}, "integer target"),
        (x, torch.tensor([0, 1, 2]), {}, "target classes outside"),
        (x, y, {"baseline": torch.zeros(3, 1, 5, 5)}, "baseline of a shape that broadcasts"),
        (x, y, {"baseline": torch.full((1, 1, 28, 28), math.nan)}, "baseline with NaN"),
    ]
    for inputs, target, extra, message in cases:
        with pytest.raises(InputError, match=message):
            attribute(model, inputs, target, **{**ok, **extra})  # type: ignore[arg-type]
    text, ids, labels = text_case()
    with pytest.raises(InputError, match="token ids in x outside"):
        attribute(text, ids + 100, labels, method="saliency", modality="text")
    with pytest.raises(InputError, match="int64 tensor of token ids"):
        attribute(text, ids.float(), labels, method="saliency", modality="text")
    with pytest.raises(InputError, match="embeddings of shape"):
        attribute(
            text, ids, labels, method="saliency", modality="text", embeddings=torch.zeros(3, 12, 8)
        )
    with pytest.raises(InputError, match="needs a text model"):
        attribute(model, ids, labels, method="saliency", modality="text")


# --- stability metrics ------------------------------------------------------------------------


def test_metrics_are_one_for_identical_and_lower_for_shuffled_attributions() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20, 64))
    shuffled = np.stack([rng.permutation(row) for row in a])
    np.testing.assert_allclose(spearman(a, a), 1.0)
    np.testing.assert_allclose(top_k_overlap(a, a, 0.1), 1.0)
    assert (spearman(a, shuffled) < 0.6).all()
    assert top_k_overlap(a, shuffled, 8).mean() < 0.5
    # Absolute values: flipping signs changes nothing.
    np.testing.assert_allclose(spearman(a, -a), 1.0)
    # The statistic is scipy's Spearman rho of the absolute values.
    expected = [spearmanr(np.abs(p), np.abs(q)).statistic for p, q in zip(a, shuffled, strict=True)]
    np.testing.assert_allclose(spearman(a, shuffled), expected, atol=1e-12)
    # Torch tensors and any trailing shape are accepted.
    as_images = torch.as_tensor(a).view(20, 1, 8, 8)
    np.testing.assert_allclose(spearman(as_images, as_images), 1.0)
    both = compare_attributions(a, shuffled, k=0.25)
    assert set(both) == {"spearman", "top_k_overlap"} and both["spearman"].shape == (20,)


def test_metrics_are_nan_for_constant_attributions_and_respect_the_mask() -> None:
    a = np.array([[0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]])
    b = np.array([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]])
    assert np.isnan(spearman(a, b)[0]) and spearman(a, b)[1] == 1.0
    assert np.isnan(top_k_overlap(a, b, 1)[0]) and top_k_overlap(a, b, 1)[1] == 1.0
    # Masked-out features (padding) are not compared.
    c = np.array([[4.0, 3.0, 9.0, 8.0]])
    d = np.array([[4.0, 3.0, 1.0, 2.0]])
    mask = np.array([[True, True, False, False]])
    assert spearman(c, d, mask=mask)[0] == 1.0 and spearman(c, d)[0] < 1.0
    assert top_k_overlap(c, d, 1, mask=mask)[0] == 1.0 and top_k_overlap(c, d, 1)[0] == 0.0


def test_top_k_counts_and_fractions() -> None:
    a = np.array([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    b = np.array([[5.0, 0.0, 3.0, 2.0, 1.0, 4.0]])
    assert top_k_overlap(a, b, 2)[0] == 0.5  # {0, 1} vs {0, 5}
    assert top_k_overlap(a, b, 0.5)[0] == pytest.approx(2 / 3)  # 3 of 6: {0,1,2} vs {0,5,2}
    assert top_k_overlap(a, b, 100)[0] == 1.0  # capped at the number of features
    for k in (0, -1, 0.0, 1.5, True, "3"):
        with pytest.raises(ParameterError, match="The 'k' parameter of top_k_overlap"):
            top_k_overlap(a, b, k)  # type: ignore[arg-type]


def test_metrics_reject_bad_arrays() -> None:
    a = np.ones((2, 3))
    for first, second, kwargs, message in [
        (a, np.ones((2, 4)), {}, "of the same shape"),
        (a[0], a[0], {}, "of the same shape"),
        (a, np.full((2, 3), np.nan), {}, "NaN or Inf"),
        ([[1.0]], [[1.0]], {}, "torch tensor or NumPy array"),
        (a, a, {"mask": np.ones((2, 3))}, "boolean mask"),
    ]:
        with pytest.raises(InputError, match=message):
            spearman(first, second, **kwargs)


# --- stability under a real attack ------------------------------------------------------------


def test_attack_moves_the_explanations_of_a_trained_cnn(trained, frozen_check) -> None:
    victim = trained("cnn")
    model = frozen_check(victim.model)
    x, y = victim.split("test", 12)
    x_adv = PGD(eps=8 / 255, steps=5, domain=victim.task.domain, seed=0)(model, x, y)
    kwargs = {"modality": victim.task.modality, "domain": victim.task.domain}
    for method in ("saliency", "grad_cam"):
        moved = explanation_stability(model, x, x_adv, y, method=method, k=0.1, **kwargs)
        assert moved["spearman"].shape == (12,) and moved["top_k_overlap"].shape == (12,)
        finite = moved["spearman"][np.isfinite(moved["spearman"])]
        assert len(finite) >= 6 and (finite <= 1.0).all() and finite.mean() < 0.99
        same = explanation_stability(model, x, x, y, method=method, **kwargs)
        np.testing.assert_allclose(same["spearman"][np.isfinite(same["spearman"])], 1.0)
    agree = model_agreement(model, model, x, y, method="saliency", **kwargs)
    np.testing.assert_allclose(agree["spearman"], 1.0)


def test_text_stability_for_token_and_embedding_attacks() -> None:
    model, ids, y = text_case()
    swapped = ids.clone()
    swapped[:, 1] = 4 + (swapped[:, 1] - 3) % 46  # one token replaced, as HotFlip does
    kwargs = {"method": "integrated_gradients", "modality": "text", "steps": 16}
    tokens = explanation_stability(model, ids, swapped, y, **kwargs)
    embedded = explanation_stability(model, ids, model.embed(ids).detach() + 0.3, y, **kwargs)
    for result in (tokens, embedded):
        assert result["spearman"].shape == (3,)
        assert np.isfinite(result["spearman"]).all() and result["spearman"].mean() < 1.0
    with pytest.raises(InputError, match="x_adv of the shape of x"):
        explanation_stability(model, ids, swapped[:, :5], y, **kwargs)


# --- figures ----------------------------------------------------------------------------------


def _check_png(image: FigureImage, minimum_height: int = 150) -> None:
    assert isinstance(image, FigureImage)
    assert image.png.startswith(PNG_SIGNATURE)
    pixels = matplotlib.image.imread(io.BytesIO(image.png), format="png")
    assert pixels.shape[1] >= 800 and pixels.shape[0] >= minimum_height
    assert pixels[..., :3].std() > 0.01  # not blank
    assert image.name.startswith("explanations_") and image.caption and image.title


@pytest.mark.parametrize("case", ["image", "rgb", "ecg_conv1d", "tabular"])
def test_figures_are_png_panels(case: str) -> None:
    modality, build = CASES[case]
    model, x, y, domain = build()
    shift = 0.03 * torch.sign(torch.randn(x.shape, generator=torch.Generator().manual_seed(7)))
    x_adv = (x + shift).clamp(domain.low, domain.high) if domain.bounded else x + shift
    method = "integrated_gradients"
    clean = attribute(model, x, y, method=method, modality=modality, domain=domain, steps=8)
    adv = attribute(model, x_adv, y, method=method, modality=modality, domain=domain, steps=8)
    image = explanation_figure(
        "demo task",
        modality,
        x,
        x_adv,
        clean,
        adv,
        method=method,
        model="mlp",
        attack="pgd linf eps=0.03",
        labels=[f"true {int(t)}" for t in y],
        feature_names=[f"feature {j}" for j in range(30)] if case == "tabular" else None,
        max_examples=2,
    )
    _check_png(image)
    assert image.name == "explanations_demo_task_integrated_gradients_mlp"


def test_text_figure_highlights_tokens() -> None:
    texts = ["the patient has acute chest pain and fever", "chronic kidney disease in the patient"]
    tokenizer = train_tokenizer(texts * 2, vocab_size=50)
    ids = torch.as_tensor(encode(tokenizer, texts, max_length=12))
    vocab = tokenizer.get_vocab_size()
    torch.manual_seed(0)
    model = TransformerClassifier(vocab, 2, max_length=12, dim=16, heads=2, layers=1).eval()
    y = torch.tensor([0, 1])
    swapped = ids.clone()
    swapped[:, 2] = tokenizer.token_to_id("fever")
    clean = attribute(model, ids, y, method="saliency", modality="text")
    adv = attribute(model, swapped, y, method="saliency", modality="text")
    _check_png(
        explanation_figure(
            "abstracts", "text", ids, swapped, clean, adv, method="saliency", tokenizer=tokenizer
        ),
        minimum_height=100,
    )
    # An embedding attack: tokens unchanged; without a tokenizer, ids are shown.
    embedded = model.embed(ids).detach() + 0.2
    adv = attribute(model, ids, y, method="saliency", modality="text", embeddings=embedded)
    _check_png(
        explanation_figure("abstracts", "text", ids, embedded, clean, adv, method="saliency"),
        minimum_height=100,
    )


def test_figure_rejects_bad_arguments() -> None:
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(ParameterError, match="'method' parameter of explanation_figure"):
        explanation_figure("t", "image", x, x, x, x, method="lime")
    with pytest.raises(ParameterError, match="'modality' parameter of explanation_figure"):
        explanation_figure("t", "video", x, x, x, x, method="saliency")
    with pytest.raises(ParameterError, match="'max_examples' parameter"):
        explanation_figure("t", "image", x, x, x, x, method="saliency", max_examples=0)
    with pytest.raises(ParameterError, match="'labels' parameter"):
        explanation_figure("t", "image", x, x, x, x, method="saliency", labels=["one"])
    with pytest.raises(InputError, match="attributions of the shape of x"):
        explanation_figure("t", "image", x, x, x[:, :, :4], x, method="saliency")
    with pytest.raises(InputError, match="x_adv of the shape of x"):
        explanation_figure("t", "image", x, None, x, x, method="saliency")
    with pytest.raises(InputError, match="NaN or Inf"):
        explanation_figure("t", "image", x, x, x * math.nan, x, method="saliency")
    features = torch.rand(2, 5)
    with pytest.raises(ParameterError, match="'feature_names' parameter"):
        explanation_figure(
            "t",
            "tabular",
            features,
            features,
            features,
            features,
            method="saliency",
            feature_names=["a"],
        )
