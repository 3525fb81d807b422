"""Training-time attacks as a study axis: poisoning cells, their metrics and the report."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from medrobust.errors import ConfigError, UnknownNameError
from medrobust.study import (
    ResultStore,
    load_spec,
    parse_spec,
    plan_cells,
    run_study,
    write_report,
)


def poisoning_config(**poisoning: Any) -> dict[str, Any]:
    """BreastMNIST with a small CNN (two trials) and a BadNets backdoor at 5 %: a white patch
    sends benign images to malignant (the backdoor of a false-alarm attacker)."""
    return {
        "study": {"name": "poisoning", "trials": 2, "seed": 0},
        "tasks": [
            {
                "name": "breastmnist",
                "models": [{"name": "small_cnn", "params": {"width": 16}}],
                "training": {"epochs": 8, "patience": 0, "batch_size": 32, "class_weight": "sqrt"},
            }
        ],
        "poisonings": [{"name": "backdoor", "rates": [0.05], "params": {"target": 0}, **poisoning}],
    }


def test_a_backdoor_study_measures_success_accuracy_and_detection(
    data_env: Path, tmp_path: Path
) -> None:
    spec = parse_spec(poisoning_config())
    cells = plan_cells(spec)
    poisoned = [c for c in cells if c.poisoning is not None]
    assert len(cells) == 2 + 2 and len(poisoned) == 2  # a clean and a poisoned cell per trial
    assert len({c.training_key for c in cells}) == 4  # each poisoned model is its own
    store = run_study(spec, output=tmp_path)
    with ResultStore(store) as results:
        stored = [c for c in results.cells() if c.get("poisoning")]
    assert len(stored) == 2
    for cell in stored:
        m = cell["metrics"]
        assert m["poisoned_rows"] == round(0.05 * 546) == 27  # 5 % of the training set
        for detector in ("spectral_signature", "activation_clustering"):
            assert 0.0 <= m[f"{detector}_recall"] <= 1.0
    paths = write_report(store)
    report = (tmp_path / "report.md").read_text()
    assert "## Training-time attacks" in report and "figures/poisoning_breastmnist.png" in report
    assert {"poisoning.csv", "poisoning_detection.csv"} <= {p.name for p in paths}
    with (tmp_path / "poisoning.csv").open() as handle:
        (attack,) = list(csv.DictReader(handle))
    with (tmp_path / "poisoning_detection.csv").open() as handle:
        detection = {r["detector"]: r for r in csv.DictReader(handle)}
    spectral = detection["spectral_signature"]
    # Measured (trials 0, 1; one thread): attack success 0.991, clean accuracy 0.843 against
    # 0.849 unpoisoned; spectral signatures find 0.963 of the poisoned rows (precision 0.63), and
    # retraining without them cuts the attack's success to 0.259.
    assert float(attack["attack_success_rate_mean"]) >= 0.9
    assert abs(float(attack["accuracy_drop_mean"])) <= 0.04
    assert float(spectral["recall_mean"]) >= 0.8
    success_after = float(spectral["attack_success_rate_mean"])
    assert success_after <= float(attack["attack_success_rate_mean"]) - 0.4
    seen: list[str] = []
    run_study(spec, output=tmp_path, on_cell=lambda r, d, t: seen.append(r.cell_id))
    assert not seen  # resumes with nothing left to do


@pytest.mark.parametrize(
    ("poisoning", "error", "message"),
    [
        (
            {"rates": [1.5]},
            ConfigError,
            r"rates must be a non-empty list of poisoning rates in \[0, 1\]",
        ),
        ({"rates": [-0.1]}, ConfigError, r"in \[0, 1\]"),
        (
            {"params": {"target": 0, "trigger": {"kind": "patch", "size": 40}}},
            ConfigError,
            "'size' parameter of PatchTrigger",
        ),
        ({"params": {"target": 7}}, ConfigError, r"'target' parameter of Backdoor must be a class"),
        ({"tasks": ["wisconsin"]}, ConfigError, "which the study does not run"),
        ({"name": "backdor"}, UnknownNameError, "Did you mean 'backdoor'"),
        ({"name": "feature_collision"}, ConfigError, "must be one of"),
        ({"params": {"trigger": {"kind": "laser"}}}, ConfigError, "trigger kind must be one of"),
        ({"params": {"rate": 0.1}}, ConfigError, "must not set 'rate'"),
        ({"detectors": ["spectral"]}, UnknownNameError, "spectral_signature"),
        ({"models": ["resnet"]}, ConfigError, "which is no model of the study"),
        ({"colour": "red"}, ConfigError, r"Unknown key\(s\) \['colour'\]"),
    ],
)
def test_bad_poisoning_configs_fail_before_any_training(
    data_env: Path,
    tmp_path: Path,
    poisoning: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    # Parsing checks what needs no data; the runner checks the rest once the files are located,
    # before training anything.
    with pytest.raises(error, match=message):
        run_study(parse_spec(poisoning_config(**poisoning)), output=tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_a_study_without_poisonings_keeps_its_identity(data_env: Path) -> None:
    raw = poisoning_config()
    del raw["poisonings"]
    assert "poisonings" not in parse_spec(raw).to_dict()  # stores of earlier studies still open
    assert all(c.poisoning is None for c in plan_cells(parse_spec(raw)))


def test_the_example_poisoning_config_is_valid() -> None:
    spec = load_spec(Path(__file__).parents[2] / "examples" / "poisoning.toml")
    poisoned = [c for c in plan_cells(spec) if c.poisoning is not None]
    assert {c.task for c in poisoned} == {"breastmnist", "ecg5000", "medical_abstracts"}
    assert len(poisoned) == 3 * (2 * 3) + 3  # backdoor: 3 tasks x 2 rates x 3 trials; flip: 3
