"""Study plan: the spec expanded into independent, serialisable cells with stable ids.

A cell is (task, model, defense, attack, eps, trial); ``attack = None`` is the clean evaluation
of the trained model on the whole test split, ``defense = None`` the undefended model. Cells that
share (task, model, trial) and a defense that retrains share one trained model, so the runner
groups them by :attr:`Cell.training_key`; a defense that only wraps the model shares the
undefended one. A transfer cell also names its ``source``: the undefended surrogate model (of the
same task and trial) the examples are crafted on. A defended attack cell with ``adaptive = True``
crafts its examples against the defense's adaptive attacker (EOT or BPDA); its twin with
``adaptive = False`` attacks the defended model plainly. Defended and undefended cells of the
same attack share the attack seed and the attacked examples, so they compare pairwise.
A cell with ``pretrained = True`` evaluates a model that is trained already (a user's model in an
audit): it is built, not trained, and a defense that retrains fine-tunes a copy of it.
A cell with ``treatment`` is one episode of the insulin-dosing task (see
:mod:`medrobust.study.treatment`): its controller, defense and sensor attack are in that field,
and the cells of one trial's policy (and of its adversarially trained twin) share a group.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from medrobust.data import get_task_spec
from medrobust.defenses import DEFENSES
from medrobust.study.identity import content_hash, derive_seed
from medrobust.study.spec import ModelEntry, StudySpec, attack_modalities_ok
from medrobust.study.treatment import (
    BASELINE,
    CONTROLLER_LABELS,
    POLICY,
    TREATMENT_TASK,
    cohort,
    defense_attack_modes,
    evaluation_name,
)
from medrobust.types import TaskKind


@dataclass(frozen=True)
class Cell:
    """One unit of work of a study; plain data, so it can travel to another process or machine."""

    task: str
    model: str
    model_params: dict[str, Any]
    training: dict[str, Any]
    trial: int
    split_seed: int
    init_seed: int
    attack: str | None
    norm: str | None
    eps: float | None
    attack_params: dict[str, Any]
    attack_seed: int
    max_attack_examples: int
    device: str
    targeted: bool = False
    model_label: str = ""
    train_share: list[int] | None = None
    source: dict[str, Any] | None = None
    eot: int = 1
    defense: str | None = None
    defense_label: str = ""
    defense_params: dict[str, Any] = field(default_factory=dict)
    adaptive: bool = False
    pretrained: bool = False
    poisoning: dict[str, Any] | None = None
    explain: dict[str, Any] | None = None
    treatment: dict[str, Any] | None = None

    @property
    def retrained(self) -> bool:
        """Whether the cell's model is built or trained by its defense."""
        return self.defense is not None and DEFENSES.get(self.defense).retrains

    @property
    def training_key(self) -> str:
        """Identifies the trained model this cell evaluates (before any inference wrapper)."""
        parts: list[Any] = [
            self.task,
            self.model,
            self.model_params,
            self.training,
            self.split_seed,
            self.init_seed,
            self.train_share,
        ]
        if self.pretrained:
            parts.append("pretrained")
        if self.poisoning is not None:
            parts.append(self.poisoning)
        if self.treatment is not None:
            parts.append(self.treatment.get("trained_with"))
        if self.retrained:
            parts += [self.defense, self.defense_params]
        return content_hash(parts)

    def undefended(self) -> Cell:
        """The same cell on the undefended model."""
        return replace(self, defense=None, defense_label="", defense_params={}, adaptive=False)

    def source_cell(self) -> Cell:
        """The clean cell of this transfer cell's surrogate model (same task, trial, split)."""
        if self.source is None:
            raise ValueError(f"{self.label} is not a transfer cell.")
        return replace(
            self,
            **self.source,
            attack=None,
            norm=None,
            eps=None,
            attack_params={},
            attack_seed=0,
            targeted=False,
            source=None,
            eot=1,
            defense=None,
            defense_label="",
            defense_params={},
            adaptive=False,
            explain=None,
        )

    @property
    def cell_id(self) -> str:
        """Stable id of the cell: a hash of everything that determines its rows."""
        payload = asdict(self)
        payload.pop("device")
        if not self.pretrained:  # absent as before the field existed: earlier ids stay valid
            payload.pop("pretrained")
        if self.poisoning is None:
            payload.pop("poisoning")
        if self.explain is None:
            payload.pop("explain")
        if self.treatment is None:
            payload.pop("treatment")
        return content_hash(payload)

    @property
    def evaluation(self) -> str:
        """What the cell does to its model: ``clean``, ``pgd-linf eps=0.03 targeted``, ..."""
        if self.poisoning is not None:
            return f"{self.poisoning['label']} rate={self.poisoning['rate']:g}"
        if self.treatment is not None:
            return evaluation_name(self.treatment)
        what = "clean" if self.attack is None else f"{self.attack}-{self.norm} eps={self.eps:g}"
        if self.targeted:
            what += " targeted"
        if self.source is not None:
            what += f" from {self.source['model_label']}"
        if self.adaptive:
            what += " adaptive"
        return what

    @property
    def label(self) -> str:
        """Short human-readable name."""
        model = self.model_label or self.model
        if self.defense is not None:
            model += f"+{self.defense_label}"
        if self.treatment is not None and self.treatment.get("defense") is not None:
            model += f"+{self.treatment['defense']['label']}"
        return f"{self.task}/{model}/{self.evaluation}/trial {self.trial}"

    def to_dict(self) -> dict[str, Any]:
        """Plain dict form."""
        return asdict(self)


def _model_fields(spec: StudySpec, task: str, model: ModelEntry, trial: int) -> dict[str, Any]:
    """The fields of a cell that identify its trained model."""
    entry = model.to_dict()
    renamed = {"name": "model", "label": "model_label", "params": "model_params"}
    return {
        **{renamed.get(key, key): value for key, value in entry.items()},
        "init_seed": derive_seed(spec.seed, "init", task, model.label, trial),
    }


def plan_cells(spec: StudySpec) -> list[Cell]:
    """All cells of a study, in a deterministic order grouped by trained model."""
    return list(_iter_cells(spec, range(spec.trials)))


def count_cells(spec: StudySpec, *, limit: int) -> int:
    """The number of cells of ``spec`` without planning them all: every trial has the same cells
    (only their seeds differ), so this plans the first trial and multiplies. A first trial of
    more than ``limit`` cells stops counting there and returns ``limit + 1`` times the trials,
    so a huge grid is refused in the time it takes to plan ``limit`` cells."""
    per_trial = sum(1 for _ in itertools.islice(_iter_cells(spec, range(1)), limit + 1))
    return per_trial * spec.trials


def _iter_cells(spec: StudySpec, trials: range) -> Iterator[Cell]:
    """The cells of ``trials``, in plan order."""
    for task in spec.tasks:
        task_spec = get_task_spec(task.name)
        modality = task_spec.modality.value
        for model in task.models:
            for trial in trials:
                split_seed = derive_seed(spec.seed, "split", task.name, trial)
                if not task_spec.resplits:
                    split_seed = 0
                common: dict[str, Any] = {
                    "task": task.name,
                    **_model_fields(spec, task.name, model, trial),
                    "trial": trial,
                    "split_seed": split_seed,
                    "max_attack_examples": spec.max_attack_examples,
                    "device": spec.device,
                }
                defended: list[dict[str, Any]] = [{}]
                for defense in spec.defenses:
                    if defense.applies_to(task.name) and defense.defends(model):
                        defended.append(
                            {
                                "defense": defense.name,
                                "defense_label": defense.label,
                                "defense_params": defense.params_for(task.name, modality),
                            }
                        )
                for defense_fields in defended:
                    yield from _model_cells(spec, task.name, model, common, defense_fields)
                for poisoning in spec.poisonings:
                    if not (
                        poisoning.applies_to(task.name)
                        and poisoning.poisons(model.label, model.name)
                    ):
                        continue
                    for rate in poisoning.rates:
                        yield (
                            Cell(
                                **common,
                                attack=None,
                                norm=None,
                                eps=None,
                                attack_params={},
                                attack_seed=derive_seed(
                                    spec.seed, "poison", task.name, poisoning.label, rate, trial
                                ),
                                poisoning={
                                    "name": poisoning.name,
                                    "label": poisoning.label,
                                    "params": poisoning.params_for(task.name, modality),
                                    "rate": rate,
                                    "detectors": list(poisoning.detectors),
                                },
                            )
                        )
    if spec.treatment is not None:
        for trial in trials:
            yield from _treatment_cells(spec, trial)


def _treatment_cells(spec: StudySpec, trial: int) -> Iterator[Cell]:
    """The episodes of one trial of the treatment task: the basal-bolus baseline, the policy and
    each defense, clean and under each attack, on each evaluated patient."""
    entry = spec.treatment
    if entry is None:
        return
    params = {
        "window": entry.window,
        "hidden": entry.policy["hidden"],
        "depth": entry.policy["depth"],
    }

    def training(role: str, policy: dict[str, Any]) -> dict[str, Any]:
        seeds = [derive_seed(spec.seed, role, trial, i) for i in range(entry.demonstrations)]
        return {
            "epochs": policy["epochs"],
            "batch_size": policy["batch_size"],
            "lr": policy["lr"],
            "demonstrations": {
                "patients": list(entry.training_patients),
                "seeds": seeds,
                "hours": entry.demonstration_hours,
            },
        }

    surrogate = {
        "params": {
            "window": entry.window,
            "hidden": entry.surrogate["hidden"],
            "depth": entry.surrogate["depth"],
        },
        "training": training("surrogate demonstration", dict(entry.surrogate)),
        "init_seed": derive_seed(spec.seed, "init", TREATMENT_TASK, "surrogate", trial),
    }
    common: dict[str, Any] = {
        "task": TREATMENT_TASK,
        "trial": trial,
        "split_seed": 0,
        "attack": None,
        "norm": None,
        "eps": None,
        "attack_params": {},
        "max_attack_examples": 0,
        "device": spec.device,
    }

    def episode(patient: str, controller: str) -> dict[str, Any]:
        return {
            "patient": patient,
            "cohort": cohort(patient),
            "hours": entry.hours,
            "scenario_seed": derive_seed(spec.seed, "scenario", patient, trial),
            "controller": controller,
            "defense": None,
            "attack": None,
        }

    if entry.baseline:
        for patient in entry.patients:
            yield Cell(
                **common,
                model=BASELINE,
                model_label=CONTROLLER_LABELS[BASELINE],
                model_params={"window": entry.window},
                training={},
                init_seed=0,
                attack_seed=0,
                treatment=episode(patient, BASELINE),
            )
    policy_fields: dict[str, Any] = {
        "model": POLICY,
        "model_label": CONTROLLER_LABELS[POLICY],
        "model_params": params,
        "training": training("demonstration", dict(entry.policy)),
        "init_seed": derive_seed(spec.seed, "init", TREATMENT_TASK, POLICY, trial),
    }
    for defense in (None, *entry.defenses):
        defended: dict[str, Any] = {}
        if defense is not None:
            defended["defense"] = defense.to_dict()
            if defense.retrains:
                defended["trained_with"] = dict(defense.params)
        for patient in entry.patients:
            yield Cell(
                **common,
                **policy_fields,
                attack_seed=0,
                treatment={**episode(patient, POLICY), **defended},
            )
            for attack, adaptive in defense_attack_modes(entry, defense):
                for direction in attack.directions:
                    for eps in attack.eps:
                        fields = {
                            "name": attack.name,
                            "label": attack.label,
                            "direction": direction,
                            "eps": eps,
                            "params": dict(attack.params),
                            "transfer": attack.transfer,
                            "adaptive": adaptive,
                        }
                        extra: dict[str, Any] = {"attack": fields}
                        if attack.transfer:
                            extra["surrogate"] = surrogate
                        if trial == 0 and patient == entry.patients[0]:
                            extra["trace"] = True
                        yield Cell(
                            **common,
                            **policy_fields,
                            attack_seed=derive_seed(
                                spec.seed, "sensor attack", patient, fields, trial
                            ),
                            treatment={**episode(patient, POLICY), **defended, **extra},
                        )


def _model_cells(
    spec: StudySpec,
    task_name: str,
    model: ModelEntry,
    common: dict[str, Any],
    defense_fields: dict[str, Any],
) -> Iterator[Cell]:
    """The clean and attack cells of one trained (possibly defended) model in one trial."""
    task_spec = get_task_spec(task_name)
    modality = task_spec.modality.value
    trial = common["trial"]
    entry = next((d for d in spec.defenses if d.label == defense_fields.get("defense_label")), None)
    adaptive_modes = [False]
    if entry is not None and DEFENSES.get(entry.name).adaptive_attack is not None:
        adaptive_modes = [False, True]
    # Explanations (classifiers only): of every attacked model, and of each defense on clean data.
    explain = None
    if spec.explain is not None and task_spec.kind is TaskKind.CLASSIFICATION:
        explain = spec.explain.to_dict()
    yield Cell(
        **common,
        **defense_fields,
        attack=None,
        norm=None,
        eps=None,
        attack_params={},
        attack_seed=0,
        explain=explain if defense_fields else None,
    )
    for attack in spec.attacks:
        if not attack_modalities_ok(attack, modality):
            continue
        if attack.targeted and not task_spec.harmful_targets:
            continue
        if entry is not None and not entry.evaluates(attack):
            continue
        sources: list[dict[str, Any] | None] = [None]
        if attack.transfer:
            task = next(t for t in spec.tasks if t.name == task_name)
            sources = [
                _model_fields(spec, task_name, other, trial)
                for other in task.models
                if other.label != model.label
            ]
        for source in sources:
            for eps in attack.eps_for(task_name, modality):
                attack_seed = derive_seed(
                    spec.seed,
                    "attack",
                    task_name,
                    model.name,
                    attack.name,
                    eps,
                    trial,
                    *([] if source is None else [source["model_label"]]),
                )
                # The surrogate of a transfer attack is undefended: nothing to adapt to.
                for adaptive in adaptive_modes if source is None else [False]:
                    yield (
                        Cell(
                            **common,
                            **defense_fields,
                            attack=attack.name,
                            norm=attack.norm,
                            eps=eps,
                            attack_params=dict(attack.params),
                            attack_seed=attack_seed,
                            targeted=attack.targeted,
                            source=source,
                            eot=attack.eot,
                            adaptive=adaptive,
                            explain=explain,
                        )
                    )
