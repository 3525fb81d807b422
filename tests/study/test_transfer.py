"""Transfer attacks across architectures and institutions, EOT cells, per-class flip rates."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medrobust.data.splits import share_indices
from medrobust.errors import ConfigError, ParameterError
from medrobust.study import ResultStore, parse_spec, plan_cells, run_study, write_report


def transfer_config() -> dict[str, Any]:
    """Wisconsin with an MLP on all data, a wider MLP, and MLPs of two 'institutions'."""
    training = {"epochs": 30, "patience": 5, "batch_size": 32}
    return {
        "study": {"name": "transfer", "trials": 2, "seed": 5, "max_attack_examples": 60},
        "tasks": [
            {
                "name": "wisconsin",
                "training": training,
                "models": [
                    "mlp",
                    {"name": "mlp", "label": "wide_mlp", "params": {"hidden": [128, 128]}},
                    {"name": "mlp", "train_share": [1, 2]},
                    {"name": "mlp", "train_share": [2, 2]},
                ],
            }
        ],
        "attacks": [
            {"name": "fgsm", "eps": [0.5]},
            {"name": "pgd", "params": {"steps": 10}, "eps": [0.5]},
            {"name": "pgd", "params": {"steps": 10}, "eps": [0.5], "transfer": True},
        ],
    }


def test_plan_pairs_every_source_with_every_other_target() -> None:
    cells = plan_cells(parse_spec(transfer_config()))
    transfer = [c for c in cells if c.source is not None]
    labels = {"mlp", "wide_mlp", "mlp@share1of2", "mlp@share2of2"}
    pairs = {(c.source["model_label"], c.model_label) for c in transfer if c.source is not None}
    assert pairs == {(a, b) for a in labels for b in labels if a != b}
    assert len(transfer) == 12 * 2  # 12 ordered pairs x 2 trials
    assert len({c.cell_id for c in cells}) == len(cells)
    # the institutions' models differ only by their share: different trained models
    shares = {c.training_key for c in cells if c.model_label.startswith("mlp@") and c.trial == 0}
    assert len(shares) == 2


def test_transfer_study_writes_a_transfer_matrix(data_env: Path, tmp_path: Path) -> None:
    store = run_study(parse_spec(transfer_config()), output=tmp_path)
    with ResultStore(store) as results:
        cells = results.cells()
    transfer = [c for c in cells if c["source"] is not None]
    assert transfer and all(0 <= c["metrics"]["success_rate"] <= 1 for c in transfer)
    # transferred examples are weaker than white-box ones on average, and still do harm
    white = [
        c["metrics"]["success_rate"] for c in cells if c["attack"] == "pgd" and not c["source"]
    ]
    moved = [c["metrics"]["success_rate"] for c in transfer]
    assert 0 < np.mean(moved) <= np.mean(white) + 0.05
    for c in cells:
        if c["attack"] is not None:  # binary task: flips counted per true class
            assert {"success_rate_positive", "success_rate_negative"} <= set(c["metrics"])
            assert c["attack_config"]["stop_when_adversarial"] is True
    paths = write_report(store)
    report = paths[0].read_text()
    assert "Transfer matrix, wisconsin: pgd (linf)" in report and "pgd from wide_mlp" in report
    with (tmp_path / "transfer.csv").open() as f:
        matrix = list(csv.DictReader(f))
    kinds = {(r["source"], r["target"]): r["kind"] for r in matrix}
    assert len(kinds) == 16 and kinds[("mlp", "mlp")] == "white-box"
    assert kinds[("mlp@share1of2", "mlp@share2of2")] == "transfer"


def test_institution_shares_split_patients_and_examples_disjointly() -> None:
    y = np.array([0, 1] * 50)
    groups = np.repeat(np.arange(20), 5)
    for grouping in (None, groups):
        parts = [share_indices(y, grouping, k, 3, seed=4) for k in (1, 2, 3)]
        joined = np.concatenate(parts)
        assert sorted(joined.tolist()) == list(range(100))
        assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 5
    patients = [set(groups[share_indices(y, groups, k, 3, seed=4)]) for k in (1, 2, 3)]
    assert not (patients[0] & patients[1]) and not (patients[1] & patients[2])
    with pytest.raises(ParameterError, match="Cannot split 20 patients into 30"):
        share_indices(y, groups, 1, 30, seed=0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"train_share": [3, 2]}, r"train_share must be \[part, of\]"),
        ({"train_share": [1]}, r"train_share must be \[part, of\]"),
        ({"label": "wide_mlp"}, r"each model of a task needs its own label"),
    ],
)
def test_bad_model_entries_fail_before_compute(change: dict[str, Any], message: str) -> None:
    raw = transfer_config()
    raw["tasks"][0]["models"][2] = {"name": "mlp", **change}
    with pytest.raises(ConfigError, match=message):
        parse_spec(raw)


def test_eot_cells_attack_the_expectation(data_env: Path, tmp_path: Path) -> None:
    raw = transfer_config()
    raw["study"]["trials"] = 1
    raw["tasks"][0]["models"] = ["mlp"]
    raw["attacks"] = [{"name": "pgd", "params": {"steps": 5}, "eps": [0.5], "eot": 3}]
    store = run_study(parse_spec(raw), output=tmp_path)
    with ResultStore(store) as results:
        (cell,) = [c for c in results.cells() if c["attack"] is not None]
    # a deterministic model: EOT changes the cost, not the outcome
    assert cell["eot"] == 3 and not math.isnan(cell["metrics"]["success_rate"])
    with pytest.raises(ConfigError, match=r"eot must be an integer from 1 to 1000"):
        parse_spec({**raw, "attacks": [{"name": "pgd", "eps": [0.5], "eot": 0}]})


def _cell(attack: str, rate: float, trial: int, source: str | None = None) -> dict[str, Any]:
    return {
        "task": "t",
        "model": "m",
        "model_label": "m",
        "attack": attack,
        "norm": "linf",
        "eps": 0.1,
        "targeted": False,
        "trial": trial,
        "source": None if source is None else {"model_label": source},
        "metrics": {"success_rate": rate},
    }


def test_report_flags_pgd_weaker_than_fgsm_and_transfer_stronger_than_white_box() -> None:
    from medrobust.study.report import study_masking_flags

    cells = [
        *(_cell("fgsm", 0.50, t) for t in range(3)),
        *(_cell("pgd", 0.40, t) for t in range(3)),
        *(_cell("pgd", 0.45, t, source="other") for t in range(3)),
    ]
    flags = study_masking_flags(cells)
    assert flags[("t", "m", "pgd", "linf", 0.1, False)] == [
        "weaker than FGSM",
        "transfer from other stronger",
    ]
    healthy = [*cells[:3], *(_cell("pgd", 0.6, t) for t in range(3)), *cells[6:]]
    assert not study_masking_flags(healthy)
