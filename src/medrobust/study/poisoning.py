"""Training-time attacks as a study axis: what an attacker who slips samples into a hospital's
training data achieves, and how well poisoning detection catches it.

A ``[[poisonings]]`` entry names a poisoning (``backdoor`` or ``label_flip``), its poisoning
rates, its parameters (per task or modality through ``overrides``; a backdoor's ``trigger`` is a
table with ``kind`` = ``patch`` | ``blip`` | ``token`` and the trigger's parameters, by default
the modality's own), its scope (``tasks``, ``models``) and the detectors run on the poisoned
model (default: spectral signatures and activation clustering).

Each (task, model, poisoning, rate, trial) is one cell: the training split is poisoned with the
trial's seed, the model trained on it, and the cell records

- ``clean_accuracy`` of the poisoned model on the clean test split;
- ``attack_success_rate``: for a backdoor, the share of triggered test inputs whose class is not
  the target that the model sends to the target; for a targeted label flip, the share of the
  source class's test examples read as the target (NaN for a random flip);
- per detector: precision, recall and F1 of the flagged training rows against the rows the
  attacker changed, and the clean accuracy and attack success after removing the flagged rows
  and retraining (``<detector>_...``).

Detectors look at the classes the attacker writes into (the backdoor's or flip's target; every
class for a random flip). Spectral signatures remove 1.5 times the expected number of poisons
in a class; the defender is given the attacker's rate, as in Tran et al. (2018), so the figures
are an upper bound of what the method finds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from medrobust.attacks.poisoning import (
    POISONINGS,
    Backdoor,
    BlipTrigger,
    LabelFlip,
    PatchTrigger,
    Poisoning,
    TokenTrigger,
    Trigger,
    attack_success_rate,
    poison_task,
)
from medrobust.data import get_task_spec, load_task
from medrobust.data.task import Task
from medrobust.defenses.poison_detection import (
    DETECTORS,
    Detection,
    SpectralSignature,
    detection_metrics,
    penultimate_features,
)
from medrobust.errors import ConfigError, MedrobustError
from medrobust.metrics import predictions
from medrobust.models import TensorSplits, build_model, prepare_inputs
from medrobust.models.text import encode
from medrobust.stats import summarize
from medrobust.study.checks import check_keys, expect
from medrobust.study.table import Table, summary_fields
from medrobust.training import FitConfig, fit, predict_logits
from medrobust.types import Modality, TaskKind

STUDY_POISONINGS = ("backdoor", "label_flip")
TRIGGERS: dict[str, type[Trigger]] = {
    "patch": PatchTrigger,
    "blip": BlipTrigger,
    "token": TokenTrigger,
}
DEFAULT_TRIGGER = {Modality.IMAGE: "patch", Modality.ECG: "blip", Modality.TEXT: "token"}
DEFAULT_DETECTORS = ("spectral_signature", "activation_clustering")
REMOVAL_FACTOR = 1.5


@dataclass(frozen=True)
class PoisoningEntry:
    """One poisoning of a study with its rates, parameters, scope and detectors.

    Attributes:
        name: ``backdoor`` or ``label_flip``.
        label: its name in the results; unique in the study.
        rates: poisoning rates, each in [0, 1].
        params: parameters for every task (a backdoor's ``target`` and ``trigger`` table; a
            label flip's ``mode``, ``source``, ``target``), without ``rate``.
        overrides: task name or modality -> parameters that replace ``params`` there.
        tasks: task names it applies to (empty: every classification task it serves).
        models: model labels (or names) it poisons (empty: every model of those tasks).
        detectors: detector names run on each poisoned model.
    """

    name: str
    label: str
    rates: tuple[float, ...]
    params: Mapping[str, Any] = field(default_factory=dict)
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    tasks: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    detectors: tuple[str, ...] = DEFAULT_DETECTORS

    def params_for(self, task_name: str, modality: str) -> dict[str, Any]:
        """The parameters on a task: ``params``, then its modality's, then its own overrides."""
        return {
            **dict(self.params),
            **dict(self.overrides.get(modality, {})),
            **dict(self.overrides.get(task_name, {})),
        }

    def applies_to(self, task_name: str) -> bool:
        """Whether the poisoning runs on a classification task of a modality it serves."""
        task = get_task_spec(task_name)
        return (
            task.modality in POISONINGS.get(self.name).modalities
            and task.kind is TaskKind.CLASSIFICATION
            and (not self.tasks or task_name in self.tasks)
        )

    def poisons(self, model_label: str, model_name: str) -> bool:
        """Whether the poisoning runs on this model of a task it applies to."""
        return not self.models or model_label in self.models or model_name in self.models

    def to_dict(self) -> dict[str, Any]:
        """Plain dict form (stored with the results)."""
        return {
            "name": self.name,
            "label": self.label,
            "rates": list(self.rates),
            "params": dict(self.params),
            "overrides": {k: dict(v) for k, v in self.overrides.items()},
            "tasks": list(self.tasks),
            "models": list(self.models),
            "detectors": list(self.detectors),
        }


def parse_poisoning(where: str, raw: Any) -> PoisoningEntry:
    """Validate one ``[[poisonings]]`` table (names, rates, detectors; parameters are checked
    per task by :func:`check_poisoning`)."""
    raw = expect(where, raw, dict, "a table with 'name' and 'rates'")
    check_keys(
        where,
        raw,
        {"name", "label", "rates", "params", "overrides", "tasks", "models", "detectors"},
    )
    name = expect(f"{where}.name", raw.get("name"), str, "a poisoning name")
    POISONINGS.get(name)  # unknown names fail with suggestions
    if name not in STUDY_POISONINGS:
        raise ConfigError(
            f"{where}.name must be one of {list(STUDY_POISONINGS)} in a study. Got {name!r} "
            "instead (feature collision needs a target instance per run; use it from Python)."
        )
    label = expect(f"{where}.label", raw.get("label", name), str, "a string")
    rates_raw = expect(f"{where}.rates", raw.get("rates"), list, "a non-empty list of rates")
    rates = tuple(
        float(expect(f"{where}.rates", r, (int, float), "a list of numbers in [0, 1]"))
        for r in rates_raw
    )
    if not rates or any(not (0.0 <= r <= 1.0) or math.isnan(r) for r in rates):
        raise ConfigError(
            f"{where}.rates must be a non-empty list of poisoning rates in [0, 1]. "
            f"Got {rates_raw!r} instead."
        )
    params = dict(expect(f"{where}.params", raw.get("params", {}), dict, "a table"))
    if "rate" in params:
        raise ConfigError(f"{where}.params must not set 'rate'; list the rates in {where}.rates.")
    overrides_raw = expect(
        f"{where}.overrides", raw.get("overrides", {}), dict, "a table of tables"
    )
    overrides = {
        str(k): dict(expect(f"{where}.overrides.{k}", v, dict, "a table of parameters"))
        for k, v in overrides_raw.items()
    }
    names = {}
    for key in ("tasks", "models", "detectors"):
        values = expect(f"{where}.{key}", raw.get(key, []), list, "a list of names")
        for value in values:
            expect(f"{where}.{key}", value, str, "a list of names")
        names[key] = tuple(values)
    for task in names["tasks"]:
        get_task_spec(task)
    detectors = names["detectors"] or DEFAULT_DETECTORS
    for detector in detectors:
        DETECTORS.get(detector)
    return PoisoningEntry(
        name, label, rates, params, overrides, names["tasks"], names["models"], detectors
    )


def build_poisoning(name: str, params: Mapping[str, Any], rate: float, task: Task) -> Poisoning:
    """The poisoning ``name`` with ``params`` at ``rate`` on ``task`` (a backdoor's trigger table
    becomes its trigger; the modality's own trigger by default).

    Raises:
        ConfigError: an unknown trigger kind; the poisoning's own errors otherwise.
    """
    values = dict(params)
    if name == "backdoor":
        trigger_raw = dict(values.pop("trigger", {}) or {})
        kind = trigger_raw.pop("kind", DEFAULT_TRIGGER.get(task.modality))
        if kind not in TRIGGERS:
            raise ConfigError(
                f"The backdoor's trigger kind must be one of {sorted(TRIGGERS)}. Got {kind!r} "
                "instead."
            )
        values["trigger"] = TRIGGERS[str(kind)](**trigger_raw)
        values.setdefault("target", _default_target(task))
    if name == "label_flip" and values.get("mode") == "targeted":
        harmful = get_task_spec(task.name).harmful_targets
        if harmful:
            source, target = next(iter(harmful.items()))
            values.setdefault("source", source)
            values.setdefault("target", target)
    factory: Any = POISONINGS.get(name)  # each poisoning takes keyword-only parameters
    return factory(rate=rate, **values)  # type: ignore[no-any-return]


def _default_target(task: Task) -> int:
    """The class a backdoor aims at by default: the healthy reading of the task's harmful
    misreading (e.g. malignant -> benign), else class 0."""
    harmful = get_task_spec(task.name).harmful_targets
    return int(next(iter(harmful.values()))) if harmful else 0


def check_poisoning(where: str, entry: PoisoningEntry, tasks: list[tuple[str, list[str]]]) -> None:
    """The checks that need no data: the scope names tasks and models of the study, on tasks
    the poisoning serves. ``tasks`` are the study's (task name, model labels and names)."""
    known = {name for name, _ in tasks}
    for task_name in entry.tasks:
        if task_name not in known:
            raise ConfigError(f"{where}.tasks names {task_name!r}, which the study does not run.")
        if not entry.applies_to(task_name):
            raise ConfigError(
                f"{where}.tasks names {task_name!r}, which the {entry.name} poisoning does not "
                "serve (it needs a classification task of "
                f"{sorted(m.value for m in POISONINGS.get(entry.name).modalities)} inputs)."
            )
    models = {m for _, labels in tasks for m in labels}
    for model in entry.models:
        if model not in models:
            raise ConfigError(
                f"{where}.models names {model!r}, which is no model of the study. "
                f"Models: {sorted(models)}."
            )


def check_poisonings_on_data(entries: tuple[PoisoningEntry, ...], task_names: list[str]) -> None:
    """Build each poisoning on each task it applies to and run it on the training split, so that
    bad parameters (a trigger larger than the input, a class that does not exist) fail before
    any training. Needs the data: the runner calls it once the files are located."""
    for i, entry in enumerate(entries):
        for task_name in task_names:
            if not entry.applies_to(task_name):
                continue
            task = load_task(task_name)
            modality = task.modality.value
            for rate in entry.rates:
                try:
                    poisoning = build_poisoning(
                        entry.name, entry.params_for(task_name, modality), rate, task
                    )
                    poisoning(
                        task.train.x,
                        task.train.y,
                        seed=0,
                        num_classes=task.num_classes,
                        domain=task.domain,
                        modality=task.modality,
                    )
                except (TypeError, MedrobustError) as exc:
                    raise ConfigError(f"poisonings[{i}] on task {task_name!r}: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# Running a poisoning cell.


def _predict(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    return predictions(predict_logits(model, x)).numpy()


def _as_inputs(task: Task, inputs: TensorSplits, x: np.ndarray) -> torch.Tensor:
    """Raw test inputs (possibly triggered) as the model's tensors; text through the tokenizer
    learned on the (poisoned) training texts."""
    if task.modality is Modality.TEXT:
        length = int(inputs.x["test"].shape[1])
        return torch.from_numpy(encode(inputs.tokenizer, [str(t) for t in x], max_length=length))
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def _success(
    poisoning: Poisoning, model: nn.Module, task: Task, inputs: TensorSplits, seed: int
) -> float:
    """The attacker's success on the test split (see the module docstring)."""
    y = task.test.y
    if isinstance(poisoning, Backdoor):
        triggered = poisoning.trigger.apply(task.test.x, domain=task.domain, seed=seed)
        pred = _predict(model, _as_inputs(task, inputs, triggered))
        return attack_success_rate(pred, y, int(poisoning.target))
    if isinstance(poisoning, LabelFlip) and poisoning.mode == "targeted":
        source, target = int(poisoning.source), int(poisoning.target)  # type: ignore[arg-type]
        pred = _predict(model, inputs.x["test"])
        chosen = y == source
        return float((pred[chosen] == target).mean()) if chosen.any() else math.nan
    return math.nan


def _train(
    cell_model: str,
    task: Task,
    inputs: TensorSplits,
    model_params: Mapping[str, Any],
    config: FitConfig,
    seed: int,
    keep: np.ndarray | None = None,
) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(cell_model, task, inputs, dict(model_params))
    rows = slice(None) if keep is None else torch.from_numpy(np.flatnonzero(keep))
    fit(
        model,
        inputs.x["train"][rows],
        inputs.y["train"][rows],
        inputs.x["val"],
        inputs.y["val"],
        config=config,
        seed=seed,
    )
    return model


def _detector(name: str, poisoned_share: float) -> Any:
    """The detector ``name``; spectral signatures are told the poisoned share of the classes
    they examine (see the module docstring)."""
    if name == "spectral_signature":
        expected = min(max(poisoned_share, 1e-3), 1.0 / REMOVAL_FACTOR - 1e-3)
        return SpectralSignature(expected_rate=expected, removal_factor=REMOVAL_FACTOR)
    return DETECTORS.get(name)()


def run_poisoning_cell(
    *,
    task_name: str,
    split_seed: int,
    model: str,
    model_params: Mapping[str, Any],
    training: Mapping[str, Any],
    init_seed: int,
    poisoning: Mapping[str, Any],
    seed: int,
) -> tuple[dict[str, float], float]:
    """Poison the training split, train, measure, detect, remove and retrain.

    Args:
        task_name, split_seed: the task and its split.
        model, model_params, training, init_seed: the model and how it is trained.
        poisoning: ``{"name", "params", "rate", "detectors"}`` of the cell.
        seed: the poisoning's seed (which rows, where text triggers go).

    Returns:
        The cell's metrics and the training time in seconds of the poisoned model.
    """
    task = load_task(task_name, seed=split_seed)
    attack = build_poisoning(
        str(poisoning["name"]), poisoning["params"], float(poisoning["rate"]), task
    )
    poisoned_task, result = poison_task(task, attack, seed=seed)
    inputs = prepare_inputs(poisoned_task, dict(model_params))
    config = FitConfig(**training)
    start = time.perf_counter()
    victim = _train(model, poisoned_task, inputs, model_params, config, init_seed)
    train_seconds = time.perf_counter() - start
    y_test = task.test.y
    metrics: dict[str, float] = {
        "poisoned_rows": float(result.poisoned.sum()),
        "poisoned_share": float(result.poisoned.mean()) if len(result.poisoned) else math.nan,
        "clean_accuracy": float((_predict(victim, inputs.x["test"]) == y_test).mean()),
        "attack_success_rate": _success(attack, victim, task, inputs, seed + 1),
    }
    labels = inputs.y["train"].numpy()
    classes = [int(result.target)] if result.target is not None else sorted(set(labels.tolist()))
    in_classes = np.isin(labels, classes)
    share = float(result.poisoned[in_classes].mean()) if in_classes.any() else 0.0
    features = penultimate_features(victim, inputs.x["train"])
    for name in poisoning["detectors"]:
        detection: Detection = _detector(str(name), share).detect(
            features, labels, seed=seed, classes=classes
        )
        found = detection_metrics(detection.flagged, result.poisoned)
        metrics.update({f"{name}_{k}": float(v) for k, v in found.items()})
        retrained = _train(
            model, poisoned_task, inputs, model_params, config, init_seed, ~detection.flagged
        )
        metrics[f"{name}_clean_accuracy"] = float(
            (_predict(retrained, inputs.x["test"]) == y_test).mean()
        )
        metrics[f"{name}_attack_success_rate"] = _success(attack, retrained, task, inputs, seed + 1)
    return metrics, train_seconds


# ---------------------------------------------------------------------------------------------
# The report's poisoning tables.

ATTACK_COLUMNS = (
    ("poisoned_share", "Poisoned share of training set"),
    ("clean_accuracy", "Clean acc. (poisoned model)"),
    ("accuracy_drop", "Clean acc. drop vs unpoisoned model"),
    ("attack_success_rate", "Attack success"),
)
DETECTION_COLUMNS = (
    ("recall", "Recall"),
    ("precision", "Precision"),
    ("f1", "F1"),
    ("clean_accuracy", "Clean acc. after removal"),
    ("attack_success_rate", "Attack success after removal"),
)


def poisoning_cells(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The poisoning cells of a store's cells."""
    return [c for c in cells if c.get("poisoning")]


def _key(cell: dict[str, Any]) -> tuple[str, str, str, float]:
    p = cell["poisoning"]
    return (cell["task"], str(cell.get("model_label") or cell["model"]), p["label"], p["rate"])


def poisoning_tables(cells: list[dict[str, Any]]) -> tuple[Table, Table]:
    """Per task x model x poisoning x rate, mean ± SD [95% CI] over trials: the attack (poisoned
    share, clean accuracy, its drop against the study's unpoisoned model of the same trial, attack
    success), and each detector (recall, precision, F1 of the flagged rows; clean accuracy and
    attack success after removing them and retraining)."""
    unpoisoned = {
        (c["task"], str(c.get("model_label") or c["model"]), c["trial"]): c["metrics"]
        for c in cells
        if c["attack"] is None and c.get("defense") is None and not c.get("poisoning")
    }
    groups: dict[tuple[str, str, str, float], list[dict[str, Any]]] = {}
    for c in poisoning_cells(cells):
        groups.setdefault(_key(c), []).append(c)
    rows: list[tuple[str, ...]] = []
    records: list[dict[str, Any]] = []
    detection_rows: list[tuple[str, ...]] = []
    detection_records: list[dict[str, Any]] = []
    for key in sorted(groups):
        task, model, label, rate = key
        runs = groups[key]
        base = {"task": task, "model": model, "poisoning": label, "rate": rate}
        row = [task, model, label, f"{rate:g}", str(len(runs))]
        record: dict[str, Any] = {**base, "trials": len(runs)}
        for column, _ in ATTACK_COLUMNS:
            if column == "accuracy_drop":
                values = [
                    unpoisoned[(task, model, c["trial"])]["clean_accuracy"]
                    - c["metrics"]["clean_accuracy"]
                    for c in runs
                    if (task, model, c["trial"]) in unpoisoned
                ]
                summary = summarize(values, bounds=(-1.0, 1.0))
            else:
                values = [c["metrics"].get(column, math.nan) for c in runs]
                summary = summarize(values, bounds=(0.0, 1.0))
            row.append(summary.format() if summary.n else "—")
            record.update(summary_fields(column, summary))
        rows.append(tuple(row))
        records.append(record)
        for detector in runs[0]["poisoning"]["detectors"]:
            drow = [task, model, label, f"{rate:g}", detector, str(len(runs))]
            drecord: dict[str, Any] = {**base, "detector": detector, "trials": len(runs)}
            for column, _ in DETECTION_COLUMNS:
                values = [c["metrics"].get(f"{detector}_{column}", math.nan) for c in runs]
                summary = summarize(values, bounds=(0.0, 1.0))
                drow.append(summary.format() if summary.n else "—")
                drecord.update(summary_fields(column, summary))
            detection_rows.append(tuple(drow))
            detection_records.append(drecord)
    attack_table = Table(
        "Poisoning: clean accuracy and attack success by poisoning rate (mean ± SD [95% CI] "
        "over trials)",
        ("Task", "Model", "Poisoning", "Rate", "Trials", *(name for _, name in ATTACK_COLUMNS)),
        rows,
        records,
    )
    detection_table = Table(
        "Poisoning detection on the penultimate layer: flagged rows against the poisoned ones, "
        "and the model retrained without them (mean ± SD [95% CI] over trials)",
        (
            "Task",
            "Model",
            "Poisoning",
            "Rate",
            "Detector",
            "Trials",
            *(name for _, name in DETECTION_COLUMNS),
        ),
        detection_rows,
        detection_records,
    )
    return attack_table, detection_table
