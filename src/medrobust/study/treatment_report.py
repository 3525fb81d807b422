"""The report's insulin-dosing section: clinical glucose outcomes of each controller under each
sensor attack, per cohort, paired tests, overheads and the glucose-trace panels.

A treatment cell is one simulated episode of one virtual patient (simglucose's UVa/Padova
cohort) in one trial, run by a controller (the rule-based basal-bolus baseline or the learned
dosing policy, possibly defended), clean or under a sensor attack. The tables group the cells by

- the *controller*: its name with its defense's label, e.g. ``"policy + filter"``;
- the *evaluation*: ``"clean"`` or the attack, e.g. ``"pgd overdose eps=30 mg/dL"``, with
  ``" (transfer)"`` for an attack crafted on a surrogate policy and ``" (adaptive)"`` for one
  that attacks the defense itself (EOT through action smoothing);

and summarise each group over its episodes (trials x patients). Paired comparisons pair the
episodes of one patient in one trial, which share meals and sensor noise:

- an attacked episode with its clean twin (same controller and defense);
- a defended episode with the undefended controller's episode under the same attack (an adaptive
  attack is compared with the undefended controller under the plain attack; a clean defended
  episode with the clean undefended one, which is the defense's cost without attack);
- the clean learned policy with the clean basal-bolus controller.

Time fractions (TIR, TBR, TAR) are fractions of the episode in 0..1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from medrobust.stats import Summary, cohens_dz, holm, summarize
from medrobust.study.analysis import ALPHA, paired_test_column
from medrobust.study.figures import FigureImage, _num, _slug, _unique
from medrobust.study.table import Table, summary_fields
from medrobust.study.treatment import BASELINE, CONTROLLER_LABELS, attack_name, cohort
from medrobust.treatment import PATIENTS

CLEAN = "clean"
COHORTS = tuple(dict.fromkeys(cohort(patient) for patient in PATIENTS))
FEW_PAIRS = "n/a (fewer than 3 pairs)"
NO_SPREAD = "n/a (all differences equal)"
UNBOUNDED = (0.0, math.inf)


class Column(NamedTuple):
    """A metric of the outcome table: its key in a cell's metrics, header, interval bounds and
    digits shown."""

    metric: str
    header: str
    bounds: tuple[float, float]
    digits: int


FRACTION = (0.0, 1.0)
OUTCOME_COLUMNS = (
    Column("tir", "TIR 70–180", FRACTION, 3),
    Column("tbr70", "TBR<70", FRACTION, 3),
    Column("tbr54", "TBR<54", FRACTION, 3),
    Column("tar180", "TAR>180", FRACTION, 3),
    Column("lbgi", "LBGI", UNBOUNDED, 2),
    Column("hbgi", "HBGI", UNBOUNDED, 2),
    Column("risk_index", "Risk index", UNBOUNDED, 2),
    Column("severe_hypo_events", "Severe hypo events per episode", UNBOUNDED, 2),
    Column("insulin_units", "Insulin (U)", UNBOUNDED, 1),
    Column("sensor_error", "Sensor error seen (mg/dL)", UNBOUNDED, 1),
)
COHORT_COLUMNS = OUTCOME_COLUMNS[:2]
TESTED_COLUMNS = OUTCOME_COLUMNS[:2]


class Evaluation(NamedTuple):
    """How a treatment cell was attacked (None stands for a clean cell).

    Attributes:
        attack: the attack's label (its name unless the config gave one).
        direction: ``"overdose"`` or ``"underdose"``; empty for an attack without one.
        eps: the attack's budget in mg/dL; None for an attack without one.
        transfer: crafted on a surrogate policy.
        adaptive: crafted against the defense (EOT through the smoothing).
    """

    attack: str
    direction: str
    eps: float | None
    transfer: bool
    adaptive: bool

    def name(self) -> str:
        """``pgd overdose eps=30 mg/dL``, with `` (transfer)`` / `` (adaptive)`` after it."""
        return attack_name(self._asdict() | {"label": self.attack})

    def plain(self) -> Evaluation:
        """The same attack, not adaptive: what the undefended controller faced."""
        return self._replace(adaptive=False)

    def order(self) -> tuple[str, str, float, bool, bool]:
        """Sort key: by attack, direction, eps (none first), transfer, adaptive."""
        eps = -math.inf if self.eps is None else self.eps
        return (self.attack, self.direction, eps, self.transfer, self.adaptive)


class Arm(NamedTuple):
    """A controller with its defense, e.g. ``Arm("policy", "filter")``."""

    controller: str
    defense: str | None

    def name(self) -> str:
        """``policy``, ``policy + filter``."""
        return self.controller if self.defense is None else f"{self.controller} + {self.defense}"


RowKey = tuple[Arm, Evaluation | None]
Unit = tuple[str, int]  # (patient, trial): the episodes a paired test pairs


# ---------------------------------------------------------------------------------------------
# Reading cells


def treatment_cells(cells: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The treatment (insulin-dosing) cells of a store's cells, in their order."""
    return [c for c in cells if c.get("treatment")]


def _arm(cell: dict[str, Any]) -> Arm:
    """The cell's controller (its model label, else its controller's name) and defense label."""
    treatment = cell["treatment"]
    controller = str(treatment.get("controller") or cell.get("model") or "controller")
    name = str(cell.get("model_label") or controller.replace("_", "-"))
    defense = treatment.get("defense")
    label = None if not defense else str(defense.get("label") or defense["name"])
    return Arm(name, label)


def _evaluation(cell: dict[str, Any]) -> Evaluation | None:
    """The cell's attack; None for a clean cell."""
    attack = cell["treatment"].get("attack")
    if not attack:
        return None
    eps = _number(attack, "eps")
    return Evaluation(
        str(attack.get("label") or attack["name"]),
        str(attack.get("direction") or ""),
        None if math.isnan(eps) else eps,
        bool(attack.get("transfer")),
        bool(attack.get("adaptive")),
    )


def _evaluation_name(evaluation: Evaluation | None) -> str:
    """``clean`` or the attack's name."""
    return CLEAN if evaluation is None else evaluation.name()


def config_names(cell: dict[str, Any]) -> tuple[str, str]:
    """A treatment cell's controller with its defense and its evaluation, as the tables name
    them: e.g. ``("basal-bolus", "clean")``, ``("policy + filter", "pgd overdose eps=30 mg/dL
    (adaptive)")``."""
    return _arm(cell).name(), _evaluation_name(_evaluation(cell))


def _unit(cell: dict[str, Any]) -> Unit:
    """The cell's (patient, trial), on which paired tests pair episodes."""
    return str(cell["treatment"]["patient"]), int(cell["trial"])


def _cohort(cell: dict[str, Any]) -> str:
    """The patient's cohort (``adult`` for ``adult#001`` when the cell does not say)."""
    treatment = cell["treatment"]
    return str(treatment.get("cohort") or cohort(str(treatment["patient"])))


def _number(mapping: dict[str, Any] | None, key: str) -> float:
    """``mapping[key]`` as a float; NaN where it is missing or not a number."""
    return _num(mapping or {}, key)


def _metric(cell: dict[str, Any], key: str) -> float:
    """The cell's metric ``key``; NaN where it is missing or not a number."""
    return _number(cell.get("metrics"), key)


def _timing(cell: dict[str, Any], key: str) -> float:
    """The cell's timing ``key`` (e.g. ``controller_ms_per_step``); NaN where missing."""
    return _number(cell.get("timings"), key)


@dataclass(frozen=True)
class _Rows:
    """The treatment cells grouped by controller and evaluation, in the tables' order.

    Attributes:
        rows: (controller, evaluation) -> its cells, basal-bolus first, then the undefended
            controllers, then each defense in the order first seen; clean first within each,
            then the attacks sorted by label, direction, eps.
        baseline: the arms of the basal-bolus controller.
        defenses: defense labels in the order first seen.
    """

    rows: dict[RowKey, list[dict[str, Any]]]
    baseline: frozenset[Arm]
    defenses: tuple[str, ...]

    def arms(self) -> list[Arm]:
        """The arms in the tables' order."""
        return list(dict.fromkeys(arm for arm, _ in self.rows))


def _group(cells: list[dict[str, Any]]) -> _Rows:
    """The treatment cells of ``cells`` by controller and evaluation, in the tables' order."""
    groups: dict[RowKey, list[dict[str, Any]]] = {}
    arm_seen: dict[Arm, int] = {}
    defense_seen: dict[str, int] = {}
    baseline: set[Arm] = set()
    for c in treatment_cells(cells):
        arm = _arm(c)
        arm_seen.setdefault(arm, len(arm_seen))
        if arm.defense is not None:
            defense_seen.setdefault(arm.defense, len(defense_seen))
        if c["treatment"].get("controller") == BASELINE:
            baseline.add(arm)
        groups.setdefault((arm, _evaluation(c)), []).append(c)

    def order(key: RowKey) -> tuple[Any, ...]:
        arm, evaluation = key
        defended = arm.defense is not None
        return (
            defended,
            defense_seen[arm.defense] if arm.defense is not None else -1,
            arm not in baseline,
            arm_seen[arm],
            evaluation is not None,
            () if evaluation is None else evaluation.order(),
        )

    rows = {key: groups[key] for key in sorted(groups, key=order)}
    return _Rows(rows, frozenset(baseline), tuple(defense_seen))


class _Indexed:
    """:class:`_Rows` with the cells of each row indexed by (patient, trial) once."""

    def __init__(self, grouped: _Rows):
        self.grouped = grouped
        self.units = {key: {_unit(c): c for c in cells} for key, cells in grouped.rows.items()}

    def row(self, arm: Arm, evaluation: Evaluation | None) -> dict[Unit, dict[str, Any]]:
        """The cells of ``arm`` under ``evaluation`` by (patient, trial); empty if never run."""
        return self.units.get((arm, evaluation), {})


def _record_fields(arm: Arm, evaluation: Evaluation | None) -> dict[str, Any]:
    """The task-free CSV keys naming a row."""
    return {
        "controller": arm.controller,
        "defense": arm.defense,
        "evaluation": _evaluation_name(evaluation),
        "attack": None if evaluation is None else evaluation.attack,
        "direction": None if evaluation is None else evaluation.direction or None,
        "eps": None if evaluation is None else evaluation.eps,
        "transfer": False if evaluation is None else evaluation.transfer,
        "adaptive": False if evaluation is None else evaluation.adaptive,
    }


def _shown(summary: Summary, digits: int, unit: str) -> str:
    """``mean ± SD [95% CI]``; ``—`` without values; one value names its ``unit``."""
    if summary.n == 0:
        return "—"
    if summary.n == 1:
        return f"{summary.mean:.{digits}f} (1 {unit})"
    return summary.format(digits)


def _format(values: list[float], column: Column) -> tuple[str, dict[str, Any]]:
    """A metric's summary over episodes as a table cell and its CSV fields."""
    summary = summarize(values, bounds=column.bounds)
    return _shown(summary, column.digits, "episode"), summary_fields(column.metric, summary)


# ---------------------------------------------------------------------------------------------
# Outcomes


def outcome_table(cells: list[dict[str, Any]]) -> Table:
    """Clinical glucose outcomes per controller (with its defense) and evaluation, mean ± SD
    [95% CI] over episodes (trials x patients).

    Rows: the basal-bolus controller first, then the undefended policy (clean, then the attacks
    sorted by label, direction and eps), then each defense in the order first seen in ``cells``.
    Columns: time in range 70–180 mg/dL, below 70 and 54, above 180 (fractions of time), LBGI,
    HBGI, the risk index, severe hypoglycaemic events per episode, insulin delivered, the mean
    gap between the readings the controller saw and the true CGM, and the episodes the
    simulator stopped early (glucose outside 10–600 mg/dL).
    """
    grouped = _group(cells)
    rows: list[tuple[str, ...]] = []
    records: list[dict[str, Any]] = []
    for (arm, evaluation), runs in grouped.rows.items():
        row = [arm.name(), _evaluation_name(evaluation), str(len(runs))]
        record: dict[str, Any] = {**_record_fields(arm, evaluation), "episodes": len(runs)}
        for column in OUTCOME_COLUMNS:
            text, fields = _format([_metric(c, column.metric) for c in runs], column)
            row.append(text)
            record.update(fields)
        stopped = [_metric(c, "stopped_early") for c in runs]
        count = int(sum(s > 0 for s in stopped if not math.isnan(s)))
        row.append(str(count))
        record["stopped_early"] = count
        rows.append(tuple(row))
        records.append(record)
    return Table(
        "Insulin dosing: glucose outcomes per controller and sensor attack (mean ± SD [95% CI] "
        "over episodes = trials x patients; times as fractions of the episode)",
        (
            "Controller",
            "Evaluation",
            "Episodes",
            *(column.header for column in OUTCOME_COLUMNS),
            "Stopped early (count)",
        ),
        rows,
        records,
    )


def _cohort_order(cohort: str) -> tuple[int, str]:
    return (COHORTS.index(cohort) if cohort in COHORTS else len(COHORTS), cohort)


def cohort_table(cells: list[dict[str, Any]]) -> Table:
    """Time in range and below 70 mg/dL per patient cohort (adolescent, adult, child) for each
    row of :func:`outcome_table`, mean ± SD [95% CI] over the cohort's episodes."""
    grouped = _group(cells)
    rows: list[tuple[str, ...]] = []
    records: list[dict[str, Any]] = []
    for (arm, evaluation), runs in grouped.rows.items():
        by_cohort: dict[str, list[dict[str, Any]]] = {}
        for c in runs:
            by_cohort.setdefault(_cohort(c), []).append(c)
        for group in sorted(by_cohort, key=_cohort_order):
            episodes = by_cohort[group]
            row = [arm.name(), _evaluation_name(evaluation), group, str(len(episodes))]
            record: dict[str, Any] = {
                **_record_fields(arm, evaluation),
                "cohort": group,
                "episodes": len(episodes),
            }
            for column in COHORT_COLUMNS:
                text, fields = _format([_metric(c, column.metric) for c in episodes], column)
                row.append(text)
                record.update(fields)
            rows.append(tuple(row))
            records.append(record)
    return Table(
        "Insulin dosing by patient cohort: time in range and below 70 mg/dL (mean ± SD [95% CI] "
        "over the cohort's episodes)",
        (
            "Controller",
            "Evaluation",
            "Cohort",
            "Episodes",
            *(column.header for column in COHORT_COLUMNS),
        ),
        rows,
        records,
    )


# ---------------------------------------------------------------------------------------------
# Paired tests


@dataclass(frozen=True)
class _Comparison:
    """One row of the tests table: the episodes of ``a`` against those of ``b``, paired."""

    family: str
    a: RowKey
    b: RowKey
    pairs: list[tuple[dict[str, Any], dict[str, Any]]]


def _paired_cells(
    a: dict[Unit, dict[str, Any]], b: dict[Unit, dict[str, Any]]
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The episodes of ``a`` and ``b`` of the same patient and trial, in a fixed order."""
    return [(a[unit], b[unit]) for unit in sorted(a.keys() & b.keys())]


def _comparisons(indexed: _Indexed) -> list[_Comparison]:
    """Policy vs basal-bolus (clean), each attack vs clean, each defense vs undefended, in that
    order and in the outcome table's row order within each; comparisons with no pair are
    left out."""
    grouped = indexed.grouped
    baseline = [arm for arm in grouped.arms() if arm in grouped.baseline and arm.defense is None]
    versus: list[_Comparison] = []
    attacks: list[_Comparison] = []
    defenses: list[_Comparison] = []
    for key in grouped.rows:
        arm, evaluation = key
        mine = indexed.units[key]
        if evaluation is None and arm.defense is None and arm not in grouped.baseline:
            for base in baseline:
                other: RowKey = (base, None)
                pairs = _paired_cells(mine, indexed.row(*other))
                versus.append(_Comparison("controller vs basal-bolus", key, other, pairs))
        if evaluation is not None:
            other = (arm, None)
            pairs = _paired_cells(mine, indexed.row(*other))
            attacks.append(_Comparison("attack vs clean", key, other, pairs))
        if arm.defense is not None:
            other = (Arm(arm.controller, None), None if evaluation is None else evaluation.plain())
            pairs = _paired_cells(mine, indexed.row(*other))
            defenses.append(_Comparison("defense vs undefended", key, other, pairs))
    return [c for c in (*versus, *attacks, *defenses) if c.pairs]


def _finite_pairs(
    pairs: list[tuple[dict[str, Any], dict[str, Any]]], metric: str
) -> tuple[list[float], list[float]]:
    """``metric`` of each pair's two episodes; pairs where either is missing are dropped."""
    a, b = [], []
    for x, y in pairs:
        u, v = _metric(x, metric), _metric(y, metric)
        if math.isfinite(u) and math.isfinite(v):
            a.append(u)
            b.append(v)
    return a, b


def _test(a: list[float], b: list[float], column: Column) -> tuple[list[str], dict[str, Any]]:
    """Mean difference, paired test and d_z of ``a - b`` as table cells and CSV fields."""
    prefix = column.metric
    bounds = (-1.0, 1.0) if column.bounds == FRACTION else (-math.inf, math.inf)
    diff = summarize([x - y for x, y in zip(a, b, strict=True)], bounds=bounds)
    fields: dict[str, Any] = {f"{prefix}_pairs": len(a), **summary_fields(f"{prefix}_diff", diff)}
    if len(a) < 3:
        test_text = FEW_PAIRS
        test_fields: dict[str, Any] = {"paired_test": "none", "paired_p": math.nan}
    else:
        test_text, test_fields = paired_test_column(a, b)
        if test_fields["paired_test"] == "none":
            test_text = NO_SPREAD
    effect = cohens_dz(a, b) if len(a) >= 2 else None
    fields.update(
        {
            f"{prefix}_test": test_fields["paired_test"],
            f"{prefix}_statistic": test_fields.get("paired_statistic", math.nan),
            f"{prefix}_p": test_fields["paired_p"],
            f"{prefix}_normality_p": test_fields.get("normality_p", math.nan),
            f"{prefix}_dz": math.nan if effect is None else effect.d,
            f"{prefix}_dz_ci_low": math.nan if effect is None else effect.ci_low,
            f"{prefix}_dz_ci_high": math.nan if effect is None else effect.ci_high,
        }
    )
    cells = [
        _shown(diff, column.digits, "pair"),
        test_text,
        effect.format() if effect is not None else "n/a",
    ]
    return cells, fields


def _p_text(p: float, reject: bool) -> str:
    """``0.0031 *`` (star: rejected at family-wise 0.05), ``n/a`` without a test."""
    if math.isnan(p):
        return "n/a"
    text = "< 1e-16" if p < 1e-16 else f"{p:.2g}"
    return text + (" *" if reject else "")


def _holm_columns(ps: list[float]) -> list[tuple[float, bool]]:
    """Holm-adjusted p-values of the testable ``ps`` (NaN and not rejected elsewhere)."""
    out = [(math.nan, False)] * len(ps)
    testable = [i for i, p in enumerate(ps) if not math.isnan(p)]
    if testable:
        correction = holm([ps[i] for i in testable], alpha=ALPHA)
        for i, p, reject in zip(testable, correction.adjusted, correction.reject, strict=True):
            out[i] = (p, reject)
    return out


def outcome_tests_table(cells: list[dict[str, Any]]) -> Table:
    """Paired comparisons of TIR and TBR<70 over (patient, trial) pairs.

    Rows: the clean policy against the clean basal-bolus controller; each attacked row against
    its clean twin (same controller and defense); each defended row against the undefended
    controller under the same attack (the plain attack for an adaptive one; clean against clean,
    the defense's cost). Per metric: the mean difference ``a - b`` (mean ± SD [95% CI] over
    pairs), Student's paired t or, where Shapiro-Wilk rejects normality, Wilcoxon's signed-rank
    test, Cohen's d_z with its exact CI, and the p-value after Holm's correction across the
    table's rows of that metric (``*``: rejected at family-wise 0.05). Fewer than 3 pairs, or
    differences all equal, give no test.
    """
    comparisons = _comparisons(_Indexed(_group(cells)))
    tested = [
        [_test(*_finite_pairs(c.pairs, column.metric), column) for column in TESTED_COLUMNS]
        for c in comparisons
    ]
    adjusted = [
        _holm_columns([fields[f"{column.metric}_p"] for fields in (t[i][1] for t in tested)])
        for i, column in enumerate(TESTED_COLUMNS)
    ]
    rows: list[tuple[str, ...]] = []
    records: list[dict[str, Any]] = []
    for j, comparison in enumerate(comparisons):
        arm, evaluation = comparison.a
        other_arm, other_evaluation = comparison.b
        row = [
            comparison.family,
            arm.name(),
            _evaluation_name(evaluation),
            f"{other_arm.name()}, {_evaluation_name(other_evaluation)}",
            str(len(comparison.pairs)),
        ]
        record: dict[str, Any] = {
            "comparison": comparison.family,
            **_record_fields(arm, evaluation),
            "versus_controller": other_arm.controller,
            "versus_defense": other_arm.defense,
            "versus_evaluation": _evaluation_name(other_evaluation),
            "pairs": len(comparison.pairs),
        }
        for i, column in enumerate(TESTED_COLUMNS):
            texts, fields = tested[j][i]
            p, reject = adjusted[i][j]
            row += [*texts, _p_text(p, reject)]
            record.update(fields)
            record[f"{column.metric}_p_holm"] = p
            record[f"{column.metric}_reject"] = reject
        rows.append(tuple(row))
        records.append(record)
    header: list[str] = ["Comparison", "Controller", "Evaluation", "Compared with", "Pairs"]
    for column in TESTED_COLUMNS:
        header += [
            f"{column.header}: difference",
            f"{column.header}: paired test",
            f"{column.header}: Cohen's dz",
            f"{column.header}: p (Holm)",
        ]
    return Table(
        "Insulin dosing: paired tests over (patient, trial) pairs of episodes (difference = row "
        "minus the one compared with; Holm's correction per metric across the table)",
        tuple(header),
        rows,
        records,
    )


# ---------------------------------------------------------------------------------------------
# Overhead


def _attack_cost_name(evaluation: Evaluation) -> str:
    """The attacker an overhead column is about: ``pgd``, ``pgd (adaptive)``."""
    flags = [
        flag
        for flag, on in (("transfer", evaluation.transfer), ("adaptive", evaluation.adaptive))
        if on
    ]
    return evaluation.attack + (f" ({', '.join(flags)})" if flags else "")


def _cost(values: list[float], digits: int, unit: str) -> tuple[str, Summary]:
    """A cost column: ``—`` when nothing was measured, ``0`` when it was always zero (nothing
    ran), else mean ± SD [95% CI]."""
    summary = summarize(values, bounds=UNBOUNDED)
    if summary.n == 0:
        return "—", summary
    finite = [v for v in values if not math.isnan(v)]
    if all(v == 0 for v in finite):
        return "0", summary
    return _shown(summary, digits, unit), summary


def overhead_table(cells: list[dict[str, Any]]) -> Table:
    """Cost per controller (with its defense): the training time of its policy (mean ± SD over
    trials, one per trained policy), the controller's and the plausibility filter's
    milliseconds per simulator step in clean episodes, and the attacker's milliseconds per step
    of each attack (over the attacked episodes)."""
    grouped = _group(cells)
    attack_names = sorted(
        {_attack_cost_name(evaluation) for _, evaluation in grouped.rows if evaluation is not None}
    )
    rows: list[tuple[str, ...]] = []
    records: list[dict[str, Any]] = []
    for arm in grouped.arms():
        clean = grouped.rows.get((arm, None), [])
        attacked: dict[str, list[dict[str, Any]]] = {}
        every: list[dict[str, Any]] = []
        for (row_arm, evaluation), runs in grouped.rows.items():
            if row_arm != arm:
                continue
            every += runs
            if evaluation is not None:
                attacked.setdefault(_attack_cost_name(evaluation), []).extend(runs)
        per_trial: dict[int, float] = {}  # each trial's policy is trained once for its cells
        for c in sorted(every, key=lambda c: (int(c["trial"]), str(c["cell_id"]))):
            per_trial.setdefault(int(c["trial"]), _number(c, "train_seconds"))
        training_text, training = _cost(list(per_trial.values()), 1, "trial")
        if training_text == "0":
            training_text = "none"
        row = [arm.name(), str(len(per_trial)), training_text]
        record: dict[str, Any] = {
            "controller": arm.controller,
            "defense": arm.defense,
            "trials": len(per_trial),
            **summary_fields("train_seconds", training),
        }
        for key in ("controller_ms_per_step", "filter_ms_per_step"):
            text, summary = _cost([_timing(c, key) for c in clean], 3, "episode")
            row.append(text)
            record.update(summary_fields(key, summary))
        for name in attack_names:
            text, summary = _cost(
                [_timing(c, "attack_ms_per_step") for c in attacked.get(name, [])], 3, "episode"
            )
            row.append(text)
            record.update(summary_fields(f"attack_ms_per_step_{_slug(name)}", summary))
        rows.append(tuple(row))
        records.append(record)
    return Table(
        "Insulin dosing: overhead per controller (training seconds over trials; milliseconds "
        "per simulator step, mean ± SD [95% CI] over episodes)",
        (
            "Controller",
            "Trials",
            "Training (s)",
            "Controller ms/step (clean)",
            "Filter ms/step (clean)",
            *(f"Attack ms/step: {name}" for name in attack_names),
        ),
        rows,
        records,
    )


# ---------------------------------------------------------------------------------------------
# Glucose-trace panels


def _tir_drop(indexed: _Indexed, key: RowKey) -> tuple[float, int]:
    """Mean TIR of the clean twins minus the attacked episodes' over all pairs, and the pairs."""
    arm, _ = key
    a, b = _finite_pairs(_paired_cells(indexed.units[key], indexed.row(arm, None)), "tir")
    if not a:
        return math.nan, 0
    return float(np.mean(np.subtract(b, a))), len(a)


def glucose_trace_panels(
    cells: list[dict[str, Any]],
    drawn: set[str],
    read: Callable[[str], list[tuple[str, bytes]]],
) -> list[FigureImage]:
    """The glucose traces the report shows: of the undefended attack that lowered time in range
    most against the clean twins (mean over all trials and patients; among the attacks with a
    stored trace), then of each defended twin under that attack with a stored trace (plain
    first, then adaptive).

    Args:
        cells: the study's cells (others than treatment cells are ignored).
        drawn: ids of the cells that stored a trace (attacked cells of the first trial and
            patient).
        read: a cell id -> its stored (name, PNG); called only for the cells shown.
    """
    grouped = _group(cells)
    indexed = _Indexed(grouped)
    candidates: list[tuple[tuple[float, int], float, int, Arm, Evaluation, dict[str, Any]]] = []
    for position, ((arm, evaluation), runs) in enumerate(grouped.rows.items()):
        if evaluation is None or arm.defense is not None:
            continue
        shown = sorted((c for c in runs if c["cell_id"] in drawn), key=_unit)
        if shown:
            drop, pairs = _tir_drop(indexed, (arm, evaluation))
            # The largest drop, the first row on a tie; an attack without clean twins (NaN)
            # only when no other drew a trace.
            rank = (-math.inf if math.isnan(drop) else drop, -position)
            candidates.append((rank, drop, pairs, arm, evaluation, shown[0]))
    if not candidates:
        return []
    _, drop, pairs, arm, evaluation, pick = max(candidates, key=lambda t: t[0])
    defenses = {label: i for i, label in enumerate(grouped.defenses)}
    twins: list[tuple[tuple[int, bool], dict[str, Any]]] = []
    for c in treatment_cells(cells):
        twin_arm, twin_evaluation = _arm(c), _evaluation(c)
        if (
            c["cell_id"] in drawn
            and twin_arm.defense is not None
            and twin_arm.controller == arm.controller
            and twin_evaluation is not None
            and twin_evaluation.plain() == evaluation
            and _unit(c) == _unit(pick)
        ):
            twins.append(((defenses[twin_arm.defense], twin_evaluation.adaptive), c))
    twins.sort(key=lambda t: t[0])
    harm = (
        "the attack that lowered time in range most against the clean twins, by "
        f"{drop:.3f} on average over {pairs} episode pairs (all trials and patients)"
        if not math.isnan(drop)
        else "an attack without clean twins to measure its harm by"
    )
    panels = []
    for c in [pick, *(c for _, c in twins)]:
        controller, evaluation_text = config_names(c)
        note = ""
        if _arm(c).defense is not None:
            adaptive = bool(c["treatment"]["attack"].get("adaptive"))
            note = f" The {controller} controller under the same attack" + (
                ", crafted against its defense (adaptive)." if adaptive else "."
            )
        for _name, png in read(c["cell_id"]):
            panels.append(
                FigureImage(
                    _slug("glucose_trace", str(c["cell_id"])[:8]),
                    f"Glucose trace under attack: {c['treatment']['patient']}, {controller}, "
                    f"{evaluation_text}",
                    "True blood glucose of the attacked episode against its clean twin (same "
                    "patient, meals and sensor noise; first trial), the readings the controller "
                    "saw, and the insulin delivered; the 70–180 mg/dL target range is shaded. "
                    f"Shown: {harm}.{note}",
                    png,
                )
            )
    return _unique(panels)


def introduction(study: dict[str, Any]) -> str:
    """What the treatment section shows, from the study's stored config (``study["treatment"]``):
    the patients, how the policy was trained, the episodes and what the tests pair."""
    setting = study.get("treatment") or {}
    patients = ", ".join(setting.get("patients", [])) or "?"
    training = ", ".join(setting.get("training_patients", [])) or "?"
    return (
        "Closed-loop insulin dosing on the UVa/Padova type-1 diabetes simulator (simglucose). "
        f"A small MLP policy reads the last {setting.get('window', '?')} CGM readings (3-minute "
        "samples) with insulin on board, the announced meal and the pump settings, and was "
        "trained per trial by behaviour cloning of a basal-bolus teacher on "
        f"{setting.get('demonstrations', '?')} seeded meal scenario(s) of "
        f"{setting.get('demonstration_hours', '?')} h of the training patients ({training}). "
        f"It is evaluated on held-out patients ({patients}) in episodes of "
        f"{setting.get('hours', '?')} h, beside simglucose's basal-bolus controller. Sensor "
        "attacks change the readings the controller sees (never the true glucose), bounded by "
        "eps mg/dL per reading, towards an overdose (hypoglycaemia) or an underdose; a transfer "
        "attack is crafted on a surrogate policy, an adaptive one on the expectation over the "
        "smoothing noise. An episode and its clean twin share the patient's meals and sensor "
        "noise, so the tests pair them by (patient, trial). Outcomes are fractions of time: TIR "
        "70–180 mg/dL, TBR below 70 and 54 mg/dL, TAR above 180 mg/dL; LBGI, HBGI and the risk "
        "index after Kovatchev; a severe event is at least 15 minutes below 54 mg/dL."
    )


def _interval(record: dict[str, Any], metric: str) -> str:
    """``0.925 [95% CI 0.880, 0.970]`` of a record's summary fields."""
    mean = record.get(f"{metric}_mean", math.nan)
    low, high = record.get(f"{metric}_ci_low", math.nan), record.get(f"{metric}_ci_high", math.nan)
    if mean is None or math.isnan(mean):
        return "n/a"
    if low is None or math.isnan(low):
        return f"{mean:.3f}"
    return f"{mean:.3f} [95% CI {low:.3f}, {high:.3f}]"


def headline(outcomes: Table, tests: Table) -> list[str]:
    """The treatment results a reader needs first: the clean policy's time in range beside the
    basal-bolus controller's; the sensor attack that lowered the undefended policy's time in
    range most, with its time below 70 mg/dL and the Holm-adjusted p against the clean twins;
    and the defense that kept most time in range under that attack."""
    records = outcomes.records
    baseline_name = CONTROLLER_LABELS[BASELINE]
    policy = [r for r in records if r["controller"] != baseline_name and not r["defense"]]
    clean = next((r for r in policy if r["attack"] is None), None)
    baseline = next((r for r in records if r["controller"] == baseline_name), None)
    lines = []
    if clean is not None:
        line = f"Insulin dosing: the clean policy's time in range {_interval(clean, 'tir')}"
        if baseline is not None:
            line += f", the basal-bolus controller's {_interval(baseline, 'tir')}"
        episodes = int(clean["episodes"])
        lines.append(line + f" (over {episodes} episode{'' if episodes == 1 else 's'}).")
    attacked = [r for r in policy if r["attack"] is not None and not math.isnan(r["tir_mean"])]
    if clean is None or not attacked:
        return lines
    worst = min(attacked, key=lambda r: r["tir_mean"])
    test = next(
        (
            t
            for t in tests.records
            if t["comparison"] == "attack vs clean"
            and t["controller"] == worst["controller"]
            and not t["defense"]
            and t["evaluation"] == worst["evaluation"]
        ),
        None,
    )
    p = test.get("tir_p_holm", math.nan) if test is not None else math.nan
    lines.append(
        f"Insulin dosing, strongest sensor attack ({worst['evaluation']}): time in range "
        f"{_interval(worst, 'tir')} against {_interval(clean, 'tir')} clean, time below 70 mg/dL "
        f"{_interval(worst, 'tbr70')} against {_interval(clean, 'tbr70')}"
        + ("" if math.isnan(p) else f"; Holm-adjusted p = {p:.2g}")
        + "."
    )
    defended = [
        r
        for r in records
        if r["defense"]
        and r["attack"] == worst["attack"]
        and r["direction"] == worst["direction"]
        and r["eps"] == worst["eps"]
        and r["transfer"] == worst["transfer"]
        and not math.isnan(r["tir_mean"])
    ]
    # A defense with an adaptive attacker is judged by it.
    judged = {r["defense"] for r in defended if r["adaptive"]}
    defended = [r for r in defended if r["adaptive"] or r["defense"] not in judged]
    if defended:
        best = max(defended, key=lambda r: r["tir_mean"])
        lines.append(
            f"Insulin dosing, best defense under that attack: {best['defense']} keeps time in "
            f"range {_interval(best, 'tir')}"
            + (" (adaptive attacker)" if best["adaptive"] else "")
            + "."
        )
    return lines


def in_study_order(cells: Iterable[dict[str, Any]], study: dict[str, Any]) -> list[dict[str, Any]]:
    """The treatment cells with the defenses in the order the study config lists them (the
    tables show defenses in the order first seen), undefended cells first."""
    defenses = (study.get("treatment") or {}).get("defenses", [])
    order = {entry["label"]: i for i, entry in enumerate(defenses)}

    def rank(cell: dict[str, Any]) -> int:
        defense = cell["treatment"].get("defense")
        return -1 if defense is None else order.get(defense["label"], len(order))

    return sorted(treatment_cells(cells), key=rank)
