"""Study summaries read from the results store: tables in Markdown and CSV.

The report only reads the store; it never trains or attacks.
"""

from __future__ import annotations

import csv
import difflib
import io
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medrobust.atomic import write_text_atomically
from medrobust.attacks.masking import MASKING_CHECKS
from medrobust.defenses import DEFENSES
from medrobust.stats import Summary, one_way_anova, paired_ttest, summarize
from medrobust.study.store import ResultStore

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


def model_name(cell: dict[str, Any]) -> str:
    """The model's label in the results (its registry name unless the config gave a label)."""
    return str(cell.get("model_label") or cell["model"])


def attack_name(cell: dict[str, Any]) -> str:
    """The attack's name in the results; transfer attacks name their surrogate."""
    source = cell.get("source")
    return cell["attack"] if source is None else f"{cell['attack']} from {source['model_label']}"


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


@dataclass(frozen=True)
class Table:
    """A titled table of strings, with the numbers behind it for CSV."""

    title: str
    header: tuple[str, ...]
    rows: list[tuple[str, ...]]
    records: list[dict[str, Any]]

    def markdown(self) -> str:
        """GitHub-flavoured Markdown."""
        lines = [f"### {self.title}", "", "| " + " | ".join(self.header) + " |"]
        lines.append("|" + "---|" * len(self.header))
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        """CSV of the underlying numbers (one column per statistic)."""
        if not self.records:
            return ""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(self.records[0]))
        writer.writeheader()
        writer.writerows(self.records)
        return buffer.getvalue()


def _summary_fields(prefix: str, s: Summary) -> dict[str, Any]:
    return {
        f"{prefix}_mean": s.mean,
        f"{prefix}_sd": s.sd,
        f"{prefix}_ci_low": s.ci_low,
        f"{prefix}_ci_high": s.ci_high,
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
            s = summarize([r[f"clean_{key}"] for r in runs])
            row.append(s.format())
            record.update(_summary_fields(key, s))
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
        label = f"{attack} ({norm}{', targeted' if targeted else ''})"
        row = [task, model, label, f"{eps:g}", str(len(runs))]
        record: dict[str, Any] = {
            **_attack_fields(task, model, attack, norm, eps, targeted),
            "trials": len(runs),
        }
        for metric, _ in ATTACK_METRICS:
            s = summarize([r.get(metric, math.nan) for r in runs])
            row.append(s.format())
            record.update(_summary_fields(metric, s))
        test = paired_ttest([r["clean_accuracy"] for r in runs], [r["adv_accuracy"] for r in runs])
        row.append(test.format())
        row.append("; ".join(flags.get(key, [])) or "none")
        record.update(
            {"paired_t": test.t, "paired_p": test.p, "masking_flags": "; ".join(flags.get(key, []))}
        )
        rows.append(tuple(row))
        records.append(record)
    header = (
        "Task",
        "Model",
        "Attack",
        "eps",
        "Trials",
        *(label for _, label in ATTACK_METRICS),
        "Paired t-test clean vs attacked acc.",
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
                s = summarize(pairs.get((origin, target), []))
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
                            **_summary_fields("success_rate", s),
                        }
                    )
            rows.append(tuple(row))
        title = (
            f"Transfer matrix, {task}: {attack} ({norm}{', targeted' if targeted else ''}) "
            f"eps={eps:g}; success rate, crafted on the row's model, evaluated on the column's"
        )
        tables.append(Table(title, ("Crafted on \\ evaluated on", *models), rows, records))
    return tables


def worst_case_table(cells: list[dict[str, Any]], store: ResultStore) -> Table:
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
                for row in store.examples(cell["cell_id"]):
                    ok = row.adv_pred == row.label
                    robust[row.example] = robust.get(row.example, True) and ok
            worst.append(sum(robust.values()) / len(robust))
            best_single.append(min(c["metrics"]["adv_accuracy"] for c in runs))
        w, b = summarize(worst), summarize(best_single)
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
                **_summary_fields("strongest_single_attack_accuracy", b),
                **_summary_fields("worst_case_accuracy", w),
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


def _marked_changes(original: str, adversarial: str, context: int = 10) -> str:
    """The adversarial text with each replaced word shown as ~~old~~ **new**, cut to
    ``context`` words around the changes."""
    before, after = original.split(), adversarial.split()
    words: list[str] = []
    marks: list[int] = []
    matcher = difflib.SequenceMatcher(a=before, b=after, autojunk=False)
    for op, a0, a1, b0, b1 in matcher.get_opcodes():
        if op == "equal":
            words += after[b0:b1]
            continue
        marks.append(len(words))
        if a1 > a0:
            words.append("~~" + " ".join(before[a0:a1]) + "~~")
        if b1 > b0:
            words.append("**" + " ".join(after[b0:b1]) + "**")
    keep = sorted(
        {i for m in marks for i in range(max(m - context, 0), min(m + context + 2, len(words)))}
    )
    pieces, previous = [], -1
    for i in keep:
        if i != previous + 1:
            pieces.append("…")
        pieces.append(words[i])
        previous = i
    if keep and keep[-1] < len(words) - 1:
        pieces.append("…")
    return " ".join(pieces)


def text_examples(cells: list[dict[str, Any]], store: ResultStore, limit: int = 3) -> str:
    """Markdown: attacked texts of the first trial of each token attack, changes marked."""
    parts = []
    attacked = [c for c in cells if c["attack"] is not None and c["trial"] == 0]
    for c in sorted(attacked, key=lambda c: (c["task"], model_name(c), attack_name(c), c["eps"])):
        samples = store.samples(c["cell_id"])[:limit]
        if not samples:
            continue
        rows = {r.example: r for r in store.examples(c["cell_id"])}
        names = c.get("class_names") or []

        def name(label: int | None, names: list[str] = names) -> str:
            return names[label] if label is not None and 0 <= label < len(names) else str(label)

        parts.append(f"#### {c['task']} / {model_name(c)} / {attack_name(c)} eps={c['eps']:g}\n")
        for sample in samples:
            row = rows[sample.example]
            verdict = (
                f"{name(row.label)}; read as {name(row.clean_pred)}, "
                f"after the attack as {name(row.adv_pred)}"
            )
            parts.append(
                f"- test example {sample.example} ({verdict}): "
                f"{_marked_changes(sample.original, sample.adversarial)}\n"
            )
        parts.append("")
    if not parts:
        return ""
    return "### Attacked clinical texts (first trial; ~~removed~~ **inserted**)\n\n" + "\n".join(
        parts
    )


def undefended_cells(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cells of undefended models."""
    return [c for c in cells if c.get("defense") is None]


def _attack_key(cell: dict[str, Any]) -> tuple[Any, ...]:
    """What pairs a defended cell with its undefended twin (same examples and attack seed)."""
    return (
        cell["task"],
        model_name(cell),
        attack_name(cell),
        cell["norm"],
        cell["eps"],
        cell["targeted"],
        cell["trial"],
    )


def evaluation_name(cell: dict[str, Any]) -> str:
    """How a defended cell was attacked: plainly, or by the defense's adaptive attacker."""
    if not cell.get("adaptive"):
        return "plain"
    return f"adaptive ({str(DEFENSES.get(cell['defense']).adaptive_attack).upper()})"


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
    twins = {_attack_key(c): c for c in cells if c["attack"] is not None and c["defense"] is None}
    flags = _masking_flags_by_model(cells)
    groups: dict[tuple[Any, ...], list[dict[str, float]]] = defaultdict(list)
    for c in cells:
        if c["attack"] is None or c.get("defense") is None:
            continue
        twin = twins.get(_attack_key(c))
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
        label = f"{attack} ({norm}{', targeted' if targeted else ''})"
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
            summary = summarize([r[column] for r in runs])
            row.append(summary.format())
            record.update(_summary_fields(column, summary))
        test = paired_ttest([r["post_defense"] for r in runs], [r["post_attack"] for r in runs])
        masking = flags.get((task, model, defense), "not checked")
        row += [test.format(), masking]
        record.update({"paired_t": test.t, "paired_p": test.p, "masking_flags": masking})
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
        "Paired t-test post-defense vs post-attack",
        "Gradient-masking flags (defended model)",
    )
    return Table(
        "Defense effectiveness: accuracy under attack with and without each defense "
        "(mean ± SD [95% CI] over trials)",
        header,
        rows,
        records,
    )


UNDEFENDED = "undefended"


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
        label = f"{attack} ({norm}{', targeted' if targeted else ''})"
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
        for column in ("training_ratio", "inference_ratio", "certify_seconds"):
            summary = summarize([r[column] for r in runs])
            record.update(_summary_fields(column, summary))
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
            summary = summarize([r[column] for r in runs])
            record.update(_summary_fields(column, summary))
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


def _tables(cells: list[dict[str, Any]], store: ResultStore) -> list[Table]:
    plain = undefended_cells(cells)
    return [
        clean_table(plain),
        attack_table(plain),
        worst_case_table(plain, store),
        defense_table(cells),
        defense_anova_table(cells),
        overhead_table(cells),
        certification_table(cells),
    ]


def build_tables(store_path: str | Path) -> list[Table]:
    """The study's tables from a results store: clean, per attack, worst case over attacks,
    defense effectiveness, defense overhead, certified accuracy, and the transfer matrices."""
    with ResultStore(store_path) as store:
        cells = store.cells()
        return _tables(cells, store) + transfer_matrices(undefended_cells(cells))


def write_report(store_path: str | Path, output: str | Path | None = None) -> list[Path]:
    """Write ``report.md``, ``clean.csv``, ``attacks.csv``, ``worst_case.csv``,
    ``defenses.csv``, ``defense_anova.csv``, ``overhead.csv``, ``certified.csv`` and
    ``transfer.csv`` beside the store or in ``output``."""
    out = Path(output) if output is not None else Path(store_path).parent
    out.mkdir(parents=True, exist_ok=True)
    with ResultStore(store_path) as store:
        cells, study = store.cells(), store.study() or {}
        tables = _tables(cells, store)
        texts_md = text_examples(undefended_cells(cells), store)
    matrices = transfer_matrices(undefended_cells(cells))
    transfer = Table("", (), [], [r for m in matrices for r in m.records])
    trained = [  # one clean cell per trained model: wrapping defenses share the undefended one
        c
        for c in cells
        if c["attack"] is None and (c["defense"] is None or DEFENSES.get(c["defense"]).retrains)
    ]
    train_s = sum(c["train_seconds"] for c in trained)
    attacked = [c for c in cells if c["attack"] is not None]
    early = sum(bool(c.get("attack_config", {}).get("stop_when_adversarial")) for c in attacked)
    lines = [
        f"# medrobust study report: {study.get('name', 'study')}",
        "",
        f"{len(cells)} cells, {study.get('trials', '?')} trials per configuration, seed "
        f"{study.get('seed', '?')}. Training time over all models: {train_s:.0f} s.",
        "Success rate = fraction of originally correct test examples that the attack made wrong.",
        "Sensitivity, specificity, FNR and FPR are for each task's declared positive class.",
        f"Early stop (an example stops being perturbed once misclassified, which saves compute "
        f"and changes no outcome): on in {early} of {len(attacked)} attack cells.",
        "",
    ]
    markdown = "\n".join(lines) + "\n".join(t.markdown() + "\n" for t in tables + matrices)
    markdown += texts_md
    paths = [
        out / "report.md",
        out / "clean.csv",
        out / "attacks.csv",
        out / "worst_case.csv",
        out / "defenses.csv",
        out / "defense_anova.csv",
        out / "overhead.csv",
        out / "certified.csv",
        out / "transfer.csv",
    ]
    texts = [markdown, *(table.csv() for table in [*tables, transfer])]
    for path, text in zip(paths, texts, strict=True):
        write_text_atomically(path, text)
    return paths
