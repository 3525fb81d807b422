"""Running studies: identical rows for identical configs, resumption, offline behaviour, CLI."""

from __future__ import annotations

import csv
import math
import sqlite3
from pathlib import Path

import pytest
import torch

from medrobust.attacks.masking import MASKING_CHECKS
from medrobust.cli import main
from medrobust.errors import DataNotFoundError, StoreError
from medrobust.study import ResultStore, load_spec, parse_spec, plan_cells, run_study, write_report
from tests.study.conftest import small_config


class _Interrupt(Exception):
    pass


def test_same_config_and_seed_give_identical_rows(
    data_env: Path, tmp_path: Path, reference_rows: tuple[list, list]
) -> None:
    spec = parse_spec(small_config())
    store = run_study(spec, output=tmp_path / "again")
    with ResultStore(store) as results:
        cells, examples = results.result_rows()
    assert (cells, examples) == reference_rows
    assert len(cells) == len(plan_cells(spec))
    # every example row of an attack cell has a perturbation within its budget
    with ResultStore(store) as results:
        for cell in results.cells():
            if cell["attack"] is None:
                continue
            rows = results.examples(cell["cell_id"])
            norm = max(r.linf if cell["norm"] == "linf" else r.l2 for r in rows if r.l2 is not None)
            assert norm <= cell["eps"] + 1e-5


def test_attack_lowers_accuracy_and_report_is_written(data_env: Path, tmp_path: Path) -> None:
    store = run_study(parse_spec(small_config()), output=tmp_path)
    with ResultStore(store) as results:
        cells = results.cells()
    for cell in cells:
        if cell["attack"] == "pgd" and cell["task"] == "wisconsin":
            assert cell["metrics"]["adv_accuracy"] < cell["metrics"]["clean_accuracy"]
    paths = write_report(store)
    report = paths[0].read_text()
    assert paths[0].name == "report.md"
    assert "| wisconsin | mlp | 2 |" in report
    assert "n/a (fewer than 3 trials)" in report  # two trials: no normality check, no test
    attacks_csv = (tmp_path / "attacks.csv").read_text()
    assert attacks_csv.startswith("task,model,attack,norm,eps,targeted,trials,clean_acc")
    assert "per-example worst case over attacks" in report
    assert "Gradient-masking flags" in report
    for section in ("Validation summary", "Clinical error rates", "Statistical tests"):
        assert f"## {section}" in report
    figures = sorted(p.name for p in (tmp_path / "figures").iterdir())
    for kind in ("accuracy_under_attack", "fnr_fpr_shift"):
        assert f"{kind}_wisconsin.png" in figures and f"{kind}_breastmnist.png" in figures
        assert f"(figures/{kind}_wisconsin.png)" in report
    html = (tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(figures)
    for cell in cells:
        if cell["attack"] is None:
            assert {cell["metrics"][f"masking_{k}"] for k in MASKING_CHECKS} <= {0.0, 1.0}
    with (tmp_path / "worst_case.csv").open() as f:
        worst = list(csv.DictReader(f))
    assert {(r["task"], r["norm"]) for r in worst} == {
        (t, n) for t in ("wisconsin", "breastmnist") for n in ("linf", "l2")
    }
    for row in worst:  # the worst case over attacks is never better than the strongest attack
        assert float(row["worst_case_accuracy_mean"]) <= float(
            row["strongest_single_attack_accuracy_mean"]
        )


def test_targeted_attacks_aim_at_the_harmful_misreading(data_env: Path, tmp_path: Path) -> None:
    raw = small_config(trials=1)
    raw["attacks"].append(
        {
            "name": "pgd",
            "targeted": True,
            "params": {"steps": 10},
            "eps": {"image": [0.03], "tabular": [0.5]},
        }
    )
    store = run_study(parse_spec(raw), output=tmp_path)
    with ResultStore(store) as results:
        targeted = [c for c in results.cells() if c["targeted"]]
        assert {c["task"] for c in targeted} == {"wisconsin", "breastmnist"}
        for cell in targeted:
            rows = results.examples(cell["cell_id"])
            # only malignant cases (label 0 in both tasks) are attacked, toward benign (1)
            assert rows and all(r.label == 0 for r in rows)
            reached = [r.adv_pred == 1 for r in rows if r.clean_pred == r.label]
            rate = cell["metrics"]["target_success_rate"]
            if reached:
                assert rate == pytest.approx(sum(reached) / len(reached))
            else:  # the model missed every malignant case: nothing left to attack
                assert math.isnan(rate)
            if cell["task"] == "wisconsin":
                assert rate > 0.2
    write_report(store)
    assert "pgd (linf, targeted)" in (tmp_path / "report.md").read_text()


def test_an_interrupted_study_resumes_without_losing_cells(
    data_env: Path, tmp_path: Path, reference_rows: tuple[list, list]
) -> None:
    spec = parse_spec(small_config())
    total = len(plan_cells(spec))

    def stop_after_five(result: object, done: int, total: int) -> None:
        if done == 5:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        run_study(spec, output=tmp_path, on_cell=stop_after_five)
    with ResultStore(tmp_path / "results.sqlite") as results:
        assert len(results.done_ids()) == 5
    seen: list[int] = []
    # the declared intended use is documentation: changing it keeps the store's finished cells
    resumed = parse_spec(small_config(intended_use="Second-reader aid, evaluated here."))
    run_study(resumed, output=tmp_path, on_cell=lambda r, done, t: seen.append(done))
    assert seen == list(range(6, total + 1))  # only the missing cells ran
    with ResultStore(tmp_path / "results.sqlite") as results:
        assert results.result_rows() == reference_rows
        runs = results.runs()  # one provenance record per run, for the validation summary
    assert len(runs) == 2
    assert [run["intended_use"] for run in runs] == ["", "Second-reader aid, evaluated here."]
    assert runs[0]["versions"]["torch"] == torch.__version__
    files = {f["path"]: f["checksum"] for f in runs[1]["data_files"]}
    assert files["medmnist/breastmnist.npz"].startswith(("md5:", "sha256:"))


def test_tabular_study_runs_with_no_data_folder_and_no_network(
    no_data_env: None, tmp_path: Path
) -> None:
    raw = small_config(trials=1)
    raw["tasks"] = raw["tasks"][:1]
    store = run_study(parse_spec(raw), output=tmp_path)
    with ResultStore(store) as results:
        clean = [c for c in results.cells() if c["attack"] is None]
    assert clean and clean[0]["metrics"]["clean_accuracy"] > 0.9


def test_default_study_without_data_lists_every_missing_file_before_compute(
    no_data_env: None, tmp_path: Path
) -> None:
    with pytest.raises(DataNotFoundError) as info:
        run_study(load_spec(), output=tmp_path / "out")
    message = str(info.value)
    for expected in (
        "medmnist/breastmnist.npz",
        "medmnist/pneumoniamnist.npz",
        "mitdb/232.dat",
        "ecg5000/ECG5000_TRAIN.txt",
        "medical-abstracts-tc/medical_tc_test.csv",
    ):
        assert expected in message
    assert "https://zenodo.org/records/10519652/files/breastmnist.npz" in message
    assert "Put each file at" in message
    assert len(info.value.missing) == 2 + 90 + 1 + 2
    assert not (tmp_path / "out").exists()  # nothing was computed or written


def test_cli_reports_missing_data_in_one_message(
    no_data_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["study", "--output", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 95 data file(s) are missing")
    assert "Traceback" not in err


def test_store_refuses_foreign_files_and_other_studies(data_env: Path, tmp_path: Path) -> None:
    text_file = tmp_path / "notes.sqlite"
    text_file.write_text("not a database, and precious")
    with pytest.raises(StoreError, match="corrupt or not a SQLite file"):
        ResultStore(text_file)
    assert text_file.read_text() == "not a database, and precious"
    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE patients (id INTEGER)")
    with pytest.raises(StoreError, match="not a medrobust results store"):
        ResultStore(foreign)
    raw = small_config(trials=1)
    raw["tasks"] = raw["tasks"][:1]
    run_study(parse_spec(raw), output=tmp_path / "out")
    raw["study"]["seed"] = 4
    with pytest.raises(StoreError, match="different study config"):
        run_study(parse_spec(raw), output=tmp_path / "out")


def test_cli_tasks_listing_and_show(data_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tasks"]) == 0
    listing = capsys.readouterr().out
    for name in (
        "breastmnist",
        "pneumoniamnist",
        "mitbih",
        "ecg5000",
        "ecg5000_anomaly",
        "medical_abstracts",
        "wisconsin",
    ):
        assert name in listing
    assert main(["tasks", "show", "breastmnist"]) == 0
    shown = capsys.readouterr().out
    assert "positive class: 0 (malignant)" in shown
    assert "test  x(156, 1, 28, 28) class counts [42, 114]" in shown
    assert main(["tasks", "show", "breastmnis"]) == 2
    assert "Did you mean 'breastmnist'" in capsys.readouterr().err
