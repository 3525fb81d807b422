"""The report's figures, drawn from the CSV records of its tables.

Each figure kind has one public function that takes the records of one table (or two) and
returns one :class:`FigureImage` per task; :func:`build_figures` calls them all. The figures are
drawn with Matplotlib's object API (no ``pyplot``, no global state: style settings apply only
inside :func:`matplotlib.rc_context`) and saved as PNG without a software tag, so the same
records give the same bytes.

Records may hold numbers or, read back from CSV, strings; a missing or unparseable number is
NaN. Every summary field ``X`` comes as ``X_mean``, ``X_sd``, ``X_ci_low`` and ``X_ci_high``;
error bars show the 95% CI, the SD where the CI is undefined, and nothing where a configuration
has a single trial.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import textwrap
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

DPI = 110
WIDTH = 10.0  # inches

# Okabe & Ito (2008), "Color universal design": distinguishable with any colour-vision deficiency.
OKABE_ITO = (
    "#E69F00",  # orange
    "#56B4E9",  # sky blue
    "#009E73",  # bluish green
    "#F0E442",  # yellow
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#CC79A7",  # reddish purple
)
BLACK = "#000000"
GREY = "#999999"
HATCHES = ("", "//", "..")  # beyond seven series, colours repeat with a hatch
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")

MAX_BAR_CONFIGS = 12  # attack configurations per task in the grouped bars
MAX_BAR_MODELS = 8  # model groups per task in the grouped bars
MAX_PANELS = 9  # (model, attack, norm) panels per accuracy-vs-eps figure
MAX_LINES = 8  # lines per panel
UNDEFENDED = "undefended"
MAX_OVERHEAD_BARS = 16  # defended (model, defense) bars per overhead figure
MAX_CLASSES = 6  # class panels per FNR/FPR figure
MAX_SHIFT_ROWS = 20  # rows per FNR/FPR figure with one class panel
MAX_SHIFT_ROWS_MULTI = 12  # rows per FNR/FPR figure with several class panels


def _style() -> AbstractContextManager[None]:
    """The figures' style, applied only inside the returned context."""
    return matplotlib.rc_context(
        {
            "font.size": 9.0,
            "axes.titlesize": 10.0,
            "axes.labelsize": 9.0,
            "xtick.labelsize": 8.0,
            "ytick.labelsize": 8.0,
            "legend.fontsize": 8.0,
            "figure.titlesize": 12.0,
            "axes.grid": False,
            "hatch.linewidth": 0.8,
            "errorbar.capsize": 2.0,
        }
    )


_EVALUATION_STYLES = {"plain": "-", "adaptive (EOT)": "--", "adaptive (BPDA)": ":"}


@dataclass(frozen=True)
class FigureImage:
    """One rendered figure of the report.

    Attributes:
        name: File stem, safe for a file name, e.g. ``"accuracy_under_attack_breastmnist"``.
        title: The figure's title.
        caption: What is shown and what the error bars are, in one or two sentences.
        png: The PNG image.
    """

    name: str
    title: str
    caption: str
    png: bytes


# --- reading records ---------------------------------------------------------------------------


def _num(record: Mapping[str, Any], key: str) -> float:
    """The record's number at ``key``; NaN where it is missing, empty or not a number."""
    value = record.get(key)
    if value is None or isinstance(value, bool):
        return math.nan if value is None else float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _text(record: Mapping[str, Any], key: str, default: str = "") -> str:
    value = record.get(key)
    return default if value is None or value == "" else str(value)


def _flag(record: Mapping[str, Any], key: str) -> bool:
    """A boolean field, also as read back from CSV (``"True"``, ``"1"``)."""
    value = record.get(key)
    if isinstance(value, str):
        return value.strip().lower() in {"true", "1", "yes"}
    return bool(value)


def _has(records: Iterable[Mapping[str, Any]], field: str) -> bool:
    """Whether any record has a finite ``field``."""
    return any(math.isfinite(_num(r, field)) for r in records)


@dataclass(frozen=True)
class _Stat:
    """A mean with the error bar below and above it (both >= 0) and which spread it shows."""

    mean: float
    below: float
    above: float
    kind: str  # "ci", "sd" or "none"


def _stat(record: Mapping[str, Any], prefix: str, scale: float = 1.0) -> _Stat:
    """The summary field ``prefix`` of ``record``, times ``scale``, with its error bar: the 95% CI,
    else the SD, else none."""
    mean = _num(record, f"{prefix}_mean") * scale
    low, high = _num(record, f"{prefix}_ci_low") * scale, _num(record, f"{prefix}_ci_high") * scale
    if math.isfinite(mean) and math.isfinite(low) and math.isfinite(high):
        return _Stat(mean, max(mean - low, 0.0), max(high - mean, 0.0), "ci")
    sd = abs(_num(record, f"{prefix}_sd") * scale)
    if math.isfinite(mean) and math.isfinite(sd):
        return _Stat(mean, sd, sd, "sd")
    return _Stat(mean, 0.0, 0.0, "none")


def _sd_stat(record: Mapping[str, Any], prefix: str, scale: float = 1.0) -> _Stat:
    """The mean of ``prefix`` with ± SD (none where the SD is undefined)."""
    mean = _num(record, f"{prefix}_mean") * scale
    sd = abs(_num(record, f"{prefix}_sd") * scale)
    if math.isfinite(mean) and math.isfinite(sd):
        return _Stat(mean, sd, sd, "sd")
    return _Stat(mean, 0.0, 0.0, "none")


def _error_phrase(
    kinds: set[str], spread: str = "95% CI over trials", what: str = "Error bars"
) -> str:
    """How the error bars (or bands) of a figure were made, from the kinds of spread it drew."""
    if kinds <= {"none"}:
        return f"No {what.lower()}: each configuration has a single trial."
    if kinds == {"sd"}:
        phrase = f"{what}: ± SD over trials"
    else:
        phrase = f"{what}: {spread}"
        if "sd" in kinds and "ci" in kinds:
            phrase += " (± SD where the CI is undefined)"
    if "none" in kinds:
        phrase += "; none where a configuration has a single trial"
    return phrase + "."


def _trials_phrase(records: Sequence[Mapping[str, Any]]) -> str:
    trials = sorted({int(t) for r in records if math.isfinite(t := _num(r, "trials"))})
    if not trials:
        return ""
    if len(trials) == 1:
        return f" Trials per configuration: {trials[0]}."
    return f" Trials per configuration: {trials[0]}–{trials[-1]}."


def _by_task(records: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    tasks: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for record in records:
        tasks[_text(record, "task", "task")].append(record)
    return dict(sorted(tasks.items()))


# --- drawing helpers ---------------------------------------------------------------------------


MAX_STEM = 80  # file systems cap names at 255 bytes; a user data file's task name can be long


def _slug(*parts: str) -> str:
    """A file stem made of ``parts``: lower-case letters, digits, ``_``, ``-`` and ``.``; a
    long one is cut and keeps a short hash of the whole, so distinct names stay distinct."""
    joined = "_".join(parts)
    text = re.sub(r"[^a-z0-9.-]+", "_", joined.lower()).strip("_.-") or "figure"
    if len(text) > MAX_STEM:
        digest = hashlib.sha256(joined.encode("utf-8")).hexdigest()[:10]
        text = f"{text[: MAX_STEM - 11].rstrip('_.-')}_{digest}"
    return text


def _unique(images: list[FigureImage]) -> list[FigureImage]:
    """``images`` with repeated names suffixed ``_2``, ``_3``... (tasks whose names differ only
    in characters a file name cannot hold)."""
    seen: set[str] = set()
    result = []
    for image in images:
        name, n = image.name, 1
        while name in seen:
            n += 1
            name = f"{image.name}_{n}"
        seen.add(name)
        result.append(image if name == image.name else replace(image, name=name))
    return result


def _wrap(label: str, width: int) -> str:
    return textwrap.fill(label, width=width, break_long_words=True, break_on_hyphens=False)


def _colour(i: int) -> str:
    return OKABE_ITO[i % len(OKABE_ITO)]


def _hatch(i: int) -> str:
    return HATCHES[(i // len(OKABE_ITO)) % len(HATCHES)]


def _norm_label(norm: str) -> str:
    return {"linf": "L∞", "l2": "L2", "l1": "L1", "l0": "L0"}.get(norm.lower(), norm)


def _eps_label(eps: float) -> str:
    return f"{eps:.3g}"


def _attack_label(record: Mapping[str, Any]) -> str:
    """``"pgd linf eps=0.0157"``, with ``targeted`` where the attack aimed at a class."""
    label = (
        f"{_text(record, 'attack', '?')} {_text(record, 'norm', '?')} "
        f"eps={_eps_label(_num(record, 'eps'))}"
    )
    return label + (" targeted" if _flag(record, "targeted") else "")


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _grid(figure: Figure, n: int, ncols: int, **kwargs: Any) -> list[Axes]:
    """``n`` axes in a grid of ``ncols`` columns; unused cells are hidden."""
    ncols = max(min(ncols, n), 1)
    nrows = math.ceil(n / ncols)
    array = figure.subplots(nrows, ncols, squeeze=False, **kwargs)
    axes: list[Axes] = list(array.flat)
    for ax in axes[n:]:
        ax.set_visible(False)
    return axes[:n]


def _band(ax: Axes, x: Sequence[float], stats: Sequence[_Stat], colour: str) -> None:
    """A translucent error band around a line, where the spread is known."""
    lower = np.array([s.mean - s.below if s.kind != "none" else np.nan for s in stats])
    upper = np.array([s.mean + s.above if s.kind != "none" else np.nan for s in stats])
    known = np.isfinite(lower) & np.isfinite(upper)
    if known.sum() >= 2:
        ax.fill_between(np.asarray(x), lower, upper, where=known, color=colour, alpha=0.18, lw=0)


def _error_bars(
    ax: Axes,
    positions: np.ndarray,
    ends: np.ndarray,
    stats: Sequence[_Stat],
    *,
    horizontal: bool = False,
) -> None:
    """Black error bars at the ``ends`` of bars, only where a spread is known (a zero-length
    bar with caps would read as a measured zero spread)."""
    keep = np.array([s.kind != "none" and math.isfinite(s.mean) for s in stats], dtype=bool)
    keep &= np.isfinite(ends)
    if not keep.any():
        return
    errors = np.array([[s.below for s in stats], [s.above for s in stats]])[:, keep]
    if horizontal:
        ax.errorbar(ends[keep], positions[keep], xerr=errors, fmt="none", ecolor=BLACK, lw=0.8)
    else:
        ax.errorbar(positions[keep], ends[keep], yerr=errors, fmt="none", ecolor=BLACK, lw=0.8)


def _cap_note(shown: int, total: int, what: str, rule: str) -> str:
    if total <= shown:
        return ""
    return f" Only {shown} of {total} {what} are shown ({rule}); the CSV holds them all."


# --- 1. accuracy under attack ------------------------------------------------------------------


def accuracy_under_attack_figures(attacks: Sequence[Mapping[str, Any]]) -> list[FigureImage]:
    """Grouped bars per task: for each model, its clean accuracy and its accuracy under each
    attack configuration (records of the report's attack table), with 95% CI error bars.

    At most ``MAX_BAR_CONFIGS`` configurations are drawn (the strongest, by mean attacked
    accuracy over the models) and at most ``MAX_BAR_MODELS`` models; the caption says so.

    Args:
        attacks: Records of ``attack_table``.

    Returns:
        One figure per task, named ``accuracy_under_attack_<task>``.
    """
    images = []
    for task, records in _by_task(attacks).items():
        with _style():
            images.append(_accuracy_bars(task, records))
    return _unique(images)


def _config_key(record: Mapping[str, Any]) -> tuple[str, str, float, bool]:
    return (
        _text(record, "attack"),
        _text(record, "norm"),
        _num(record, "eps"),
        _flag(record, "targeted"),
    )


def _sort_key(key: tuple[str, str, float, bool]) -> tuple[str, str, bool, float]:
    attack, norm, eps, targeted = key
    return attack, norm, targeted, eps if math.isfinite(eps) else math.inf


def _accuracy_bars(task: str, records: list[Mapping[str, Any]]) -> FigureImage:
    table: dict[str, dict[tuple[str, str, float, bool], Mapping[str, Any]]] = defaultdict(dict)
    for record in records:
        table[_text(record, "model", "model")].setdefault(_config_key(record), record)
    all_models = sorted(table)
    models = all_models[:MAX_BAR_MODELS]
    configs = sorted({k for m in models for k in table[m]}, key=_sort_key)
    total_configs = len(configs)
    if total_configs > MAX_BAR_CONFIGS:

        def strength(key: tuple[str, str, float, bool]) -> float:
            values = [_num(table[m][key], "adv_accuracy_mean") for m in models if key in table[m]]
            finite = [v for v in values if math.isfinite(v)]
            return sum(finite) / len(finite) if finite else math.inf

        strongest = sorted(configs, key=lambda k: (strength(k), _sort_key(k)))
        keep = set(strongest[:MAX_BAR_CONFIGS])
        configs = [k for k in configs if k in keep]

    figure = _new_figure(WIDTH, 5.0)
    ax = figure.subplots()
    series = 1 + len(configs)
    width = 0.84 / series
    kinds: set[str] = set()
    x = np.arange(len(models), dtype=float)
    handles: list[Patch] = []

    def draw(i: int, stats: list[_Stat], colour: str, hatch: str, label: str) -> None:
        offsets = x - 0.42 + width * (i + 0.5)
        heights = np.array([s.mean for s in stats])
        drawn = np.isfinite(heights)
        kinds.update(s.kind for s, d in zip(stats, drawn, strict=True) if d)
        if drawn.any():
            ax.bar(
                offsets[drawn],
                heights[drawn],
                width=width,
                color=colour,
                hatch=hatch,
                edgecolor="#333333" if hatch else colour,
                linewidth=0.4,
            )
            _error_bars(ax, offsets, heights, stats)
        handles.append(Patch(facecolor=colour, hatch=hatch, edgecolor="#333333", label=label))

    clean = [_clean_stat(table[m]) for m in models]
    draw(0, clean, GREY, "", "clean (no attack)")
    for i, key in enumerate(configs):
        stats = [
            _stat(table[m][key], "adv_accuracy", 100.0) if key in table[m] else _Stat(*_NAN)
            for m in models
        ]
        draw(i + 1, stats, _colour(i), _hatch(i), _attack_label(_first(table, models, key)))
    ax.set_xticks(x, [_wrap(m, 16) for m in models])
    ax.set_xlim(-0.55, len(models) - 0.45)
    ax.set_ylim(0, 105)
    ax.set_xlabel("Model")
    ax.set_ylabel("Accuracy (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    figure.legend(
        handles=handles, loc="outside right upper", title="Condition", frameon=False, ncols=1
    )
    title = f"Accuracy under attack, {task}"
    figure.suptitle(title)
    caption = (
        f"Test accuracy of each model on {task}, clean and under each attack configuration "
        f"(attack, norm, eps). {_error_phrase(kinds)}"
        + _trials_phrase(records)
        + _cap_note(
            len(configs),
            total_configs,
            "attack configurations",
            "the strongest by mean attacked accuracy",
        )
        + _cap_note(len(models), len(all_models), "models", "first in alphabetical order")
    )
    return FigureImage(_slug("accuracy_under_attack", task), title, caption, _png(figure))


_NAN = (math.nan, 0.0, 0.0, "none")


def _first(
    table: Mapping[str, Mapping[tuple[str, str, float, bool], Mapping[str, Any]]],
    models: Sequence[str],
    key: tuple[str, str, float, bool],
) -> Mapping[str, Any]:
    return next(table[m][key] for m in models if key in table[m])


def _clean_stat(configs: Mapping[tuple[str, str, float, bool], Mapping[str, Any]]) -> _Stat:
    """A model's clean accuracy: from its first untargeted attack record (targeted attacks are
    evaluated on other examples), else from its first record."""
    ordered = sorted(configs, key=_sort_key)
    untargeted = [k for k in ordered if not k[3]]
    return _stat(configs[(untargeted or ordered)[0]], "clean_accuracy", 100.0)


# --- 1b/2. accuracy vs eps, undefended and defended --------------------------------------------


@dataclass
class _Curve:
    label: str
    colour: str
    style: str
    marker: str
    eps: list[float]
    stats: list[_Stat]


def accuracy_vs_eps_figures(
    attacks: Sequence[Mapping[str, Any]],
    defenses: Sequence[Mapping[str, Any]] = (),
) -> list[FigureImage]:
    """Accuracy against the perturbation budget eps, one panel per model, attack and norm of the
    untargeted attacks with at least two budgets, with a 95% CI band; the point at eps = 0 is
    the clean accuracy.

    The defended models' curves (``post_defense`` of the defense table, one line per defense and
    evaluation) are drawn beside the undefended one; without attack records, the undefended
    curve comes from the defense records' ``post_attack``.

    Args:
        attacks: Records of ``attack_table``.
        defenses: Records of ``defense_table``.

    Returns:
        One figure per task, named ``accuracy_vs_eps_<task>``.
    """
    groups: dict[str, dict[tuple[str, str, str], dict[str, list[Mapping[str, Any]]]]]
    groups = defaultdict(lambda: defaultdict(lambda: {"attacks": [], "defenses": []}))
    for source, records in (("attacks", attacks), ("defenses", defenses)):
        for record in records:
            if _flag(record, "targeted") or not math.isfinite(_num(record, "eps")):
                continue
            key = (_text(record, "model"), _text(record, "attack"), _text(record, "norm"))
            groups[_text(record, "task", "task")][key][source].append(record)
    images = []
    for task, panels in sorted(groups.items()):
        usable = {
            key: sources
            for key, sources in sorted(panels.items())
            if len({_num(r, "eps") for rs in sources.values() for r in rs}) >= 2
        }
        if usable:
            with _style():
                images.append(_eps_figure(task, usable))
    return _unique(images)


def _eps_figure(
    task: str, panels: dict[tuple[str, str, str], dict[str, list[Mapping[str, Any]]]]
) -> FigureImage:
    keys = list(panels)[:MAX_PANELS]
    defense_names = sorted({_text(r, "defense") for k in keys for r in panels[k]["defenses"]})
    colours = {name: _colour(i) for i, name in enumerate(defense_names)}
    ncols = 3 if len(keys) > 4 else min(len(keys), 2)
    nrows = math.ceil(len(keys) / ncols)
    figure = _new_figure(WIDTH, 3.0 * nrows + 1.4)
    axes = _grid(figure, len(keys), ncols, sharey=True)
    kinds: set[str] = set()
    legend: dict[str, Line2D] = {}
    capped = False
    used: list[Mapping[str, Any]] = []
    for ax, key in zip(axes, keys, strict=True):
        sources = panels[key]
        used += sources["attacks"] + sources["defenses"]
        curves = _eps_curves(sources, colours)
        capped |= len(curves) > MAX_LINES
        for curve in curves[:MAX_LINES]:
            order = np.argsort(curve.eps, kind="stable")
            x = [curve.eps[i] for i in order]
            stats = [curve.stats[i] for i in order]
            kinds.update(s.kind for s in stats if math.isfinite(s.mean))
            (line,) = ax.plot(
                x,
                [s.mean for s in stats],
                color=curve.colour,
                linestyle=curve.style,
                marker=curve.marker,
                markersize=4,
                linewidth=1.4,
                label=curve.label,
            )
            _band(ax, x, stats, curve.colour)
            legend.setdefault(curve.label, line)
        model, attack, norm = key
        ax.set_title(_wrap(f"{model}: {attack} ({_norm_label(norm)})", 40))
        ax.set_xlabel(f"eps ({_norm_label(norm)} budget, input units)")
        ax.set_ylim(0, 105)
        ax.grid(alpha=0.3)
    for ax in axes[::ncols]:
        ax.set_ylabel("Accuracy (%)")
    figure.legend(
        handles=list(legend.values()),
        loc="outside lower center",
        ncols=min(len(legend), 3),
        frameon=False,
    )
    title = f"Accuracy vs perturbation budget, {task}"
    figure.suptitle(title)
    defended = (
        ", undefended and with each defense (dashed: adaptive EOT, dotted: adaptive BPDA "
        "evaluation)"
        if defense_names
        else ""
    )
    caption = (
        f"Test accuracy on {task} under each untargeted attack as its budget eps grows "
        f"(eps = 0: clean accuracy){defended}. {_error_phrase(kinds, what='Bands')}"
        + _trials_phrase(used)
        + _cap_note(len(keys), len(panels), "model/attack panels", "first in alphabetical order")
        + (f" At most {MAX_LINES} lines per panel are drawn." if capped else "")
    )
    return FigureImage(_slug("accuracy_vs_eps", task), title, caption, _png(figure))


def _eps_curves(
    sources: Mapping[str, list[Mapping[str, Any]]], colours: Mapping[str, str]
) -> list[_Curve]:
    """The undefended curve, then one curve per defense and evaluation."""
    curves = []
    if sources["attacks"]:
        base = sources["attacks"]
        undefended = _curve_points(base, "adv_accuracy", "clean_accuracy")
    else:
        by_eps: dict[float, Mapping[str, Any]] = {}
        for record in sources["defenses"]:  # every defense has the same undefended twin
            by_eps.setdefault(_num(record, "eps"), record)
        undefended = _curve_points(list(by_eps.values()), "post_attack", "pre_attack")
    curves.append(_Curve("undefended", BLACK, "-", "o", *undefended))
    lines: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for record in sources["defenses"]:
        lines[(_text(record, "defense"), _text(record, "evaluation", "plain"))].append(record)
    ordered = sorted(
        lines.items(), key=lambda item: (item[0][0], item[0][1] != "plain", item[0][1])
    )
    for i, ((defense, evaluation), records) in enumerate(ordered):
        label = defense if evaluation == "plain" else f"{defense}, {evaluation}"
        style = _EVALUATION_STYLES.get(evaluation, "-.")
        points = _curve_points(records, "post_defense", "defended_clean")
        marker = MARKERS[1 + i % (len(MARKERS) - 1)]
        curves.append(_Curve(label, colours[defense], style, marker, *points))
    return curves


def _curve_points(
    records: Sequence[Mapping[str, Any]], attacked: str, clean: str
) -> tuple[list[float], list[_Stat]]:
    """(eps, accuracy) points of one curve, in percent, with the clean accuracy at eps = 0
    unless a record already has that budget."""
    by_eps: dict[float, Mapping[str, Any]] = {}
    for record in records:
        by_eps.setdefault(_num(record, "eps"), record)
    eps = sorted(by_eps)
    points = [(e, _stat(by_eps[e], attacked, 100.0)) for e in eps]
    if eps and 0.0 not in by_eps:
        points.insert(0, (0.0, _stat(by_eps[eps[0]], clean, 100.0)))
    return [p[0] for p in points], [p[1] for p in points]


# --- 3. overhead -------------------------------------------------------------------------------


def overhead_figures(overhead: Sequence[Mapping[str, Any]]) -> list[FigureImage]:
    """Training and inference cost of each defense, per task.

    With absolute times (``train_seconds``, ``inference_ms``, ``certify_seconds`` and the
    undefended ``undefended_train_seconds``, ``undefended_inference_ms``): one stacked bar per
    model and defense plus the undefended model (training s, certification s, inference s for
    1000 test examples in batched forward passes), ± SD on each segment, and beside it the
    inference time alone in ms. Without them: the training and inference time ratios to the
    undefended model, ± SD, with a dashed line at 1.

    Args:
        overhead: Records of ``overhead_table``.

    Returns:
        One figure per task, named ``defense_overhead_<task>``.
    """
    images = []
    for task, records in _by_task(overhead).items():
        ordered = sorted(records, key=lambda r: (_text(r, "model"), _text(r, "defense")))
        absolute = all(
            math.isfinite(_num(r, "train_seconds_mean"))
            and math.isfinite(_num(r, "inference_ms_mean"))
            for r in ordered
        )
        with _style():
            draw = _overhead_absolute if absolute else _overhead_ratios
            images.append(draw(task, ordered))
    return _unique(images)


@dataclass(frozen=True)
class _CostBar:
    model: str
    defense: str
    segments: tuple[_Stat, _Stat, _Stat]  # training s, certification s, inference s
    inference_ms: _Stat


def _overhead_absolute(task: str, records: list[Mapping[str, Any]]) -> FigureImage:
    shown = records[:MAX_OVERHEAD_BARS]
    zero = _Stat(0.0, 0.0, 0.0, "none")
    bars: list[_CostBar] = []
    seen_models: set[str] = set()
    for record in shown:
        model = _text(record, "model", "model")
        if model not in seen_models and _has([record], "undefended_train_seconds_mean"):
            seen_models.add(model)
            segments = (
                _sd_stat(record, "undefended_train_seconds"),
                zero,
                _sd_stat(record, "undefended_inference_ms", 1e-3),
            )
            base_ms = _sd_stat(record, "undefended_inference_ms")
            bars.append(_CostBar(model, UNDEFENDED, segments, base_ms))
        certify = _sd_stat(record, "certify_seconds")
        segments = (
            _sd_stat(record, "train_seconds"),
            certify if math.isfinite(certify.mean) else zero,
            _sd_stat(record, "inference_ms", 1e-3),
        )
        defense = _text(record, "defense", "?")
        bars.append(_CostBar(model, defense, segments, _sd_stat(record, "inference_ms")))
    figure = _new_figure(WIDTH, max(3.6, 0.34 * len(bars) + 2.0))
    left, right = figure.subplots(1, 2, width_ratios=(3, 2), sharey=True)
    y = np.arange(len(bars), dtype=float)
    kinds: set[str] = set()
    has_certify = any(bar.segments[1].mean > 0 for bar in bars)
    start = np.zeros(len(bars))
    handles = []
    for index, (name, colour) in enumerate(
        (
            ("training", _colour(4)),
            ("certification", _colour(0)),
            ("inference (1000 examples)", _colour(2)),
        )
    ):
        if index == 1 and not has_certify:
            continue
        stats = [bar.segments[index] for bar in bars]
        widths = np.nan_to_num(np.array([s.mean for s in stats]))
        left.barh(y, widths, left=start, color=colour, height=0.7)
        handles.append(Patch(color=colour, label=name))
        end = start + widths
        kinds.update(s.kind for s in stats if s.mean > 0)
        _error_bars(left, y, end, [s if s.mean > 0 else zero for s in stats], horizontal=True)
        start = end
    left.set_yticks(y, [_wrap(f"{bar.model} / {bar.defense}", 32) for bar in bars], fontsize=7)
    left.set_ylim(len(bars) - 0.5, -0.5)
    left.set_xlabel("Wall time (s)")
    left.set_title("Training + certification + inference")
    left.grid(axis="x", alpha=0.3)
    left.set_axisbelow(True)
    times = [bar.inference_ms for bar in bars]
    widths = np.array([s.mean for s in times])
    drawn = np.isfinite(widths)
    colours = [GREY if bar.defense == UNDEFENDED else _colour(2) for bar in bars]
    right.barh(
        y[drawn],
        widths[drawn],
        color=[c for c, d in zip(colours, drawn, strict=True) if d],
        height=0.7,
    )
    _error_bars(right, y, widths, times, horizontal=True)
    kinds.update(s.kind for s in times if math.isfinite(s.mean))
    right.set_xlabel("Inference time (ms per 1000 examples)")
    right.set_title("Inference alone (grey: undefended)")
    right.grid(axis="x", alpha=0.3)
    right.set_axisbelow(True)
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)
    title = f"Defense overhead, {task}"
    figure.suptitle(title)
    caption = (
        f"Wall time of each defended model on {task} and of the undefended model: training, "
        "certification (certifying defenses) and inference on 1000 test examples (batched "
        "forward passes), stacked; right, the inference time alone (often too short to see in "
        "the stack). "
        f"{_error_phrase(kinds - {'ci'}, '± SD over trials')}"
        + _trials_phrase(records)
        + _cap_note(len(shown), len(records), "defended models", "first in alphabetical order")
    )
    return FigureImage(_slug("defense_overhead", task), title, caption, _png(figure))


def _overhead_ratios(task: str, records: list[Mapping[str, Any]]) -> FigureImage:
    shown = records[:MAX_OVERHEAD_BARS]
    labels = [
        _wrap(f"{_text(r, 'model', 'model')} / {_text(r, 'defense', '?')}", 32) for r in shown
    ]
    figure = _new_figure(8.0, max(3.2, 0.45 * len(shown) + 2.0))
    ax = figure.subplots()
    y = np.arange(len(shown), dtype=float)
    kinds: set[str] = set()
    handles: list[Patch | Line2D] = []
    for offset, field, label, colour in (
        (-0.2, "training_ratio", "training time", _colour(4)),
        (0.2, "inference_ratio", "inference time", _colour(2)),
    ):
        stats = [_sd_stat(r, field) for r in shown]
        widths = np.array([s.mean for s in stats])
        drawn = np.isfinite(widths)
        kinds.update(s.kind for s, d in zip(stats, drawn, strict=True) if d)
        ax.barh(y[drawn] + offset, widths[drawn], height=0.4, color=colour)
        _error_bars(ax, y + offset, widths, stats, horizontal=True)
        handles.append(Patch(color=colour, label=label))
    ax.axvline(1.0, color=BLACK, linestyle="--", linewidth=1.0)
    handles.append(Line2D([], [], color=BLACK, linestyle="--", label="undefended = 1"))
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_ylim(len(shown) - 0.5, -0.5)
    ax.set_xlabel("Time relative to the undefended model (×)")
    ax.set_xlim(left=0)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    figure.legend(handles=handles, loc="outside lower center", ncols=3, frameon=False)
    title = f"Defense overhead relative to the undefended model, {task}"
    figure.suptitle(title)
    caption = (
        f"Training and inference time of each defended model on {task} divided by those of the "
        "undefended model in the same trial (1 = no overhead). "
        f"{_error_phrase(kinds - {'ci'}, '± SD over trials')}"
        + _trials_phrase(records)
        + _cap_note(len(shown), len(records), "defended models", "first in alphabetical order")
    )
    return FigureImage(_slug("defense_overhead", task), title, caption, _png(figure))


# --- 4. certified accuracy ---------------------------------------------------------------------


def certified_accuracy_figures(certified: Sequence[Mapping[str, Any]]) -> list[FigureImage]:
    """Certified accuracy against the L2 radius, one line per model and defense, with a 95% CI
    band, per task.

    Args:
        certified: Records of ``certification_table``.

    Returns:
        One figure per task, named ``certified_accuracy_<task>``.
    """
    images = []
    for task, records in _by_task(certified).items():
        lines: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
        for record in records:
            if math.isfinite(_num(record, "radius")):
                lines[(_text(record, "model"), _text(record, "defense"))].append(record)
        if lines:
            with _style():
                images.append(_certified_figure(task, dict(sorted(lines.items())), records))
    return _unique(images)


def _certified_figure(
    task: str,
    lines: dict[tuple[str, str], list[Mapping[str, Any]]],
    records: list[Mapping[str, Any]],
) -> FigureImage:
    figure = _new_figure(8.0, 4.8)
    ax = figure.subplots()
    kinds: set[str] = set()
    keys = list(lines)[:MAX_LINES]
    for i, key in enumerate(keys):
        points = sorted(lines[key], key=lambda r: _num(r, "radius"))
        x = [_num(r, "radius") for r in points]
        stats = [_stat(r, "certified_accuracy", 100.0) for r in points]
        kinds.update(s.kind for s in stats if math.isfinite(s.mean))
        colour = _colour(i)
        ax.plot(
            x,
            [s.mean for s in stats],
            color=colour,
            marker=MARKERS[i % len(MARKERS)],
            markersize=4,
            linewidth=1.4,
            label=f"{key[0]} + {key[1]}",
        )
        _band(ax, x, stats, colour)
    ax.set_xlabel("L2 radius r (input units)")
    ax.set_ylabel("Certified accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    figure.legend(loc="outside right upper", frameon=False, title="Model + defense")
    title = f"Certified accuracy vs L2 radius, {task}"
    figure.suptitle(title)
    caption = (
        f"Share of attacked test examples of {task} classified correctly and certified robust "
        "at L2 radius ≥ r, per model and certifying defense. "
        f"{_error_phrase(kinds, what='Bands')}"
        + _trials_phrase(records)
        + _cap_note(len(keys), len(lines), "model/defense lines", "first in alphabetical order")
    )
    return FigureImage(_slug("certified_accuracy", task), title, caption, _png(figure))


# --- 5. FNR / FPR shift ------------------------------------------------------------------------


def clinical_shift_figures(clinical: Sequence[Mapping[str, Any]]) -> list[FigureImage]:
    """The change of the false-negative and false-positive rate under attack (after - before,
    percentage points), horizontal bars per model, defense and attack configuration with 95% CI
    error bars, one panel per class (the declared positive class, or each class one-vs-rest).

    At most ``MAX_CLASSES`` class panels are drawn, and at most ``MAX_SHIFT_ROWS`` rows (with
    several panels, ``MAX_SHIFT_ROWS_MULTI``): the largest shifts; the caption says so.

    Args:
        clinical: Records with ``fnr_shift_*`` and ``fpr_shift_*`` per class.

    Returns:
        One figure per task, named ``fnr_fpr_shift_<task>``.
    """
    images = []
    for task, records in _by_task(clinical).items():
        with _style():
            images.append(_shift_figure(task, records))
    return _unique(images)


def _shift_row(record: Mapping[str, Any]) -> str:
    """``"cnn · undefended · pgd linf eps=0.0157"``, with a non-plain evaluation."""
    label = (
        f"{_text(record, 'model', '?')} · {_text(record, 'defense', 'undefended')} · "
        f"{_attack_label(record)}"
    )
    evaluation = _text(record, "evaluation", "plain")
    return label if evaluation == "plain" else f"{label}, {evaluation}"


def _shift_figure(task: str, records: list[Mapping[str, Any]]) -> FigureImage:
    classes: list[str] = []
    for record in records:
        name = _text(record, "class_name", "positive class")
        if name not in classes:
            classes.append(name)
    shown_classes = classes[:MAX_CLASSES]
    cells: dict[tuple[str, str], Mapping[str, Any]] = {}
    for record in records:
        cells.setdefault(
            (_shift_row(record), _text(record, "class_name", "positive class")), record
        )
    all_rows = sorted({row for row, name in cells if name in shown_classes})
    cap = MAX_SHIFT_ROWS if len(shown_classes) == 1 else MAX_SHIFT_ROWS_MULTI

    def size(row: str) -> float:
        values = [
            abs(_num(cells[(row, c)], f"{m}_shift_mean"))
            for c in shown_classes
            if (row, c) in cells
            for m in ("fnr", "fpr")
        ]
        finite = [v for v in values if math.isfinite(v)]
        return max(finite) if finite else -1.0

    keep = set(sorted(all_rows, key=lambda r: (-size(r), r))[:cap])
    rows = [row for row in all_rows if row in keep]
    ncols = min(len(shown_classes), 3)
    nrows = math.ceil(len(shown_classes) / ncols)
    row_height = 0.32 if len(shown_classes) == 1 else 0.26
    figure = _new_figure(WIDTH, nrows * (row_height * len(rows) + 1.3) + 1.2)
    axes = _grid(figure, len(shown_classes), ncols, sharey=True)
    y = np.arange(len(rows), dtype=float)
    kinds: set[str] = set()
    for ax, name in zip(axes, shown_classes, strict=True):
        for offset, metric, label, colour in (
            (-0.2, "fnr", "FNR shift (missed disease)", _colour(5)),
            (0.2, "fpr", "FPR shift (false alarms)", _colour(4)),
        ):
            stats = [
                _stat(cells[(row, name)], f"{metric}_shift", 100.0)
                if (row, name) in cells
                else _Stat(*_NAN)
                for row in rows
            ]
            widths = np.array([s.mean for s in stats])
            drawn = np.isfinite(widths)
            kinds.update(s.kind for s, d in zip(stats, drawn, strict=True) if d)
            ax.barh(y[drawn] + offset, widths[drawn], height=0.4, color=colour, label=label)
            _error_bars(ax, y + offset, widths, stats, horizontal=True)
        ax.axvline(0.0, color=BLACK, linewidth=0.9)
        ax.set_title(_wrap(f"class: {name}", 40))
        ax.set_xlabel("Shift under attack (percentage points)")
        ax.grid(axis="x", alpha=0.3)
        ax.set_axisbelow(True)
    label_width = 60 if ncols == 1 else 34
    axes[0].set_yticks(y, [_wrap(row, label_width) for row in rows], fontsize=7)
    axes[0].set_ylim(len(rows) - 0.5, -0.5)
    figure.legend(
        handles=[
            Patch(color=_colour(5), label="FNR shift (missed disease)"),
            Patch(color=_colour(4), label="FPR shift (false alarms)"),
        ],
        loc="outside lower center",
        ncols=2,
        frameon=False,
    )
    title = f"Change of false-negative and false-positive rates under attack, {task}"
    figure.suptitle(_wrap(title, 80))
    several = len(classes) > 1
    caption = (
        f"Change of the false-negative rate (FNR) and false-positive rate (FPR) of "
        f"{'each class, one-vs-rest,' if several else 'the declared positive class'} on {task} "
        "under each attack (after - before, percentage points; right of 0 = worse), per model, "
        f"defense and attack configuration. {_error_phrase(kinds)}"
        + _trials_phrase(records)
        + _cap_note(len(shown_classes), len(classes), "classes", "in the order of the records")
        + _cap_note(len(rows), len(all_rows), "rows", "the largest shifts")
    )
    return FigureImage(_slug("fnr_fpr_shift", task), title, caption, _png(figure))


# --- 6. poisoning ------------------------------------------------------------------------------


def poisoning_figures(poisoning: Sequence[Mapping[str, Any]]) -> list[FigureImage]:
    """Attack success and clean accuracy against the poisoning rate, one line per model and
    poisoning, with a 95% CI band, per task.

    Args:
        poisoning: Records of the report's poisoning table (``rate``, ``attack_success_rate_*``,
            ``clean_accuracy_*``).

    Returns:
        One figure per task, named ``poisoning_<task>``.
    """
    images = []
    for task, records in _by_task(poisoning).items():
        lines: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
        for record in records:
            if math.isfinite(_num(record, "rate")):
                lines[(_text(record, "model"), _text(record, "poisoning"))].append(record)
        if lines:
            with _style():
                images.append(_poisoning_figure(task, dict(sorted(lines.items())), records))
    return _unique(images)


def _poisoning_figure(
    task: str,
    lines: dict[tuple[str, str], list[Mapping[str, Any]]],
    records: list[Mapping[str, Any]],
) -> FigureImage:
    figure = _new_figure(WIDTH, 4.4)
    success, accuracy = figure.subplots(1, 2, sharex=True)
    kinds: set[str] = set()
    keys = list(lines)[:MAX_LINES]
    for i, key in enumerate(keys):
        points = sorted(lines[key], key=lambda r: _num(r, "rate"))
        x = [100.0 * _num(r, "rate") for r in points]
        for ax, field in ((success, "attack_success_rate"), (accuracy, "clean_accuracy")):
            stats = [_stat(r, field, 100.0) for r in points]
            kinds.update(s.kind for s in stats if math.isfinite(s.mean))
            ax.plot(
                x,
                [s.mean for s in stats],
                color=_colour(i),
                marker=MARKERS[i % len(MARKERS)],
                markersize=4,
                linewidth=1.4,
                label=f"{key[0]} + {key[1]}",
            )
            _band(ax, x, stats, _colour(i))
    for ax, name in ((success, "Attack success (%)"), (accuracy, "Clean accuracy (%)")):
        ax.set_xlabel("Poisoning rate (% of the training set)")
        ax.set_ylabel(name)
        ax.set_ylim(0, 105)
        ax.grid(alpha=0.3)
    success.set_title("Attack success on the test split")
    accuracy.set_title("Clean accuracy of the poisoned model")
    handles, labels = success.get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=3, frameon=False)
    title = f"Poisoning: attack success and clean accuracy vs rate, {task}"
    figure.suptitle(title)
    caption = (
        f"Left: share of triggered test inputs of {task} (backdoor) or of the source class "
        "(targeted label flip) sent to the attacker's class; right: clean test accuracy of the "
        "poisoned model. "
        f"{_error_phrase(kinds, what='Bands')}"
        + _trials_phrase(records)
        + _cap_note(len(keys), len(lines), "model/poisoning lines", "first in alphabetical order")
    )
    return FigureImage(_slug("poisoning", task), title, caption, _png(figure))


# --- all figures -------------------------------------------------------------------------------


def build_figures(records: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[FigureImage]:
    """All figures the records allow; a missing or empty key yields no figure of that kind.

    Args:
        records: The records of the report's tables by kind: ``"attacks"``, ``"defenses"``,
            ``"overhead"``, ``"certified"`` and ``"clinical"``.

    Returns:
        The figures, in the order: accuracy under attack, accuracy vs eps, defense overhead,
        certified accuracy, FNR/FPR shift; each kind sorted by task.
    """
    attacks = records.get("attacks") or ()
    defenses = records.get("defenses") or ()
    images = [
        *accuracy_under_attack_figures(attacks),
        *accuracy_vs_eps_figures(attacks, defenses),
        *overhead_figures(records.get("overhead") or ()),
        *certified_accuracy_figures(records.get("certified") or ()),
        *clinical_shift_figures(records.get("clinical") or ()),
        *poisoning_figures(records.get("poisoning") or ()),
    ]
    return _unique(images)
