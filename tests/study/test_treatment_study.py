"""The treatment task in a study: the [treatment] config, its cells, a run, its resume and its
report section (issue 8)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from medrobust.errors import ConfigError
from medrobust.study.plan import plan_cells
from medrobust.study.spec import parse_spec
from medrobust.study.treatment import TREATMENT_TASK, controller_name, evaluation_name

CONFIG: dict[str, Any] = {
    "study": {"name": "dosing", "trials": 2, "seed": 3},
    "treatment": {
        "patients": ["adult#001", "child#001"],
        "training_patients": ["adult#002", "child#002"],
        "hours": 2,
        "demonstration_hours": 3,
        "policy": {"epochs": 30, "hidden": 32},
        "surrogate": {"hidden": 16},
        "attacks": [
            {"name": "pgd", "eps": [25], "params": {"steps": 5}},
            {
                "name": "fgsm",
                "label": "fgsm-transfer",
                "eps": [25],
                "directions": ["overdose"],
                "transfer": True,
            },
        ],
        "defenses": [
            {"name": "plausibility_filter", "label": "filter", "attacks": ["pgd"]},
            {
                "name": "action_smoothing",
                "label": "smoothing",
                "params": {"sigma": 15, "samples": 4},
                "attacks": ["pgd"],
                "eot": 2,
            },
        ],
    },
}


def config(**treatment: Any) -> dict[str, Any]:
    raw = copy.deepcopy(CONFIG)
    raw["treatment"].update(treatment)
    return raw


def test_a_treatment_only_study_plans_every_episode_once() -> None:
    spec = parse_spec(CONFIG)
    assert spec.tasks == () and spec.treatment is not None
    cells = plan_cells(spec)
    assert {c.task for c in cells} == {TREATMENT_TASK}
    assert len({c.cell_id for c in cells}) == len(cells)
    # per trial and patient: baseline 1; policy clean + pgd x 2 directions + transfer 1 = 4;
    # filter clean + pgd x 2 = 3; smoothing clean + pgd x 2 plain + 2 adaptive = 5.
    assert len(cells) == 2 * 2 * (1 + 4 + 3 + 5)
    names = {
        (controller_name(c.treatment or {}), evaluation_name(c.treatment or {})) for c in cells
    }
    assert ("policy + smoothing", "adult#001 pgd overdose eps=25 mg/dL (adaptive)") in names
    assert ("policy", "child#001 fgsm-transfer overdose eps=25 mg/dL (transfer)") in names
    # A clean episode and its attacked twin see the same meals and sensor noise.
    seeds = {
        (c.trial, (c.treatment or {})["patient"], (c.treatment or {})["scenario_seed"])
        for c in cells
    }
    assert len(seeds) == 2 * 2
    # Figures: first trial, first patient, attacked episodes only.
    traced = [c for c in cells if (c.treatment or {}).get("trace")]
    assert traced and all(c.trial == 0 for c in traced)
    assert all((c.treatment or {})["patient"] == "adult#001" for c in traced)
    assert all((c.treatment or {})["attack"] is not None for c in traced)


@pytest.mark.parametrize(
    ("treatment", "message"),
    [
        (
            {"patients": ["adult#11"]},
            r"treatment\.patients: .*one of adolescent#001\.\.010.*Got 'adult#11'",
        ),
        ({"patients": []}, "at least one patient"),
        ({"hours": 0}, r"treatment\.hours must be at least one 3-minute sample"),
        ({"hours": -1}, r"treatment\.hours must be a number from 0 to 336"),
        ({"demonstration_hours": 0.01}, "at least one 3-minute sample"),
        ({"attacks": [{"name": "pgd", "eps": [-5]}]}, r"eps must be a number from 0 to 400"),
        ({"attacks": [{"name": "cw", "eps": [5]}]}, r"must be one of \['fgsm', 'pgd', 'bias'\]"),
        ({"attacks": [{"name": "pgd"}]}, "needs 'eps'"),
        ({"attacks": [{"name": "pgd", "eps": [5], "directions": ["up"]}]}, "'overdose' and/or"),
        ({"attacks": [{"name": "bias", "eps": [5], "params": {"steps": 3}}]}, "steps"),
        ({"attacks": [{"name": "pgd", "eps": [5], "params": {"steps": -1}}]}, "'steps'"),
        ({"defenses": [{"name": "dropout"}]}, "plausibility_filter"),
        ({"defenses": [{"name": "plausibility_filter", "params": {"max_rate": 0}}]}, "max_rate"),
        ({"defenses": [{"name": "plausibility_filter", "attacks": ["cw"]}]}, "no attack of"),
        ({"defenses": [{"name": "plausibility_filter", "eot": 4}]}, "action_smoothing only"),
        ({"policy": {"epochs": 0}}, r"treatment\.policy\.epochs must be an integer from 1"),
        ({"policy": {"width": 3}}, "width"),
        ({"window": 1}, r"treatment\.window must be an integer from 2"),
    ],
)
def test_bad_treatment_config_fails_with_a_clear_config_error(
    treatment: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_spec(config(**treatment))


def test_a_config_needs_tasks_or_a_treatment() -> None:
    with pytest.raises(ConfigError, match=r"at least one \[\[tasks\]\] entry or a \[treatment\]"):
        parse_spec({"study": {"name": "empty"}})


def test_the_default_training_patients_are_held_out_one_per_cohort() -> None:
    raw = config(patients=["adolescent#001", "child#001", "child#002"])
    del raw["treatment"]["training_patients"]
    spec = parse_spec(raw)
    assert spec.treatment is not None
    assert spec.treatment.training_patients == ("adolescent#002", "child#003")


def test_the_treatment_leaves_the_identity_of_other_studies_unchanged() -> None:
    raw = {
        "study": {"trials": 1},
        "tasks": [{"name": "breastmnist", "models": ["small_cnn"]}],
        "attacks": [],
    }
    assert "treatment" not in parse_spec(raw).to_dict()
    both = {**raw, "treatment": CONFIG["treatment"]}
    plain_ids = {c.cell_id for c in plan_cells(parse_spec(raw))}
    assert plain_ids <= {c.cell_id for c in plan_cells(parse_spec(both))}


@pytest.fixture(scope="module")
def treatment_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("simglucose")
    from medrobust.study.runner import run_study

    out = tmp_path_factory.mktemp("treatment")
    run_study(parse_spec(CONFIG), output=out)
    return out


def test_a_run_stores_every_episode_with_outcomes_timings_and_figures(treatment_run: Path) -> None:
    from medrobust.study.store import ResultStore

    spec = parse_spec(CONFIG)
    with ResultStore(treatment_run / "results.sqlite") as store:
        cells = store.cells()
        drawn = store.figure_cell_ids()
        assert {c["cell_id"] for c in cells} == {c.cell_id for c in plan_cells(spec)}
        for c in cells:
            metrics = c["metrics"]
            assert 0.0 <= metrics["tir"] <= 1.0
            assert metrics["tir"] + metrics["tbr70"] + metrics["tar180"] == pytest.approx(1.0)
            assert metrics["insulin_units"] > 0
            assert c["timings"]["controller_ms_per_step"] > 0
            attack, defense = c["treatment"]["attack"], c["treatment"]["defense"]
            if attack is None:
                assert c["timings"]["attack_ms_per_step"] == 0
                if defense is None:  # the controller saw the true readings
                    assert metrics["sensor_error"] == 0
            elif defense is None:  # the controller saw readings up to eps from the true ones
                assert 5.0 < metrics["sensor_error"] <= attack["eps"] + 1e-4
        policy_cells = [c for c in cells if c["model"] == "dosing_policy"]
        assert all(c["train_seconds"] > 0 for c in policy_cells)
        traced = {c["cell_id"] for c in cells if c["treatment"].get("trace")}
        assert drawn == traced
        name, png = store.figures(sorted(drawn)[0])[0]
        assert name == "glucose_trace" and png.startswith(b"\x89PNG")
    # The policies and demonstrations were checkpointed for a resumed run.
    assert len(list((treatment_run / "checkpoints").glob("policy-*.pt"))) == 2 * 2
    assert len(list((treatment_run / "checkpoints").glob("demonstrations-*.pt"))) == 2 * 2


def test_an_attack_moves_the_outcomes_against_the_clean_twin(treatment_run: Path) -> None:
    from medrobust.study.store import ResultStore

    with ResultStore(treatment_run / "results.sqlite") as store:
        cells = store.cells()
    clean = {
        (c["trial"], c["treatment"]["patient"]): c["metrics"]
        for c in cells
        if c["model"] == "dosing_policy"
        and c["treatment"]["defense"] is None
        and c["treatment"]["attack"] is None
    }
    overdose = [
        c
        for c in cells
        if c["treatment"]["defense"] is None
        and (c["treatment"]["attack"] or {}).get("label") == "pgd"
        and c["treatment"]["attack"]["direction"] == "overdose"
    ]
    assert len(overdose) == 4
    insulin = [
        c["metrics"]["insulin_units"]
        - clean[(c["trial"], c["treatment"]["patient"])]["insulin_units"]
        for c in overdose
    ]
    assert min(insulin) > 0  # every overdose episode delivered more insulin than its twin


def test_a_finished_treatment_study_resumes_without_recomputing(treatment_run: Path) -> None:
    from medrobust.study.runner import run_study

    calls: list[int] = []
    run_study(parse_spec(CONFIG), output=treatment_run, on_cell=lambda *a: calls.append(1))
    assert calls == []


def test_the_report_has_the_treatment_section_tables_and_traces(treatment_run: Path) -> None:
    from medrobust.study.report import write_report

    written = write_report(treatment_run / "results.sqlite")
    report = (treatment_run / "report.md").read_text()
    assert "## Treatment plans: insulin dosing under sensor attack" in report
    assert "## Clean performance" not in report  # no classification task in this study
    assert "Insulin dosing: the clean policy's time in range" in report  # headline
    assert "t1d_dosing sensor attack pgd (pgd), white-box" in report  # threat model
    assert "and 52 insulin-dosing episodes" in report
    assert "No data files: the virtual patients ship in simglucose" in report
    assert "Insulin dosing is simulated" in report  # limitations
    assert "Each attack cell attacks a seeded subset" not in report  # no evasion cells
    for name in ("treatment", "treatment_tests", "treatment_cohorts", "treatment_overhead"):
        assert treatment_run / f"{name}.csv" in written
    outcomes = (treatment_run / "treatment.csv").read_text().splitlines()
    assert outcomes[0].startswith("controller,defense,evaluation")
    assert len(outcomes) == 1 + 1 + 4 + 3 + 5  # header, baseline, policy, filter, smoothing
    tests = (treatment_run / "treatment_tests.csv").read_text()
    assert "attack vs clean" in tests and "defense vs undefended" in tests
    assert "figures/glucose_trace_" in report
    html = (treatment_run / "report.html").read_text()
    assert "Glucose trace under attack" in html


def test_an_interrupted_treatment_study_resumes_to_the_rows_of_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    pytest.importorskip("simglucose")
    from medrobust.study.runner import run_study
    from medrobust.study.store import ResultStore

    raw = config(patients=["adult#001"], defenses=CONFIG["treatment"]["defenses"][:1])
    raw["study"]["trials"] = 1
    spec = parse_spec(raw)
    total = len(plan_cells(spec))
    run_study(spec, output=tmp_path / "whole")

    class Stop(Exception):
        pass

    def stop(_result: Any, done: int, _total: int) -> None:
        if done == 3:
            raise Stop

    with pytest.raises(Stop):
        run_study(spec, output=tmp_path / "cut", on_cell=stop)
    resumed: list[str] = []
    run_study(spec, output=tmp_path / "cut", on_cell=lambda r, *_: resumed.append(r.cell_id))
    assert len(resumed) == total - 3
    with (
        ResultStore(tmp_path / "whole" / "results.sqlite") as whole,
        ResultStore(tmp_path / "cut" / "results.sqlite") as cut,
    ):
        assert cut.result_rows() == whole.result_rows()


def test_ray_resources_may_name_the_treatment_task() -> None:
    raw = config()
    raw["study"]["resources"] = {"tasks": {TREATMENT_TASK: {"cpus": 2}}}
    spec = parse_spec(raw)
    assert spec.execution.resources_for(TREATMENT_TASK).cpus == 2
