"""Pictures of explanations under attack: a few examples of a task side by side.

One panel per task and attribution method (:func:`explanation_figure`): each row is an example,
with its input, its adversarial twin, the perturbation amplified to be visible, and the
attributions (:func:`medrobust.explain.attribute`) of the clean and the adversarial input, in
the form that suits the modality:

- images: the input in grey (or colour), the perturbation on a diverging scale stretched to its
  largest change, and the absolute attributions (summed over channels) as a heat map over a faint
  copy of the input;
- ECG: each trace on a background shaded by the absolute attribution of its samples, and the
  perturbation as a trace on its own scale;
- tabular: the features of largest attribution, clean against adversarial values, and their
  signed attributions as paired bars;
- text: the tokens as coloured boxes, red for evidence for the explained class and blue against
  (signed attributions), with the tokens an attack replaced framed in black.

The clean and the adversarial attribution of an example share one colour scale, so a map that
fades or flares under attack shows as such. Figures are drawn with the style and helpers of
:mod:`medrobust.study.figures` and returned as :class:`~medrobust.study.figures.FigureImage`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.axes import Axes

from medrobust.errors import InputError, ParameterError
from medrobust.explain import EXPLAINERS
from medrobust.models.text import PAD_ID
from medrobust.study.figures import (
    GREY,
    OKABE_ITO,
    WIDTH,
    FigureImage,
    _new_figure,
    _png,
    _slug,
    _style,
    _wrap,
)
from medrobust.types import Modality
from medrobust.validation import check_number

MAX_EXAMPLES = 4
"""Default number of examples (rows) per panel."""
MAX_FEATURES = 12  # tabular: features of largest attribution shown per example
MAX_TOKENS = 96  # text: tokens shown per example

_METHOD_LABELS = {
    "saliency": "saliency",
    "integrated_gradients": "Integrated Gradients",
    "grad_cam": "Grad-CAM",
}
_CLEAN, _ADVERSARIAL = OKABE_ITO[4], OKABE_ITO[5]  # blue, vermillion
_HEAT = "inferno"
_DIVERGING = "RdBu_r"


def _array(owner: str, name: str, value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if not isinstance(value, np.ndarray):
        raise InputError(
            f"{owner} needs {name} as a torch tensor or NumPy array. "
            f"Got {type(value).__name__} instead."
        )
    if not np.issubdtype(value.dtype, np.number) or np.issubdtype(value.dtype, np.bool_):
        raise InputError(f"{owner} needs numeric {name}. Got dtype {value.dtype} instead.")
    if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
        raise InputError(f"{owner} got {name} with NaN or Inf values.")
    return value


def _scale(*values: np.ndarray) -> float:
    """The largest absolute value of ``values`` (1 where all are zero), a shared colour limit."""
    top = max((float(np.abs(v).max()) if v.size else 0.0) for v in values)
    return top if top > 0 else 1.0


def explanation_figure(
    task: str,
    modality: Modality | str,
    x: Any,
    x_adv: Any,
    clean_attributions: Any,
    adversarial_attributions: Any,
    *,
    method: str,
    model: str = "",
    attack: str = "",
    labels: Sequence[str] | None = None,
    tokenizer: Any = None,
    feature_names: Sequence[str] | None = None,
    max_examples: int = MAX_EXAMPLES,
) -> FigureImage:
    """A panel of a few examples of ``task``: input, adversarial input, amplified perturbation
    and the attributions of both, side by side (Ghorbani et al. 2019 show the same comparison
    for saliency maps).

    Args:
        task: the task's name (title and file name).
        modality: the task's modality.
        x: clean inputs (N, ...); text: token ids (N, L).
        x_adv: their adversarial twins, like ``x``; for text also ``None`` or the (N, L, dim)
            embeddings of an embedding-space attack (the tokens are then shown unchanged).
        clean_attributions, adversarial_attributions: :func:`medrobust.explain.attribute` of
            ``x`` and ``x_adv``: the shape of ``x`` (text: (N, L)).
        method: the attribution method, one of :data:`medrobust.explain.EXPLAINERS`.
        model, attack: labels for the title (e.g. ``"small_cnn, undefended"``,
            ``"pgd linf eps=0.0314"``).
        labels: one line per example shown above its row (e.g. ``"true malignant, adversarial
            prediction benign"``); ``None`` numbers the examples.
        tokenizer: text: the ``tokenizers.Tokenizer`` (or a Hugging Face tokenizer) that made
            the ids, to show tokens; without one, ids are shown.
        feature_names: tabular: the features' names; without them, ``f0, f1, ...``.
        max_examples: the first examples drawn (>= 1).

    Returns:
        The figure, named ``explanations_<task>_<method>[_<model>]``.

    Raises:
        ParameterError: ``method``, ``modality`` or ``max_examples`` is invalid, or ``labels``
            or ``feature_names`` have the wrong length.
        InputError: the arrays are not numeric, hold NaN/Inf or do not match in shape.
    """
    owner = "explanation_figure"
    if method not in EXPLAINERS:
        raise ParameterError(
            f"The 'method' parameter of {owner} must be one of {EXPLAINERS}. Got {method!r}."
        )
    try:
        kind = Modality(modality)
    except ValueError:
        raise ParameterError(
            f"The 'modality' parameter of {owner} must be one of "
            f"{tuple(m.value for m in Modality)}. Got {modality!r} instead."
        ) from None
    count = int(check_number(owner, "max_examples", max_examples, minimum=1, integer=True))
    inputs = _array(owner, "x", x)
    clean = _array(owner, "clean_attributions", clean_attributions).astype(np.float64)
    adversarial = _array(owner, "adversarial_attributions", adversarial_attributions)
    adversarial = adversarial.astype(np.float64)
    if inputs.ndim < 2 or len(inputs) == 0:
        raise InputError(f"{owner} needs x of shape (N, ...) with N >= 1. Got {inputs.shape}.")
    if clean.shape != inputs.shape or adversarial.shape != inputs.shape:
        raise InputError(
            f"{owner} needs attributions of the shape of x {inputs.shape}. Got "
            f"{clean.shape} and {adversarial.shape} instead."
        )
    twins = None if x_adv is None else _array(owner, "x_adv", x_adv)
    if kind is Modality.TEXT and twins is not None and twins.ndim == 3:
        twins = None  # embeddings of an embedding-space attack: the tokens did not change
    if (twins is None and kind is not Modality.TEXT) or (
        twins is not None and twins.shape != inputs.shape
    ):
        raise InputError(
            f"{owner} needs x_adv of the shape of x {inputs.shape}. "
            f"Got {None if twins is None else twins.shape} instead."
        )
    n = min(count, len(inputs))
    if labels is not None and (isinstance(labels, str) or len(labels) != len(inputs)):
        raise ParameterError(
            f"The 'labels' parameter of {owner} must hold one line per example "
            f"({len(inputs)}). Got {labels!r} instead."
        )
    rows = [f"example {i + 1}" if labels is None else str(labels[i]) for i in range(n)]
    label = _METHOD_LABELS[method]
    what = ", ".join(part for part in (model, attack) if part)
    title = f"Explanations under attack, {task} ({label}{', ' + what if what else ''})"
    with _style():
        if kind is Modality.TEXT:
            png, caption = _text_panel(inputs, twins, clean, adversarial, rows, n, tokenizer)
        elif twins is None:  # refused above; narrows the type
            raise InputError(f"{owner} needs x_adv for a {kind.value} task.")
        elif kind is Modality.IMAGE:
            png, caption = _image_panel(inputs, twins, clean, adversarial, rows, n)
        elif kind is Modality.ECG:
            png, caption = _ecg_panel(inputs, twins, clean, adversarial, rows, n)
        else:
            png, caption = _tabular_panel(
                owner, inputs, twins, clean, adversarial, rows, n, feature_names
            )
    caption = (
        f"{label} attributions of the true class on {task} for {n} example(s), clean and "
        f"under attack{' (' + what + ')' if what else ''}. {caption}"
    )
    return FigureImage(_slug("explanations", task, method, model), title, caption, png)


# --- images -----------------------------------------------------------------------------------


def _picture(values: np.ndarray) -> tuple[np.ndarray, str | None]:
    """An image (C, H, W) for ``imshow``: grey for one channel (or the mean of an unusual
    number), RGB for three; with its colour map."""
    if values.ndim == 2:
        return values, "gray"
    if values.shape[0] == 3:
        return np.clip(np.moveaxis(values, 0, -1), 0.0, 1.0), None
    return values.mean(axis=0), "gray"


def _grey(values: np.ndarray, *, total: bool = False) -> np.ndarray:
    """One channel (H, W) of an image (C, H, W) or (H, W): the mean over channels, or their
    sum when ``total``."""
    if values.ndim == 2:
        return values
    summed: np.ndarray = values.sum(axis=0)
    return summed if total else summed / len(values)


def _image_panel(
    x: np.ndarray,
    x_adv: np.ndarray,
    clean: np.ndarray,
    adversarial: np.ndarray,
    rows: list[str],
    n: int,
) -> tuple[bytes, str]:
    columns = ("input", "adversarial", "perturbation", "attribution, clean", "attribution, adv.")
    figure = _new_figure(WIDTH, 2.0 * n + 0.6)
    axes = figure.subplots(n, len(columns), squeeze=False)
    for i in range(n):
        image, twin = x[i], x_adv[i]
        low, high = float(min(image.min(), twin.min())), float(max(image.max(), twin.max()))
        shown, cmap = _picture(image)
        delta = _grey(twin - image)
        largest = float(np.abs(twin - image).max())
        heat_clean, heat_adv = (
            _grey(np.abs(clean[i]), total=True),
            _grey(np.abs(adversarial[i]), total=True),
        )
        top = _scale(heat_clean, heat_adv)
        row = axes[i]
        row[0].imshow(shown, cmap=cmap, vmin=low, vmax=high)
        row[1].imshow(_picture(twin)[0], cmap=cmap, vmin=low, vmax=high)
        limit = largest if largest > 0 else 1.0
        row[2].imshow(delta, cmap=_DIVERGING, vmin=-limit, vmax=limit)
        row[2].set_xlabel(f"max |δ| = {largest:.3g}", fontsize=7)
        for ax, heat, under in ((row[3], heat_clean, image), (row[4], heat_adv, twin)):
            ax.imshow(_grey(under), cmap="gray", vmin=low, vmax=high, alpha=0.35)
            ax.imshow(heat, cmap=_HEAT, vmin=0.0, vmax=top, alpha=0.75)
        row[0].set_ylabel(_wrap(rows[i], 22), fontsize=8)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    for ax, name in zip(axes[0], columns, strict=True):
        ax.set_title(name)
    caption = (
        "The perturbation is stretched to its largest change (diverging scale, red = brighter); "
        "attribution maps show absolute attributions summed over channels, on one scale per "
        "example, over a faint copy of the input."
    )
    return _png(figure), caption


# --- ECG --------------------------------------------------------------------------------------


def _trace(ax: Axes, signal: np.ndarray, heat: np.ndarray | None, top: float, colour: str) -> None:
    """The channels of ``signal`` (C, T), offset, over a background shaded by ``heat`` (T,)."""
    channels = signal if signal.ndim == 2 else signal[None]
    spread = float(np.ptp(channels)) or 1.0
    offsets = -1.2 * spread * np.arange(len(channels))
    shifted = channels + offsets[:, None]
    low, high = float(shifted.min()) - 0.05 * spread, float(shifted.max()) + 0.05 * spread
    t = np.arange(channels.shape[1])
    if heat is not None:
        ax.imshow(
            heat[None, :],
            cmap="Oranges",
            vmin=0.0,
            vmax=top,
            aspect="auto",
            extent=(-0.5, len(t) - 0.5, low, high),
            origin="lower",
            interpolation="nearest",
        )
    for row in shifted:
        ax.plot(t, row, color=colour, lw=0.9)
    ax.set_xlim(-0.5, len(t) - 0.5)
    ax.set_ylim(low, high)


def _ecg_panel(
    x: np.ndarray,
    x_adv: np.ndarray,
    clean: np.ndarray,
    adversarial: np.ndarray,
    rows: list[str],
    n: int,
) -> tuple[bytes, str]:
    columns = ("clean, shaded by attribution", "adversarial, shaded by attribution", "perturbation")
    figure = _new_figure(WIDTH, 1.7 * n + 0.6)
    axes = figure.subplots(n, len(columns), squeeze=False, width_ratios=(1.0, 1.0, 0.7))
    for i in range(n):
        signal, twin = x[i], x_adv[i]
        heat_clean = np.abs(clean[i]).reshape(-1, signal.shape[-1]).sum(axis=0)
        heat_adv = np.abs(adversarial[i]).reshape(-1, signal.shape[-1]).sum(axis=0)
        top = _scale(heat_clean, heat_adv)
        row = axes[i]
        _trace(row[0], signal, heat_clean, top, _CLEAN)
        _trace(row[1], twin, heat_adv, top, _ADVERSARIAL)
        delta = twin - signal
        _trace(row[2], delta, None, 1.0, GREY)
        row[2].set_xlabel(f"max |δ| = {float(np.abs(delta).max()):.3g}", fontsize=7)
        row[0].set_ylabel(_wrap(rows[i], 22), fontsize=8)
        for ax in row:
            ax.tick_params(labelsize=7)
    for ax, name in zip(axes[0], columns, strict=True):
        ax.set_title(name)
    caption = (
        "Background shading is the absolute attribution of each sample (summed over leads), on "
        "one scale per example; the perturbation is drawn on its own (amplified) scale."
    )
    return _png(figure), caption


# --- tabular ----------------------------------------------------------------------------------


def _tabular_panel(
    owner: str,
    x: np.ndarray,
    x_adv: np.ndarray,
    clean: np.ndarray,
    adversarial: np.ndarray,
    rows: list[str],
    n: int,
    feature_names: Sequence[str] | None,
) -> tuple[bytes, str]:
    features = int(np.prod(x.shape[1:]))
    if feature_names is not None and (
        isinstance(feature_names, str) or len(feature_names) != features
    ):
        raise ParameterError(
            f"The 'feature_names' parameter of {owner} must name each of the {features} "
            f"features. Got {feature_names!r} instead."
        )
    names = [str(f) for f in feature_names] if feature_names else [f"f{j}" for j in range(features)]
    shown = min(MAX_FEATURES, features)
    figure = _new_figure(WIDTH, (0.16 * shown + 0.7) * n + 0.6)
    axes = figure.subplots(n, 2, squeeze=False)
    for i in range(n):
        values, twins = x[i].reshape(-1), x_adv[i].reshape(-1)
        a, b = clean[i].reshape(-1), adversarial[i].reshape(-1)
        order = np.argsort(-np.maximum(np.abs(a), np.abs(b)), kind="stable")[:shown][::-1]
        position = np.arange(shown)
        left, right = axes[i]
        left.hlines(position, values[order], twins[order], color=GREY, lw=1.0)
        left.scatter(values[order], position, color=_CLEAN, s=14, label="clean", zorder=3)
        left.scatter(
            twins[order], position, color=_ADVERSARIAL, marker="x", s=18, label="adversarial"
        )
        left.set_yticks(position, [_wrap(names[j], 24) for j in order], fontsize=7)
        left.set_title(_wrap(rows[i], 60), fontsize=8, loc="left")
        height = 0.4
        right.barh(position + height / 2, a[order], height, color=_CLEAN, label="clean")
        right.barh(position - height / 2, b[order], height, color=_ADVERSARIAL, label="adversarial")
        right.axvline(0.0, color="#333333", lw=0.6)
        right.set_yticks(position, [])
        for ax in (left, right):
            ax.tick_params(axis="x", labelsize=7)
            ax.grid(axis="x", alpha=0.3)
    axes[0][0].legend(loc="lower right", fontsize=7, frameon=False)
    axes[0][1].legend(loc="lower right", fontsize=7, frameon=False)
    axes[-1][0].set_xlabel("feature value (clean → adversarial)")
    axes[-1][1].set_xlabel("attribution")
    caption = (
        f"For each example, the {shown} features of largest absolute attribution (clean or "
        "adversarial): left, their clean and adversarial values; right, their signed "
        "attributions."
    )
    return _png(figure), caption


# --- text -------------------------------------------------------------------------------------


def _token_text(tokenizer: Any, token: int) -> str:
    if tokenizer is not None:
        if hasattr(tokenizer, "id_to_token"):
            found = tokenizer.id_to_token(token)
        else:
            found = tokenizer.convert_ids_to_tokens(token)
        if isinstance(found, str):
            return found
    return f"#{token}"


_FONT_SIZE = 8.0
_CHAR_WIDTH = 0.6 * _FONT_SIZE / 72  # inches per character of a monospace font
_LINE_HEIGHT = 0.24  # inches


def _lay_out(tokens: list[str], width: int) -> list[list[tuple[int, int]]]:
    """Lines of (token index, column) that fit ``width`` characters."""
    lines: list[list[tuple[int, int]]] = [[]]
    column = 0
    for j, token in enumerate(tokens):
        size = len(token) + 1
        if column and column + size > width:
            lines.append([])
            column = 0
        lines[-1].append((j, column))
        column += size
    return lines


@dataclass(frozen=True)
class _Tokens:
    """One line of an example's text: its tokens, their attributions and what changed."""

    name: str
    tokens: list[str]
    values: np.ndarray
    changed: np.ndarray
    top: float
    layout: list[list[tuple[int, int]]]


def _text_panel(
    x: np.ndarray,
    x_adv: np.ndarray | None,
    clean: np.ndarray,
    adversarial: np.ndarray,
    rows: list[str],
    n: int,
    tokenizer: Any,
) -> tuple[bytes, str]:
    found = getattr(tokenizer, "pad_token_id", None)
    pad = found if isinstance(found, int) else PAD_ID
    width = int((WIDTH - 0.4) / _CHAR_WIDTH) - 14
    cmap = colormaps[_DIVERGING]
    blocks: list[list[_Tokens]] = []
    cut = False
    for i in range(n):
        twins = x[i] if x_adv is None else x_adv[i]
        keep = np.flatnonzero((x[i] != pad) | (twins != pad))
        cut |= len(keep) > MAX_TOKENS
        keep = keep[:MAX_TOKENS]
        top = _scale(clean[i][keep], adversarial[i][keep])
        changed = x[i][keep] != twins[keep]
        versions = []
        for name, ids, values in (
            ("clean", x[i][keep], clean[i][keep]),
            (
                "adversarial" if x_adv is not None else "adversarial*",
                twins[keep],
                adversarial[i][keep],
            ),
        ):
            tokens = [_token_text(tokenizer, int(t)) for t in ids]
            versions.append(_Tokens(name, tokens, values, changed, top, _lay_out(tokens, width)))
        blocks.append(versions)
    lines = sum(1 + sum(len(v.layout) for v in versions) for versions in blocks)
    figure = _new_figure(WIDTH, _LINE_HEIGHT * lines + 0.5)
    ax = figure.subplots()
    ax.set_xlim(-12, width)
    ax.set_ylim(lines - 0.5, -0.5)
    ax.axis("off")
    y = 0.0
    for label, versions in zip(rows, blocks, strict=True):
        ax.text(-12, y, _wrap(label, 120), fontsize=_FONT_SIZE + 1, weight="bold", va="center")
        y += 1
        for version in versions:
            ax.text(
                -12, y, version.name, fontsize=_FONT_SIZE, style="italic", va="center", color=GREY
            )
            for line in version.layout:
                for j, column in line:
                    frame = bool(version.changed[j])
                    colour = cmap(0.5 + 0.5 * float(version.values[j]) / version.top)
                    dark = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2] < 0.5
                    ax.text(
                        column,
                        y,
                        version.tokens[j],
                        family="monospace",
                        fontsize=_FONT_SIZE,
                        va="center",
                        ha="left",
                        weight="bold" if frame else "normal",
                        color="#FFFFFF" if dark else "#000000",
                        bbox={
                            "boxstyle": "square,pad=0.12",
                            "facecolor": colour,
                            "edgecolor": "#000000" if frame else "none",
                            "linewidth": 1.0,
                        },
                    )
                y += 1
    caption = (
        "Each token is coloured by its signed attribution (red: evidence for the explained "
        "class, blue: against; one scale per example); tokens the attack replaced are framed "
        "and bold."
        + (f" Only the first {MAX_TOKENS} tokens of an example are shown." if cut else "")
        + (
            " *An embedding-space attack: the tokens are unchanged, only their embeddings moved."
            if x_adv is None
            else ""
        )
    )
    return _png(figure), caption
