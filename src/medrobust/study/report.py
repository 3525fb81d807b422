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
from medrobust.stats import Summary, paired_ttest, summarize
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
        flags = []
        for check in MASKING_CHECKS:
            hits = sum(r.get(f"masking_{check}", 0.0) == 1.0 for r in runs)
            record[f"masking_{check}_trials"] = hits
            if hits:
                flags.append(f"{check.replace('_', ' ')} ({hits}/{len(runs)})")
        checked = any(f"masking_{MASKING_CHECKS[0]}" in r for r in runs)
        row.append("; ".join(flags) or ("none" if checked else "not checked"))
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
            "task": task,
            "model": model,
            "attack": attack,
            "norm": norm,
            "eps": eps,
            "targeted": targeted,
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


def _tables(cells: list[dict[str, Any]], store: ResultStore) -> list[Table]:
    return [clean_table(cells), attack_table(cells), worst_case_table(cells, store)]


def build_tables(store_path: str | Path) -> list[Table]:
    """The study's tables from a results store: clean, per attack, worst case over attacks, and
    the transfer matrices."""
    with ResultStore(store_path) as store:
        cells = store.cells()
        return _tables(cells, store) + transfer_matrices(cells)


def write_report(store_path: str | Path, output: str | Path | None = None) -> list[Path]:
    """Write ``report.md``, ``clean.csv``, ``attacks.csv``, ``worst_case.csv`` and
    ``transfer.csv`` beside the store or in ``output``."""
    out = Path(output) if output is not None else Path(store_path).parent
    out.mkdir(parents=True, exist_ok=True)
    with ResultStore(store_path) as store:
        cells, study = store.cells(), store.study() or {}
        tables = _tables(cells, store)
        texts_md = text_examples(cells, store)
    matrices = transfer_matrices(cells)
    transfer = Table("", (), [], [r for m in matrices for r in m.records])
    train_s = sum({c["cell_id"]: c["train_seconds"] for c in cells if c["attack"] is None}.values())
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
        out / "transfer.csv",
    ]
    texts = [markdown, *(table.csv() for table in [*tables, transfer])]
    for path, text in zip(paths, texts, strict=True):
        write_text_atomically(path, text)
    return paths
