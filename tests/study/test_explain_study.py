"""Explanations as a study axis: stored per cell, drawn for the first trial, reported with the
stability table, the agreement table and panels; off by default without changing cell ids."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from medrobust.errors import ConfigError
from medrobust.study import ResultStore, parse_spec, plan_cells, run_study, write_report
from medrobust.study.explanations import ExplainSettings, parse_explain


def _config(**explain: Any) -> dict[str, Any]:
    study: dict[str, Any] = {"name": "explain", "trials": 2, "seed": 5, "max_attack_examples": 20}
    if explain:
        study["explain"] = explain
    return {
        "study": study,
        "tasks": [
            {
                "name": "breastmnist",
                "models": [{"name": "small_cnn", "params": {"width": 8}}],
                "training": {"epochs": 2, "batch_size": 64},
            }
        ],
        "attacks": [{"name": "pgd", "params": {"steps": 5}, "eps": {"image": [0.03]}}],
        "defenses": [
            {
                "name": "randomized_smoothing",
                "params": {"sigma": 0.1, "samples": 4, "n0": 20, "n": 100},
            }
        ],
    }


def test_explanations_are_off_by_default_and_leave_the_cells_alone() -> None:
    plain = plan_cells(parse_spec(_config()))
    explained = plan_cells(parse_spec(_config(examples=4)))
    assert all(c.explain is None for c in plain)
    assert "explain" not in parse_spec(_config()).to_dict()
    # the clean cell of the undefended model explains nothing; every other cell does
    assert [c.explain is not None for c in explained] == [
        not (c.attack is None and c.defense is None) for c in explained
    ]
    unchanged = {c.cell_id for c in plain} & {c.cell_id for c in explained}
    assert unchanged == {c.cell_id for c in explained if c.explain is None}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"examples": 0}, "examples must be an integer from 1"),
        ({"methods": ["lime"]}, "methods must list distinct methods"),
        ({"methods": ["saliency", "saliency"]}, "methods must list distinct methods"),
        ({"top_k": 1.5}, r"top_k must be a number in \(0, 1\]"),
        ({"colour": "red"}, "Unknown key"),
        ("yes", "must be true, false or a table"),
    ],
)
def test_bad_explain_settings_are_config_errors(raw: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_explain("study.explain", raw)
    assert parse_explain("study.explain", True) == ExplainSettings()
    assert parse_explain("study.explain", False) is None


def test_a_study_measures_draws_and_reports_explanation_stability(
    data_env: Path, tmp_path: Path
) -> None:
    methods = ["saliency", "grad_cam"]
    store = run_study(parse_spec(_config(examples=4, methods=methods)), output=tmp_path)
    with ResultStore(store) as results:
        cells = results.cells()
        figures = [
            (cell_id, name, png)
            for cell_id in results.figure_cell_ids()
            for name, png in results.figures(cell_id)
        ]
    attacked = [c for c in cells if c["attack"] is not None]
    assert len(attacked) == 2 * 3  # undefended, smoothed and smoothed-adaptive, two trials
    for cell in attacked:
        spearman = cell["metrics"]["explain_saliency_spearman"]
        overlap = cell["metrics"]["explain_saliency_top_k_overlap"]
        assert -1 <= spearman <= 1 and 0 <= overlap <= 1
        # Grad-CAM explains the plain CNN; through the smoothing wrapper it does not apply
        grad_cam = cell["metrics"]["explain_grad_cam_spearman"]
        assert math.isfinite(grad_cam) == (cell["defense"] is None), cell["defense"]
        assert cell["timings"]["explain_seconds"] > 0
    defended_clean = [c for c in cells if c["attack"] is None and c["defense"] is not None]
    assert len(defended_clean) == 2
    for cell in defended_clean:
        assert 0 < cell["metrics"]["agree_saliency_spearman"] <= 1
    # panels for the attack cells of the first trial only, one per cell (first method)
    first_trial = {c["cell_id"] for c in attacked if c["trial"] == 0}
    assert {cell_id for cell_id, _, _ in figures} == first_trial
    assert all(png.startswith(b"\x89PNG") for _, _, png in figures)
    paths = write_report(store)
    markdown = (tmp_path / "report.md").read_text()
    assert "## Explanations under attack" in markdown
    assert "of the defenses, randomized_smoothing kept explanations most stable" in markdown
    panels = [p for p in paths if p.name.startswith("explanations_breastmnist_saliency")]
    assert len(panels) == 2  # the undefended attack and its plainly attacked defended twin
    table = (tmp_path / "explanations.csv").read_text().splitlines()
    assert len(table) == 1 + 3 + 1  # saliency x 3 evaluations, grad_cam undefended only
