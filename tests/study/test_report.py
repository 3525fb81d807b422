"""The report's analyses checked by hand on a store written here, and its HTML page checked in a
headless browser."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

from medrobust.cli import main
from medrobust.study import ResultStore, write_report
from medrobust.study.page import Document, Preformatted, render_markdown
from medrobust.study.store import CellResult, ExampleRow, TextSample
from medrobust.study.table import Table

NAMES = ["malignant <script>alert('class')</script>", "benign"]
EVIL_TEXT = "<img src=x onerror=alert(1)> patient"


def _cell(trial: int, attack: str | None, defense: str | None = None) -> dict[str, Any]:
    return {
        "task": "wisconsin",
        "model": "mlp",
        "model_label": "mlp",
        "attack": attack,
        "norm": None if attack is None else "linf",
        "eps": None if attack is None else 0.2,
        "targeted": False,
        "trial": trial,
        "defense": None if defense is None else "adversarial_training",
        "defense_label": defense,
        "adaptive": False,
        "source": None,
        "class_names": NAMES,
        "positive_class": 0,
    }


def _metrics(label: np.ndarray, clean: np.ndarray, adv: np.ndarray | None) -> dict[str, float]:
    correct = float((clean == label).mean())
    if adv is None:
        values = {"accuracy": correct, "balanced_accuracy": correct, "auc": math.nan}
        values["sensitivity"] = float((clean[label == 0] == 0).mean())
        values["specificity"] = float((clean[label == 1] == 1).mean())
        values["fnr"], values["fpr"] = 1 - values["sensitivity"], 1 - values["specificity"]
        return {f"clean_{k}": v for k, v in values.items()}
    was_right = clean == label
    return {
        "clean_accuracy": correct,
        "adv_accuracy": float((adv == label).mean()),
        "success_rate": float((adv[was_right] != label[was_right]).mean()),
    }


def write_synthetic_store(path: Path, trials: int = 6, examples: int = 60) -> list[dict[str, Any]]:
    """A store of one binary task: per trial a clean cell, an attack cell and the same attack on
    a defended model, with seeded predictions; returns the per-trial arrays for checking."""
    rng = np.random.default_rng(7)
    truth = []
    with ResultStore(path, {"name": "synthetic", "trials": trials, "seed": 0}) as store:
        for trial in range(trials):
            label = rng.integers(0, 2, examples)
            clean = np.where(rng.random(examples) < 0.9, label, 1 - label)
            adv = np.where(rng.random(examples) < 0.35 + 0.05 * trial, label, 1 - label)
            defended = np.where(rng.random(examples) < 0.7, label, 1 - label)
            truth.append({"label": label, "clean": clean, "adv": adv, "defended": defended})
            conditions = [
                (None, None, None),
                ("pgd", None, adv),
                ("pgd", "pgd-at", defended),
                (None, "pgd-at", None),
            ]
            for number, (attack, defense, predicted) in enumerate(conditions):
                rows = [
                    ExampleRow(
                        i,
                        int(label[i]),
                        int(clean[i]),
                        None if predicted is None else int(predicted[i]),
                    )
                    for i in range(examples)
                ]
                samples = [TextSample(0, "the patient is stable", EVIL_TEXT)] if number == 1 else []
                store.write(
                    CellResult(
                        f"{trial}-{number}",
                        _cell(trial, attack, defense),
                        _metrics(label, clean, predicted),
                        rows,
                        train_seconds=1.0,
                        eval_seconds=0.1,
                        samples=samples,
                        timings={"inference_ms": 0.01},
                    )
                )
    return truth


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    folder = tmp_path_factory.mktemp("synthetic")
    truth = write_synthetic_store(folder / "results.sqlite")
    write_report(folder / "results.sqlite")
    return folder, truth


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_clinical_rates_match_a_hand_count(synthetic: tuple[Path, list[dict[str, Any]]]) -> None:
    folder, truth = synthetic
    rows = {(r["defense"], r["class_name"]): r for r in _csv(folder / "clinical.csv")}
    assert set(rows) == {("undefended", NAMES[0]), ("pgd-at", NAMES[0])}  # binary: positive only
    positive = [t["label"] == 0 for t in truth]
    fnr_before = [float((t["clean"][p] != 0).mean()) for t, p in zip(truth, positive, strict=True)]
    fnr_after = [float((t["adv"][p] != 0).mean()) for t, p in zip(truth, positive, strict=True)]
    fpr_after = [float((t["adv"][~p] == 0).mean()) for t, p in zip(truth, positive, strict=True)]
    row = rows[("undefended", NAMES[0])]
    assert float(row["fnr_before_mean"]) == pytest.approx(np.mean(fnr_before))
    assert float(row["fnr_after_mean"]) == pytest.approx(np.mean(fnr_after))
    assert float(row["fpr_after_mean"]) == pytest.approx(np.mean(fpr_after))
    shift = np.subtract(fnr_after, fnr_before)
    low, high = sps.t.interval(0.95, len(shift) - 1, shift.mean(), sps.sem(shift))
    assert float(row["fnr_shift_ci_low"]) == pytest.approx(max(low, -1.0))
    assert float(row["fnr_shift_ci_high"]) == pytest.approx(min(high, 1.0))
    for name in ("fnr_before", "fnr_after", "fpr_before", "fpr_after"):  # rates stay in [0, 1]
        assert 0.0 <= float(row[f"{name}_ci_low"]) <= float(row[f"{name}_ci_high"]) <= 1.0


def test_study_tests_agree_with_scipy_and_statsmodels(
    synthetic: tuple[Path, list[dict[str, Any]]],
) -> None:
    folder, truth = synthetic
    tests = {r["family"]: r for r in _csv(folder / "tests.csv")}
    assert set(tests) == {"attack", "defense"}
    attacked = [float((t["adv"] == t["label"]).mean()) for t in truth]
    clean = [float((t["clean"] == t["label"]).mean()) for t in truth]
    defended = [float((t["defended"] == t["label"]).mean()) for t in truth]
    p_values = []
    for family, a, b in (("attack", attacked, clean), ("defense", defended, attacked)):
        row = tests[family]
        diff = np.subtract(a, b)
        normal = sps.shapiro(diff).pvalue >= 0.05
        assert float(row["normality_p"]) == pytest.approx(sps.shapiro(diff).pvalue, abs=1e-9)
        expected = sps.ttest_rel(a, b).pvalue if normal else sps.wilcoxon(a, b).pvalue
        assert row["test"] == ("paired t" if normal else "wilcoxon")
        assert float(row["p"]) == pytest.approx(expected, rel=1e-6)
        assert float(row["dz"]) == pytest.approx(diff.mean() / diff.std(ddof=1), rel=1e-9)
        p_values.append(float(row["p"]))
        first = truth[0]
        if family == "attack":
            right_a, right_b = first["adv"] == first["label"], first["clean"] == first["label"]
        else:
            right_a, right_b = first["defended"] == first["label"], first["adv"] == first["label"]
        table = [
            [int((right_a & right_b).sum()), int((right_a & ~right_b).sum())],
            [int((~right_a & right_b).sum()), int((~right_a & ~right_b).sum())],
        ]
        discordant = table[0][1] + table[1][0]
        reference = mcnemar(table, exact=discordant < 25, correction=True).pvalue
        assert int(row["mcnemar_significant_trials"]) >= int(reference < 0.05)
        assert float(row["mcnemar_max_p"]) >= reference - 1e-12
    holm = multipletests(p_values, method="holm")[1]
    for family, adjusted in zip(("attack", "defense"), holm, strict=True):
        assert float(tests[family]["p_holm"]) == pytest.approx(adjusted, rel=1e-9)


def test_report_escapes_strings_from_data(synthetic: tuple[Path, list[dict[str, Any]]]) -> None:
    folder, _ = synthetic
    html = (folder / "report.html").read_text()
    assert "<script" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(" in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    markdown = (folder / "report.md").read_text()  # Markdown viewers may render raw HTML
    assert "<script" not in markdown and "<img src=x" not in markdown
    assert "&lt;script&gt;alert(" in markdown and "&lt;img src=x onerror=alert(1)&gt;" in markdown


def test_strings_from_data_cannot_break_tables_fences_or_spreadsheets() -> None:
    table = Table(
        "t <b>", ("model", "x"), [("a|b\nc\x1b[2J", "1")], [{"model": "=HYPERLINK(1)", "x": -1}]
    )
    assert "| a\\|b c[2J | 1 |" in table.markdown() and "t &lt;b&gt;" in table.markdown()
    assert table.csv().splitlines()[1] == "'=HYPERLINK(1),-1"  # a formula is text; -1 a number
    fenced = render_markdown(Document("d", [Preformatted("```\n<script>")], []))
    assert "````\n```\n<script>\n````" in fenced  # the fence outlasts the text's backticks


def test_report_files_are_complete(synthetic: tuple[Path, list[dict[str, Any]]]) -> None:
    folder, _ = synthetic
    for name in (
        "report.md",
        "report.html",
        "success_rates.csv",
        "clean.csv",
        "attacks.csv",
        "clinical.csv",
        "defenses.csv",
        "tests.csv",
    ):
        assert (folder / name).stat().st_size > 0, name
    markdown = (folder / "report.md").read_text()
    for heading in ("Validation summary", "Attacks", "Clinical error rates", "Defenses"):
        assert f"## {heading}" in markdown
    assert "Attack success rate, wisconsin" in markdown
    assert "Not declared in the study config" in markdown  # no run recorded an intended use
    assert not list(folder.glob("**/*.tmp*"))  # atomic writes leave no temporaries


CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
# Added to a copy of the page for the test only (the report itself has no script): after load,
# it records how many tables and decoded images the browser laid out.
PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  const shown = images.filter((i) => i.complete && i.naturalWidth > 0 && i.width > 0);
  const tables = [...document.querySelectorAll("table")].filter((t) => t.offsetHeight > 0);
  document.title = "probe " + JSON.stringify(
    {images: images.length, shown: shown.length, tables: tables.length,
     width: document.documentElement.scrollWidth});
});
</script>"""


def chromium() -> str | None:
    """The headless browser: Debian's chromium (installed by .ci/run), or $CHROMIUM."""
    return (
        os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    )


@pytest.mark.skipif(chromium() is None, reason="Chromium is not installed (.ci/run installs it)")
def test_report_renders_in_headless_chromium(
    synthetic: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    folder, _ = synthetic
    page = tmp_path / "probe.html"
    page.write_text((folder / "report.html").read_text().replace("</body>", PROBE + "</body>"))
    result = subprocess.run(
        [
            str(chromium()),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    title = re.search(r"<title>probe (\{.*?\})</title>", result.stdout)
    assert title, result.stdout[:500] + result.stderr[-2000:]
    seen = json.loads(title.group(1).replace("&quot;", '"'))
    figures = len(list((folder / "figures").glob("*.png")))
    assert figures >= 3
    assert seen["images"] == figures and seen["shown"] == figures  # every figure decoded
    markdown_tables = (folder / "report.md").read_text().count("\n|---")
    assert seen["tables"] == markdown_tables >= 8  # every table laid out


def test_cli_report_prints_the_headline_and_where_the_report_is(
    synthetic: tuple[Path, list[dict[str, Any]]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, _ = synthetic
    assert main(["report", str(folder / "results.sqlite"), "--output", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("### Results (mean over trials with 95% CI)")
    assert "wisconsin / mlp: clean accuracy" in printed
    assert f"Report: {tmp_path / 'report.html'}" in printed
    assert main(["report", str(tmp_path / "missing.sqlite")]) == 2
    assert "no results store" in capsys.readouterr().err
