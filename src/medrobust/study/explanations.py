"""Explanations as a study axis: ``[study] explain = true`` (or a table of settings).

With it, every attack cell also measures how far the attack moved the attacked model's
explanation of its first ``examples`` attacked examples (Spearman rank correlation and top-k
overlap of |attribution| between the clean input and its adversarial twin, both explaining the
true class; Ghorbani et al. 2019), and every clean cell of a defended model how far the defense
moved the explanation of the first ``examples`` test examples away from the undefended model's.
Each is stored per cell as the mean over its examples (``explain_<method>_<metric>`` and
``agree_<method>_<metric>``), so the report can summarise them over trials and test them
paired, like accuracies. Attack cells of the first trial also store a panel figure (input,
adversarial input, perturbation, attributions) of a few examples for the first method.

A method that does not apply to a model (Grad-CAM without a convolutional layer, or through a
wrapper that runs the layer several times, such as randomized smoothing) is left out of that
cell (NaN). A gradient-masking defense explained as it is gives zero attributions, and NaN
metrics: that is what its masking does to gradient explanations.

Example::

    [study]
    explain = { examples = 8, methods = ["saliency", "integrated_gradients"], top_k = 0.1 }
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from medrobust.data.task import Task
from medrobust.errors import ConfigError, ParameterError
from medrobust.explain import EXPLAINERS, attack_attributions, compare_attributions, model_agreement
from medrobust.metrics import finite_mean
from medrobust.stats import summarize
from medrobust.study.analysis import (
    UNDEFENDED,
    attack_label,
    attack_name,
    evaluation_name,
    model_name,
    paired_test_column,
    twin_key,
    undefended_twins,
)
from medrobust.study.checks import check_keys, expect
from medrobust.study.figures import FigureImage
from medrobust.study.table import Table, summary_fields

DEFAULT_METHODS = ("saliency", "integrated_gradients")
PANEL_EXAMPLES = 3
MAX_EXAMPLES = 1000
MAX_STEPS = 1024


@dataclass(frozen=True)
class ExplainSettings:
    """What the explanation axis computes.

    Attributes:
        examples: examples explained per cell (the first of the attacked or test examples).
        methods: attribution methods, from :data:`medrobust.explain.EXPLAINERS`.
        top_k: the share of features (in (0, 1]) whose overlap is measured.
        steps: Integrated Gradients' quadrature points.
    """

    examples: int = 8
    methods: tuple[str, ...] = DEFAULT_METHODS
    top_k: float = 0.1
    steps: int = 32

    def to_dict(self) -> dict[str, Any]:
        """Plain dict form (stored in each cell)."""
        return {
            "examples": self.examples,
            "methods": list(self.methods),
            "top_k": self.top_k,
            "steps": self.steps,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ExplainSettings:
        """The settings of a cell's ``explain`` field."""
        return cls(raw["examples"], tuple(raw["methods"]), raw["top_k"], raw["steps"])


def parse_explain(where: str, raw: Any) -> ExplainSettings | None:
    """``[study] explain``: false (the default), true (default settings) or a table."""
    if raw is None or raw is False:
        return None
    if raw is True:
        return ExplainSettings()
    raw = expect(where, raw, dict, "true, false or a table of settings")
    check_keys(where, raw, {"examples", "methods", "top_k", "steps"})
    examples = expect(f"{where}.examples", raw.get("examples", 8), int, "an integer >= 1")
    steps = expect(f"{where}.steps", raw.get("steps", 32), int, "an integer >= 1")
    top_k = expect(f"{where}.top_k", raw.get("top_k", 0.1), (int, float), "a number in (0, 1]")
    methods = expect(
        f"{where}.methods", raw.get("methods", list(DEFAULT_METHODS)), list, "a list of methods"
    )
    if not 1 <= examples <= MAX_EXAMPLES or not 1 <= steps <= MAX_STEPS:
        raise ConfigError(
            f"{where}.examples must be an integer from 1 to {MAX_EXAMPLES} and {where}.steps "
            f"from 1 to {MAX_STEPS}. Got examples={examples}, steps={steps} instead."
        )
    if not 0 < top_k <= 1:
        raise ConfigError(f"{where}.top_k must be a number in (0, 1]. Got {top_k!r} instead.")
    unknown = [m for m in methods if m not in EXPLAINERS]
    if not methods or unknown or len(set(methods)) != len(methods):
        raise ConfigError(
            f"{where}.methods must list distinct methods from {list(EXPLAINERS)}. "
            f"Got {methods!r} instead."
        )
    return ExplainSettings(examples, tuple(methods), float(top_k), steps)


def metric_name(kind: str, method: str, metric: str) -> str:
    """``explain_<method>_<metric>`` (clean vs adversarial) or ``agree_<method>_<metric>``
    (defended vs undefended)."""
    return f"{kind}_{method}_{metric}"


def explain_attack(
    settings: ExplainSettings,
    model: nn.Module,
    task: Task,
    x: torch.Tensor,
    x_adv: torch.Tensor,
    y: torch.Tensor,
    *,
    seed: int,
    panel_title: tuple[str, str] | None = None,
    adv_pred: np.ndarray | None = None,
    tokenizer: Any = None,
) -> tuple[dict[str, float], list[tuple[str, bytes]]]:
    """Stability of ``model``'s explanations under one attack, on the first examples.

    Args:
        settings: the study's explanation settings.
        model: the attacked model (a defense's wrapper for a defended cell).
        task: the cell's task (modality, domain, class names).
        x, x_adv, y: the attacked examples, the attack's output and the true labels.
        seed: seed of the attributions (randomized models).
        panel_title: ``(model label, attack label)`` to draw a panel of the first method;
            ``None`` draws none.
        adv_pred: the predictions on ``x_adv``, for the panel's row labels.
        tokenizer: text: the tokenizer that made the ids, to show tokens in the panel.

    Returns:
        The cell's metrics and its panels as ``(name, png)``.
    """
    from medrobust.study.explain_figures import explanation_figure  # local: matplotlib

    n = min(settings.examples, len(x))
    metrics: dict[str, float] = {}
    panels: list[tuple[str, bytes]] = []
    for method in settings.methods:
        try:
            clean, adversarial, mask = attack_attributions(
                model,
                x[:n],
                x_adv[:n],
                y[:n].to(x.device),
                method=method,
                modality=task.modality,
                domain=task.domain,
                steps=settings.steps,
                seed=seed,
            )
        except ParameterError:  # the method does not apply to this model
            for metric in ("spearman", "top_k_overlap"):
                metrics[metric_name("explain", method, metric)] = math.nan
            continue
        values = compare_attributions(clean, adversarial, k=settings.top_k, mask=mask)
        for metric, per_example in values.items():
            metrics[metric_name("explain", method, metric)] = finite_mean(per_example)
        if panel_title is not None and not panels:
            shown = min(PANEL_EXAMPLES, n)
            names = task.class_names
            labels = [f"true {names[int(y[i])]}" for i in range(shown)]
            if adv_pred is not None:
                labels = [
                    f"{label}, adversarial prediction {names[int(adv_pred[i])]}"
                    for i, label in enumerate(labels)
                ]
            feature_names = task.metadata.get("feature_names")
            figure = explanation_figure(
                task.name,
                task.modality,
                x[:shown],
                x_adv[:shown],
                clean[:shown],
                adversarial[:shown],
                method=method,
                model=panel_title[0],
                attack=panel_title[1],
                labels=labels,
                tokenizer=tokenizer,
                feature_names=list(feature_names) if feature_names else None,
            )
            panels.append((figure.name, figure.png))
    return metrics, panels


def explain_defense(
    settings: ExplainSettings,
    defended: nn.Module,
    undefended: nn.Module,
    task: Task,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    seed: int,
) -> dict[str, float]:
    """How alike the defended and the undefended model explain the first test examples."""
    n = min(settings.examples, len(x))
    metrics: dict[str, float] = {}
    for method in settings.methods:
        try:
            values = model_agreement(
                undefended,
                defended,
                x[:n],
                y[:n].to(x.device),
                method=method,
                modality=task.modality,
                domain=task.domain,
                k=settings.top_k,
                steps=settings.steps,
                seed=seed,
            )
        except ParameterError:
            values = {"spearman": np.array([math.nan]), "top_k_overlap": np.array([math.nan])}
        for metric, per_example in values.items():
            metrics[metric_name("agree", method, metric)] = finite_mean(per_example)
    return metrics


STABILITY_COLUMNS = (("spearman", "Spearman ρ"), ("top_k_overlap", "Top-k overlap"))


def _methods(cells: list[dict[str, Any]]) -> list[str]:
    """The methods the study explained with, in the config's order."""
    for cell in cells:
        if cell.get("explain"):
            return list(cell["explain"]["methods"])
    return []


def _explained(runs: list[tuple[dict[str, float], Any]], kind: str, method: str) -> bool:
    """Whether any run has a finite Spearman ρ for ``method``."""
    name = metric_name(kind, method, "spearman")
    return any(math.isfinite(r.get(name, math.nan)) for r, _ in runs)


def stability_table(cells: list[dict[str, Any]]) -> Table:
    """Explanation stability under attack: per task x model x defense x attack x method, the
    Spearman ρ and top-k overlap of the clean and adversarial attributions (mean ± SD [95% CI]
    over trials of the per-cell means over examples); for a defense, its paired test against
    the undefended twin (same examples, attack and seed)."""
    twins = undefended_twins(cells)
    groups: dict[tuple[Any, ...], list[tuple[dict[str, float], dict[str, float] | None]]]
    groups = defaultdict(list)
    for c in cells:
        if c["attack"] is None or not c.get("explain"):
            continue
        twin = twins.get(twin_key(c)) if c.get("defense") else None
        for method in c["explain"]["methods"]:
            key = (
                c["task"],
                model_name(c),
                c.get("defense_label") or UNDEFENDED,
                attack_label(attack_name(c), c["norm"], targeted=c["targeted"]),
                c["eps"],
                evaluation_name(c) if c.get("defense") else "plain",
                method,
            )
            groups[key].append((c["metrics"], None if twin is None else twin["metrics"]))
    rows, records = [], []
    for key, runs in sorted(groups.items(), key=lambda item: tuple(map(str, item[0]))):
        task, model, defense, attack, eps, evaluation, method = key
        if not _explained(runs, "explain", method):
            continue  # the method does not apply to this model
        row = [task, model, defense, attack, f"{eps:g}", evaluation, method, str(len(runs))]
        record: dict[str, Any] = dict(
            zip(
                ("task", "model", "defense", "attack", "eps", "evaluation", "method"),
                key,
                strict=True,
            )
        )
        record["trials"] = len(runs)
        for metric, _ in STABILITY_COLUMNS:
            name = metric_name("explain", method, metric)
            summary = summarize(
                [r[name] for r, _ in runs], bounds=(-1.0, 1.0) if metric == "spearman" else (0, 1)
            )
            row.append(summary.format())
            record.update(summary_fields(metric, summary))
        name = metric_name("explain", method, "spearman")
        pairs = [(r[name], t[name]) for r, t in runs if t is not None]
        if pairs and defense != UNDEFENDED:
            text, test = paired_test_column([a for a, _ in pairs], [b for _, b in pairs])
        else:
            text, test = "", {}
        row.append(text)
        record.update(test)
        rows.append(tuple(row))
        records.append(record)
    header = (
        "Task",
        "Model",
        "Defense",
        "Attack",
        "eps",
        "Evaluation",
        "Method",
        "Trials",
        *(label for _, label in STABILITY_COLUMNS),
        "Paired test of ρ vs undefended",
    )
    return Table(
        "Explanation stability under attack: clean vs adversarial attributions (1 = unchanged; "
        "mean ± SD [95% CI] over trials)",
        header,
        rows,
        records,
    )


def agreement_table(cells: list[dict[str, Any]]) -> Table:
    """How far each defense moves the explanations of clean inputs from the undefended model's
    (mean ± SD [95% CI] over trials)."""
    groups: dict[tuple[str, str, str, str], list[dict[str, float]]] = defaultdict(list)
    for c in cells:
        if c["attack"] is not None or not c.get("defense") or not c.get("explain"):
            continue
        for method in c["explain"]["methods"]:
            groups[(c["task"], model_name(c), c["defense_label"], method)].append(c["metrics"])
    rows, records = [], []
    for key, runs in sorted(groups.items()):
        if not _explained([(r, None) for r in runs], "agree", key[3]):
            continue
        row = [*key, str(len(runs))]
        record: dict[str, Any] = {
            **dict(zip(("task", "model", "defense", "method"), key, strict=True)),
            "trials": len(runs),
        }
        for metric, _ in STABILITY_COLUMNS:
            summary = summarize(
                [r[metric_name("agree", key[3], metric)] for r in runs],
                bounds=(-1.0, 1.0) if metric == "spearman" else (0, 1),
            )
            row.append(summary.format())
            record.update(summary_fields(metric, summary))
        rows.append(tuple(row))
        records.append(record)
    return Table(
        "Explanations of clean inputs, defended vs undefended model (1 = the defense explains "
        "alike; mean ± SD [95% CI] over trials)",
        (
            "Task",
            "Model",
            "Defense",
            "Method",
            "Trials",
            *(label for _, label in STABILITY_COLUMNS),
        ),
        rows,
        records,
    )


def most_stable_defenses(table: Table) -> list[str]:
    """Per task and method, the defense whose explanations kept the highest mean Spearman ρ
    under attack (over its attack rows), beside the undefended model's."""
    means: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for record in table.records:
        value = record["spearman_mean"]
        if math.isfinite(value):
            means[(record["task"], record["method"])][record["defense"]].append(value)
    lines = []
    for (task, method), by_defense in sorted(means.items()):
        averages = {d: float(np.mean(v)) for d, v in by_defense.items()}
        defended = {d: v for d, v in averages.items() if d != UNDEFENDED}
        if not defended:
            continue
        best = max(defended, key=lambda d: defended[d])
        base = averages.get(UNDEFENDED, math.nan)
        lines.append(
            f"{task}, {method}: of the defenses, {best} kept explanations most stable under "
            f"attack (mean ρ {defended[best]:.3f} over its attack rows; undefended "
            f"{base:.3f})."
        )
    return lines


def explanation_panels(
    cells: list[dict[str, Any]],
    drawn: set[str],
    read: Callable[[str], list[tuple[str, bytes]]],
) -> list[FigureImage]:
    """The panels the report shows: per task, of the undefended attack (first trial) that
    succeeded most often, and of each defended twin of that attack (plain evaluation).

    Args:
        cells: the study's cells.
        drawn: ids of the cells that stored panels.
        read: a cell id -> its stored (name, PNG); called only for the panels shown.
    """
    chosen: dict[str, dict[str, Any]] = {}
    for c in cells:
        if c["cell_id"] not in drawn or c.get("defense") or c.get("source"):
            continue
        best = chosen.get(c["task"])
        rate = c["metrics"].get("success_rate", math.nan)
        if best is None or rate > best["metrics"].get("success_rate", math.nan):
            chosen[c["task"]] = c
    panels = []
    for task, pick in sorted(chosen.items()):
        shown = [pick] + [
            c
            for c in cells
            if c.get("defense")
            and not c.get("adaptive")
            and c["attack"] is not None
            and twin_key(c) == twin_key(pick)
            and c["cell_id"] in drawn
        ]
        for c in shown:
            model = model_name(c) + (f" + {c['defense_label']}" if c.get("defense") else "")
            attack = attack_label(attack_name(c), c["norm"], c["eps"], c["targeted"])
            for name, png in read(c["cell_id"]):
                panels.append(
                    FigureImage(
                        f"{name}_{c['cell_id'][:8]}",
                        f"Explanations under attack: {task}, {model}, {attack}",
                        "Per example (first trial): the input, its adversarial twin, the "
                        "perturbation (amplified to be visible) and the |attribution| maps of "
                        f"the clean and the adversarial input ({c['explain']['methods'][0]}), "
                        "both explaining the true class. A defended row explains the defended "
                        "model.",
                        png,
                    )
                )
    return panels
