"""The validation summary at the head of the report, in the form a regulatory submission asks
for: intended use, data, threat model, results with uncertainty, limitations, reproducibility.

Everything is read from the store (the study config, each run's provenance and the cells) and
from the report's own tables, so the summary cannot disagree with the tables below it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from medrobust.study import treatment_report
from medrobust.study.analysis import UNDEFENDED, StudyTest, attack_label, model_name
from medrobust.study.page import Block, Bullets, Heading, Paragraph, Preformatted, Section
from medrobust.study.table import Table

HEADLINE = "Results (mean over trials with 95% CI)"
NOT_DECLARED = (
    "Not declared in the study config (set intended_use in its [study] table). This report "
    "measures robustness to adversarial input; it is not evidence of diagnostic performance."
)


def _ci(record: Mapping[str, Any], prefix: str) -> str:
    """``0.812 [0.790, 0.834]`` from a record's summary fields."""
    mean, low, high = (
        record.get(f"{prefix}_{part}", math.nan) for part in ("mean", "ci_low", "ci_high")
    )
    if math.isnan(mean):
        return "n/a"
    if math.isnan(low):
        return f"{mean:.3f}"
    return f"{mean:.3f} [95% CI {low:.3f}, {high:.3f}]"


def _data(
    study: dict[str, Any], cells: list[dict[str, Any]], runs: list[dict[str, Any]]
) -> list[Block]:
    tasks: dict[str, dict[str, Any]] = {}
    for c in cells:
        tasks.setdefault(c["task"], c)
    items = []
    for task, cell in sorted(tasks.items()):
        names = cell.get("class_names") or []
        positive = cell.get("positive_class")
        declared = (
            f"positive class {positive} ({names[positive]})"
            if positive is not None and positive < len(names)
            else "positive class not recorded"
        )
        classes = ", ".join(f"{i} = {n}" for i, n in enumerate(names)) or "not recorded"
        models = sorted({model_name(c) for c in cells if c["task"] == task})
        items.append(f"{task}: classes {classes}; {declared}; models {', '.join(models)}.")
    treatment = study.get("treatment")
    if treatment:
        items.append(
            "t1d_dosing (insulin dosing): simglucose's UVa/Padova virtual patients, evaluated "
            f"{', '.join(treatment['patients'])}; the policy learned from "
            f"{', '.join(treatment['training_patients'])}; seeded meal scenarios and sensor "
            "noise, episodes of "
            f"{treatment['hours']:g} h."
        )
    blocks: list[Block] = [Bullets(tuple(items))]
    if cells:
        blocks.append(
            Paragraph(
                f"Each attack cell attacks a seeded subset of at most "
                f"{study.get('max_attack_examples', '?')} test examples per trial (the same "
                "examples for every attack, model and defense of a trial, so comparisons are "
                "paired); clean metrics use the whole test split. Splits are the datasets' "
                "official ones where they exist, else seeded stratified re-splits."
            )
        )
    files = {f["path"]: f for run in runs for f in run.get("data_files", [])}
    if files:
        blocks.append(
            Table(
                "Data files read (checksums verified before use)",
                ("File", "Checksum", "Source"),
                [(f["path"], f["checksum"], f["url"]) for f in files.values()],
                list(files.values()),
            )
        )
    elif not cells and treatment:
        blocks.append(
            Paragraph(
                "No data files: the virtual patients ship in simglucose (its version is listed "
                "under Reproducibility)."
            )
        )
    else:
        blocks.append(Paragraph("Data file checksums: not recorded in this store."))
    return blocks


def _eps_text(eps: Any) -> str:
    if isinstance(eps, Mapping):
        return "; ".join(
            f"{scope}: {', '.join(f'{e:g}' for e in values)}" for scope, values in eps.items()
        )
    return ", ".join(f"{e:g}" for e in eps) if isinstance(eps, Sequence) else str(eps)


def _threat_model(study: dict[str, Any]) -> list[Block]:
    items = []
    for attack in study.get("attacks", []):
        kind = (
            "transfer from the other models of the task" if attack.get("transfer") else "white-box"
        )
        aim = (
            "targeted at the clinically harmful misreading"
            if attack.get("targeted")
            else "untargeted"
        )
        params = ", ".join(f"{k}={v}" for k, v in sorted(attack.get("params", {}).items()))
        items.append(
            f"{attack['name']} ({attack.get('norm', 'linf')}), {kind}, {aim}; budgets "
            f"{_eps_text(attack.get('eps', {}))}" + (f"; {params}" if params else "")
        )
    for attack in (study.get("treatment") or {}).get("attacks", []):
        kind = "transfer from a surrogate policy" if attack.get("transfer") else "white-box"
        items.append(
            f"t1d_dosing sensor attack {attack['label']} ({attack['name']}), {kind}, towards "
            f"{' and '.join(attack['directions'])}; budgets "
            f"{', '.join(f'{e:g}' for e in attack['eps'])} mg/dL per CGM reading"
        )
    defenses = []
    for entry in study.get("defenses", []):
        defenses.append(f"{entry.get('label') or entry['name']} ({entry['name']})")
    for entry in (study.get("treatment") or {}).get("defenses", []):
        defenses.append(f"{entry['label']} ({entry['name']}, insulin dosing)")
    blocks: list[Block] = [
        Paragraph(
            "The attacker perturbs the digital input within a norm ball of radius eps in the "
            "input's own units (images in [0, 1], ECG in its recorded units, tabular features "
            "standardised, text as token substitutions or embedding perturbations) and knows the "
            "model's weights and gradients (white-box), or only a surrogate's (transfer). "
            "Defenses that randomize or break gradients are also attacked adaptively (EOT, BPDA); "
            "those rows are the honest robustness."
        ),
        Bullets(tuple(items)),
    ]
    if study.get("treatment"):
        blocks.append(
            Paragraph(
                "Insulin dosing (t1d_dosing): the attacker sits between the glucose sensor and "
                "the dosing controller and rewrites the CGM readings the controller receives, by "
                "at most eps mg/dL per reading and within the sensor's 39–400 mg/dL; the true "
                "glucose and the insulin delivered are not touched. FGSM and PGD know the "
                "policy's weights (or a surrogate's); the bias is a constant offset that needs "
                "no gradient. The smoothing defense is also attacked adaptively (EOT)."
            )
        )
    if defenses:
        blocks.append(Paragraph("Defenses evaluated: " + ", ".join(defenses) + "."))
    return blocks


def _lowest(
    records: Sequence[Mapping[str, Any]], field: str
) -> dict[tuple[str, str], Mapping[str, Any]]:
    best: dict[tuple[str, str], Mapping[str, Any]] = {}
    for r in records:
        key = (r["task"], r["model"])
        value = r.get(f"{field}_mean", math.nan)
        if math.isnan(value):
            continue
        if key not in best or value < best[key][f"{field}_mean"]:
            best[key] = r
    return best


def headline(tables: Mapping[str, Table], tests: Mapping[tuple[Any, ...], StudyTest]) -> list[str]:
    """The results a reader needs first, with their uncertainty: per undefended model its clean
    accuracy, its worst-case robust accuracy at the strongest budget, the largest rise in its
    false-negative rate; per defended model the defense that kept most accuracy under attack."""
    clean = {(r["task"], r["model"]): r for r in tables["clean"].records}
    worst = _lowest(tables["worst_case"].records, "worst_case_accuracy")
    fnr: dict[tuple[str, str], Mapping[str, Any]] = {}
    for r in tables["clinical"].records:
        if r["defense"] != UNDEFENDED or r["targeted"]:
            continue
        key = (r["task"], r["model"])
        value = r.get("fnr_shift_mean", math.nan)
        if not math.isnan(value) and (key not in fnr or value > fnr[key]["fnr_shift_mean"]):
            fnr[key] = r
    lines = []
    for key in sorted(clean):
        task, model = key
        parts = [f"{task} / {model}: clean accuracy {_ci(clean[key], 'accuracy')}"]
        if key in worst:
            w = worst[key]
            parts.append(
                f"worst case over attacks at {w['norm']} eps={w['eps']:g}: "
                f"{_ci(w, 'worst_case_accuracy')}"
            )
        if key in fnr:
            f = fnr[key]
            parts.append(
                f"largest FNR rise ({f['class_name']}, "
                f"{attack_label(f['attack'], f['norm'], f['eps'])}): "
                f"{_ci(f, 'fnr_shift')}"
            )
        lines.append("; ".join(parts) + ".")
    defended: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    records = tables["defenses"].records
    adaptive = {
        (o["task"], o["model"], o["defense"]) for o in records if o["evaluation"] != "plain"
    }
    for r in records:
        if r["targeted"] or " from " in str(r["attack"]):
            continue
        if r["evaluation"] == "plain" and (r["task"], r["model"], r["defense"]) in adaptive:
            continue  # a defense with an adaptive attacker is judged by it
        defended.setdefault((r["task"], r["model"]), []).append(r)
    best: dict[tuple[str, str], Mapping[str, Any]] = {}
    for key, candidates in defended.items():
        # the attack configuration that hurt the undefended model most, then its best defense
        hardest = min(candidates, key=lambda r: r["post_attack_mean"])
        config = (hardest["attack"], hardest["norm"], hardest["eps"])
        best[key] = max(
            (r for r in candidates if (r["attack"], r["norm"], r["eps"]) == config),
            key=lambda r: r["post_defense_mean"],
        )
    for (task, model), row in sorted(best.items()):
        test_key = (
            "defense",
            task,
            model,
            row["attack"],
            row["norm"],
            row["eps"],
            row["targeted"],
            row["defense"],
            row["evaluation"],
        )
        test = tests.get(test_key)
        p = (
            f"; Holm-adjusted p = {test.p_holm:.2g}"
            if test is not None and not math.isnan(test.p_holm)
            else ""
        )
        label = attack_label(row["attack"], row["norm"], row["eps"])
        lines.append(
            f"{task} / {model}, best defense under its hardest attack, {label} "
            f"({row['evaluation']} evaluation): {row['defense']} keeps accuracy "
            f"{_ci(row, 'post_defense')} against {_ci(row, 'post_attack')} undefended{p}."
        )
    if "treatment" in tables:
        lines += treatment_report.headline(tables["treatment"], tables["treatment_tests"])
    return lines


DOSING_LIMITATION = (
    "Insulin dosing is simulated: simglucose's UVa/Padova virtual patients with its random meal "
    "scenarios and sensor and pump models, a small policy cloned from a rule-based teacher, and "
    "episodes that start at midnight. The numbers rank attacks and defenses in that simulator; "
    "they are not evidence about a real patient, sensor or pump."
)


def _limitations(
    study: dict[str, Any],
    tables: Mapping[str, Table],
    tests: Mapping[tuple[Any, ...], StudyTest],
    evasion: bool = True,
) -> list[str]:
    trials = int(study.get("trials", 0) or 0)
    flagged = sum(
        1
        for r in tables["clean"].records
        if any(v for k, v in r.items() if k.startswith("masking_") and k.endswith("_trials"))
    )
    defended = {
        (r["task"], r["model"], r["defense"])
        for r in tables["defenses"].records
        if r["masking_flags"] not in ("none", "not checked")
    }
    tested = [t for t in tests.values() if not math.isnan(t.analysis.p)]
    wilcoxon = sum(
        t.analysis.comparison is not None and t.analysis.comparison.test == "wilcoxon"
        for t in tested
    )
    rejected = sum(t.reject for t in tested)
    wilcoxon_floor = 2.0 / 2**trials if trials else math.nan
    items = [
        f"{trials} independent trials per configuration (seeded retraining and resampling). "
        f"With so few, Shapiro-Wilk has little power; where it rejected normality ({wilcoxon} of "
        f"{len(tested)} tests) the Wilcoxon signed-rank test was used, which cannot give p below "
        f"{wilcoxon_floor:.3g} with {trials} trials. More trials buy significance; the 'trials "
        "for power 0.8' column says how many.",
        f"{len(tested)} paired tests are corrected together by Holm's procedure ({rejected} "
        "reject at family-wise 0.05); the McNemar tests compare conditions on the same examples "
        "within a trial and are not corrected.",
        f"{flagged} undefended model(s) and {len(defended)} defended model(s) showed "
        "gradient-masking symptoms in their clean checks; their numbers carry flags, and "
        "defenses with an adaptive attacker are judged by it.",
        "Perturbations are digital (added to the stored input); physical acquisition attacks, "
        "label noise and distribution shift are out of scope.",
        "Reference models are small and briefly trained; numbers describe these models, not a "
        "deployed device, unless the model was given through `medrobust audit`.",
        "Certified radii are in L2 of the model's input units; they bound the attacks in that "
        "norm only.",
    ]
    if not evasion:  # the paired tests of the dosing task are in its own table
        items = [
            f"{trials} independent trials per configuration (seeded retraining and meal "
            "scenarios); the dosing tests pair episodes by patient and trial."
        ]
    if study.get("treatment"):
        items.append(DOSING_LIMITATION)
    return items


def _reproducibility(study: dict[str, Any], runs: list[dict[str, Any]], cells: int) -> list[Block]:
    blocks: list[Block] = [
        Paragraph(
            f"Study {study.get('name', '?')!s}: seed {study.get('seed', '?')}, "
            f"{study.get('trials', '?')} trials, {cells} cells. Every seed is derived from the "
            "study seed and the cell's identity; the same config and seed give the same rows."
        )
    ]
    if runs:
        blocks.append(
            Bullets(
                tuple(
                    f"run started {run.get('started', '?')} on {run.get('platform', '?')}, "
                    f"device {run.get('device', '?')}: "
                    + ", ".join(f"{k} {v}" for k, v in sorted(run.get("versions", {}).items()))
                    for run in runs
                )
            )
        )
    else:
        blocks.append(Paragraph("Software versions: not recorded in this store."))
    blocks.append(Paragraph("Configuration as stored with the results:"))
    blocks.append(Preformatted(json.dumps(study, indent=2, sort_keys=True)))
    return blocks


def validation_summary(
    study: dict[str, Any],
    runs: list[dict[str, Any]],
    cells: list[dict[str, Any]],
    tables: Mapping[str, Table],
    tests: Mapping[tuple[Any, ...], StudyTest],
) -> Section:
    """The summary section; ``tables`` are the report's tables by kind (clean, worst_case,
    clinical, defenses)."""
    declared = [str(run.get("intended_use") or "") for run in runs]
    intended = next((text for text in reversed(declared) if text), NOT_DECLARED)
    blocks: list[Block] = [
        Heading("Intended use"),
        Paragraph(intended),
        Heading("Data"),
        *_data(study, cells, runs),
        Heading("Threat model"),
        *_threat_model(study),
        Heading(HEADLINE),
        Bullets(tuple(headline(tables, tests))),
        Heading("Limitations"),
        Bullets(tuple(_limitations(study, tables, tests, evasion=bool(cells)))),
        Heading("Reproducibility"),
        *_reproducibility(study, runs, len(cells)),
    ]
    return Section("Validation summary", blocks)
