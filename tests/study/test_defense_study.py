"""Defenses as a study axis: the plan pairs every defended cell with its undefended twin, the run
stores pre-attack, post-attack and post-defense accuracy per trial, and the report prints the
defense-effectiveness, overhead and certification tables."""

from __future__ import annotations

import csv
import itertools
from pathlib import Path
from typing import Any

import pytest

from medrobust.defenses import DEFENSES
from medrobust.errors import MedrobustError
from medrobust.study import ResultStore, parse_spec, plan_cells, run_study, write_report
from medrobust.study.report import (
    certification_table,
    defense_anova_table,
    defense_table,
    overhead_table,
)


def defense_config() -> dict[str, Any]:
    """Wisconsin (tabular MLP) and BreastMNIST (small CNN) with every registered defense."""
    return {
        "study": {"name": "defended", "trials": 2, "seed": 3, "max_attack_examples": 60},
        "tasks": [
            {
                "name": "wisconsin",
                "models": ["mlp"],
                "training": {"epochs": 30, "patience": 5, "batch_size": 32},
            },
            {
                "name": "breastmnist",
                "models": [{"name": "small_cnn", "params": {"width": 8}}],
                "training": {"epochs": 3, "patience": 0, "batch_size": 32},
            },
        ],
        "attacks": [
            {"name": "pgd", "params": {"steps": 10}, "eps": {"tabular": [0.3], "image": [0.0157]}},
        ],
        "defenses": [
            {
                "name": "adversarial_training",
                "label": "pgd-at (class eps)",
                "params": {"policy": "class", "attack_params": {"steps": 5}},
                "overrides": {"tabular": {"eps": 0.3}, "image": {"eps": 0.0157}},
                "tasks": ["wisconsin"],
            },
            {
                "name": "trades",
                "params": {"beta": 1.0, "attack_params": {"steps": 5}},
                "overrides": {"wisconsin": {"eps": 0.3}},
                "tasks": ["wisconsin"],
            },
            {
                "name": "randomized_smoothing",
                "params": {"samples": 8, "n": 200, "radii": [0.0, 0.25, 0.5]},
                "overrides": {"tabular": {"sigma": 0.25}, "image": {"sigma": 0.12}},
                "tasks": ["wisconsin"],
            },
            {"name": "lipschitz", "params": {"bound": 2.0}, "tasks": ["wisconsin"]},
            {"name": "stochastic_activation_pruning"},
            {"name": "input_quantization"},
        ],
    }


def test_plan_pairs_defended_cells_with_their_undefended_twins() -> None:
    spec = parse_spec(defense_config())
    cells = plan_cells(spec)
    assert len({c.cell_id for c in cells}) == len(cells)
    plain = {c.undefended().cell_id: c for c in cells if c.defense is None}
    defended = [c for c in cells if c.defense is not None]
    # every registered defense is planned, on the tasks it serves only
    assert {c.defense for c in defended} == set(DEFENSES.names())
    assert {c.task for c in defended if c.defense == "input_quantization"} == {"breastmnist"}
    for cell in defended:
        twin = plain[cell.undefended().cell_id]  # same examples, attack and seed
        assert twin.attack_seed == cell.attack_seed
        retrains = DEFENSES.get(str(cell.defense)).retrains
        assert (cell.training_key != twin.training_key) == retrains
    for cell in defended:
        if cell.attack is not None:
            has_adaptive = DEFENSES.get(str(cell.defense)).adaptive_attack is not None
            modes = {
                c.adaptive
                for c in defended
                if c.defense_label == cell.defense_label and c.undefended() == cell.undefended()
            }
            assert modes == ({False, True} if has_adaptive else {False})


def test_defense_study_reports_effectiveness_overhead_and_certificates(
    data_env: Path, tmp_path: Path
) -> None:
    spec = parse_spec(defense_config())
    store = run_study(spec, output=tmp_path)
    with ResultStore(store) as results:
        cells = results.cells()
    assert len(cells) == len(plan_cells(spec))

    effect = defense_table(cells)
    rows = {(r["task"], r["defense"], r["evaluation"]): r for r in effect.records}
    evaluations = {(t, d, e != "plain") for t, d, e in rows}
    for cell in cells:
        if cell["defense"] is not None and cell["attack"] is not None:
            assert (cell["task"], cell["defense_label"], cell["adaptive"]) in evaluations
    for record in effect.records:
        assert record["trials"] == 2
        assert record["improvement_mean"] == pytest.approx(
            record["post_defense_mean"] - record["post_attack_mean"]
        )
    # Adversarial training and TRADES buy back accuracy under the attack they trained against.
    assert rows[("wisconsin", "pgd-at (class eps)", "plain")]["improvement_mean"] > 0.05
    assert rows[("wisconsin", "trades", "plain")]["improvement_mean"] > 0.05
    # The masking defenses are evaluated plainly and adaptively, and flagged.
    for defense, evaluation in (
        ("stochastic_activation_pruning", "adaptive (EOT)"),
        ("input_quantization", "adaptive (BPDA)"),
    ):
        adaptive = rows[("breastmnist", defense, evaluation)]
        assert adaptive["masking_flags"] not in ("none", "not checked")
        assert (
            adaptive["post_defense_mean"]
            <= rows[("breastmnist", defense, "plain")]["post_defense_mean"] + 0.05
        )

    # One-way ANOVA across the undefended model and its defenses, Tukey against the undefended.
    anova = [
        r
        for r in defense_anova_table(cells).records
        if (r["task"], r["attack"], r["norm"]) == ("wisconsin", "pgd", "linf")
    ]
    # undefended + AT, TRADES, smoothing, Lipschitz, SAP: one record per defense
    assert {r["defense"] for r in anova} == {
        "pgd-at (class eps)",
        "trades",
        "randomized_smoothing",
        "lipschitz",
        "stochastic_activation_pruning",
    }
    assert all((r["df_between"], r["df_within"]) == (5, 6) and 0 <= r["p"] <= 1 for r in anova)
    at = next(r for r in anova if r["defense"] == "pgd-at (class eps)")
    plain_at = rows[("wisconsin", "pgd-at (class eps)", "plain")]
    assert at["minus_undefended"] == pytest.approx(plain_at["improvement_mean"])
    assert at["ci_low"] <= at["minus_undefended"] <= at["ci_high"]

    overhead = {(r["task"], r["defense"]): r for r in overhead_table(cells).records}
    names = {c["defense_label"]: c["defense"] for c in cells if c["defense"] is not None}
    for (_, label), record in overhead.items():
        if not DEFENSES.get(names[label]).retrains:
            assert record["training_ratio_mean"] == 1.0  # it trains nothing of its own
        assert record["inference_ratio_mean"] > 0
    # PGD-5 adversarial training runs 6 forward-backward passes per batch instead of one
    assert overhead[("wisconsin", "pgd-at (class eps)")]["training_ratio_mean"] > 1.5
    # the soft smoothed classifier runs 8 noisy copies per input
    assert overhead[("wisconsin", "randomized_smoothing")]["inference_ratio_mean"] > 1.5

    certified = certification_table(cells).records
    assert {r["defense"] for r in certified} == {"randomized_smoothing", "lipschitz"}
    for defense in ("randomized_smoothing", "lipschitz"):
        curve = [r["certified_accuracy_mean"] for r in certified if r["defense"] == defense]
        assert all(0 <= v <= 1 for v in curve)
        assert all(a >= b for a, b in itertools.pairwise(curve))

    paths = write_report(store)
    names = {p.name for p in paths}
    assert {"defenses.csv", "defense_anova.csv", "overhead.csv", "certified.csv"} <= names
    with (tmp_path / "defenses.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == len(effect.records)
    report = (tmp_path / "report.md").read_text()
    assert "Defense effectiveness" in report and "Defense overhead" in report

    # a second run finds every cell done
    seen: list[str] = []
    run_study(
        spec, output=tmp_path, on_cell=lambda result, done, total: seen.append(result.cell_id)
    )
    assert not seen


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda c: c["defenses"].append({"name": "smoothng"}),
            "Did you mean 'randomized_smoothing'",
        ),
        (
            lambda c: c["defenses"][2]["overrides"]["tabular"].update(sigma=-1.0),
            r"defenses\[2\] on task 'wisconsin': The 'sigma'",
        ),
        (lambda c: c["defenses"].append({"name": "lipschitz"}), "needs its own label"),
        (
            lambda c: c["defenses"][4].update(models=["resnet"]),
            "'resnet', which is no model of the study",
        ),
        (
            lambda c: c["defenses"][5].update(tasks=["wisconsin"]),
            "does not serve",
        ),
        (lambda c: c["defenses"][0].update(when="always"), r"Unknown key\(s\) \['when'\]"),
        (lambda c: c["defenses"][0].update(attacks=["pgdd"]), "Unknown attack 'pgdd'"),
        (lambda c: c["defenses"][0]["overrides"].pop("tabular"), "'eps'"),
    ],
)
def test_bad_defense_entries_fail_before_any_compute(change: Any, message: str) -> None:
    config = defense_config()
    change(config)
    with pytest.raises(MedrobustError, match=message):  # ConfigError or UnknownNameError
        parse_spec(config)
