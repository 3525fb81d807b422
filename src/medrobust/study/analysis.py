"""Analyses of a results store that the report's tables and figures are built from.

- which cells belong together: a model's name, an attack's name, the undefended twin of a
  defended cell (same examples, attack and seed), how a defended cell was attacked;
- the study's paired tests over trials (test chosen by Shapiro-Wilk, Cohen's d_z, power,
  McNemar per example within each trial), Holm-corrected across the whole study;
- clinical error rates (FNR, FPR) before and after each attack, with and without defenses.

Everything here only reads the store.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from medrobust.defenses import DEFENSES
from medrobust.stats import McNemarTest, PairedAnalysis, analyze_paired, holm, mcnemar_test
from medrobust.study.store import ResultStore

UNDEFENDED = "undefended"
ALPHA = 0.05


def model_name(cell: dict[str, Any]) -> str:
    """The model's label in the results (its registry name unless the config gave a label)."""
    return str(cell.get("model_label") or cell["model"])


def attack_name(cell: dict[str, Any]) -> str:
    """The attack's name in the results; transfer attacks name their surrogate."""
    source = cell.get("source")
    return cell["attack"] if source is None else f"{cell['attack']} from {source['model_label']}"


def attack_label(attack: str, norm: str, eps: float | None = None, targeted: bool = False) -> str:
    """``pgd (linf, targeted) eps=0.0157``: an attack configuration as the tables name it."""
    label = f"{attack} ({norm}{', targeted' if targeted else ''})"
    return label if eps is None else f"{label} eps={eps:g}"


def paired_test_column(a: list[float], b: list[float]) -> tuple[str, dict[str, Any]]:
    """The paired test of ``a - b`` over trials as a table cell and its CSV fields: Student's
    t when Shapiro-Wilk keeps normality, Wilcoxon signed-rank when it rejects it."""
    comparison = analyze_paired(a, b).comparison
    if comparison is None:
        return "n/a (fewer than 3 trials)", {"paired_test": "none", "paired_p": math.nan}
    return comparison.format(), {
        "paired_test": comparison.test,
        "paired_statistic": comparison.statistic,
        "paired_p": comparison.p,
        "normality_p": comparison.normality_p,
    }


def undefended_cells(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cells of undefended models."""
    return [c for c in cells if c.get("defense") is None]


def twin_key(cell: dict[str, Any]) -> tuple[Any, ...]:
    """What pairs a defended cell with its undefended twin (same examples and attack seed)."""
    return (
        cell["task"],
        model_name(cell),
        attack_name(cell),
        cell["norm"],
        cell["eps"],
        cell["targeted"],
        cell["trial"],
    )


def evaluation_name(cell: dict[str, Any]) -> str:
    """How a defended cell was attacked: plainly, or by the defense's adaptive attacker."""
    if not cell.get("adaptive"):
        return "plain"
    return f"adaptive ({str(DEFENSES.get(cell['defense']).adaptive_attack).upper()})"


def undefended_twins(cells: list[dict[str, Any]]) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The undefended attack cells by :func:`twin_key`."""
    return {twin_key(c): c for c in cells if c["attack"] is not None and c.get("defense") is None}


@dataclass(frozen=True)
class Outcomes:
    """The per-example outcome of one cell, as arrays over its examples (sorted by index).

    ``adv_pred`` is -1 for clean cells, which attack nothing.
    """

    example: np.ndarray
    label: np.ndarray
    clean_pred: np.ndarray
    adv_pred: np.ndarray


class OutcomeReader:
    """Reads each cell's example rows from the store once, for every analysis that needs them
    (worst case over attacks, the study's tests, the clinical error rates)."""

    def __init__(self, store: ResultStore):
        self._store = store
        self._cache: dict[str, Outcomes] = {}

    def __call__(self, cell_id: str) -> Outcomes:
        if cell_id not in self._cache:
            rows = self._store.examples(cell_id)
            self._cache[cell_id] = Outcomes(
                np.array([r.example for r in rows], dtype=np.int64),
                np.array([r.label for r in rows], dtype=np.int64),
                np.array([r.clean_pred for r in rows], dtype=np.int64),
                np.array([-1 if r.adv_pred is None else r.adv_pred for r in rows], dtype=np.int64),
            )
        return self._cache[cell_id]


# ---------------------------------------------------------------------------------------------
# The study's paired tests
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyTest:
    """One paired comparison of the study, over trials, with per-example McNemar tests.

    Attributes:
        family: ``"attack"`` (attacked vs clean accuracy of an undefended model) or
            ``"defense"`` (accuracy under attack with vs without a defense).
        fields: The configuration compared: task, model, attack, norm, eps, targeted, and for
            the defense family also defense and evaluation.
        compared: What ``a - b`` is, in words.
        analysis: The paired test, effect size and power over trials.
        mcnemar: McNemar's test on the same examples, one per trial.
        p_holm: The test's p-value after Holm's correction across every test of the study.
        reject: Whether Holm's procedure rejects at family-wise level 0.05.
    """

    family: Literal["attack", "defense"]
    fields: dict[str, Any]
    compared: str
    analysis: PairedAnalysis
    mcnemar: tuple[McNemarTest, ...]
    p_holm: float
    reject: bool

    def mcnemar_summary(self) -> str:
        """``significant in 5/5 trials (largest p = 0.003)``."""
        tested = [m for m in self.mcnemar if not math.isnan(m.p)]
        if not tested:
            return "n/a (no discordant examples)"
        significant = sum(m.p < ALPHA for m in tested)
        return (
            f"p < {ALPHA:g} in {significant}/{len(self.mcnemar)} trials "
            f"(largest p = {max(m.p for m in tested):.2g})"
        )


def _mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> McNemarTest | None:
    return mcnemar_test(correct_a.tolist(), correct_b.tolist()) if len(correct_a) else None


def study_tests(
    cells: list[dict[str, Any]], read: Callable[[str], Outcomes]
) -> dict[tuple[Any, ...], StudyTest]:
    """Every paired comparison the report makes, keyed by ``(family, *configuration)``.

    - attack family, per undefended task x model x attack configuration: attacked accuracy
      minus clean accuracy on the attacked examples;
    - defense family, per defended model x attack configuration x evaluation: accuracy under
      attack with the defense minus without it (the undefended twin: same examples and seed).

    McNemar's test compares the two conditions example by example within each trial (on the
    examples both conditions saw). Holm's correction runs over the study's whole family of
    paired tests, so a reviewer can read each adjusted p-value without counting the tests.
    """
    twins = undefended_twins(cells)
    runs: dict[tuple[Any, ...], list[tuple[float, float, McNemarTest | None]]] = defaultdict(list)
    fields: dict[tuple[Any, ...], dict[str, Any]] = {}
    for c in sorted(cells, key=lambda c: (c["trial"], c["cell_id"])):
        if c["attack"] is None:
            continue
        config = {
            "task": c["task"],
            "model": model_name(c),
            "attack": attack_name(c),
            "norm": c["norm"],
            "eps": c["eps"],
            "targeted": c["targeted"],
        }
        mine = read(c["cell_id"])
        if c.get("defense") is None:
            key: tuple[Any, ...] = ("attack", *config.values())
            test = _mcnemar(mine.adv_pred == mine.label, mine.clean_pred == mine.label)
            runs[key].append((c["metrics"]["adv_accuracy"], c["metrics"]["clean_accuracy"], test))
            fields[key] = config
            continue
        twin = twins.get(twin_key(c))
        if twin is None:
            continue
        config = {**config, "defense": c["defense_label"], "evaluation": evaluation_name(c)}
        key = ("defense", *config.values())
        theirs = read(twin["cell_id"])
        _, mine_at, theirs_at = np.intersect1d(
            mine.example, theirs.example, assume_unique=True, return_indices=True
        )
        test = _mcnemar(
            mine.adv_pred[mine_at] == mine.label[mine_at],
            theirs.adv_pred[theirs_at] == theirs.label[theirs_at],
        )
        runs[key].append((c["metrics"]["adv_accuracy"], twin["metrics"]["adv_accuracy"], test))
        fields[key] = config
    analyses = {
        key: analyze_paired([a for a, _, _ in values], [b for _, b, _ in values])
        for key, values in runs.items()
    }
    testable = [key for key, analysis in analyses.items() if not math.isnan(analysis.p)]
    adjusted: dict[tuple[Any, ...], tuple[float, bool]] = {}
    if testable:
        correction = holm([analyses[key].p for key in testable], alpha=ALPHA)
        adjusted = {
            key: (p, reject)
            for key, p, reject in zip(testable, correction.adjusted, correction.reject, strict=True)
        }
    out = {}
    for key, analysis in analyses.items():
        family: Literal["attack", "defense"] = "attack" if key[0] == "attack" else "defense"
        compared = (
            "attacked - clean accuracy"
            if family == "attack"
            else "accuracy under attack: defended - undefended"
        )
        p_holm, reject = adjusted.get(key, (math.nan, False))
        out[key] = StudyTest(
            family,
            fields[key],
            compared,
            analysis,
            tuple(test for _, _, test in runs[key] if test is not None),
            p_holm,
            reject,
        )
    return out


# ---------------------------------------------------------------------------------------------
# Clinical error rates
# ---------------------------------------------------------------------------------------------


def _rates(label: np.ndarray, pred: np.ndarray, positive: int) -> tuple[float, float]:
    """(FNR, FPR) of ``positive`` one-vs-rest; NaN where a side has no examples."""
    pos, neg = label == positive, label != positive
    fnr = float((pred[pos] != positive).mean()) if pos.any() else math.nan
    fpr = float((pred[neg] == positive).mean()) if neg.any() else math.nan
    return fnr, fpr


def positive_classes(cell: dict[str, Any]) -> list[tuple[int, str]]:
    """The classes whose error rates the report shows for ``cell``'s task: the declared
    positive class of a binary task, every class one-vs-rest of a multi-class task."""
    names = list(cell.get("class_names") or [])
    if len(names) > 2:
        return list(enumerate(names))
    positive = int(cell.get("positive_class", 1))
    return [(positive, names[positive] if positive < len(names) else f"class {positive}")]


ClinicalKey = tuple[str, str, str, str, str, float, bool, str, str]


def clinical_runs(
    cells: list[dict[str, Any]], read: Callable[[str], Outcomes]
) -> dict[ClinicalKey, list[dict[str, float]]]:
    """FNR and FPR before and after each attack, per trial, from the example rows.

    Keyed by (task, model, defense or "undefended", attack, norm, eps, targeted, evaluation,
    class name). "Before" is the model's own clean prediction of the attacked examples (the
    defended model's, for a defense) and "after" its prediction under the attack, so a defended
    row's "after" is the error rate after the defense; the shift is after minus before, paired
    per trial.
    """
    runs: dict[ClinicalKey, list[dict[str, float]]] = defaultdict(list)
    for c in cells:
        if c["attack"] is None:
            continue
        outcome = read(c["cell_id"])
        defense = UNDEFENDED if c.get("defense") is None else str(c["defense_label"])
        evaluation = "plain" if c.get("defense") is None else evaluation_name(c)
        for positive, name in positive_classes(c):
            fnr_before, fpr_before = _rates(outcome.label, outcome.clean_pred, positive)
            fnr_after, fpr_after = _rates(outcome.label, outcome.adv_pred, positive)
            key: ClinicalKey = (
                c["task"],
                model_name(c),
                defense,
                attack_name(c),
                c["norm"],
                c["eps"],
                c["targeted"],
                evaluation,
                name,
            )
            runs[key].append(
                {
                    "fnr_before": fnr_before,
                    "fnr_after": fnr_after,
                    "fnr_shift": fnr_after - fnr_before,
                    "fpr_before": fpr_before,
                    "fpr_after": fpr_after,
                    "fpr_shift": fpr_after - fpr_before,
                }
            )
    return runs
