"""Study plan: the spec expanded into independent, serialisable cells with stable ids.

A cell is (task, model, attack, eps, trial); ``attack = None`` is the clean evaluation of the
trained model on the whole test split. Cells that share (task, model, trial) share one trained
model, so the runner groups them by :attr:`Cell.training_key`. A transfer cell also names its
``source``: the surrogate model (of the same task and trial) the examples are crafted on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from typing import Any

from medrobust.data import get_task_spec
from medrobust.study.spec import ModelEntry, StudySpec, attack_modalities_ok


def derive_seed(*parts: Any) -> int:
    """A 31-bit seed derived deterministically from ``parts`` (stable across runs and machines)."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _hash(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


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

    @property
    def training_key(self) -> str:
        """Identifies the trained model this cell evaluates."""
        return _hash(
            [
                self.task,
                self.model,
                self.model_params,
                self.training,
                self.split_seed,
                self.init_seed,
                self.train_share,
            ]
        )

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
        )

    @property
    def cell_id(self) -> str:
        """Stable id of the cell: a hash of everything that determines its rows."""
        payload = asdict(self)
        payload.pop("device")
        return _hash(payload)

    @property
    def label(self) -> str:
        """Short human-readable name."""
        what = "clean" if self.attack is None else f"{self.attack}-{self.norm} eps={self.eps:g}"
        if self.targeted:
            what += " targeted"
        if self.source is not None:
            what += f" from {self.source['model_label']}"
        return f"{self.task}/{self.model_label or self.model}/{what}/trial {self.trial}"

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
    cells: list[Cell] = []
    for task in spec.tasks:
        task_spec = get_task_spec(task.name)
        modality = task_spec.modality.value
        for model in task.models:
            for trial in range(spec.trials):
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
                cells.append(
                    Cell(
                        **common, attack=None, norm=None, eps=None, attack_params={}, attack_seed=0
                    )
                )
                for attack in spec.attacks:
                    if not attack_modalities_ok(attack, modality):
                        continue
                    if attack.targeted and not task_spec.harmful_targets:
                        continue
                    sources: list[dict[str, Any] | None] = [None]
                    if attack.transfer:
                        sources = [
                            _model_fields(spec, task.name, other, trial)
                            for other in task.models
                            if other.label != model.label
                        ]
                    for source in sources:
                        for eps in attack.eps_for(task.name, modality):
                            attack_seed = derive_seed(
                                spec.seed,
                                "attack",
                                task.name,
                                model.name,
                                attack.name,
                                eps,
                                trial,
                                *([] if source is None else [source["model_label"]]),
                            )
                            cells.append(
                                Cell(
                                    **common,
                                    attack=attack.name,
                                    norm=attack.norm,
                                    eps=eps,
                                    attack_params=dict(attack.params),
                                    attack_seed=attack_seed,
                                    targeted=attack.targeted,
                                    source=source,
                                    eot=attack.eot,
                                )
                            )
    return cells
