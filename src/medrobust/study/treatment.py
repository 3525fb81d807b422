"""The treatment task as a study axis: an insulin-dosing policy on the UVa/Padova simulator,
attacked through its glucose sensor (see :mod:`medrobust.treatment` for the simulation, the
policy, the attacks and the defenses).

A ``[treatment]`` table in the study config::

    [treatment]
    patients = ["adolescent#001", "adult#001", "child#001"]   # evaluated, held out of training
    training_patients = ["adolescent#002", "adult#002", "child#002"]   # default: one unevaluated
                            # patient of each evaluated cohort
    demonstrations = 1      # teacher episodes (meal scenarios) per training patient and trial
    demonstration_hours = 24
    hours = 24              # length of each evaluated episode
    window = 12             # CGM readings the controller sees (36 minutes)
    baseline = true         # also run simglucose's basal-bolus controller (clean)
    policy = { hidden = 64, depth = 2, epochs = 60, batch_size = 256, lr = 3e-3 }
    surrogate = { hidden = 32 }   # the transfer attacker's own policy (other scenarios, init)

    [[treatment.attacks]]
    name = "pgd"            # fgsm | pgd | bias (a constant offset, no gradient)
    eps = [10, 30]          # mg/dL per reading
    directions = ["overdose", "underdose"]
    params = { steps = 10 } # pgd: steps, step_size, window_l2; fgsm: window_l2
    transfer = false        # true: crafted on the surrogate policy

    [[treatment.defenses]]
    name = "plausibility_filter"   # | action_smoothing | adversarial_training
    params = { max_rate = 4.0 }
    attacks = ["pgd"]       # attack labels evaluated against it (default: all)

Each trial trains the policy by behaviour cloning of the teacher on the training patients' seeded
demonstration scenarios (and, for ``adversarial_training``, a second policy with PGD in the
loop), then runs one episode per evaluated patient and configuration. The meal scenario and
sensor noise of an evaluated episode depend on the patient and trial only, so a configuration's
episode and its clean twin see the same meals and noise and compare pairwise. Each episode is a
cell; the first trial's attacked episodes of the first patient also store the glucose-trace
figure of the attacked episode beside its clean twin. ``action_smoothing`` is also attacked
adaptively: the attacker crafts on the expectation over its noise (:class:`EOTPolicy`, ``eot``
draws per gradient).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from medrobust.atomic import write_atomically, write_text_atomically
from medrobust.errors import ConfigError, MedrobustError
from medrobust.study.checks import check_keys, expect, expect_names
from medrobust.study.identity import content_hash
from medrobust.study.store import CellResult
from medrobust.study.treatment_figures import glucose_trace_figure
from medrobust.training import load_checkpoint, save_checkpoint
from medrobust.treatment import (
    PATIENTS,
    SAMPLE_MINUTES,
    ActionSmoothing,
    Controller,
    Demonstrations,
    DosingPolicy,
    EOTPolicy,
    Episode,
    EpisodeConfig,
    PlausibilityFilter,
    PolicyController,
    SensorAttack,
    SensorBias,
    basal_bolus_controller,
    check_patient,
    collect_demonstrations,
    run_episode,
    train_policy,
)

if TYPE_CHECKING:
    from medrobust.study.plan import Cell

TREATMENT_TASK = "t1d_dosing"
"""The task name of treatment cells in the store and the report."""
POLICY, BASELINE = "dosing_policy", "basal_bolus"
CONTROLLER_LABELS = {POLICY: "policy", BASELINE: "basal-bolus"}
ATTACK_PARAMS: dict[str, set[str]] = {  # each sensor attack and the parameters it takes
    "fgsm": {"window_l2"},
    "pgd": {"steps", "step_size", "window_l2"},
    "bias": set(),
}
SENSOR_ATTACKS = tuple(ATTACK_PARAMS)
DIRECTIONS = ("overdose", "underdose")
DEFENSE_PARAMS = {  # each defense of the dosing loop and the parameters it takes
    "plausibility_filter": {"max_rate"},
    "action_smoothing": {"sigma", "samples", "reduce"},
    "adversarial_training": {"eps", "steps", "window_l2"},
}
TREATMENT_DEFENSES = tuple(DEFENSE_PARAMS)
POLICY_KEYS = {"hidden", "depth", "epochs", "batch_size", "lr"}
DEFAULT_POLICY = {"hidden": 64, "depth": 2, "epochs": 60, "batch_size": 256, "lr": 3e-3}
DEFAULT_EOT = 8
MAX_HOURS = 24.0 * 14


def cohort(patient: str) -> str:
    """``adult#001`` -> ``adult``."""
    return patient.split("#", 1)[0]


@dataclass(frozen=True)
class SensorAttackEntry:
    """One attack on the CGM stream with its budgets (mg/dL per reading) and directions.

    Attributes:
        name: ``fgsm``, ``pgd`` or ``bias``.
        label: its name in the results; unique in the treatment section.
        eps: budgets in mg/dL per reading.
        directions: ``overdose`` (drive hypoglycaemia) and/or ``underdose``.
        params: the attack's parameters (see :data:`ATTACK_PARAMS`).
        transfer: crafted on the surrogate policy instead of the attacked one.
    """

    name: str
    label: str
    eps: tuple[float, ...]
    directions: tuple[str, ...] = DIRECTIONS
    params: Mapping[str, Any] = field(default_factory=dict)
    transfer: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain dict form (stored with the results)."""
        return {
            "name": self.name,
            "label": self.label,
            "eps": list(self.eps),
            "directions": list(self.directions),
            "params": dict(self.params),
            "transfer": self.transfer,
        }


@dataclass(frozen=True)
class TreatmentDefenseEntry:
    """One defense of the dosing loop.

    Attributes:
        name: ``plausibility_filter``, ``action_smoothing`` or ``adversarial_training``.
        label: its name in the results; unique in the treatment section.
        params: its parameters (see :data:`DEFENSE_PARAMS`).
        attacks: attack labels evaluated against it (empty: every attack).
        eot: noise draws per gradient of the adaptive attack on ``action_smoothing``.
    """

    name: str
    label: str
    params: Mapping[str, Any] = field(default_factory=dict)
    attacks: tuple[str, ...] = ()
    eot: int = DEFAULT_EOT

    @property
    def retrains(self) -> bool:
        """Whether the defense trains its own policy."""
        return self.name == "adversarial_training"

    def to_dict(self) -> dict[str, Any]:
        """Plain dict form (stored with the results)."""
        form: dict[str, Any] = {
            "name": self.name,
            "label": self.label,
            "params": dict(self.params),
            "attacks": list(self.attacks),
        }
        if self.name == "action_smoothing":
            form["eot"] = self.eot
        return form


@dataclass(frozen=True)
class TreatmentEntry:
    """The ``[treatment]`` table of a study (see the module docstring)."""

    patients: tuple[str, ...]
    training_patients: tuple[str, ...]
    hours: float = 24.0
    window: int = 12
    demonstrations: int = 1
    demonstration_hours: float = 24.0
    baseline: bool = True
    policy: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_POLICY))
    surrogate: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_POLICY))
    attacks: tuple[SensorAttackEntry, ...] = ()
    defenses: tuple[TreatmentDefenseEntry, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain dict form (stored with the results)."""
        return {
            "patients": list(self.patients),
            "training_patients": list(self.training_patients),
            "hours": self.hours,
            "window": self.window,
            "demonstrations": self.demonstrations,
            "demonstration_hours": self.demonstration_hours,
            "baseline": self.baseline,
            "policy": dict(self.policy),
            "surrogate": dict(self.surrogate),
            "attacks": [a.to_dict() for a in self.attacks],
            "defenses": [d.to_dict() for d in self.defenses],
        }


# ---------------------------------------------------------------------------------------------
# Parsing.


def _patients(where: str, raw: Any) -> tuple[str, ...]:
    values = expect(where, raw, list, "a non-empty list of patient names")
    if not values:
        raise ConfigError(f"{where} must list at least one patient, e.g. ['adult#001'].")
    for value in values:
        try:
            check_patient(value)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
    if len(set(values)) != len(values):
        raise ConfigError(f"{where} lists a patient twice. Got {values}.")
    return tuple(values)


def _number(where: str, raw: Any, *, minimum: float, maximum: float, integer: bool) -> float:
    kind = (int,) if integer else (int, float)
    what = f"{'an integer' if integer else 'a number'} from {minimum:g} to {maximum:g}"
    value = expect(where, raw, kind, what)
    if not (math.isfinite(value) and minimum <= value <= maximum):
        raise ConfigError(f"{where} must be {what}. Got {value!r} instead.")
    return float(value)


def _hours(where: str, raw: Any) -> float:
    hours = _number(where, raw, minimum=0.0, maximum=MAX_HOURS, integer=False)
    if round(hours * 60.0 / SAMPLE_MINUTES) < 1:
        raise ConfigError(
            f"{where} must be at least one 3-minute sample (0.05 h) and at most {MAX_HOURS:g} h. "
            f"Got {raw!r} instead."
        )
    return hours


def _policy(where: str, raw: Any, base: Mapping[str, Any]) -> dict[str, Any]:
    raw = expect(where, raw, dict, "a table of policy settings")
    check_keys(where, raw, POLICY_KEYS)
    settings = {**base, **raw}
    for key in ("hidden", "depth", "epochs", "batch_size"):
        settings[key] = int(
            _number(f"{where}.{key}", settings[key], minimum=1, maximum=1e6, integer=True)
        )
    settings["lr"] = _number(
        f"{where}.lr", settings["lr"], minimum=0.0, maximum=10.0, integer=False
    )
    if settings["lr"] <= 0:
        raise ConfigError(f"{where}.lr must be > 0. Got {settings['lr']!r} instead.")
    return settings


def _parse_attack(where: str, raw: Any) -> SensorAttackEntry:
    raw = expect(where, raw, dict, "a table with 'name' and 'eps'")
    check_keys(where, raw, {"name", "label", "eps", "directions", "params", "transfer"})
    name = expect(f"{where}.name", raw.get("name"), str, f"one of {list(SENSOR_ATTACKS)}")
    if name not in SENSOR_ATTACKS:
        raise ConfigError(f"{where}.name must be one of {list(SENSOR_ATTACKS)}. Got {name!r}.")
    label = expect(f"{where}.label", raw.get("label", name), str, "a string")
    if "eps" not in raw:
        raise ConfigError(f"{where} needs 'eps': budgets in mg/dL per reading, e.g. [10, 30].")
    eps_raw = raw["eps"] if isinstance(raw["eps"], list) else [raw["eps"]]
    if not eps_raw:
        raise ConfigError(f"{where}.eps must list at least one budget (mg/dL).")
    eps = tuple(
        _number(f"{where}.eps", v, minimum=0.0, maximum=400.0, integer=False) for v in eps_raw
    )
    if len(set(eps)) != len(eps):
        raise ConfigError(f"{where}.eps lists a budget twice. Got {eps_raw}.")
    directions = expect_names(f"{where}.directions", raw.get("directions", list(DIRECTIONS)))
    if not directions or any(d not in DIRECTIONS for d in directions):
        raise ConfigError(
            f"{where}.directions must list 'overdose' and/or 'underdose'. Got {list(directions)}."
        )
    params = dict(expect(f"{where}.params", raw.get("params", {}), dict, "a table"))
    check_keys(f"{where}.params", params, ATTACK_PARAMS[name])
    transfer = expect(f"{where}.transfer", raw.get("transfer", False), bool, "true or false")
    entry = SensorAttackEntry(name, label, eps, directions, params, transfer)
    for value in eps:  # bad parameters fail now, not after training
        for direction in directions:
            _build_attack(where, name, params, value, direction)
    return entry


def _build_attack(
    where: str, name: str, params: Mapping[str, Any], eps: float, direction: str
) -> SensorAttack | SensorBias:
    """The sensor attack ``name`` (fgsm, pgd or bias) at ``eps`` towards ``direction``.

    Raises:
        ConfigError: bad parameters, named after ``where``.
    """
    values = dict(params)
    try:
        if name == "bias":
            return SensorBias(eps=eps, direction=direction)  # type: ignore[arg-type]
        if name == "fgsm":
            values["steps"] = 0
        return SensorAttack(eps=eps, direction=direction, **values)  # type: ignore[arg-type]
    except (TypeError, MedrobustError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _parse_defense(where: str, raw: Any, attack_labels: Sequence[str]) -> TreatmentDefenseEntry:
    raw = expect(where, raw, dict, "a table with 'name'")
    check_keys(where, raw, {"name", "label", "params", "attacks", "eot"})
    name = expect(f"{where}.name", raw.get("name"), str, f"one of {list(TREATMENT_DEFENSES)}")
    if name not in TREATMENT_DEFENSES:
        raise ConfigError(
            f"{where}.name must be one of {list(TREATMENT_DEFENSES)}. Got {name!r} instead."
        )
    label = expect(f"{where}.label", raw.get("label", name), str, "a string")
    params = dict(expect(f"{where}.params", raw.get("params", {}), dict, "a table"))
    check_keys(f"{where}.params", params, DEFENSE_PARAMS[name])
    attacks = expect_names(f"{where}.attacks", raw.get("attacks", []))
    for attack in attacks:
        if attack not in attack_labels:
            raise ConfigError(
                f"{where}.attacks names {attack!r}, which is no attack of [treatment]. "
                f"Attacks: {list(attack_labels)}."
            )
    if "eot" in raw and name != "action_smoothing":
        raise ConfigError(f"{where}.eot applies to action_smoothing only (its adaptive attack).")
    eot = int(
        _number(f"{where}.eot", raw.get("eot", DEFAULT_EOT), minimum=1, maximum=1000, integer=True)
    )
    entry = TreatmentDefenseEntry(name, label, params, attacks, eot)
    try:
        _build_defense(entry.to_dict(), seed=0)
    except (TypeError, MedrobustError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    return entry


def parse_treatment(where: str, raw: Any) -> TreatmentEntry | None:
    """Validate the ``[treatment]`` table (``None`` when absent).

    Raises:
        ConfigError: an unknown key or patient, a budget below 0, an episode of length 0 (or
            longer than two weeks), an unknown attack or defense, bad parameters.
    """
    if raw is None:
        return None
    raw = expect(where, raw, dict, "a table")
    check_keys(
        f"[{where}]",
        raw,
        {
            "patients",
            "training_patients",
            "hours",
            "window",
            "demonstrations",
            "demonstration_hours",
            "baseline",
            "policy",
            "surrogate",
            "attacks",
            "defenses",
        },
    )
    patients = _patients(f"{where}.patients", raw.get("patients"))
    cohorts = dict.fromkeys(cohort(p) for p in patients)
    default_training = [  # by default, one held-out patient of each evaluated cohort
        next((p for p in PATIENTS if cohort(p) == c and p not in patients), patients[0])
        for c in cohorts
    ]
    training = _patients(
        f"{where}.training_patients", raw.get("training_patients", default_training)
    )
    policy = _policy(f"{where}.policy", raw.get("policy", {}), DEFAULT_POLICY)
    attacks_raw = expect(f"{where}.attacks", raw.get("attacks", []), list, "a list of tables")
    attacks = tuple(_parse_attack(f"{where}.attacks[{i}]", a) for i, a in enumerate(attacks_raw))
    labels = [a.label for a in attacks]
    if len(set(labels)) != len(labels):
        raise ConfigError(
            f"Each attack of [{where}] needs its own label; give repeated attacks a 'label'. "
            f"Got {labels}."
        )
    defenses_raw = expect(f"{where}.defenses", raw.get("defenses", []), list, "a list of tables")
    defenses = tuple(
        _parse_defense(f"{where}.defenses[{i}]", d, labels) for i, d in enumerate(defenses_raw)
    )
    defense_labels = [d.label for d in defenses]
    if len(set(defense_labels)) != len(defense_labels):
        raise ConfigError(
            f"Each defense of [{where}] needs its own label; give repeated defenses a 'label'. "
            f"Got {defense_labels}."
        )
    return TreatmentEntry(
        patients=patients,
        training_patients=training,
        hours=_hours(f"{where}.hours", raw.get("hours", 24.0)),
        window=int(
            _number(f"{where}.window", raw.get("window", 12), minimum=2, maximum=480, integer=True)
        ),
        demonstrations=int(
            _number(
                f"{where}.demonstrations",
                raw.get("demonstrations", 1),
                minimum=1,
                maximum=1000,
                integer=True,
            )
        ),
        demonstration_hours=_hours(
            f"{where}.demonstration_hours", raw.get("demonstration_hours", 24.0)
        ),
        baseline=expect(f"{where}.baseline", raw.get("baseline", True), bool, "true or false"),
        policy=policy,
        surrogate=_policy(f"{where}.surrogate", raw.get("surrogate", {}), policy),
        attacks=attacks,
        defenses=defenses,
    )


# ---------------------------------------------------------------------------------------------
# The cells' treatment fields (the planner builds the cells; see medrobust.study.plan).


def evaluation_name(treatment: Mapping[str, Any]) -> str:
    """``adult#001 clean`` or ``adult#001 pgd overdose eps=30 mg/dL (transfer)``."""
    return f"{treatment['patient']} {attack_name(treatment.get('attack'))}"


def attack_name(attack: Mapping[str, Any] | None) -> str:
    """``clean`` or ``pgd overdose eps=30 mg/dL``, with `` (transfer)`` or `` (adaptive)``."""
    if attack is None:
        return "clean"
    name = str(attack["label"])
    if attack.get("direction"):
        name += f" {attack['direction']}"
    if attack.get("eps") is not None:
        name += f" eps={attack['eps']:g} mg/dL"
    if attack.get("transfer"):
        name += " (transfer)"
    if attack.get("adaptive"):
        name += " (adaptive)"
    return name


def controller_name(treatment: Mapping[str, Any]) -> str:
    """``basal-bolus``, ``policy`` or ``policy + filter``."""
    name = CONTROLLER_LABELS[str(treatment["controller"])]
    defense = treatment.get("defense")
    return name if defense is None else f"{name} + {defense['label']}"


def defense_attack_modes(
    entry: TreatmentEntry, defense: TreatmentDefenseEntry | None
) -> Iterator[tuple[SensorAttackEntry, bool]]:
    """The attacks run against ``defense`` (``None``: the undefended policy), each with whether
    it is the adaptive (EOT) variant; the smoothing is also attacked adaptively, except by a
    transfer attack (its surrogate is undefended) and the bias (it has no gradient)."""
    for attack in entry.attacks:
        if defense is not None and defense.attacks and attack.label not in defense.attacks:
            continue
        yield attack, False
        if (
            defense is not None
            and defense.name == "action_smoothing"
            and not attack.transfer
            and attack.name != "bias"
        ):
            yield attack, True


# ---------------------------------------------------------------------------------------------
# Running the cells of one trained policy.


def _demonstrations(settings: Mapping[str, Any], window: int, folder: Path) -> Demonstrations:
    """The teacher's demonstrations for ``settings`` (patients, seeds, hours), cached in
    ``folder`` so that every policy of a trial (and a resumed run) collects them once."""
    path = folder / f"demonstrations-{content_hash([dict(settings), window])}.pt"
    if path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return Demonstrations(saved["windows"], saved["contexts"], saved["doses"])
    demos = collect_demonstrations(
        list(settings["patients"]),
        list(settings["seeds"]),
        hours=float(settings["hours"]),
        window=window,
    )
    state = {"windows": demos.windows, "contexts": demos.contexts, "doses": demos.doses}
    folder.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda handle: torch.save(state, handle))
    return demos


def trained_policy(
    params: Mapping[str, Any],
    training: Mapping[str, Any],
    init_seed: int,
    adversarial: Mapping[str, Any] | None,
    folder: Path,
) -> tuple[DosingPolicy, float]:
    """A behaviour-cloned (with ``adversarial``: adversarially trained) policy and the seconds its
    training took, from its checkpoint in ``folder`` when an earlier run saved one.

    Args:
        params: ``window``, ``hidden``, ``depth``.
        training: ``epochs``, ``batch_size``, ``lr`` and ``demonstrations`` (``patients``,
            ``seeds``, ``hours``).
        init_seed: the seed of the initialisation and batch order.
        adversarial: the adversarial training's parameters (``eps``, ``steps``, ``window_l2``).
        folder: where checkpoints and demonstrations go.
    """
    window = int(params["window"])
    key = content_hash([dict(params), dict(training), init_seed, adversarial])
    checkpoint, sidecar = folder / f"policy-{key}.pt", folder / f"policy-{key}.json"
    policy = DosingPolicy(window, hidden=int(params["hidden"]), depth=int(params["depth"]))
    if checkpoint.exists() and sidecar.exists():
        load_checkpoint(policy, checkpoint)
        return policy.eval(), float(json.loads(sidecar.read_text())["train_seconds"])
    demos = _demonstrations(training["demonstrations"], window, folder)
    attack = None
    if adversarial is not None:
        attack = SensorAttack(
            eps=float(adversarial.get("eps", 20.0)),
            steps=int(adversarial.get("steps", 3)),
            window_l2=adversarial.get("window_l2"),
        )
    start = time.perf_counter()
    policy = train_policy(
        demos,
        hidden=int(params["hidden"]),
        depth=int(params["depth"]),
        epochs=int(training["epochs"]),
        batch_size=int(training["batch_size"]),
        lr=float(training["lr"]),
        seed=init_seed,
        adversarial=attack,
    )
    seconds = time.perf_counter() - start
    save_checkpoint(policy, checkpoint)
    write_text_atomically(sidecar, json.dumps({"train_seconds": seconds}))
    return policy, seconds


def _build_defense(
    defense: Mapping[str, Any], *, seed: int
) -> PlausibilityFilter | ActionSmoothing | None:
    """The wrapper of a defense that acts at run time (``None`` for adversarial training)."""
    params = dict(defense["params"])
    if defense["name"] == "plausibility_filter":
        return PlausibilityFilter(**params)
    if defense["name"] == "action_smoothing":
        return ActionSmoothing(**params, seed=seed)
    return None


def episode_metrics(episode: Episode) -> dict[str, float]:
    """The clinical outcomes of an episode, the insulin it delivered (U), the mean error of the
    readings the controller saw (after any attack and filter) against the true ones (mg/dL),
    and whether the simulator stopped early."""
    outcomes = episode.outcomes()
    steps = episode.simulated_steps
    # Against the newest true reading the controller was given (within the sensor's range: a
    # Dexcom shows LOW / HIGH outside 39-400 mg/dL), so a clean undefended episode has none.
    true = np.array([window[-1] for window in episode.windows[:steps]])
    sensor_error = np.abs(episode.seen[:steps] - true)
    return {
        "tir": outcomes.tir,
        "tbr70": outcomes.tbr70,
        "tbr54": outcomes.tbr54,
        "tar180": outcomes.tar180,
        "lbgi": outcomes.lbgi,
        "hbgi": outcomes.hbgi,
        "risk_index": outcomes.risk_index,
        "severe_hypo_events": float(outcomes.severe_hypo_events),
        "mean_bg": outcomes.mean_bg,
        "insulin_units": float(episode.dose.sum() * SAMPLE_MINUTES),
        "sensor_error": float(sensor_error.mean()) if steps else math.nan,
        "stopped_early": float(steps < episode.config.steps),
    }


def _timings(episode: Episode) -> dict[str, float]:
    steps = max(episode.simulated_steps, 1)
    return {
        "controller_ms_per_step": 1000.0 * episode.controller_seconds / steps,
        "filter_ms_per_step": 1000.0 * episode.filter_seconds / steps,
        "attack_ms_per_step": 1000.0 * episode.attack_seconds / steps,
    }


@dataclass
class _Group:
    """What the cells of one trained policy share while they run."""

    folder: Path
    policy: DosingPolicy | None = None
    train_seconds: float = 0.0
    surrogates: dict[str, DosingPolicy] = field(default_factory=dict)
    clean: dict[tuple[str, str], Episode] = field(default_factory=dict)


def _settings(cell: Cell) -> dict[str, Any]:
    """The treatment fields of ``cell``.

    Raises:
        ConfigError: a cell of another kind.
    """
    if cell.treatment is None:
        raise ConfigError(f"{cell.label} is not a treatment cell.")
    return cell.treatment


def _episode(
    cell: Cell, t: Mapping[str, Any], group: _Group, attack: Mapping[str, Any] | None
) -> Episode:
    """Run the episode of ``cell`` with its treatment fields ``t`` (with ``attack``: its own, or
    ``None`` for its clean twin)."""
    config = EpisodeConfig(
        t["patient"],
        float(t["hours"]),
        int(t["scenario_seed"]),
        int(cell.model_params.get("window", 12)),
    )
    if cell.model == BASELINE:
        return run_episode(config, basal_bolus_controller(t["patient"]))
    policy = group.policy
    if policy is None:
        raise ConfigError(f"{cell.label}: its group trained no policy (a mixed cell group).")
    defense = t.get("defense")
    wrapper = None if defense is None else _build_defense(defense, seed=int(t["scenario_seed"]))
    smoothing = wrapper if isinstance(wrapper, ActionSmoothing) else None
    controller: Controller = PolicyController(policy, smoothing)
    sensor_filter = wrapper if isinstance(wrapper, PlausibilityFilter) else None
    if attack is None:
        return run_episode(config, controller, sensor_filter=sensor_filter)
    built = _build_attack(
        cell.label,
        str(attack["name"]),
        attack["params"],
        float(attack["eps"]),
        str(attack["direction"]),
    )
    crafter: DosingPolicy | EOTPolicy = policy
    if attack.get("transfer"):
        source = t["surrogate"]
        key = content_hash(source)
        if key not in group.surrogates:
            group.surrogates[key] = trained_policy(
                source["params"], source["training"], source["init_seed"], None, group.folder
            )[0]
        crafter = group.surrogates[key]
    elif attack.get("adaptive"):
        if smoothing is None or defense is None:
            raise ConfigError(f"{cell.label}: an adaptive sensor attack needs action smoothing.")
        crafter = EOTPolicy(policy, smoothing, samples=int(defense["eot"]), seed=cell.attack_seed)
    return run_episode(
        config, controller, attack=built, surrogate=crafter, sensor_filter=sensor_filter
    )


def run_treatment_group(cells: Sequence[Cell], output: str) -> Iterator[CellResult]:
    """Train (or load) the policy the cells share, run each cell's episode, yield the results.

    The first trial's attacked cells marked ``trace`` also draw the glucose-trace figure of the
    attacked episode beside its clean twin (run again here if the twin ran in an earlier run).
    """
    first = cells[0]
    group = _Group(Path(output) / "checkpoints")
    if first.model == POLICY:
        group.policy, group.train_seconds = trained_policy(
            {**first.model_params},
            first.training,
            first.init_seed,
            _settings(first).get("trained_with"),
            group.folder,
        )
    for cell in cells:
        t = _settings(cell)
        start = time.perf_counter()
        attack = t.get("attack")
        episode = _episode(cell, t, group, attack)
        defense = t.get("defense")
        twin = ("" if defense is None else str(defense["label"]), str(t["patient"]))
        if attack is None:
            group.clean[twin] = episode
        figures: list[tuple[str, bytes]] = []
        if attack is not None and t.get("trace"):
            if twin not in group.clean:
                group.clean[twin] = _episode(cell, t, group, None)
            figure = glucose_trace_figure(
                group.clean[twin],
                episode,
                attack=f"{controller_name(t)}, {attack_name(attack)}",
            )
            figures.append(("glucose_trace", figure.png))
        yield CellResult(
            cell.cell_id,
            cell.to_dict(),
            episode_metrics(episode),
            [],
            group.train_seconds,
            time.perf_counter() - start,
            timings=_timings(episode),
            figures=figures,
        )
