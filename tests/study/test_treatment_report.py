"""The report's insulin-dosing tables and glucose-trace panels, from small synthetic cells.

Time fractions are multiples of 1/128 so that differences are exact and "all differences
equal" is really equal.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from typing import Any

import pytest

from medrobust.study.treatment_report import (
    cohort_table,
    config_names,
    glucose_trace_panels,
    headline,
    in_study_order,
    outcome_table,
    outcome_tests_table,
    overhead_table,
    treatment_cells,
)

PATIENTS = ("adult#001", "child#001")
TRIALS = (0, 1)
# (patient, trial) -> a TIR offset; a configuration adds ``factor`` times it, so differences
# between configurations of different factors vary over the pairs.
NOISE = {
    ("adult#001", 0): 0.0,
    ("adult#001", 1): 2 / 128,
    ("child#001", 0): -1 / 128,
    ("child#001", 1): 3 / 128,
}
PGD = {"name": "pgd", "label": "pgd", "direction": "overdose", "eps": 30.0}
FGSM = {"name": "fgsm", "label": "fgsm", "direction": "overdose", "eps": 10.0}
FILTER = {"name": "plausibility_filter", "label": "filter", "params": {}}
# name -> (controller, defense, attack, adaptive, base TIR, noise factor)
CONFIGS: dict[str, tuple[str, dict[str, Any] | None, dict[str, Any] | None, bool, float, int]] = {
    "baseline": ("basal_bolus", None, None, False, 88 / 128, 1),
    "policy": ("policy", None, None, False, 104 / 128, 1),
    "policy_pgd": ("policy", None, PGD, False, 48 / 128, 2),
    "policy_fgsm": ("policy", None, FGSM, False, 96 / 128, 0),
    "filter": ("policy", FILTER, None, False, 104 / 128, 0),
    "filter_pgd": ("policy", FILTER, PGD, False, 80 / 128, 3),
    "filter_pgd_adaptive": ("policy", FILTER, PGD, True, 64 / 128, 0),
}


def make_cell(
    config: str, patient: str, trial: int, tir: float | None = None, **metrics: float
) -> dict[str, Any]:
    """A treatment cell as ``ResultStore.cells()`` returns it."""
    controller, defense, attack, adaptive, base, factor = CONFIGS[config]
    if tir is None:
        tir = base + factor * NOISE[(patient, trial)]
    tbr70 = (1 - tir) / 2
    return {
        "cell_id": f"{config}-{patient}-{trial}",
        "task": "t1d_dosing",
        "model": "dosing_policy" if controller == "policy" else "basal_bolus",
        "model_label": "policy" if controller == "policy" else "basal-bolus",
        "trial": trial,
        "attack": None,
        "defense": None,
        "treatment": {
            "patient": patient,
            "cohort": patient.split("#")[0],
            "hours": 24.0,
            "scenario_seed": 100 * trial + PATIENTS.index(patient),
            "controller": controller,
            "defense": defense,
            "attack": None
            if attack is None
            else {**attack, "params": {}, "transfer": False, "adaptive": adaptive},
        },
        "metrics": {
            "tir": tir,
            "tbr70": tbr70,
            "tbr54": tbr70 / 4,
            "tar180": 1 - tir - tbr70,
            "lbgi": 1.0 + trial,
            "hbgi": 2.0,
            "risk_index": 3.0 + trial,
            "severe_hypo_events": float(trial),
            "mean_bg": 140.0,
            "insulin_units": 40.0 + 10 * trial,
            "sensor_error": 0.0 if attack is None else float(attack["eps"]),
            "stopped_early": 0.0,
            **metrics,
        },
        "train_seconds": 0.0 if controller == "basal_bolus" else 10.0 + trial,
        "eval_seconds": 5.0,
        "timings": {
            "controller_ms_per_step": 0.25 if controller == "policy" else 0.125,
            "filter_ms_per_step": 0.5 if defense else 0.0,
            "attack_ms_per_step": 0.0 if attack is None else (8.0 if adaptive else 2.0),
        },
    }


def study(
    configs: tuple[str, ...] = tuple(CONFIGS), trials: tuple[int, ...] = TRIALS
) -> list[dict[str, Any]]:
    return [
        make_cell(config, patient, trial)
        for config in configs
        for trial in trials
        for patient in PATIENTS
    ]


def others() -> list[dict[str, Any]]:
    """Cells of other study axes, which the treatment tables ignore."""
    return [
        {"cell_id": "img-1", "task": "breastmnist", "model": "small_cnn", "trial": 0,
         "attack": "fgsm", "defense": None, "metrics": {"clean_accuracy": 0.8}},
        {"cell_id": "img-2", "task": "breastmnist", "model": "small_cnn", "trial": 0,
         "attack": None, "defense": None, "treatment": None, "metrics": {"tir": 0.0}},
    ]  # fmt: skip


def column(table: Any, header: str) -> list[str]:
    at = table.header.index(header)
    return [row[at] for row in table.rows]


def mean_of(cells: list[dict[str, Any]], config: str, key: str) -> float:
    return float(
        statistics.mean(c["metrics"][key] for c in cells if c["cell_id"].startswith(config + "-"))
    )


def test_treatment_cells_and_config_names() -> None:
    cells = study()
    assert treatment_cells(others() + cells) == cells
    names = {c["cell_id"].rsplit("-", 2)[0]: config_names(c) for c in cells}
    assert names["baseline"] == ("basal-bolus", "clean")
    assert names["policy"] == ("policy", "clean")
    assert names["policy_pgd"] == ("policy", "pgd overdose eps=30 mg/dL")
    assert names["filter_pgd"] == ("policy + filter", "pgd overdose eps=30 mg/dL")
    assert names["filter_pgd_adaptive"] == (
        "policy + filter",
        "pgd overdose eps=30 mg/dL (adaptive)",
    )
    transfer = make_cell("policy_pgd", "adult#001", 0)
    transfer["treatment"]["attack"]["transfer"] = True
    assert config_names(transfer)[1] == "pgd overdose eps=30 mg/dL (transfer)"


def test_outcome_rows_are_ordered_and_their_numbers_are_the_means_over_episodes() -> None:
    cells = study()
    cells[0]["metrics"]["stopped_early"] = 1.0  # one basal-bolus episode stopped
    table = outcome_table(list(reversed(cells)) + others())
    assert [row[:3] for row in table.rows] == [
        ("basal-bolus", "clean", "4"),
        ("policy", "clean", "4"),
        ("policy", "fgsm overdose eps=10 mg/dL", "4"),
        ("policy", "pgd overdose eps=30 mg/dL", "4"),
        ("policy + filter", "clean", "4"),
        ("policy + filter", "pgd overdose eps=30 mg/dL", "4"),
        ("policy + filter", "pgd overdose eps=30 mg/dL (adaptive)", "4"),
    ]
    # Policy clean: 104/128 plus the mean offset 1/128.
    assert table.records[1]["tir_mean"] == pytest.approx(105 / 128)
    assert column(table, "TIR 70–180")[1].startswith(f"{105 / 128:.3f} ± ")
    for record, config in zip(
        table.records, ("baseline", "policy", "policy_fgsm", "policy_pgd"), strict=False
    ):
        for key in ("tir", "tbr70", "tar180", "lbgi", "insulin_units", "sensor_error"):
            assert record[f"{key}_mean"] == pytest.approx(mean_of(cells, config, key)), (
                config,
                key,
            )
    assert table.records[0]["insulin_units_mean"] == 45.0
    assert table.records[3]["sensor_error_sd"] == 0.0
    assert column(table, "Stopped early (count)") == ["1", "0", "0", "0", "0", "0", "0"]
    assert table.records[3] | {} == table.records[3]  # a plain dict
    pgd = table.records[3]
    assert (pgd["controller"], pgd["defense"], pgd["attack"], pgd["direction"]) == (
        "policy",
        None,
        "pgd",
        "overdose",
    )
    assert (pgd["eps"], pgd["transfer"], pgd["adaptive"], pgd["episodes"]) == (
        30.0,
        False,
        False,
        4,
    )
    assert table.records[6]["adaptive"] is True
    # Fractions: the interval is clipped to [0, 1].
    assert all(r["tbr54_ci_low"] >= 0.0 and r["tir_ci_high"] <= 1.0 for r in table.records)
    rows = list(csv.DictReader(io.StringIO(table.csv())))
    assert len(rows) == 7 and rows[0]["controller"] == "basal-bolus"


def test_the_cohort_table_splits_each_row_by_cohort() -> None:
    cells = study()
    table = cohort_table(cells + others())
    assert len(table.rows) == 2 * 7
    assert [row[:4] for row in table.rows[:4]] == [
        ("basal-bolus", "clean", "adult", "2"),
        ("basal-bolus", "clean", "child", "2"),
        ("policy", "clean", "adult", "2"),
        ("policy", "clean", "child", "2"),
    ]
    pgd_child = table.records[7]
    assert (pgd_child["evaluation"], pgd_child["cohort"]) == ("pgd overdose eps=30 mg/dL", "child")
    # 48/128 + 2 * (-1/128) and 48/128 + 2 * 3/128.
    assert pgd_child["tir_mean"] == pytest.approx((46 / 128 + 54 / 128) / 2)
    assert pgd_child["tbr70_mean"] == pytest.approx(
        statistics.mean([(1 - 46 / 128) / 2, (1 - 54 / 128) / 2])
    )


def test_the_tests_table_pairs_each_row_with_its_twin() -> None:
    table = outcome_tests_table(study() + others())
    compared = [(r[0], r[1], r[2], r[3], r[4]) for r in table.rows]
    pgd = "pgd overdose eps=30 mg/dL"
    assert compared == [
        ("controller vs basal-bolus", "policy", "clean", "basal-bolus, clean", "4"),
        ("attack vs clean", "policy", "fgsm overdose eps=10 mg/dL", "policy, clean", "4"),
        ("attack vs clean", "policy", pgd, "policy, clean", "4"),
        ("attack vs clean", "policy + filter", pgd, "policy + filter, clean", "4"),
        ("attack vs clean", "policy + filter", f"{pgd} (adaptive)", "policy + filter, clean", "4"),
        ("defense vs undefended", "policy + filter", "clean", "policy, clean", "4"),
        ("defense vs undefended", "policy + filter", pgd, f"policy, {pgd}", "4"),
        ("defense vs undefended", "policy + filter", f"{pgd} (adaptive)", f"policy, {pgd}", "4"),
    ]
    records = table.records
    mean_offset = 1 / 128
    # Differences: (base_a + f_a * offset) - (base_b + f_b * offset), averaged over the pairs.
    expected = [
        (104 - 88) / 128,
        (96 - 104) / 128 - mean_offset,
        (48 - 104) / 128 + mean_offset,
        (80 - 104) / 128 + 3 * mean_offset,
        (64 - 104) / 128,
        -mean_offset,
        (80 - 48) / 128 + mean_offset,
        (64 - 48) / 128 - 2 * mean_offset,
    ]
    assert [r["tir_diff_mean"] for r in records] == pytest.approx(expected)
    # The TBR<70 of the fixture is (1 - TIR) / 2: its differences are -1/2 of TIR's.
    assert [r["tbr70_diff_mean"] for r in records] == pytest.approx([-e / 2 for e in expected])
    drop = records[2]
    assert drop["tir_test"] in ("paired t", "wilcoxon")
    assert drop["tir_p"] < 0.01
    assert drop["tir_dz"] < -5
    # Holm over the 6 testable TIR rows (two have equal differences): the smallest p times 6.
    tested = [r["tir_p"] for r in records if not math.isnan(r["tir_p"])]
    assert len(tested) == 6 and drop["tir_p"] == min(tested)
    assert drop["tir_p_holm"] == pytest.approx(6 * drop["tir_p"])
    assert drop["tir_reject"] is True
    at = table.header.index("TIR 70–180: paired test")
    assert table.rows[2][at].startswith(("t(3) = ", "Wilcoxon"))
    assert table.header[at + 1 : at + 3] == ("TIR 70–180: Cohen's dz", "TIR 70–180: p (Holm)")
    assert table.rows[2][at + 1].startswith("dz = ")
    # Every record has the same keys, so the CSV has one header.
    assert len({tuple(r) for r in records}) == 1
    assert len(list(csv.DictReader(io.StringIO(table.csv())))) == 8


def test_equal_differences_and_few_pairs_give_no_test_without_crashing() -> None:
    # The adaptive row sits 40/128 under its clean twin in every pair (neither has noise).
    table = outcome_tests_table(study())
    adaptive = table.rows[4]
    assert adaptive[2].endswith("(adaptive)")
    assert "n/a (all differences equal)" in adaptive
    assert table.records[4]["tir_diff_sd"] == 0.0
    assert math.isnan(table.records[4]["tir_p"]) and math.isnan(table.records[4]["tir_p_holm"])
    assert math.isnan(table.records[4]["tir_dz"])
    # One trial: 2 pairs per comparison; one patient in one trial: 1 pair.
    two = outcome_tests_table(study(trials=(0,)))
    assert all(row[4] == "2" for row in two.rows)
    assert all("n/a (fewer than 3 pairs)" in row for row in two.rows)
    assert all(math.isnan(r["tir_p_holm"]) for r in two.records)
    one = outcome_tests_table([make_cell(c, "adult#001", 0) for c in ("policy", "policy_pgd")])
    assert len(one.rows) == 1
    assert one.rows[0][5] == f"{-56 / 128:.3f} (1 pair)"
    assert "n/a" in one.rows[0][7]
    # An attacked row without its clean twin has nothing to compare.
    assert outcome_tests_table([make_cell("policy_pgd", "adult#001", 0)]).rows == []


def test_the_overhead_table_counts_one_training_per_trial() -> None:
    table = overhead_table(study() + others())
    assert table.header[-3:] == (
        "Attack ms/step: fgsm",
        "Attack ms/step: pgd",
        "Attack ms/step: pgd (adaptive)",
    )
    assert [row[:3] for row in table.rows] == [
        ("basal-bolus", "2", "none"),
        ("policy", "2", table.rows[1][2]),
        ("policy + filter", "2", table.rows[2][2]),
    ]
    policy = table.records[1]
    assert policy["train_seconds_mean"] == 10.5  # trials of 10 s and 11 s, not 12 episodes
    assert policy["train_seconds_sd"] == pytest.approx(math.sqrt(0.5))
    assert table.rows[1][2].startswith("10.5 ± 0.7 [")
    assert table.rows[0][3] == "0.125 ± 0.000 [0.125, 0.125]"
    assert table.rows[1][4] == "0"  # no filter
    assert table.rows[2][4].startswith("0.500")
    assert table.rows[1][-1] == "—"  # the undefended policy met no adaptive attack
    assert table.rows[2][-1].startswith("8.000")
    assert table.records[2]["attack_ms_per_step_pgd_adaptive_mean"] == 8.0
    assert len({tuple(r) for r in table.records}) == 1


class Reader:
    """A stand-in for the store's figure reader that records what it was asked."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, cell_id: str) -> list[tuple[str, bytes]]:
        self.calls.append(cell_id)
        return [("glucose_trace_adult_001", f"png {cell_id}".encode())]


def drawn_ids(cells: list[dict[str, Any]]) -> set[str]:
    return {
        c["cell_id"]
        for c in cells
        if c["treatment"]["attack"] and c["trial"] == 0 and c["treatment"]["patient"] == PATIENTS[0]
    }


def test_the_panels_show_the_most_harmful_attack_then_its_defended_twins() -> None:
    cells = study()
    # FGSM's drawn episode is the single worst one, but PGD harms more over all episodes.
    fgsm = next(c for c in cells if c["cell_id"] == "policy_fgsm-adult#001-0")
    fgsm["metrics"]["tir"] = 8 / 128
    read = Reader()
    panels = glucose_trace_panels(cells + others(), drawn_ids(cells), read)
    shown = ["policy_pgd-adult#001-0", "filter_pgd-adult#001-0", "filter_pgd_adaptive-adult#001-0"]
    assert read.calls == shown
    assert [p.png for p in panels] == [f"png {i}".encode() for i in shown]
    assert [p.title for p in panels] == [
        "Glucose trace under attack: adult#001, policy, pgd overdose eps=30 mg/dL",
        "Glucose trace under attack: adult#001, policy + filter, pgd overdose eps=30 mg/dL",
        "Glucose trace under attack: adult#001, policy + filter, pgd overdose eps=30 mg/dL "
        "(adaptive)",
    ]
    assert len({p.name for p in panels}) == 3
    assert all(p.name.replace("_", "").replace("-", "").isalnum() for p in panels)
    assert "first trial" in panels[0].caption and "70–180" in panels[0].caption
    assert f"{(104 - 48) / 128 - 1 / 128:.3f}" in panels[0].caption  # the mean TIR drop
    assert "adaptive" in panels[2].caption


def test_the_panels_read_only_what_they_show() -> None:
    cells = study()
    drawn = drawn_ids(cells) - {"filter_pgd_adaptive-adult#001-0"}
    read = Reader()
    glucose_trace_panels(cells, drawn, read)
    assert read.calls == ["policy_pgd-adult#001-0", "filter_pgd-adult#001-0"]
    # Without PGD's trace, the FGSM attack is the one shown; it has no defended twin.
    read = Reader()
    glucose_trace_panels(cells, drawn - {"policy_pgd-adult#001-0"}, read)
    assert read.calls == ["policy_fgsm-adult#001-0"]
    read = Reader()
    assert glucose_trace_panels(cells, set(), read) == [] and read.calls == []


def test_no_treatment_cells_give_tables_without_rows() -> None:
    for cells in ([], others()):
        for build in (outcome_table, cohort_table, outcome_tests_table, overhead_table):
            table = build(cells)
            assert table.rows == [] and table.records == [] and table.csv() == ""
            assert table.markdown().startswith("### ")
        read = Reader()
        assert glucose_trace_panels(cells, {"img-1"}, read) == [] and read.calls == []


def test_defenses_follow_the_study_config_order() -> None:
    smoothing = {"name": "action_smoothing", "label": "smoothing", "params": {}}
    cells = study(("filter", "policy"))
    for cell in study(("policy",), trials=(0,)):
        cell["cell_id"] = "0-" + cell["cell_id"]  # sorts before every filter cell
        cell["treatment"]["defense"] = smoothing
        cells.append(cell)
    config = {"treatment": {"defenses": [{"label": "smoothing"}, {"label": "filter"}]}}
    ordered = in_study_order([*others(), *sorted(cells, key=lambda c: c["cell_id"])], config)
    assert column(outcome_table(ordered), "Controller") == [
        "policy",
        "policy + smoothing",
        "policy + filter",
    ]


def test_the_headline_names_the_baseline_the_strongest_attack_and_the_best_defense() -> None:
    cells = study()
    lines = headline(outcome_table(cells), outcome_tests_table(cells))
    policy = mean_of(cells, "policy", "tir")
    baseline = mean_of(cells, "baseline", "tir")
    assert lines[0].startswith(f"Insulin dosing: the clean policy's time in range {policy:.3f}")
    assert f"the basal-bolus controller's {baseline:.3f}" in lines[0]
    assert "strongest sensor attack (pgd overdose eps=30 mg/dL)" in lines[1]
    assert f"time in range {mean_of(cells, 'policy_pgd', 'tir'):.3f}" in lines[1]
    assert "Holm-adjusted p = " in lines[1]
    # The filter is judged by its adaptive attacker, which keeps less than its plain twin.
    adaptive = mean_of(cells, "filter_pgd_adaptive", "tir")
    assert lines[2] == (
        f"Insulin dosing, best defense under that attack: filter keeps time in range "
        f"{adaptive:.3f} [95% CI {adaptive:.3f}, {adaptive:.3f}] (adaptive attacker)."
    )
    assert headline(outcome_table([]), outcome_tests_table([])) == []
