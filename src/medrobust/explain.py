"""Explanations under attack: attributions with Captum and the stability of explanations.

An attack that flips a diagnosis may also move the evidence a clinician is shown for it; a
defense that buys back accuracy may explain its answers differently. This module computes
attributions of a model's score for a class with Captum (Kokhlikyan et al. 2020) and measures
how much two attributions of the same inputs agree, as Ghorbani et al. (2019, "Interpretation of
Neural Networks is Fragile") did for saliency maps under attack.

Methods (:data:`EXPLAINERS`):

- ``"saliency"``: the absolute gradient of the class score with respect to the input
  (Simonyan, Vedaldi & Zisserman 2014, "Deep inside convolutional networks"), Captum's
  ``Saliency``;
- ``"integrated_gradients"``: the path integral of the gradient from a baseline to the input,
  times the difference (Sundararajan, Taly & Yan 2017, "Axiomatic attribution for deep
  networks"), Captum's ``IntegratedGradients`` with Gauss-Legendre quadrature. Its attributions
  sum to the score's change from the baseline (completeness);
- ``"grad_cam"``: the gradient-weighted activation map of the last convolutional layer, with
  the ReLU of the paper, upsampled to the input (Selvaraju et al. 2017, "Grad-CAM"), Captum's
  ``LayerGradCam`` and ``LayerAttribution.interpolate``. Only for models with an ``nn.Conv2d`` or
  ``nn.Conv1d`` layer (images, the 1D-CNN on ECG), not for text.

Choices:

- **Score explained.** The logit of ``target``. A one-logit (binary) model's logit ``z`` is the
  log-odds of class 1; class 0's score is ``-z``, its log-odds. Clean and adversarial inputs are
  explained for the same ``target`` (the true label in :func:`explanation_stability`), so a
  change in the explanation comes from the input, not from a change of the explained class.
- **Baselines** (Integrated Gradients). For continuous inputs, zero clipped into the task's
  domain: a black image for images in [0, 1] and the mean (zero) for standardised ECG and
  tabular features, i.e. "no signal". For text, the zero embedding at every non-padding position
  (padding positions and the padding mask unchanged) (the embedding of ``[PAD]`` for
  :class:`~medrobust.models.text.TransformerClassifier`, whose padding row is zero).
- **Text.** Token ids cannot be differentiated, so text models are explained in embedding space
  through their :class:`~medrobust.models.text.TextModel` interface (``embed`` and
  ``forward_embeddings``, the path the embedding attacks use): the attribution of each embedding
  coordinate is summed over the embedding dimension, one score per token, shape (N, L), and
  padding positions get 0. An embedding-space attack's output (N, L, dim) is explained at those
  embeddings (``embeddings=``), a token attack's output (HotFlip) as ids.
- **Grad-CAM** maps are one per position; the map is repeated over the input's channels so the
  attribution has the input's shape. Grad-CAM's ReLU can leave a map all zero, whose rank
  correlation is then undefined (NaN).
- **Randomized models** (randomized activations, the soft smoothed classifier): a forward pass
  draws noise, so an attribution is a random variable. Attributions are computed with torch's
  generator seeded by ``seed`` inside :func:`torch.random.fork_rng` (repeatable, and the caller's
  generator is left alone) and averaged over ``samples`` draws (1 by default: one draw of the
  randomized model, as it would explain itself to a user). The model is explained as given; for
  the expectation of a randomized model pass ``defense.adaptive(wrapped)`` (EOT), and for the
  base model's gradients behind input quantisation its BPDA module. The plain quantised model's
  gradient is zero almost everywhere, so its saliency and Integrated Gradients are zero: that is
  the gradient masking, shown as it is.
- **Stability metrics** (:func:`spearman`, :func:`top_k_overlap`) compare absolute attributions,
  as Ghorbani et al. (2019) do: which features matter, whatever the direction.

The model is put in eval mode and restored to its mode; inputs are never modified; cuDNN is off
around the gradient computations (RNNs on cuDNN cannot backpropagate in eval mode).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Saliency
from scipy.stats import rankdata
from torch import nn

from medrobust.attacks.base import (
    check_finite_inputs,
    check_labels,
    check_model_dtype,
    check_module,
    check_tensor,
    model_placement,
    run_model,
    text_model,
)
from medrobust.errors import InputError, ParameterError
from medrobust.models.text import TextModel
from medrobust.types import UNBOUNDED, Domain, Modality
from medrobust.validation import check_number, check_seed

EXPLAINERS = ("saliency", "integrated_gradients", "grad_cam")
"""The attribution methods :func:`attribute` computes."""

STABILITY_METRICS = ("spearman", "top_k_overlap")
"""The per-example metrics of :func:`compare_attributions` (keys of its result)."""


# --- validation -------------------------------------------------------------------------------


def _check_method(owner: str, method: Any) -> str:
    if not isinstance(method, str) or method not in EXPLAINERS:
        raise ParameterError(
            f"The 'method' parameter of {owner} must be one of {EXPLAINERS}. "
            f"Got {method!r} instead."
        )
    return method


def _check_modality(owner: str, modality: Any) -> Modality:
    try:
        return Modality(modality)
    except ValueError:
        allowed = tuple(m.value for m in Modality)
        raise ParameterError(
            f"The 'modality' parameter of {owner} must be one of {allowed}. "
            f"Got {modality!r} instead."
        ) from None


def _check_domain(owner: str, domain: Any) -> Domain:
    if not isinstance(domain, Domain):
        raise ParameterError(
            f"The 'domain' parameter of {owner} must be a medrobust.types.Domain. "
            f"Got {type(domain).__name__} instead."
        )
    return domain


def _check_ids(owner: str, name: str, ids: torch.Tensor, text: TextModel) -> None:
    if ids.dtype != torch.int64 or ids.dim() != 2 or len(ids) == 0 or ids.shape[1] == 0:
        raise InputError(
            f"{owner} needs {name} as a non-empty int64 tensor of token ids of shape (N, L). "
            f"Got dtype {ids.dtype} and shape {tuple(ids.shape)} instead."
        )
    vocab = text.vocab_size
    if bool((ids < 0).any()) or bool((ids >= vocab).any()):
        raise InputError(
            f"{owner} got token ids in {name} outside [0, {vocab - 1}] (min {int(ids.min())}, "
            f"max {int(ids.max())})."
        )


def _check_continuous(
    owner: str, name: str, x: torch.Tensor, dtype: torch.dtype | None, domain: Domain
) -> None:
    if not x.is_floating_point() or x.dim() < 2 or len(x) == 0:
        raise InputError(
            f"{owner} needs {name} as a non-empty floating-point batch of shape (N, ...). "
            f"Got dtype {x.dtype} and shape {tuple(x.shape)} instead."
        )
    check_model_dtype(owner, x, dtype)
    check_finite_inputs(owner, x, domain)


def _check_float_like(
    owner: str, name: str, given: Any, shape: tuple[int, ...], dtype: torch.dtype | None
) -> torch.Tensor:
    """``value`` if it is a finite floating-point tensor that broadcasts to ``shape``."""
    value = check_tensor(owner, name, given)
    if not value.is_floating_point():
        raise InputError(
            f"{owner} needs {name} as a floating-point tensor. Got dtype {value.dtype} instead."
        )
    check_model_dtype(owner, value, dtype)
    try:
        value.expand(shape)
    except RuntimeError:
        raise InputError(
            f"{owner} needs {name} of a shape that broadcasts to {shape}. "
            f"Got {tuple(value.shape)} instead."
        ) from None
    if value.numel() and not bool(torch.isfinite(value.detach()).all()):
        raise InputError(f"{owner} got {name} with NaN or Inf values.")
    return value


# --- the explained score ----------------------------------------------------------------------


def _class_scores(logits: Any, owner: str) -> torch.Tensor:
    """Logits (N, K); a one-logit model's logit z becomes the two log-odds (-z, z)."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise InputError(
            f"{owner} needs a model that returns logits of shape (N, K). "
            f"Got {tuple(getattr(logits, 'shape', ()))}."
        )
    scores: torch.Tensor = torch.cat([-logits, logits], dim=1) if logits.shape[1] == 1 else logits
    return scores


def last_conv_layer(model: nn.Module) -> nn.Module:
    """The last ``nn.Conv2d`` or ``nn.Conv1d`` of ``model`` in registration order, the layer
    Grad-CAM explains by default.

    Raises:
        ParameterError: ``model`` is not an ``nn.Module`` or has no such layer (Grad-CAM needs
            one; use saliency or integrated gradients instead).
    """
    check_module("last_conv_layer", model)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Conv1d)]
    if not convs:
        raise ParameterError(
            f"Grad-CAM needs a model with an nn.Conv2d or nn.Conv1d layer. "
            f"{type(model).__name__} has none; use 'saliency' or 'integrated_gradients'."
        )
    return convs[-1]


def _check_layer_runs_once(
    owner: str, model: nn.Module, layer: nn.Module, x: torch.Tensor, spatial_dims: int
) -> None:
    """Grad-CAM reads the layer's output of one forward pass: the layer must run once per pass,
    on the batch as given, with ``spatial_dims`` positions axes (after batch and channels)."""
    seen: list[tuple[int, ...]] = []

    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        del module, inputs
        seen.append(tuple(output.shape) if isinstance(output, torch.Tensor) else ())

    handle = layer.register_forward_hook(hook)
    try:
        with torch.no_grad():
            run_model(owner, model, x[:1])
    finally:
        handle.remove()
    if len(seen) != 1 or len(seen[0]) != 2 + spatial_dims or seen[0][0] != 1:
        raise ParameterError(
            f"Grad-CAM needs a model that runs its layer once per forward pass on the batch as "
            f"given, with {spatial_dims} spatial axes. {type(model).__name__} ran it "
            f"{len(seen)} time(s) with output shape(s) {seen} for one input. Wrappers that "
            "repeat the batch or the pass (SoftSmoothing, EOT) do: explain them with 'saliency' "
            "or 'integrated_gradients', or explain the model they wrap with samples=."
        )


# --- attributions -----------------------------------------------------------------------------


@contextlib.contextmanager
def _evaluating(model: nn.Module, device: torch.device | None, seed: int) -> Iterator[None]:
    """Eval mode (restored afterwards), cuDNN off, torch's generator seeded in a fork."""
    was_training = model.training
    devices = [device] if device is not None and device.type == "cuda" else []
    model.eval()
    try:
        with torch.random.fork_rng(devices=devices), torch.backends.cudnn.flags(enabled=False):
            torch.manual_seed(seed)
            yield
    finally:
        model.train(was_training)


def _attribute_batch(
    method: str,
    forward: Callable[..., torch.Tensor],
    inputs: torch.Tensor,
    target: torch.Tensor,
    baseline: torch.Tensor,
    extra: tuple[torch.Tensor, ...] | None,
    steps: int,
    internal_batch_size: int,
    layer: nn.Module | None,
) -> torch.Tensor:
    """One batch of Captum attributions with the shape of ``inputs`` (Grad-CAM: the layer's)."""
    # Captum sets requires_grad on inputs that lack it (with a warning): give it a fresh leaf.
    leaf = inputs.detach().clone().requires_grad_(True)
    result: torch.Tensor
    if method == "saliency":
        result = Saliency(forward).attribute(
            leaf, target=target, abs=True, additional_forward_args=extra
        )
    elif method == "integrated_gradients":
        result = IntegratedGradients(forward).attribute(
            leaf,
            baselines=baseline,
            target=target,
            additional_forward_args=extra,
            n_steps=steps,
            method="gausslegendre",
            internal_batch_size=internal_batch_size,
        )
    else:
        result = LayerGradCam(forward, layer).attribute(
            leaf, target=target, additional_forward_args=extra, relu_attributions=True
        )
    return result.detach()


def attribute(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    method: str,
    modality: Modality | str,
    domain: Domain = UNBOUNDED,
    baseline: torch.Tensor | None = None,
    embeddings: torch.Tensor | None = None,
    layer: nn.Module | None = None,
    steps: int = 32,
    samples: int = 1,
    seed: int = 0,
    batch_size: int = 32,
) -> torch.Tensor:
    """Attributions of ``model``'s score for class ``target`` to the features of ``x``.

    Saliency (Simonyan et al. 2014), Integrated Gradients (Sundararajan et al. 2017) or Grad-CAM
    (Selvaraju et al. 2017), computed by Captum; see the module docstring for the baselines, the
    one-logit score, text, Grad-CAM's shape and randomized models.

    Args:
        model: the classifier (logits (N, K), or one logit for a binary task); for text a
            :class:`~medrobust.models.text.TextModel`.
        x: the inputs: floats inside ``domain`` in the model's dtype, or for text int64 token
            ids (N, L) within the model's vocabulary.
        target: the class explained per example, int64 or int32 of shape (N,), in
            [0, max(K, 2)).
        method: one of :data:`EXPLAINERS`.
        modality: the task's modality (``task.modality``).
        domain: the task's input domain (``task.domain``); the default baseline is zero
            clipped into it.
        baseline: Integrated Gradients' baseline (ignored by the other methods), a float tensor
            that broadcasts to ``x`` (text: to the (N, L, dim) embeddings); ``None`` for the
            default.
        embeddings: text only: (N, L, dim) embeddings to explain instead of ``model.embed(x)``,
            e.g. the output of an embedding-space attack on ``x``; ``x`` still gives the
            padding mask.
        layer: Grad-CAM's layer, a module of ``model``; ``None`` for :func:`last_conv_layer`.
        steps: Integrated Gradients' quadrature points (>= 1).
        samples: attributions averaged per input (>= 1); more than one only matters for a
            randomized model.
        seed: seed of torch's generator while attributing (randomized models).
        batch_size: inputs per Captum call (Integrated Gradients: interpolated inputs per
            forward pass); bounds the memory.

    Returns:
        Float attributions on ``x``'s device: the shape of ``x`` for continuous inputs, (N, L)
        for text (one score per token, 0 at padding).

    Shape:
        x (N, ...) float -> (N, ...); text x (N, L) int64 -> (N, L)

    Raises:
        ParameterError: a parameter is of the wrong kind or out of range, Grad-CAM is asked for
            text or a model without a convolutional layer, or ``layer`` is not in ``model``.
        InputError: ``x``, ``target``, ``baseline`` or ``embeddings`` cannot be what the task
            feeds the model, or the model cannot run on them.
    """
    owner = "attribute"
    check_module(owner, model)
    method = _check_method(owner, method)
    modality = _check_modality(owner, modality)
    domain = _check_domain(owner, domain)
    steps = int(check_number(owner, "steps", steps, minimum=1, integer=True))
    samples = int(check_number(owner, "samples", samples, minimum=1, integer=True))
    seed = check_seed(owner, seed)
    batch_size = int(check_number(owner, "batch_size", batch_size, minimum=1, integer=True))
    check_tensor(owner, "x", x)
    device, dtype = model_placement(owner, model)
    device = device or x.device
    text: TextModel | None = None
    if modality is Modality.TEXT:
        if method == "grad_cam":
            raise ParameterError(
                "Grad-CAM needs a convolutional layer over the input's positions; text models "
                "are explained in embedding space: use 'saliency' or 'integrated_gradients'."
            )
        text = text_model(model, owner)
        _check_ids(owner, "x", x, text)
    else:
        if embeddings is not None:
            raise ParameterError(
                f"The 'embeddings' parameter of {owner} is for text models only. "
                f"Got embeddings for a {modality.value} task."
            )
        _check_continuous(owner, "x", x, dtype, domain)
    check_labels(owner, "target", target, len(x))
    if method == "grad_cam":
        if layer is None:
            layer = last_conv_layer(model)
        elif not isinstance(layer, nn.Module) or not any(m is layer for m in model.modules()):
            raise ParameterError(
                f"The 'layer' parameter of {owner} must be a module of the model. "
                f"Got {type(layer).__name__} instead."
            )
        if not isinstance(layer, nn.Conv1d | nn.Conv2d):
            raise ParameterError(
                f"The 'layer' parameter of {owner} must be an nn.Conv1d or nn.Conv2d layer. "
                f"Got {type(layer).__name__} instead."
            )
        spatial = 2 if isinstance(layer, nn.Conv2d) else 1
        if x.dim() != 2 + spatial:
            raise InputError(
                f"{owner} needs inputs (N, C, {'H, W' if spatial == 2 else 'T'}) for Grad-CAM on "
                f"an {type(layer).__name__} layer. Got shape {tuple(x.shape)} instead."
            )
    elif layer is not None:
        raise ParameterError(
            f"The 'layer' parameter of {owner} is for Grad-CAM only. Got one for {method!r}."
        )

    with _evaluating(model, device, seed):
        ids = x.to(device)
        if text is not None:
            with torch.no_grad():
                clean = text.embed(ids)
            points = clean
            if embeddings is not None:
                if tuple(check_tensor(owner, "embeddings", embeddings).shape) != clean.shape:
                    raise InputError(
                        f"{owner} needs embeddings of shape {tuple(clean.shape)} (the model's "
                        f"embeddings of x). Got {tuple(embeddings.shape)} instead."
                    )
                _check_float_like(owner, "embeddings", embeddings, tuple(clean.shape), dtype)
                points = embeddings.to(device)
        else:
            points = ids
        if baseline is None:
            reference = torch.zeros_like(points)
            if text is None:
                low = domain.low if math.isfinite(domain.low) else None
                high = domain.high if math.isfinite(domain.high) else None
                if low is not None or high is not None:
                    reference = reference.clamp(min=low, max=high)
            else:
                # Padding stays as it is: only the tokens travel from the baseline.
                reference = torch.where((ids == text.pad_id).unsqueeze(-1), points, reference)
        else:
            _check_float_like(owner, "baseline", baseline, tuple(points.shape), dtype)
            reference = baseline.to(device).expand(points.shape)
        y = target.to(device=device, dtype=torch.int64)
        scores = _scores(owner, model, text)
        with torch.no_grad():
            one = scores(points[:1], ids[:1]) if text is not None else scores(points[:1])
        classes = int(one.shape[1])
        if bool(((y < 0) | (y >= classes)).any()):
            raise InputError(
                f"{owner} got target classes outside [0, {classes - 1}] for a model with "
                f"{classes} class scores (min {int(y.min())}, max {int(y.max())})."
            )
        if method == "grad_cam" and layer is not None:
            _check_layer_runs_once(owner, model, layer, points, spatial)
        draws = []
        for _ in range(samples):
            parts = []
            for start in range(0, len(points), batch_size):
                chunk = slice(start, start + batch_size)
                extra = (ids[chunk],) if text is not None else None
                parts.append(
                    _attribute_batch(
                        method,
                        scores,
                        points[chunk],
                        y[chunk],
                        reference[chunk],
                        extra,
                        steps,
                        batch_size,
                        layer,
                    )
                )
            draws.append(torch.cat(parts))
        result = torch.stack(draws).mean(dim=0)

    if method == "grad_cam":
        mode = "bilinear" if x.dim() == 4 else "linear"
        result = LayerAttribution.interpolate(result, tuple(x.shape[2:]), interpolate_mode=mode)
        result = result.expand(x.shape).clone()
    elif text is not None:
        result = result.sum(dim=-1).masked_fill(ids == text.pad_id, 0.0)
    return result.to(x.device)


def _scores(owner: str, model: nn.Module, text: TextModel | None) -> Callable[..., torch.Tensor]:
    """The function Captum differentiates: inputs (and for text the ids) -> class scores."""
    if text is None:

        def forward(inputs: torch.Tensor) -> torch.Tensor:
            return _class_scores(run_model(owner, model, inputs), owner)

        return forward

    def forward_text(embedded: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        try:
            logits = text.forward_embeddings(embedded, ids)
        except (RuntimeError, ValueError, IndexError, TypeError) as exc:
            raise InputError(
                f"{owner} could not run the model on embeddings of shape "
                f"{tuple(embedded.shape)}: {exc}"
            ) from exc
        return _class_scores(logits, owner)

    return forward_text


# --- stability metrics ------------------------------------------------------------------------


def _as_rows(
    owner: str, a: Any, b: Any, mask: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``|a|``, ``|b|`` and ``mask`` as float64 / bool arrays (N, features)."""

    def array(name: str, value: Any) -> np.ndarray:
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        if not isinstance(value, np.ndarray):
            raise InputError(
                f"{owner} needs {name} as a torch tensor or NumPy array. "
                f"Got {type(value).__name__} instead."
            )
        return value

    first, second = array("a", a), array("b", b)
    if first.shape != second.shape or first.ndim < 2 or first.shape[0] == 0:
        raise InputError(
            f"{owner} needs attributions a and b of the same shape (N, ...) with N >= 1. "
            f"Got {first.shape} and {second.shape} instead."
        )
    for name, value in (("a", first), ("b", second)):
        if not np.issubdtype(value.dtype, np.number) or np.issubdtype(value.dtype, np.bool_):
            raise InputError(f"{owner} needs numeric {name}. Got dtype {value.dtype} instead.")
        if not np.isfinite(value).all():
            raise InputError(f"{owner} got {name} with NaN or Inf values.")
    n = first.shape[0]
    rows_a = np.abs(first.reshape(n, -1).astype(np.float64))
    rows_b = np.abs(second.reshape(n, -1).astype(np.float64))
    if mask is None:
        return rows_a, rows_b, None
    keep = array("mask", mask)
    if keep.shape != first.shape or keep.dtype != np.bool_:
        raise InputError(
            f"{owner} needs a boolean mask of the attributions' shape {first.shape}. "
            f"Got dtype {keep.dtype} and shape {keep.shape} instead."
        )
    return rows_a, rows_b, keep.reshape(n, -1)


def _constant(values: np.ndarray) -> bool:
    return values.size < 2 or bool(values.max() == values.min())


def spearman(a: Any, b: Any, *, mask: Any = None) -> np.ndarray:
    """Spearman's rank correlation between the absolute attributions of each example, the
    stability measure of Ghorbani et al. (2019).

    Args:
        a, b: attributions of the same inputs (e.g. clean and adversarial), shape (N, ...).
        mask: optional boolean (N, ...): the features compared (e.g. non-padding tokens).

    Returns:
        (N,) float64 in [-1, 1]: 1 for the same ranking; NaN where either example's compared
        absolute attributions are constant (or fewer than two), where ranks are undefined.

    Raises:
        InputError: ``a`` and ``b`` differ in shape, are not numeric, hold NaN/Inf, or
            ``mask`` is not a boolean array of their shape.
    """
    rows_a, rows_b, keep = _as_rows("spearman", a, b, mask)
    result = np.full(len(rows_a), math.nan)
    for i in range(len(rows_a)):
        first = rows_a[i] if keep is None else rows_a[i][keep[i]]
        second = rows_b[i] if keep is None else rows_b[i][keep[i]]
        if _constant(first) or _constant(second):
            continue
        # Pearson correlation of the average ranks is scipy.stats.spearmanr's statistic.
        ranks_a, ranks_b = rankdata(first), rankdata(second)
        ranks_a -= ranks_a.mean()
        ranks_b -= ranks_b.mean()
        denominator = math.sqrt(float(ranks_a @ ranks_a) * float(ranks_b @ ranks_b))
        result[i] = float(np.clip(float(ranks_a @ ranks_b) / denominator, -1.0, 1.0))
    return result


def _top_k_count(owner: str, k: Any, features: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int | float | np.integer | np.floating):
        raise ParameterError(
            f"The 'k' parameter of {owner} must be a count (an integer >= 1) or a fraction "
            f"(a float in (0, 1]). Got {k!r} instead."
        )
    if isinstance(k, int | np.integer):
        if k < 1:
            raise ParameterError(
                f"The 'k' parameter of {owner} must be an integer >= 1 or a fraction in (0, 1]. "
                f"Got {k!r} instead."
            )
        return min(int(k), features)
    if not 0 < k <= 1:
        raise ParameterError(
            f"The 'k' parameter of {owner} as a fraction must be in (0, 1]. Got {k!r} instead."
        )
    return max(1, min(features, math.ceil(float(k) * features - 1e-9)))


def top_k_overlap(a: Any, b: Any, k: int | float = 0.1, *, mask: Any = None) -> np.ndarray:
    """The share of each example's ``k`` features of largest absolute attribution in ``a`` that
    are also among the ``k`` largest in ``b`` (top-k intersection, Ghorbani et al. 2019).

    Args:
        a, b: attributions of the same inputs, shape (N, ...).
        k: a count of features (int >= 1, capped at the number compared) or a fraction of
            them (float in (0, 1], rounded up, at least one).
        mask: optional boolean (N, ...): the features compared (e.g. non-padding tokens).

    Returns:
        (N,) float64 in [0, 1]: 1 when the top-k sets are equal; NaN where either example's
        compared absolute attributions are constant (no top k) or none are compared. Ties at
        the k-th value are broken by feature order.

    Raises:
        ParameterError: ``k`` is not a count >= 1 or a fraction in (0, 1].
        InputError: as :func:`spearman`.
    """
    owner = "top_k_overlap"
    rows_a, rows_b, keep = _as_rows(owner, a, b, mask)
    _top_k_count(owner, k, max(rows_a.shape[1], 1))  # validate k before any work
    result = np.full(len(rows_a), math.nan)
    for i in range(len(rows_a)):
        first = rows_a[i] if keep is None else rows_a[i][keep[i]]
        second = rows_b[i] if keep is None else rows_b[i][keep[i]]
        if first.size == 0 or _constant(first) or _constant(second):
            continue
        count = _top_k_count(owner, k, first.size)
        top_a = np.argsort(-first, kind="stable")[:count]
        top_b = np.argsort(-second, kind="stable")[:count]
        result[i] = len(np.intersect1d(top_a, top_b)) / count
    return result


def compare_attributions(
    a: Any, b: Any, *, k: int | float = 0.1, mask: Any = None
) -> dict[str, np.ndarray]:
    """:func:`spearman` and :func:`top_k_overlap` of two attributions of the same inputs.

    Returns:
        ``{"spearman": (N,), "top_k_overlap": (N,)}``, per example, NaN where undefined
        (summarize with :func:`medrobust.stats.summarize`, which drops NaN).
    """
    return {
        "spearman": spearman(a, b, mask=mask),
        "top_k_overlap": top_k_overlap(a, b, k, mask=mask),
    }


def _token_mask(model: nn.Module, *ids: torch.Tensor) -> torch.Tensor:
    pad = text_model(model, "explanation_stability").pad_id
    keep = torch.zeros_like(ids[0], dtype=torch.bool)
    for row in ids:
        keep |= row != pad
    return keep


def explanation_stability(
    model: nn.Module,
    x: torch.Tensor,
    x_adv: torch.Tensor,
    y: torch.Tensor,
    *,
    method: str,
    modality: Modality | str,
    domain: Domain = UNBOUNDED,
    k: int | float = 0.1,
    **kwargs: Any,
) -> dict[str, np.ndarray]:
    """How much an attack moves ``model``'s explanation: :func:`compare_attributions` of the
    attributions of the clean inputs and of their adversarial twins, both for the true class
    ``y`` (Ghorbani et al. 2019).

    Args:
        model: the (undefended or defended) model that was attacked.
        x: clean inputs (text: token ids).
        x_adv: the attack's output on ``x``: inputs like ``x`` (continuous attacks, HotFlip's
            token ids) or, for an embedding-space text attack, (N, L, dim) embeddings.
        y: true labels (N,), the class explained for both.
        method, modality, domain: as :func:`attribute`.
        k: as :func:`top_k_overlap`.
        **kwargs: the other keywords of :func:`attribute` (steps, samples, seed, batch_size,
            layer, baseline).

    Returns:
        ``{"spearman": (N,), "top_k_overlap": (N,)}``; text compares the tokens that are not
        padding in either input.

    Raises:
        ParameterError, InputError: as :func:`attribute`; ``x_adv`` of another shape than ``x``
            (or than its embeddings).
    """
    clean, adversarial, mask = attack_attributions(
        model, x, x_adv, y, method=method, modality=modality, domain=domain, **kwargs
    )
    return compare_attributions(clean, adversarial, k=k, mask=mask)


def attack_attributions(
    model: nn.Module,
    x: torch.Tensor,
    x_adv: torch.Tensor,
    y: torch.Tensor,
    *,
    method: str,
    modality: Modality | str,
    domain: Domain = UNBOUNDED,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The attributions that :func:`explanation_stability` compares: of the clean inputs, of
    their adversarial twins (both for the true class ``y``), and the mask of the features
    compared (text: tokens that are not padding in either input; ``None`` otherwise).

    Args and Raises: as :func:`explanation_stability` (without ``k``).
    """
    owner = "explanation_stability"
    modality = _check_modality(owner, modality)
    check_tensor(owner, "x_adv", x_adv)
    clean = attribute(model, x, y, method=method, modality=modality, domain=domain, **kwargs)
    mask: torch.Tensor | None = None
    if modality is Modality.TEXT and x_adv.is_floating_point():
        adversarial = attribute(
            model, x, y, method=method, modality=modality, embeddings=x_adv, **kwargs
        )
        mask = _token_mask(model, x)
    else:
        if x_adv.shape != x.shape:
            raise InputError(
                f"{owner} needs x_adv of the shape of x {tuple(x.shape)}. "
                f"Got {tuple(x_adv.shape)} instead."
            )
        adversarial = attribute(
            model, x_adv, y, method=method, modality=modality, domain=domain, **kwargs
        )
        if modality is Modality.TEXT:
            mask = _token_mask(model, x, x_adv)
    return clean, adversarial, mask


def model_agreement(
    model_a: nn.Module,
    model_b: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    method: str,
    modality: Modality | str,
    domain: Domain = UNBOUNDED,
    k: int | float = 0.1,
    **kwargs: Any,
) -> dict[str, np.ndarray]:
    """How much two models explain the same clean inputs alike (e.g. undefended against
    defended): :func:`compare_attributions` of their attributions for the true class ``y``.

    Args:
        model_a, model_b: the two models (same task; Grad-CAM finds each one's last
            convolutional layer, so ``layer`` cannot be given).
        x, y: clean inputs and true labels.
        method, modality, domain, k, **kwargs: as :func:`explanation_stability`.

    Returns:
        ``{"spearman": (N,), "top_k_overlap": (N,)}``; text compares the non-padding tokens.

    Raises:
        ParameterError, InputError: as :func:`attribute`.
    """
    owner = "model_agreement"
    modality = _check_modality(owner, modality)
    if "layer" in kwargs:
        raise ParameterError(
            f"{owner} finds each model's Grad-CAM layer; the 'layer' parameter is not accepted."
        )
    first = attribute(model_a, x, y, method=method, modality=modality, domain=domain, **kwargs)
    second = attribute(model_b, x, y, method=method, modality=modality, domain=domain, **kwargs)
    mask = _token_mask(model_a, x) if modality is Modality.TEXT else None
    return compare_attributions(first, second, k=k, mask=mask)
