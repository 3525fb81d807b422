"""Study summaries read from the results store: tables in Markdown and CSV.

The report only reads the store; it never trains or attacks.
"""

from __future__ import annotations

import difflib
import html
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medrobust.atomic import output_folder, write_bytes_atomically, write_text_atomically
from medrobust.attacks.masking import MASKING_CHECKS
from medrobust.defenses import DEFENSES
from medrobust.stats import Summary, one_way_anova, summarize
from medrobust.study import treatment_report
from medrobust.study.analysis import (
    UNDEFENDED,
    OutcomeReader,
    Outcomes,
    StudyTest,
    attack_label,
    attack_name,
    clinical_runs,
    evaluation_name,
    model_name,
    paired_test_column,
    study_tests,
    twin_key,
    undefended_cells,
    undefended_twins,
)
from medrobust.study.explanations import (
    agreement_table,
    explanation_panels,
    most_stable_defenses,
    stability_table,
)
from medrobust.study.figures import (
    FigureImage,
    accuracy_under_attack_figures,
    accuracy_vs_eps_figures,
    certified_accuracy_figures,
    clinical_shift_figures,
    overhead_figures,
    poisoning_figures,
)
from medrobust.study.page import (
    FIGURES_FOLDER,
    AttackedText,
    Bullets,
    Change,
    Document,
    Paragraph,
    Section,
    render_html,
    render_markdown,
)
from medrobust.study.poisoning import poisoning_tables
from medrobust.study.store import ResultStore
from medrobust.study.table import Table, summary_fields
from medrobust.study.validation import HEADLINE, validation_summary

CLEAN_METRICS = (
    ("accuracy", "Accuracy"),
    ("balanced_accuracy", "Balanced acc."),
    ("sensitivity", "Sensitivity"),
    ("specificity", "Specificity"),
    ("fnr", "FNR"),
    ("fpr", "FPR"),
    ("auc", "AUC"),
)
ATTACK_METRICS = (
    ("clean_accuracy", "Clean acc."),
    ("adv_accuracy", "Attacked acc."),
    ("success_rate", "Success rate"),
    ("target_success_rate", "Reached harmful target"),
    ("success_rate_positive", "Missed detections (disease read as healthy)"),
    ("success_rate_negative", "False alarms (healthy read as disease)"),
    ("adv_sensitivity", "Sensitivity (attacked)"),
    ("adv_specificity", "Specificity (attacked)"),
    ("mean_l0", "Features (tokens) changed"),
)
# A stronger attack must beat a weaker one by more than this (in mean success rate over trials)
# before the report calls it a symptom of gradient masking; smaller gaps are sampling noise.
MASKING_MARGIN = 0.02


def rate_summary(values: list[float]) -> Summary:
    """Summary of a rate (accuracy, error rate, success rate): its CI kept inside [0, 1]."""
    return summarize(values, bounds=(0.0, 1.0))


def shift_summary(values: list[float]) -> Summary:
    """Summary of a difference of two rates: its CI kept inside [-1, 1]."""
    return summarize(values, bounds=(-1.0, 1.0))


def _attack_fields(
    task: str, model: str, attack: str, norm: str, eps: float, targeted: bool
) -> dict[str, Any]:
    """The columns that name one attack configuration on one model, for CSV records."""
    return {
        "task": task,
        "model": model,
        "attack": attack,
        "norm": norm,
        "eps": eps,
        "targeted": targeted,
    }


def masking_flags(runs: list[dict[str, float]]) -> tuple[str, dict[str, int]]:
    """The gradient-masking checks that fired in the clean-cell metrics ``runs`` of one model:
    a label such as ``"randomized output (5/5)"`` ("none", or "not checked" where no check ran)
    and the number of trials each check fired in."""
    hits = {c: sum(r.get(f"masking_{c}", 0.0) == 1.0 for r in runs) for c in MASKING_CHECKS}
    flags = [f"{c.replace('_', ' ')} ({n}/{len(runs)})" for c, n in hits.items() if n]
    checked = any(f"masking_{MASKING_CHECKS[0]}" in r for r in runs)
    return "; ".join(flags) or ("none" if checked else "not checked"), hits


def clean_table(cells: list[dict[str, Any]]) -> Table:
    """Clean test metrics per task x model over trials."""
    groups: dict[tuple[str, str], list[dict[str, float]]] = defaultdict(list)
    for c in cells:
        if c["attack"] is None:
            groups[(c["task"], model_name(c))].append(c["metrics"])
    rows, records = [], []
    for (task, model), runs in sorted(groups.items()):
        row = [task, model, str(len(runs))]
        record: dict[str, Any] = {"task": task, "model": model, "trials": len(runs)}
        for key, _ in CLEAN_METRICS:
            s = rate_summary([r[f"clean_{key}"] for r in runs])
            row.append(s.format())
            record.update(summary_fields(key, s))
        label, hits = masking_flags(runs)
        record.update({f"masking_{check}_trials": n for check, n in hits.items()})
        row.append(label)
        rows.append(tuple(row))
        records.append(record)
    header = (
        "Task",
        "Model",
        "Trials",
        *(label for _, label in CLEAN_METRICS),
        "Gradient-masking flags",
    )
    return Table("Clean test performance (mean ± SD [95% CI] over trials)", header, rows, records)


def _success_by_config(
    cells: list[dict[str, Any]],
) -> dict[tuple[str, str, str, str, float, bool], float]:
    """Mean success rate over trials per (task, model, attack label, norm, eps, targeted)."""
    rates: dict[tuple[str, str, str, str, float, bool], list[float]] = defaultdict(list)
    for c in cells:
        if c["attack"] is not None:
            key = (c["task"], model_name(c), attack_name(c), c["norm"], c["eps"], c["targeted"])
            rates[key].append(c["metrics"]["success_rate"])
    return {key: summarize(values).mean for key, values in rates.items()}


def study_masking_flags(
    cells: list[dict[str, Any]],
) -> dict[tuple[str, str, str, str, float, bool], list[str]]:
    """Gradient-masking symptoms that need two attacks' cells, per white-box attack row.

    - ``weaker than FGSM``: PGD's mean success rate is below FGSM's at the same norm and eps
      (PGD's first step is FGSM's step, so a working gradient cannot make it weaker);
    - ``transfer from X stronger``: examples crafted on surrogate X break this model more often
      than the white-box attack with the same settings does.
    """
    rates = _success_by_config(cells)
    flags: dict[tuple[str, str, str, str, float, bool], list[str]] = defaultdict(list)
    for (task, model, attack, norm, eps, targeted), rate in rates.items():
        if attack == "pgd":
            single = rates.get((task, model, "fgsm", norm, eps, targeted))
            if single is not None and rate < single - MASKING_MARGIN:
                flags[(task, model, attack, norm, eps, targeted)].append("weaker than FGSM")
        if " from " in attack:
            white_box_attack, source = attack.split(" from ", 1)
            key = (task, model, white_box_attack, norm, eps, targeted)
            white_box = rates.get(key)
            if white_box is not None and rate > white_box + MASKING_MARGIN:
                flags[key].append(f"transfer from {source} stronger")
    return flags


def attack_table(cells: list[dict[str, Any]]) -> Table:
    """Attacked performance per task x model x attack x eps, with a paired t-test and the
    gradient-masking symptoms found by comparing attacks."""
    groups: dict[tuple[str, str, str, str, float, bool], list[dict[str, float]]]
    groups = defaultdict(list)
    for c in cells:
        if c["attack"] is not None:
            group = (c["task"], model_name(c), attack_name(c), c["norm"], c["eps"], c["targeted"])
            groups[group].append(c["metrics"])
    flags = study_masking_flags(cells)
    rows, records = [], []
    for key, runs in sorted(groups.items()):
        task, model, attack, norm, eps, targeted = key
        label = attack_label(attack, norm, targeted=targeted)
        row = [task, model, label, f"{eps:g}", str(len(runs))]
        record: dict[str, Any] = {
            **_attack_fields(task, model, attack, norm, eps, targeted),
            "trials": len(runs),
        }
        for metric, _ in ATTACK_METRICS:
            values = [r.get(metric, math.nan) for r in runs]
            s = summarize(values) if metric == "mean_l0" else rate_summary(values)
            row.append(s.format())
            record.update(summary_fields(metric, s))
        text, test = paired_test_column(
            [r["adv_accuracy"] for r in runs], [r["clean_accuracy"] for r in runs]
        )
        row.append(text)
        row.append("; ".join(flags.get(key, [])) or "none")
        record.update({**test, "masking_flags": "; ".join(flags.get(key, []))})
        rows.append(tuple(row))
        records.append(record)
    header = (
        "Task",
        "Model",
        "Attack",
        "eps",
        "Trials",
        *(label for _, label in ATTACK_METRICS),
        "Paired test attacked vs clean acc.",
        "Gradient-masking flags",
    )
    return Table("Accuracy under attack (mean ± SD [95% CI] over trials)", header, rows, records)


def transfer_matrices(cells: list[dict[str, Any]]) -> list[Table]:
    """One transfer matrix per task and attack setting: the success rate of examples crafted on
    the row's model against the column's model; the diagonal is the white-box attack.

    Each table's records hold the long form (one record per source and target) for CSV.
    """
    configs: dict[tuple[str, str, str, float, bool], dict[tuple[str, str], list[float]]]
    configs = defaultdict(lambda: defaultdict(list))
    for c in cells:
        if c["attack"] is None:
            continue
        source = c.get("source")
        target = model_name(c)
        origin = target if source is None else str(source["model_label"])
        key = (c["task"], c["attack"], c["norm"], c["eps"], c["targeted"])
        configs[key][(origin, target)].append(c["metrics"]["success_rate"])
    tables = []
    for key, pairs in sorted(configs.items()):
        if all(origin == target for origin, target in pairs):
            continue  # no transfer cells for this attack
        task, attack, norm, eps, targeted = key
        models = sorted({m for pair in pairs for m in pair})
        rows: list[tuple[str, ...]] = []
        records: list[dict[str, Any]] = []
        for origin in models:
            row = [origin]
            for target in models:
                s = rate_summary(pairs.get((origin, target), []))
                row.append(s.format(2) if s.n else "—")
                if s.n:
                    kind = "white-box" if origin == target else "transfer"
                    records.append(
                        {
                            "task": task,
                            "attack": attack,
                            "norm": norm,
                            "eps": eps,
                            "targeted": targeted,
                            "source": origin,
                            "target": target,
                            "kind": kind,
                            **summary_fields("success_rate", s),
                        }
                    )
            rows.append(tuple(row))
        title = (
            f"Transfer matrix, {task}: {attack} ({norm}{', targeted' if targeted else ''}) "
            f"eps={eps:g}; success rate, crafted on the row's model, evaluated on the column's"
        )
        tables.append(Table(title, ("Crafted on \\ evaluated on", *models), rows, records))
    return tables


def worst_case_table(cells: list[dict[str, Any]], read: Callable[[str], Outcomes]) -> Table:
    """Robust accuracy under the per-example worst case over the attacks at each budget.

    An example counts as robust only if every attack at that norm and eps left it correctly
    classified; averaging attacks instead would overstate robustness.
    """
    groups: dict[tuple[str, str, str, float], dict[int, list[dict[str, Any]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for c in cells:
        if c["attack"] is not None and not c["targeted"]:  # targeted cells see other examples
            groups[(c["task"], model_name(c), c["norm"], c["eps"])][c["trial"]].append(c)
    rows: list[tuple[str, ...]] = []
    records: list[dict[str, Any]] = []
    for (task, model, norm, eps), trials in sorted(groups.items()):
        attacks = sorted({attack_name(c) for runs in trials.values() for c in runs})
        worst, best_single = [], []
        for runs in trials.values():
            robust: dict[int, bool] = {}
            for cell in runs:
                outcome = read(cell["cell_id"])
                correct = outcome.adv_pred == outcome.label
                for example, ok in zip(outcome.example.tolist(), correct.tolist(), strict=True):
                    robust[example] = robust.get(example, True) and ok
            worst.append(sum(robust.values()) / len(robust))
            best_single.append(min(c["metrics"]["adv_accuracy"] for c in runs))
        w, b = rate_summary(worst), rate_summary(best_single)
        rows.append(
            (
                task,
                model,
                norm,
                f"{eps:g}",
                ", ".join(attacks),
                str(len(worst)),
                b.format(),
                w.format(),
            )
        )
        records.append(
            {
                "task": task,
                "model": model,
                "norm": norm,
                "eps": eps,
                "attacks": " ".join(attacks),
                "trials": len(worst),
                **summary_fields("strongest_single_attack_accuracy", b),
                **summary_fields("worst_case_accuracy", w),
            }
        )
    header = (
        "Task",
        "Model",
        "Norm",
        "eps",
        "Attacks",
        "Trials",
        "Strongest single attack acc.",
        "Worst case over attacks acc.",
    )
    return Table(
        "Robust accuracy, per-example worst case over attacks (mean ± SD [95% CI])",
        header,
        rows,
        records,
    )


def marked_changes(original: str, adversarial: str, context: int = 10) -> tuple[Change, ...]:
    """The adversarial text as kept, removed and inserted words, cut to ``context`` words around
    the changes (elisions are ``gap`` changes)."""
    before, after = original.split(), adversarial.split()
    words: list[Change] = []
    marks: list[int] = []
    matcher = difflib.SequenceMatcher(a=before, b=after, autojunk=False)
    for op, a0, a1, b0, b1 in matcher.get_opcodes():
        if op == "equal":
            words += [Change("same", word) for word in after[b0:b1]]
            continue
        marks.append(len(words))
        if a1 > a0:
            words.append(Change("removed", " ".join(before[a0:a1])))
        if b1 > b0:
            words.append(Change("inserted", " ".join(after[b0:b1])))
    keep = sorted(
        {i for m in marks for i in range(max(m - context, 0), min(m + context + 2, len(words)))}
    )
    pieces: list[Change] = []
    previous = -1
    for i in keep:
        if i != previous + 1:
            pieces.append(Change("gap", "…"))
        pieces.append(words[i])
        previous = i
    if keep and keep[-1] < len(words) - 1:
        pieces.append(Change("gap", "…"))
    return tuple(pieces)


def attacked_texts(
    cells: list[dict[str, Any]], store: ResultStore, limit: int = 3
) -> list[AttackedText]:
    """Attacked texts of the first trial of each token attack, with their changes marked."""
    texts = []
    attacked = [c for c in cells if c["attack"] is not None and c["trial"] == 0]
    for c in sorted(attacked, key=lambda c: (c["task"], model_name(c), attack_name(c), c["eps"])):
        samples = store.samples(c["cell_id"])[:limit]
        if not samples:
            continue
        rows = {r.example: r for r in store.examples(c["cell_id"])}
        names = c.get("class_names") or []

        def name(label: int | None, names: list[str] = names) -> str:
            return names[label] if label is not None and 0 <= label < len(names) else str(label)

        where = f"{c['task']} / {model_name(c)} / {attack_name(c)} eps={c['eps']:g}"
        for sample in samples:
            row = rows[sample.example]
            texts.append(
                AttackedText(
                    f"{where}, test example {sample.example}",
                    f"{name(row.label)}; read as {name(row.clean_pred)}, after the attack as "
                    f"{name(row.adv_pred)}",
                    marked_changes(sample.original, sample.adversarial),
                )
            )
    return texts


def _masking_flags_by_model(cells: list[dict[str, Any]]) -> dict[tuple[str, str, str], str]:
    """Gradient-masking flags of each defended model's clean cells, with trial counts."""
    runs: dict[tuple[str, str, str], list[dict[str, float]]] = defaultdict(list)
    for c in cells:
        if c["attack"] is None and c.get("defense") is not None:
            runs[(c["task"], model_name(c), c["defense_label"])].append(c["metrics"])
    return {key: masking_flags(metrics)[0] for key, metrics in runs.items()}


DEFENSE_COLUMNS = (
    ("pre_attack", "Pre-attack acc."),
    ("post_attack", "Post-attack acc."),
    ("defended_clean", "Defended clean acc."),
    ("post_defense", "Post-defense acc."),
    ("improvement", "Improvement"),
)


def defense_table(cells: list[dict[str, Any]]) -> Table:
    """The field's defense-effectiveness table: per task x model x defense x attack, the
    accuracy before the attack, under it without the defense and under it with the defense,
    and the improvement (paired per trial), each mean ± SD [95% CI] over trials.

    Pre- and post-attack accuracy come from the undefended twin of each defended cell (same
    examples, attack and seed). A defense that masks gradients has a plain and an adaptive row:
    the gap between them is robustness that is only apparent.
    """
    twins = undefended_twins(cells)
    flags = _masking_flags_by_model(cells)
    groups: dict[tuple[Any, ...], list[dict[str, float]]] = defaultdict(list)
    for c in cells:
        if c["attack"] is None or c.get("defense") is None:
            continue
        twin = twins.get(twin_key(c))
        if twin is None:
            continue
        key = (
            c["task"],
            model_name(c),
            c["defense_label"],
            attack_name(c),
            c["norm"],
            c["eps"],
            c["targeted"],
            evaluation_name(c),
        )
        before, after = twin["metrics"], c["metrics"]
        groups[key].append(
            {
                "pre_attack": before["clean_accuracy"],
                "post_attack": before["adv_accuracy"],
                "defended_clean": after["clean_accuracy"],
                "post_defense": after["adv_accuracy"],
                "improvement": after["adv_accuracy"] - before["adv_accuracy"],
            }
        )
    rows, records = [], []
    for key, runs in sorted(groups.items()):
        task, model, defense, attack, norm, eps, targeted, evaluation = key
        label = attack_label(attack, norm, targeted=targeted)
        row = [task, model, defense, label, f"{eps:g}", evaluation, str(len(runs))]
        record: dict[str, Any] = {
            "task": task,
            "model": model,
            "defense": defense,
            "attack": attack,
            "norm": norm,
            "eps": eps,
            "targeted": targeted,
            "evaluation": evaluation,
            "trials": len(runs),
        }
        for column, _ in DEFENSE_COLUMNS:
            values = [r[column] for r in runs]
            summary = shift_summary(values) if column == "improvement" else rate_summary(values)
            row.append(summary.format())
            record.update(summary_fields(column, summary))
        text, test = paired_test_column(
            [r["post_defense"] for r in runs], [r["post_attack"] for r in runs]
        )
        masking = flags.get((task, model, defense), "not checked")
        row += [text, masking]
        record.update({**test, "masking_flags": masking})
        rows.append(tuple(row))
        records.append(record)
    header = (
        "Task",
        "Model",
        "Defense",
        "Attack",
        "eps",
        "Evaluation",
        "Trials",
        *(label for _, label in DEFENSE_COLUMNS),
        "Paired test post-defense vs post-attack",
        "Gradient-masking flags (defended model)",
    )
    return Table(
        "Defense effectiveness: accuracy under attack with and without each defense "
        "(mean ± SD [95% CI] over trials)",
        header,
        rows,
        records,
    )


def defense_anova_table(cells: list[dict[str, Any]]) -> Table:
    """One-way ANOVA of the accuracy under each attack across the undefended model and its
    defenses, with Tukey HSD of each defense against the undefended model.

    A defense that has an adaptive attacker enters with its adaptive cells (its real
    robustness), the others with their plain cells. Each trial gives one value per condition;
    the ANOVA treats the conditions as independent groups (the trials share seeds, so the test
    is conservative for paired data; the effectiveness table's paired test is the sharper one).
    """
    groups: dict[tuple[Any, ...], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    rows: list[tuple[str, ...]] = []
    records: list[dict[str, Any]] = []
    for c in cells:
        if c["attack"] is None:
            continue
        key = (c["task"], model_name(c), attack_name(c), c["norm"], c["eps"], c["targeted"])
        if c.get("defense") is None:
            groups[key][UNDEFENDED].append(c["metrics"]["adv_accuracy"])
            continue
        has_adaptive = DEFENSES.get(c["defense"]).adaptive_attack is not None
        if bool(c.get("adaptive")) == has_adaptive or c.get("source") is not None:
            groups[key][c["defense_label"]].append(c["metrics"]["adv_accuracy"])
    for key, conditions in sorted(groups.items()):
        task, model, attack, norm, eps, targeted = key
        usable = {name: values for name, values in conditions.items() if len(values) >= 2}
        if UNDEFENDED not in usable or len(usable) < 2:
            continue
        ordered = {UNDEFENDED: usable.pop(UNDEFENDED), **dict(sorted(usable.items()))}
        anova = one_way_anova(ordered)
        versus = [pair for pair in anova.pairs if pair.group1 == UNDEFENDED]
        label = attack_label(attack, norm, targeted=targeted)
        rows.append(
            (
                str(task),
                str(model),
                label,
                f"{eps:g}",
                str(len(ordered)),
                anova.format(),
                "; ".join(pair.format() for pair in versus),
            )
        )
        record: dict[str, Any] = {
            **_attack_fields(task, model, attack, norm, eps, targeted),
            "conditions": len(ordered),
            "f": anova.f,
            "df_between": anova.df_between,
            "df_within": anova.df_within,
            "p": anova.p,
            "residuals_normality_p": anova.normality_p,
            "equal_variance_p": anova.equal_variance_p,
            "welch_f": anova.welch_f,
            "welch_df_within": anova.welch_df_within,
            "welch_p": anova.welch_p,
        }
        # Long form for CSV: one record per defense, the ANOVA repeated on each.
        records += [
            {
                **record,
                "defense": pair.group2,
                "minus_undefended": pair.mean_difference,
                "ci_low": pair.ci_low,
                "ci_high": pair.ci_high,
                "p_adjusted": pair.p_adjusted,
            }
            for pair in versus
        ]
    header = (
        "Task",
        "Model",
        "Attack",
        "eps",
        "Conditions",
        "One-way ANOVA of accuracy under attack",
        "Tukey HSD: defense - undefended [95% simultaneous CI], adjusted p",
    )
    return Table(
        "Accuracy under attack across defenses: one-way ANOVA with Tukey HSD (masking and "
        "randomized defenses by their adaptive attack)",
        header,
        rows,
        records,
    )


# Absolute times in the overhead records: training wall time (s) and inference time of one
# batched forward pass per 1000 test examples (ms), for the defended and the undefended model.
ABSOLUTE_TIMES = (
    "train_seconds",
    "inference_ms",
    "undefended_train_seconds",
    "undefended_inference_ms",
)


def overhead_table(cells: list[dict[str, Any]]) -> Table:
    """Training and inference time of each defended model relative to the undefended model of
    the same task, model and trial, measured in the same run (mean ± SD over trials).

    A defense that only wraps the undefended model adds no training (ratio 1). Inference time is
    the best of repeated batched forward passes over the test split; certification time is the
    wall time of the certificate on the attacked examples.
    """
    plain = {
        (c["task"], model_name(c), c["trial"]): c
        for c in cells
        if c["attack"] is None and c.get("defense") is None
    }
    groups: dict[tuple[str, str, str], list[dict[str, float]]] = defaultdict(list)
    for c in cells:
        if c["attack"] is not None or c.get("defense") is None:
            continue
        base = plain.get((c["task"], model_name(c), c["trial"]))
        if base is None:
            continue
        groups[(c["task"], model_name(c), c["defense_label"])].append(
            {
                "training_ratio": c["train_seconds"] / max(base["train_seconds"], 1e-9),
                "inference_ratio": c["timings"].get("inference_ms", math.nan)
                / max(base["timings"].get("inference_ms", math.nan), 1e-12),
                "certify_seconds": c["timings"].get("certify_seconds", math.nan),
                "train_seconds": c["train_seconds"],
                "inference_ms": 1000.0 * c["timings"].get("inference_ms", math.nan),
                "undefended_train_seconds": base["train_seconds"],
                "undefended_inference_ms": 1000.0 * base["timings"].get("inference_ms", math.nan),
            }
        )
    rows, records = [], []
    for (task, model, defense), runs in sorted(groups.items()):
        record: dict[str, Any] = {
            "task": task,
            "model": model,
            "defense": defense,
            "trials": len(runs),
        }
        row = [task, model, defense, str(len(runs))]
        for column in ABSOLUTE_TIMES:  # CSV only: the figure stacks them
            record.update(summary_fields(column, summarize([r[column] for r in runs])))
        for column in ("training_ratio", "inference_ratio", "certify_seconds"):
            summary = summarize([r[column] for r in runs])
            record.update(summary_fields(column, summary))
            row.append(f"{summary.mean:.2f} ± {summary.sd:.2f}" if summary.n else "—")
        rows.append(tuple(row))
        records.append(record)
    header = (
        "Task",
        "Model",
        "Defense",
        "Trials",
        "Training time / undefended",
        "Inference time / undefended",
        "Certification s",
    )
    return Table(
        "Defense overhead: time relative to the undefended model (mean ± SD over trials)",
        header,
        rows,
        records,
    )


def certification_table(cells: list[dict[str, Any]]) -> Table:
    """Certified accuracy at each radius of each certifying defense (randomized smoothing,
    Lipschitz constraints): the share of attacked examples both correct and certified at L2
    radius >= r, mean ± SD [95% CI] over trials."""
    groups: dict[tuple[str, str, str, float], list[dict[str, float]]] = defaultdict(list)
    for c in cells:
        if c["attack"] is not None or c.get("defense") is None:
            continue
        for name, value in c["metrics"].items():
            if name.startswith("certified_r"):
                key = (
                    c["task"],
                    model_name(c),
                    c["defense_label"],
                    float(name[len("certified_r") :]),
                )
                groups[key].append(
                    {
                        "certified_accuracy": value,
                        "mean_radius": c["metrics"].get("certified_mean_radius", math.nan),
                        "abstain_rate": c["metrics"].get("certified_abstain_rate", math.nan),
                        "lipschitz_bound": c["metrics"].get("lipschitz_bound", math.nan),
                    }
                )
    rows, records = [], []
    for (task, model, defense, radius), runs in sorted(groups.items()):
        record: dict[str, Any] = {
            "task": task,
            "model": model,
            "defense": defense,
            "radius": radius,
            "trials": len(runs),
        }
        row = [task, model, defense, f"{radius:g}", str(len(runs))]
        for column in ("certified_accuracy", "mean_radius", "abstain_rate", "lipschitz_bound"):
            values = [r[column] for r in runs]
            rate = column in ("certified_accuracy", "abstain_rate")
            summary = rate_summary(values) if rate else summarize(values)
            record.update(summary_fields(column, summary))
            row.append(summary.format() if summary.n else "—")
        rows.append(tuple(row))
        records.append(record)
    header = (
        "Task",
        "Model",
        "Defense",
        "L2 radius",
        "Trials",
        "Certified acc.",
        "Mean certified radius",
        "Abstentions (smoothing)",
        "Lipschitz bound",
    )
    return Table(
        "Certified accuracy at L2 radius r (mean ± SD [95% CI] over trials)", header, rows, records
    )


MASKED = "†"  # marks a number of a model with gradient-masking flags


def success_rate_tables(cells: list[dict[str, Any]]) -> list[Table]:
    """The field's attack table: per task, success rate of each attack configuration (columns)
    against each undefended model (rows), mean ± SD [95% CI] over trials.

    A number is marked † where the model's clean cells or the comparison of attacks flagged
    gradient masking: its success rate may understate the threat.
    """
    clean_flags: dict[tuple[str, str], bool] = {}
    per_model: dict[tuple[str, str], list[dict[str, float]]] = defaultdict(list)
    for c in cells:
        if c["attack"] is None:
            per_model[(c["task"], model_name(c))].append(c["metrics"])
    for key, runs in per_model.items():
        clean_flags[key] = any(masking_flags(runs)[1].values())
    attack_flags = study_masking_flags(cells)
    by_task: dict[str, dict[tuple[str, str], dict[str, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    configs: dict[str, dict[str, tuple[str, str, float, bool]]] = defaultdict(dict)
    for c in cells:
        if c["attack"] is None:
            continue
        column = attack_label(attack_name(c), c["norm"], c["eps"], c["targeted"])
        configs[c["task"]][column] = (attack_name(c), c["norm"], c["eps"], c["targeted"])
        by_task[c["task"]][(model_name(c), column)]["success_rate"].append(
            c["metrics"]["success_rate"]
        )
    tables = []
    for task in sorted(by_task):
        columns = sorted(configs[task], key=lambda k: (configs[task][k], k))
        models = sorted({model for model, _ in by_task[task]})
        rows, records = [], []
        for model in models:
            row = [model]
            for column in columns:
                values = by_task[task].get((model, column), {}).get("success_rate", [])
                if not values:
                    row.append("—")
                    continue
                summary = rate_summary(values)
                attack, norm, eps, targeted = configs[task][column]
                flagged = clean_flags.get((task, model), False) or bool(
                    attack_flags.get((task, model, attack, norm, eps, targeted))
                )
                row.append(summary.format() + (f" {MASKED}" if flagged else ""))
                records.append(
                    {
                        **_attack_fields(task, model, attack, norm, eps, targeted),
                        "trials": summary.n,
                        **summary_fields("success_rate", summary),
                        "masking_flagged": flagged,
                    }
                )
            rows.append(tuple(row))
        tables.append(
            Table(
                f"Attack success rate, {task} (mean ± SD [95% CI] over trials; "
                f"{MASKED} gradient masking flagged)",
                ("Model", *columns),
                rows,
                records,
            )
        )
    return tables


def significance_table(tests: dict[tuple[Any, ...], StudyTest]) -> Table:
    """Every paired comparison of the study with its assumptions, effect size, power and
    McNemar's per-example test, and the p-value after Holm's correction over all of them.

    Post-hoc power at the observed effect says nothing beyond the p-value; it is shown beside
    the number of trials a follow-up study needs for power 0.8 at that effect, which is what a
    reviewer plans with.
    """
    rows: list[tuple[str, ...]] = []
    records: list[dict[str, Any]] = []
    for key in sorted(tests, key=lambda k: tuple(str(part) for part in k)):
        test = tests[key]
        f, a = test.fields, test.analysis
        defense = f.get("defense", UNDEFENDED)
        evaluation = f.get("evaluation", "plain")
        label = attack_label(f["attack"], f["norm"], f["eps"], f["targeted"])
        comparison = a.comparison
        rows.append(
            (
                test.family,
                f["task"],
                f["model"],
                defense if evaluation == "plain" else f"{defense}, {evaluation}",
                label,
                str(a.n),
                f"{a.mean_difference:+.3f}" if a.n else "n/a",
                comparison.format() if comparison is not None else "n/a (fewer than 3 trials)",
                "n/a"
                if math.isnan(test.p_holm)
                else f"{test.p_holm:.2g}{' *' if test.reject else ''}",
                a.effect.format() if a.effect is not None else "n/a",
                f"{a.power.power:.2f}" if a.power is not None else "n/a",
                str(a.needed.n) if a.needed is not None else "n/a",
                test.mcnemar_summary(),
            )
        )
        records.append(
            {
                "family": test.family,
                **{k: v for k, v in f.items() if k not in ("defense", "evaluation")},
                "defense": defense,
                "evaluation": evaluation,
                "compared": test.compared,
                "trials": a.n,
                "mean_difference": a.mean_difference,
                "test": comparison.test if comparison is not None else "none",
                "statistic": comparison.statistic if comparison is not None else math.nan,
                "df": comparison.df if comparison is not None else math.nan,
                "p": a.p,
                "normality_p": comparison.normality_p if comparison is not None else math.nan,
                "normality_held": comparison.normality_held if comparison is not None else False,
                "p_holm": test.p_holm,
                "reject_holm": test.reject,
                "dz": a.effect.d if a.effect is not None else math.nan,
                "dz_ci_low": a.effect.ci_low if a.effect is not None else math.nan,
                "dz_ci_high": a.effect.ci_high if a.effect is not None else math.nan,
                "post_hoc_power": a.power.power if a.power is not None else math.nan,
                "trials_for_power_0.8": a.needed.n if a.needed is not None else math.nan,
                "mcnemar_significant_trials": sum(m.p < 0.05 for m in test.mcnemar),
                "mcnemar_max_p": max((m.p for m in test.mcnemar), default=math.nan),
            }
        )
    header = (
        "Family",
        "Task",
        "Model",
        "Defense",
        "Attack",
        "Trials",
        "Mean difference",
        "Paired test (Shapiro-Wilk decides t or Wilcoxon)",
        "Holm-adjusted p",
        "Cohen's d_z [95% CI]",
        "Post-hoc power",
        "Trials for power 0.8",
        "McNemar per trial (same examples)",
    )
    return Table(
        "Statistical tests: attack family = attacked - clean accuracy; defense family = accuracy "
        "under attack with - without the defense; Holm over all tests of the study (* rejects at "
        "0.05)",
        header,
        rows,
        records,
    )


CLINICAL_RATES = ("fnr_before", "fnr_after", "fnr_shift", "fpr_before", "fpr_after", "fpr_shift")


def clinical_table(cells: list[dict[str, Any]], read: Callable[[str], Outcomes]) -> Table:
    """False-negative and false-positive rates before and after each attack, for the undefended
    model and each defense, with the shift (after - before, paired per trial), mean ± SD [95%
    CI] over trials: for the task's declared positive class, and for each class one-vs-rest on
    multi-class tasks. A missed disease (FNR up) and a false alarm (FPR up) cost differently; a
    reader weighs them here rather than in the accuracy."""
    runs = clinical_runs(cells, read)
    rows, records = [], []
    for key, values in sorted(runs.items(), key=lambda kv: tuple(str(p) for p in kv[0])):
        task, model, defense, attack, norm, eps, targeted, evaluation, name = key
        record: dict[str, Any] = {
            **_attack_fields(task, model, attack, norm, eps, targeted),
            "defense": defense,
            "evaluation": evaluation,
            "class_name": name,
            "trials": len(values),
        }
        row = [
            task,
            model,
            defense if evaluation == "plain" else f"{defense}, {evaluation}",
            attack_label(attack, norm, eps, targeted),
            name,
            str(len(values)),
        ]
        for column in CLINICAL_RATES:
            column_values = [v[column] for v in values]
            shift = column.endswith("_shift")
            summary = shift_summary(column_values) if shift else rate_summary(column_values)
            record.update(summary_fields(column, summary))
            row.append(summary.format())
        rows.append(tuple(row))
        records.append(record)
    header = (
        "Task",
        "Model",
        "Defense",
        "Attack",
        "Positive class",
        "Trials",
        "FNR before",
        "FNR after",
        "FNR shift",
        "FPR before",
        "FPR after",
        "FPR shift",
    )
    return Table(
        "Clinical error rates before and after attack (and after defense), one-vs-rest per "
        "positive class (mean ± SD [95% CI] over trials)",
        header,
        rows,
        records,
    )


@dataclass(frozen=True)
class StudyReport:
    """Everything the report shows, computed once from the store."""

    study: dict[str, Any]
    runs: list[dict[str, Any]]
    cells: list[dict[str, Any]]
    tables: dict[str, Table]
    success_rates: list[Table]
    transfer: list[Table]
    tests: dict[tuple[Any, ...], StudyTest]
    texts: list[AttackedText]
    explanation_panels: list[FigureImage]
    glucose_traces: list[FigureImage]

    def all_tables(self) -> list[Table]:
        """Every table, in report order."""
        return [*self.success_rates, *self.tables.values(), *self.transfer]


def analyse(store: ResultStore) -> StudyReport:
    """Compute every table and test of the report from an open store."""
    stored = store.cells()
    # Training-time attacks and the treatment task have their own tables.
    cells = [c for c in stored if not c.get("poisoning") and not c.get("treatment")]
    poisoned, detection = poisoning_tables(stored)
    plain = undefended_cells(cells)
    read = OutcomeReader(store)
    tests = study_tests(cells, read)
    drawn = store.figure_cell_ids()
    study = store.study() or {}
    dosing = treatment_report.in_study_order(stored, study)
    tables = {
        "clean": clean_table(plain),
        "attacks": attack_table(plain),
        "worst_case": worst_case_table(plain, read),
        "clinical": clinical_table(cells, read),
        "defenses": defense_table(cells),
        "defense_anova": defense_anova_table(cells),
        "overhead": overhead_table(cells),
        "certified": certification_table(cells),
        "significance": significance_table(tests),
        "poisoning": poisoned,
        "poisoning_detection": detection,
        "explanations": stability_table(cells),
        "explanation_agreement": agreement_table(cells),
        "treatment": treatment_report.outcome_table(dosing),
        "treatment_cohorts": treatment_report.cohort_table(dosing),
        "treatment_tests": treatment_report.outcome_tests_table(dosing),
        "treatment_overhead": treatment_report.overhead_table(dosing),
    }
    return StudyReport(
        study,
        store.runs(),
        cells,
        tables,
        success_rate_tables(plain),
        transfer_matrices(plain),
        tests,
        attacked_texts(plain, store),
        explanation_panels(cells, drawn, store.figures),
        treatment_report.glucose_trace_panels(dosing, drawn, store.figures),
    )


def build_tables(store_path: str | Path) -> list[Table]:
    """The study's tables from a results store: success rates per task, clean, per attack,
    worst case over attacks, clinical error rates, defense effectiveness with ANOVA, overhead,
    certified accuracy, the statistical tests, and the transfer matrices."""
    with ResultStore(store_path) as store:
        return analyse(store).all_tables()


def _overview(report: StudyReport) -> Paragraph:
    cells, study = report.cells, report.study
    trained = [  # one clean cell per trained model: wrapping defenses share the undefended one
        c
        for c in cells
        if c["attack"] is None and (c["defense"] is None or DEFENSES.get(c["defense"]).retrains)
    ]
    train_s = sum(c["train_seconds"] for c in trained)
    attacked = [c for c in cells if c["attack"] is not None]
    early = sum(bool(c.get("attack_config", {}).get("stop_when_adversarial")) for c in attacked)
    episodes = sum(r["episodes"] for r in report.tables["treatment"].records)
    dosing = f" and {episodes} insulin-dosing episodes" if episodes else ""
    return Paragraph(
        f"{len(cells)} cells{dosing}, {study.get('trials', '?')} trials per configuration, seed "
        f"{study.get('seed', '?')}. Training time over all models: {train_s:.0f} s. "
        "Success rate = fraction of originally correct test examples that the attack made "
        "wrong. Sensitivity, specificity, FNR and FPR are for each task's declared positive "
        "class. Early stop (an example stops being perturbed once misclassified, which saves "
        f"compute and changes no outcome): on in {early} of {len(attacked)} attack cells."
    )


def document(report: StudyReport) -> Document:
    """The report as sections of text, tables and figures."""
    t = report.tables
    records = {kind: t[kind].records for kind in ("attacks", "defenses", "overhead", "certified")}
    clinical = t["clinical"].records
    evasion = bool(report.cells)  # a study of training-time attacks or dosing alone has none
    sections = [
        validation_summary(report.study, report.runs, report.cells, t, report.tests),
        Section("Clean performance", [t["clean"]] if evasion else []),
        Section(
            "Attacks",
            [
                *report.success_rates,
                *accuracy_under_attack_figures(records["attacks"]),
                t["attacks"],
                *accuracy_vs_eps_figures(records["attacks"], records["defenses"]),
                t["worst_case"],
                *report.transfer,
            ]
            if evasion
            else [],
        ),
        Section(
            "Clinical error rates",
            [*clinical_shift_figures(clinical), t["clinical"]] if evasion else [],
        ),
        Section(
            "Defenses",
            [
                t["defenses"],
                t["defense_anova"],
                t["overhead"],
                *overhead_figures(records["overhead"]),
                t["certified"],
                *certified_accuracy_figures(records["certified"]),
            ]
            if t["defenses"].rows or t["overhead"].rows
            else [],
        ),
        Section(
            "Training-time attacks",
            [
                t["poisoning"],
                *poisoning_figures(t["poisoning"].records),
                t["poisoning_detection"],
            ]
            if t["poisoning"].rows
            else [],
        ),
        Section(
            "Explanations under attack",
            [
                Bullets(most_stable)
                if (most_stable := tuple(most_stable_defenses(t["explanations"])))
                else Paragraph("No defense was explained in this study."),
                t["explanations"],
                t["explanation_agreement"],
                *report.explanation_panels,
            ]
            if t["explanations"].rows
            else [],
        ),
        Section(
            "Treatment plans: insulin dosing under sensor attack",
            [
                Paragraph(treatment_report.introduction(report.study)),
                t["treatment"],
                t["treatment_tests"],
                t["treatment_cohorts"],
                t["treatment_overhead"],
                *report.glucose_traces,
            ]
            if t["treatment"].rows
            else [],
        ),
        Section("Statistical tests", [t["significance"]] if evasion else []),
        Section(
            "Attacked clinical texts (first trial)",
            [
                Paragraph("Removed words are struck through; inserted words are marked."),
                *report.texts,
            ]
            if report.texts
            else [],
        ),
    ]
    title = f"medrobust study report: {report.study.get('name', 'study')}"
    return Document(title, [_overview(report)], sections)


CSV_FILES = {
    "clean": "clean.csv",
    "attacks": "attacks.csv",
    "worst_case": "worst_case.csv",
    "clinical": "clinical.csv",
    "defenses": "defenses.csv",
    "defense_anova": "defense_anova.csv",
    "overhead": "overhead.csv",
    "certified": "certified.csv",
    "significance": "tests.csv",
    "poisoning": "poisoning.csv",
    "poisoning_detection": "poisoning_detection.csv",
    "explanations": "explanations.csv",
    "explanation_agreement": "explanation_agreement.csv",
    "treatment": "treatment.csv",
    "treatment_tests": "treatment_tests.csv",
    "treatment_cohorts": "treatment_cohorts.csv",
    "treatment_overhead": "treatment_overhead.csv",
}


def headline_section(markdown: str) -> str:
    """The headline results of a written ``report.md``, for printing after a run (as text: the
    Markdown's HTML escapes undone; it holds no control characters)."""
    start = markdown.find(f"### {HEADLINE}")
    if start < 0:
        return ""
    end = markdown.find("\n### ", start + 4)
    return html.unescape(markdown[start : end if end >= 0 else len(markdown)].strip())


def write_report(store_path: str | Path, output: str | Path | None = None) -> list[Path]:
    """Write the report of a results store beside it or in ``output``.

    Files: ``report.md`` (Markdown, figures linked from ``figures/``), ``report.html`` (one
    self-contained page), ``figures/*.png``, and the numbers behind each table as CSV:
    ``success_rates.csv``, ``clean.csv``, ``attacks.csv``, ``worst_case.csv``,
    ``clinical.csv``, ``defenses.csv``, ``defense_anova.csv``, ``overhead.csv``,
    ``certified.csv``, ``tests.csv``, ``transfer.csv`` and the files of :data:`CSV_FILES`
    (poisoning, explanations, insulin dosing). Each file is written atomically.

    Returns:
        The paths written, ``report.md`` first.
    """
    out = output_folder(output if output is not None else Path(store_path).parent)
    with ResultStore(store_path) as store:
        report = analyse(store)
    doc = document(report)
    files: dict[Path, str | bytes] = {
        out / "report.md": render_markdown(doc),
        out / "report.html": render_html(doc),
    }
    for figure in doc.figures():
        files[out / FIGURES_FOLDER / f"{figure.name}.png"] = figure.png
    merged = {
        "success_rates": [r for table in report.success_rates for r in table.records],
        "transfer": [r for table in report.transfer for r in table.records],
    }
    files[out / "success_rates.csv"] = Table("", (), [], merged["success_rates"]).csv()
    for kind, name in CSV_FILES.items():
        files[out / name] = report.tables[kind].csv()
    files[out / "transfer.csv"] = Table("", (), [], merged["transfer"]).csv()
    for path, content in files.items():
        if isinstance(content, bytes):
            path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomically(path, content)
        else:
            write_text_atomically(path, content)
    return list(files)
