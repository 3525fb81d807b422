"""The study config: parsed from TOML or YAML into frozen dataclasses and validated before any
compute, so that a typo fails in a second rather than after an hour of training.

Example (TOML)::

    [study]
    name = "quick"
    trials = 5            # independent trials: split (where the task re-splits), init, attack
    seed = 0
    max_attack_examples = 300

    [[tasks]]
    name = "breastmnist"
    models = ["small_cnn"]
    training = { epochs = 30, patience = 8 }

    [[attacks]]
    name = "pgd"
    norm = "linf"
    params = { steps = 10 }
    eps = { image = [0.0078, 0.0314], tabular = [0.1] }   # by task name or by modality

Transfer attacks need two or more models on a task: another architecture, or the same one trained
on a disjoint share of the training data (another "institution")::

    [[tasks]]
    name = "breastmnist"
    models = [
        "small_cnn",
        "resnet",
        { name = "small_cnn", label = "small_cnn@site2", train_share = [2, 2] },
    ]

    [[attacks]]
    name = "pgd"
    transfer = true       # craft on each other model of the task, evaluate on this one
    eps = { image = [0.0157] }

Defenses are an axis of the study: each applies to the tasks (and models) it serves, and the
defended model meets the same attacks, examples and seeds as the undefended one. Parameters can
differ per modality or task (``overrides``, task names before modalities), so one entry sweeps
nothing; a sweep is several entries with their own ``label``::

    [[defenses]]
    name = "randomized_smoothing"
    overrides = { image = { sigma = 0.12 }, tabular = { sigma = 0.25 } }
    attacks = ["pgd"]     # evaluate it against these attacks only (default: all)
    models = ["small_cnn"] # defend these model labels only (default: every model it fits)

Training-time attacks are ``[[poisonings]]`` entries (:mod:`medrobust.study.poisoning`); the
insulin-dosing task is a ``[treatment]`` table (:mod:`medrobust.study.treatment`), and a study
may consist of it alone, without ``[[tasks]]``.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from medrobust.attacks import ATTACKS
from medrobust.data import get_task_spec
from medrobust.defenses import DEFENSES
from medrobust.errors import ConfigError, MedrobustError
from medrobust.models import get_model_spec
from medrobust.study.checks import check_finite, expect_names
from medrobust.study.checks import check_keys as _check_keys
from medrobust.study.checks import expect as _expect
from medrobust.study.explanations import ExplainSettings, parse_explain
from medrobust.study.poisoning import PoisoningEntry, check_poisoning, parse_poisoning
from medrobust.study.treatment import TREATMENT_TASK, TreatmentEntry, parse_treatment
from medrobust.training import FitConfig
from medrobust.types import UNBOUNDED, Domain, TaskKind

MAX_CELLS = 100_000


@dataclass(frozen=True)
class ModelEntry:
    """One model to train on a task.

    Attributes:
        name: registry name of the architecture.
        params: constructor params.
        training: training config.
        train_share: ``(part, of)``: train on the ``part``-th of ``of`` disjoint shares of the
            training split (split by patient where the task has patient ids), as a model of
            another institution would be; ``None`` trains on the whole split.
        label: the model's name in the results; unique within its task.
        pretrained: the model is trained already (its factory or checkpoint gives the weights):
            it is evaluated as built, and ``training`` applies only to defenses that retrain,
            which fine-tune a copy of it.
    """

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    training: FitConfig = field(default_factory=FitConfig)
    train_share: tuple[int, int] | None = None
    label: str = ""
    pretrained: bool = False

    def __post_init__(self) -> None:
        if not self.label:
            share = "" if self.train_share is None else "@share{}of{}".format(*self.train_share)
            object.__setattr__(self, "label", self.name + share)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict form (stored with the results); ``pretrained`` only where set, so that the
        identity of earlier stores is unchanged."""
        entry: dict[str, Any] = {
            "name": self.name,
            "label": self.label,
            "params": dict(self.params),
            "training": dict(vars(self.training)),
            "train_share": None if self.train_share is None else list(self.train_share),
        }
        if self.pretrained:
            entry["pretrained"] = True
        return entry


@dataclass(frozen=True)
class TaskEntry:
    """One task and the models to train on it."""

    name: str
    models: tuple[ModelEntry, ...]


@dataclass(frozen=True)
class AttackEntry:
    """One attack with its norm, params and the eps values per task name or modality.

    A targeted entry aims each example at its task's clinically harmful misreading
    (``TaskSpec.harmful_targets``, e.g. malignant -> benign) and runs on tasks that declare one.
    A transfer entry crafts the examples on each other model of the task (the surrogate) and
    evaluates them on the attacked model; it runs on tasks with two or more models.
    ``eot`` > 1 attacks the expectation over that many forward passes (for randomized models).
    """

    name: str
    norm: str
    params: Mapping[str, Any]
    eps: Mapping[str, tuple[float, ...]]
    targeted: bool = False
    transfer: bool = False
    eot: int = 1

    def eps_for(self, task_name: str, modality: str) -> tuple[float, ...]:
        """The eps values for a task: its own entry, else its modality's, else ``all``."""
        for key in (task_name, modality, "all"):
            if key in self.eps:
                return self.eps[key]
        return ()


@dataclass(frozen=True)
class DefenseEntry:
    """One defense with its parameters (common and per task or modality) and its scope.

    Attributes:
        name: registry name of the defense.
        label: its name in the results; unique in the study.
        params: parameters for every task.
        overrides: task name or modality -> parameters that replace ``params`` there.
        tasks: task names it applies to (empty: every task of a modality it serves).
        models: model labels (or names) it defends (empty: every model of those tasks).
        attacks: attack names evaluated against it (empty: every attack of the task).
    """

    name: str
    label: str
    params: Mapping[str, Any] = field(default_factory=dict)
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    tasks: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    attacks: tuple[str, ...] = ()

    def params_for(self, task_name: str, modality: str) -> dict[str, Any]:
        """The parameters on a task: ``params``, then its modality's, then its own overrides."""
        return {
            **dict(self.params),
            **dict(self.overrides.get(modality, {})),
            **dict(self.overrides.get(task_name, {})),
        }

    def applies_to(self, task_name: str) -> bool:
        """Whether the defense runs on the task: a classification task of a modality it serves
        (anomaly detectors are not defended), within the ``tasks`` filter."""
        task = get_task_spec(task_name)
        served = DEFENSES.get(self.name).modalities
        return (
            task.modality in served
            and task.kind is TaskKind.CLASSIFICATION
            and (not self.tasks or task_name in self.tasks)
        )

    def defends(self, model: ModelEntry) -> bool:
        """Whether the defense runs on this model of a task it applies to."""
        return not self.models or model.label in self.models or model.name in self.models

    def evaluates(self, attack: AttackEntry) -> bool:
        """Whether this attack is run against the defended model."""
        return not self.attacks or attack.name in self.attacks

    def to_dict(self) -> dict[str, Any]:
        """Plain dict form (stored with the results)."""
        return {
            "name": self.name,
            "label": self.label,
            "params": dict(self.params),
            "overrides": {k: dict(v) for k, v in self.overrides.items()},
            "tasks": list(self.tasks),
            "models": list(self.models),
            "attacks": list(self.attacks),
        }


EXECUTORS = ("local", "ray")
EXECUTION_KEYS = ("executor", "address", "retries", "resources")
"""The keys of ``[study]`` that say how a study runs, not what it computes: they stay out of the
store's identity, so a study started locally can be resumed on a cluster and vice versa."""
MAX_RETRIES = 100


def _check_resource(where: str, value: Any, *, gpu: bool) -> float:
    """A number of CPUs (> 0) or GPUs (>= 0) that Ray accepts: GPUs are whole or a share of one
    GPU below 1; fractions go down to Ray's precision of 0.0001."""
    what = "a whole number or a fraction below 1 (a share of one GPU)" if gpu else "a number > 0"
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value >= 0 if gpu else value > 0)
        and (value == 0 or value >= 0.0001)
        and (not gpu or value < 1 or float(value).is_integer())
    )
    if not ok:
        raise ConfigError(f"{where} must be {what}. Got {value!r} instead.")
    return float(value)


@dataclass(frozen=True)
class GroupResources:
    """What one cell group (a trained model and the cells that evaluate it) asks of a Ray worker.

    Attributes:
        cpus: CPU cores (Ray's ``num_cpus``); the group's torch threads are their whole part (at
            least 1). A fraction below 1 packs several groups onto one core.
        gpus: GPUs (Ray's ``num_gpus``); a fraction below 1 shares one GPU between groups.
    """

    cpus: float = 1.0
    gpus: float = 0.0

    def __post_init__(self) -> None:
        _check_resource("The 'cpus' of a cell group", self.cpus, gpu=False)
        _check_resource("The 'gpus' of a cell group", self.gpus, gpu=True)

    @property
    def threads(self) -> int:
        """torch's intra-op threads for a group with these resources."""
        return max(1, math.floor(self.cpus))

    def to_dict(self) -> dict[str, float]:
        """Plain dict form."""
        return {"cpus": self.cpus, "gpus": self.gpus}


@dataclass(frozen=True)
class ExecutionSpec:
    """How a study runs (the ``[study]`` keys ``executor``, ``address``, ``retries`` and the
    ``[study.resources]`` table). None of it changes the rows a study stores.

    Attributes:
        executor: ``"local"`` runs the cell groups one after another in this process; ``"ray"``
            runs each group as a Ray task (``pip install "medrobust[distributed]"``).
        address: the Ray cluster to connect to (``"auto"``, ``"host:6379"``,
            ``"ray://host:10001"``); ``None`` starts a Ray instance on this machine.
        retries: how often Ray retries a cell group whose worker died or that raised an
            unexpected error; a medrobust error (a config or data problem) is never retried.
        resources: what each cell group asks of a worker.
        task_resources: task name -> the resources of its cell groups, in place of
            ``resources``.
    """

    executor: str = "local"
    address: str | None = None
    retries: int = 2
    resources: GroupResources = field(default_factory=GroupResources)
    task_resources: Mapping[str, GroupResources] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise ConfigError(
                f"study.executor must be one of {list(EXECUTORS)}. Got {self.executor!r} instead."
            )
        if self.address is not None and (not isinstance(self.address, str) or not self.address):
            raise ConfigError(
                "study.address must be a Ray address such as 'auto' or 'ray://host:10001'. "
                f"Got {self.address!r} instead."
            )
        retries = self.retries
        if (
            isinstance(retries, bool)
            or not isinstance(retries, int)
            or not 0 <= retries <= MAX_RETRIES
        ):
            raise ConfigError(
                f"study.retries must be an integer from 0 to {MAX_RETRIES}. "
                f"Got {retries!r} instead."
            )

    def resources_for(self, task: str) -> GroupResources:
        """The resources of the cell groups of ``task``."""
        return self.task_resources.get(task, self.resources)

    def to_dict(self) -> dict[str, Any]:
        """The settings that differ from the defaults, as ``[study]`` keys (empty by default)."""
        form: dict[str, Any] = {}
        if self.executor != "local":
            form["executor"] = self.executor
        if self.address is not None:
            form["address"] = self.address
        if self.retries != 2:
            form["retries"] = self.retries
        if self.resources != GroupResources() or self.task_resources:
            form["resources"] = {
                **self.resources.to_dict(),
                "tasks": {name: r.to_dict() for name, r in self.task_resources.items()},
            }
        return form


@dataclass(frozen=True)
class StudySpec:
    """A validated study configuration."""

    name: str
    trials: int
    seed: int
    max_attack_examples: int
    device: str
    tasks: tuple[TaskEntry, ...]
    attacks: tuple[AttackEntry, ...]
    output: str = "medrobust-results"
    defenses: tuple[DefenseEntry, ...] = ()
    intended_use: str = ""
    poisonings: tuple[PoisoningEntry, ...] = ()
    execution: ExecutionSpec = field(default_factory=ExecutionSpec)
    explain: ExplainSettings | None = None
    treatment: TreatmentEntry | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form (stored with the results). The execution settings
        (:data:`EXECUTION_KEYS`) appear only where they differ from the defaults."""
        form: dict[str, Any] = {
            "name": self.name,
            "trials": self.trials,
            "seed": self.seed,
            "max_attack_examples": self.max_attack_examples,
            "device": self.device,
            "output": self.output,
            "intended_use": self.intended_use,
            "tasks": [
                {
                    "name": t.name,
                    "models": [m.to_dict() for m in t.models],
                }
                for t in self.tasks
            ],
            "attacks": [
                {
                    "name": a.name,
                    "norm": a.norm,
                    "params": dict(a.params),
                    "eps": {k: list(v) for k, v in a.eps.items()},
                    "targeted": a.targeted,
                    "transfer": a.transfer,
                    "eot": a.eot,
                }
                for a in self.attacks
            ],
            "defenses": [d.to_dict() for d in self.defenses],
        }
        if self.poisonings:  # absent otherwise, so that earlier stores keep their identity
            form["poisonings"] = [p.to_dict() for p in self.poisonings]
        if self.explain is not None:  # likewise
            form["explain"] = self.explain.to_dict()
        if self.treatment is not None:  # likewise
            form["treatment"] = self.treatment.to_dict()
        form.update(self.execution.to_dict())  # nothing by default, for the same reason
        return form


def _parse_training(where: str, raw: Any, kind: TaskKind) -> FitConfig:
    raw = dict(_expect(where, raw, dict, "a table of training settings"))
    allowed = set(FitConfig.__dataclass_fields__)
    _check_keys(where, raw, allowed)
    raw.setdefault(
        "objective",
        "reconstruction" if kind is TaskKind.ANOMALY_DETECTION else "classification",
    )
    try:
        return FitConfig(**raw)
    except MedrobustError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _parse_model(where: str, raw: Any, task_training: Any, kind: TaskKind) -> ModelEntry:
    if isinstance(raw, str):
        raw = {"name": raw}
    raw = _expect(where, raw, dict, "a model name or a table with 'name'")
    _check_keys(where, raw, {"name", "params", "training", "train_share", "label", "pretrained"})
    name = _expect(f"{where}.name", raw.get("name"), str, "a model name")
    spec = get_model_spec(name)
    if kind not in spec.kinds:
        raise ConfigError(f"{where}: the model {name!r} does not serve {kind.value} tasks.")
    params = dict(_expect(f"{where}.params", raw.get("params", {}), dict, "a table"))
    training = {
        **_expect(f"{where} training", task_training or {}, dict, "a table of training settings"),
        **_expect(f"{where}.training", raw.get("training", {}), dict, "a table of settings"),
    }
    share = _parse_share(f"{where}.train_share", raw.get("train_share"))
    label = _expect(f"{where}.label", raw.get("label", ""), str, "a string")
    pretrained = _expect(f"{where}.pretrained", raw.get("pretrained", False), bool, "true or false")
    return ModelEntry(
        name,
        params,
        _parse_training(f"{where}.training", training, kind),
        share,
        label,
        pretrained,
    )


def _parse_share(where: str, raw: Any) -> tuple[int, int] | None:
    if raw is None:
        return None
    ok = (
        isinstance(raw, list)
        and len(raw) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in raw)
        and 2 <= raw[1] <= 100
        and 1 <= raw[0] <= raw[1]
    )
    if not ok:
        raise ConfigError(
            f"{where} must be [part, of] with 2 <= of <= 100 and 1 <= part <= of, e.g. [1, 2] "
            f"for the first half of the training split. Got {raw!r} instead."
        )
    return (raw[0], raw[1])


def _parse_task(where: str, raw: Any) -> TaskEntry:
    raw = _expect(where, raw, dict, "a table with 'name' and 'models'")
    _check_keys(where, raw, {"name", "models", "training"})
    name = _expect(f"{where}.name", raw.get("name"), str, "a task name")
    task_spec = get_task_spec(name)
    models_raw = _expect(f"{where}.models", raw.get("models"), list, "a non-empty list")
    if not models_raw:
        raise ConfigError(f"{where}.models must list at least one model.")
    models = tuple(
        _parse_model(f"{where}.models[{i}]", m, raw.get("training"), task_spec.kind)
        for i, m in enumerate(models_raw)
    )
    for entry in models:
        if task_spec.modality not in get_model_spec(entry.name).modalities:
            raise ConfigError(
                f"{where}: the model {entry.name!r} does not accept "
                f"{task_spec.modality.value} inputs of task {name!r}."
            )
    labels = [m.label for m in models]
    if len(set(labels)) != len(labels):
        raise ConfigError(
            f"{where}: each model of a task needs its own label; give repeated architectures a "
            f"'label' (or a different 'train_share'). Got labels {labels}."
        )
    return TaskEntry(name, models)


def _parse_eps(where: str, raw: Any) -> dict[str, tuple[float, ...]]:
    if isinstance(raw, list | int | float):
        raw = {"all": raw}
    raw = _expect(where, raw, dict, "a list of numbers or a table of lists by task or modality")
    out: dict[str, tuple[float, ...]] = {}
    for key, values in raw.items():
        values = values if isinstance(values, list) else [values]
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(v) or v < 0:
                raise ConfigError(f"{where}.{key} values must be numbers >= 0. Got {v!r}.")
        out[key] = tuple(float(v) for v in values)
    return out


def _parse_attack(where: str, raw: Any) -> AttackEntry:
    raw = _expect(where, raw, dict, "a table with 'name' and 'eps'")
    _check_keys(where, raw, {"name", "norm", "params", "eps", "targeted", "transfer", "eot"})
    targeted = _expect(f"{where}.targeted", raw.get("targeted", False), bool, "true or false")
    transfer = _expect(f"{where}.transfer", raw.get("transfer", False), bool, "true or false")
    eot = _expect(f"{where}.eot", raw.get("eot", 1), int, "an integer from 1 to 1000")
    if not 1 <= eot <= 1000:
        raise ConfigError(f"{where}.eot must be an integer from 1 to 1000. Got {eot} instead.")
    name = _expect(f"{where}.name", raw.get("name"), str, "an attack name")
    ATTACKS.get(name)
    norm = str(raw.get("norm", "linf"))
    params = dict(_expect(f"{where}.params", raw.get("params", {}), dict, "a table"))
    if "eps" not in raw:
        raise ConfigError(f"{where} needs 'eps'.")
    eps = _parse_eps(f"{where}.eps", raw["eps"])
    if transfer and ATTACKS.get(name).perturbs == "embeddings":
        raise ConfigError(
            f"{where}: {name!r} perturbs one model's own token embeddings, which another model "
            "cannot read, so it cannot be a transfer attack. Transfer a token attack (hotflip) "
            "instead."
        )
    _check_attack(
        where,
        AttackEntry(name, norm, params, eps),
        [value for values in eps.values() for value in values],
    )
    return AttackEntry(name, norm, params, eps, targeted, transfer, eot)


def _check_attack(
    where: str, attack: AttackEntry, eps_values: list[float], domain: Domain = UNBOUNDED
) -> None:
    """Build the attack for each budget so that bad parameters fail now, not after training."""
    cls = ATTACKS.get(attack.name)
    try:
        for value in eps_values:
            cls(norm=attack.norm, eps=value, domain=domain, **attack.params)
    except TypeError as exc:
        raise ConfigError(f"{where}.params: {exc}") from exc
    except MedrobustError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _parse_defense(where: str, raw: Any) -> DefenseEntry:
    raw = _expect(where, raw, dict, "a table with 'name'")
    _check_keys(where, raw, {"name", "label", "params", "overrides", "tasks", "models", "attacks"})
    name = _expect(f"{where}.name", raw.get("name"), str, "a defense name")
    DEFENSES.get(name)
    label = _expect(f"{where}.label", raw.get("label", name), str, "a string")
    params = dict(_expect(f"{where}.params", raw.get("params", {}), dict, "a table"))
    overrides_raw = _expect(
        f"{where}.overrides",
        raw.get("overrides", {}),
        dict,
        "a table of parameter tables by task or modality",
    )
    overrides = {
        key: dict(_expect(f"{where}.overrides.{key}", value, dict, "a table of parameters"))
        for key, value in overrides_raw.items()
    }
    tasks = expect_names(f"{where}.tasks", raw.get("tasks", []))
    for task in tasks:
        get_task_spec(task)
    attacks = expect_names(f"{where}.attacks", raw.get("attacks", []))
    for attack in attacks:
        ATTACKS.get(attack)
    models = expect_names(f"{where}.models", raw.get("models", []))
    return DefenseEntry(name, label, params, overrides, tasks, models, attacks)


def _check_defense(where: str, defense: DefenseEntry, tasks: tuple[TaskEntry, ...]) -> None:
    """Build the defense for each task it applies to, so bad parameters fail before training."""
    cls = DEFENSES.get(defense.name)
    known_tasks = {t.name for t in tasks}
    for task_name in defense.tasks:
        if task_name not in known_tasks:
            raise ConfigError(f"{where}.tasks names {task_name!r}, which the study does not run.")
    labels = {m.label for t in tasks for m in t.models} | {m.name for t in tasks for m in t.models}
    for model in defense.models:
        if model not in labels:
            raise ConfigError(
                f"{where}.models names {model!r}, which is no model of the study. "
                f"Models: {sorted(labels)}."
            )
    for task_name in defense.tasks:
        if not defense.applies_to(task_name):
            raise ConfigError(
                f"{where}.tasks names {task_name!r}, which the {defense.name} defense does not "
                f"serve (it defends classifiers of "
                f"{sorted(m.value for m in cls.modalities)} inputs)."
            )
    for task in tasks:
        modality = get_task_spec(task.name).modality.value
        if not defense.applies_to(task.name):
            continue
        try:
            cls(**defense.params_for(task.name, modality))
        except TypeError as exc:
            raise ConfigError(f"{where} on task {task.name!r}: {exc}") from exc
        except MedrobustError as exc:
            raise ConfigError(f"{where} on task {task.name!r}: {exc}") from exc


def _check_unique_labels(kind: str, labels: list[str]) -> None:
    """Each defense (poisoning) of a study names its rows by its label: labels must differ."""
    if len(set(labels)) != len(labels):
        raise ConfigError(
            f"Each {kind} of a study needs its own label; give repeated {kind}s a 'label'. "
            f"Got labels {labels}."
        )


def _parse_resources(where: str, raw: Mapping[str, Any], base: GroupResources) -> GroupResources:
    """``cpus`` and ``gpus`` of ``raw``; a key it leaves out keeps its value in ``base``."""
    cpus = _check_resource(f"{where}.cpus", raw.get("cpus", base.cpus), gpu=False)
    gpus = _check_resource(f"{where}.gpus", raw.get("gpus", base.gpus), gpu=True)
    return GroupResources(cpus, gpus)


def _parse_execution(study: Mapping[str, Any], task_names: Sequence[str]) -> ExecutionSpec:
    """The execution settings of ``[study]`` (see :class:`ExecutionSpec`)."""
    executor = _expect("study.executor", study.get("executor", "local"), str, "'local' or 'ray'")
    if executor not in EXECUTORS:
        raise ConfigError(f"study.executor must be 'local' or 'ray'. Got {executor!r} instead.")
    address = study.get("address")
    if address is not None and (not isinstance(address, str) or not address.strip()):
        raise ConfigError(
            "study.address must be a Ray address such as 'auto', 'host:6379' or "
            f"'ray://host:10001'. Got {address!r} instead."
        )
    what = f"an integer from 0 to {MAX_RETRIES}"
    retries = _expect("study.retries", study.get("retries", 2), int, what)
    if not 0 <= retries <= MAX_RETRIES:
        raise ConfigError(f"study.retries must be {what}. Got {retries} instead.")
    raw = _expect(
        "study.resources", study.get("resources", {}), dict, "a table with 'cpus', 'gpus', 'tasks'"
    )
    _check_keys("[study.resources]", raw, {"cpus", "gpus", "tasks"})
    resources = _parse_resources("study.resources", raw, GroupResources())
    tasks_raw = _expect(
        "study.resources.tasks",
        raw.get("tasks", {}),
        dict,
        "a table of [study.resources.tasks.<task name>] tables",
    )
    task_resources: dict[str, GroupResources] = {}
    for name, entry in tasks_raw.items():
        where = f"study.resources.tasks.{name}"
        if name not in task_names:
            raise ConfigError(
                f"{where} names {name!r}, which the study does not run. "
                f"Tasks: {sorted(task_names)}."
            )
        entry = _expect(where, entry, dict, "a table with 'cpus' and/or 'gpus'")
        _check_keys(f"[{where}]", entry, {"cpus", "gpus"})
        task_resources[name] = _parse_resources(where, entry, resources)
    return ExecutionSpec(
        executor, None if address is None else address.strip(), retries, resources, task_resources
    )


def parse_spec(raw: Mapping[str, Any]) -> StudySpec:
    """Validate a config mapping (as read from TOML/YAML) into a :class:`StudySpec`."""
    raw = _expect("The config", raw, dict, "a table")
    _check_keys(
        "the config", raw, {"study", "tasks", "attacks", "defenses", "poisonings", "treatment"}
    )
    for key, value in raw.items():
        check_finite(key, value)
    study = dict(_expect("[study]", raw.get("study", {}), dict, "a table"))
    _check_keys(
        "[study]",
        study,
        {
            "name",
            "trials",
            "seed",
            "max_attack_examples",
            "device",
            "output",
            "intended_use",
            "explain",
            *EXECUTION_KEYS,
        },
    )
    trials = _expect("study.trials", study.get("trials", 5), int, "an integer >= 1")
    seed = _expect("study.seed", study.get("seed", 0), int, "an integer >= 0")
    max_examples = _expect(
        "study.max_attack_examples", study.get("max_attack_examples", 500), int, "an integer >= 1"
    )
    if trials < 1 or seed < 0 or max_examples < 1:
        raise ConfigError(
            "study.trials and study.max_attack_examples must be >= 1 and study.seed >= 0. "
            f"Got trials={trials}, max_attack_examples={max_examples}, seed={seed} instead."
        )
    device = _expect("study.device", study.get("device", "cpu"), str, "'cpu' or 'cuda[:N]'")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ConfigError(f"study.device must be 'cpu' or 'cuda[:N]'. Got {device!r} instead.")
    treatment = parse_treatment("treatment", raw.get("treatment"))
    tasks_raw = _expect("tasks", raw.get("tasks", []), list, "a list of [[tasks]] tables")
    if not tasks_raw and treatment is None:
        raise ConfigError("The config must list at least one [[tasks]] entry or a [treatment].")
    tasks = tuple(_parse_task(f"tasks[{i}]", t) for i, t in enumerate(tasks_raw))
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ConfigError(f"Each task may appear once in a study. Got {names}.")
    execution = _parse_execution(study, [*names, *([TREATMENT_TASK] if treatment else [])])
    attacks_raw = _expect("attacks", raw.get("attacks", []), list, "a list of [[attacks]] tables")
    attacks = tuple(_parse_attack(f"attacks[{i}]", a) for i, a in enumerate(attacks_raw))
    for i, attack in enumerate(attacks):
        for task in tasks:
            task_spec = get_task_spec(task.name)
            values = attack.eps_for(task.name, task_spec.modality.value)
            _check_attack(
                f"attacks[{i}] on task {task.name!r}", attack, list(values), task_spec.domain
            )
    defenses_raw = _expect(
        "defenses", raw.get("defenses", []), list, "a list of [[defenses]] tables"
    )
    defenses = tuple(_parse_defense(f"defenses[{i}]", d) for i, d in enumerate(defenses_raw))
    _check_unique_labels("defense", [d.label for d in defenses])
    for i, defense in enumerate(defenses):
        _check_defense(f"defenses[{i}]", defense, tasks)
    poisonings_raw = _expect(
        "poisonings", raw.get("poisonings", []), list, "a list of [[poisonings]] tables"
    )
    poisonings = tuple(parse_poisoning(f"poisonings[{i}]", p) for i, p in enumerate(poisonings_raw))
    _check_unique_labels("poisoning", [p.label for p in poisonings])
    study_models = [
        (t.name, [m.label for m in t.models] + [m.name for m in t.models]) for t in tasks
    ]
    for i, poisoning in enumerate(poisonings):
        check_poisoning(f"poisonings[{i}]", poisoning, study_models)
    spec = StudySpec(
        name=str(study.get("name", "study")),
        trials=trials,
        seed=seed,
        max_attack_examples=max_examples,
        device=device,
        tasks=tasks,
        attacks=attacks,
        output=str(study.get("output", "medrobust-results")),
        defenses=defenses,
        intended_use=_expect(
            "study.intended_use", study.get("intended_use", ""), str, "a text (one paragraph)"
        ).strip(),
        poisonings=poisonings,
        execution=execution,
        explain=parse_explain("study.explain", study.get("explain")),
        treatment=treatment,
    )
    from medrobust.study.plan import count_cells, plan_cells  # local: plan imports this module

    count = count_cells(spec, limit=MAX_CELLS)
    if count > MAX_CELLS:
        raise ConfigError(
            f"The study has about {count:,} cells ({trials:,} trials of "
            f"{count // trials:,}{'+' if count // trials > MAX_CELLS else ''} cells each), more "
            f"than the limit of {MAX_CELLS:,}; nothing was computed. Reduce trials, eps values, "
            "attacks, defenses, models or tasks."
        )
    seen: set[str] = set()
    for cell in plan_cells(spec):
        if cell.cell_id in seen:
            raise ConfigError(
                f"The cell {cell.label!r} appears twice in the study: an attack, eps value or "
                "poisoning rate is listed more than once. List each configuration once."
            )
        seen.add(cell.cell_id)
    return spec


def load_spec(path: str | Path | None = None) -> StudySpec:
    """Read a study config from a .toml, .yaml or .yml file; ``None`` gives the default study."""
    if path is None:
        text = resources.files("medrobust.study").joinpath("default.toml").read_text("utf-8")
        return parse_spec(tomllib.loads(text))
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"The study config {str(path)!r} does not exist.")
    suffix = path.suffix.lower()
    try:
        text = path.read_text("utf-8")
        if suffix == ".toml":
            raw: Any = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            raw = yaml.safe_load(text)
        else:
            raise ConfigError(
                f"A study config must end in .toml, .yaml or .yml. Got {path.name!r} instead."
            )
    except (tomllib.TOMLDecodeError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"The study config {path.name!r} cannot be parsed: {exc}") from exc
    return parse_spec(raw)


def attack_modalities_ok(attack: AttackEntry, modality: str) -> bool:
    """Whether the attack applies to inputs of this modality."""
    return modality in {m.value for m in ATTACKS.get(attack.name).modalities}
