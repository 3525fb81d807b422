"""Running a study: train each (task, model, trial) once, evaluate its cells, store each cell.

``run_group`` is a pure function of plain data (cell dicts and a folder), so a distributed
executor can ship it to another process or machine; the local executor calls it in order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import importlib.metadata
import inspect
import json
import logging
import math
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from medrobust.atomic import output_folder, remove_stale_temporaries, write_text_atomically
from medrobust.attacks import ATTACKS
from medrobust.attacks.adaptive import EOT
from medrobust.attacks.masking import masking_checks
from medrobust.data import ensure_files, get_task_spec, load_task, required_files
from medrobust.data.splits import share_indices
from medrobust.data.task import Task
from medrobust.defenses import DEFENSES, Defense, TrainingData
from medrobust.errors import ConfigError
from medrobust.metrics import (
    clinical_metrics,
    finite_mean,
    predictions,
    probabilities,
    success_rate,
    target_success_rate,
)
from medrobust.models import TensorSplits, build_model, prepare_inputs
from medrobust.models.text import decode, protected_token_ids
from medrobust.study.explanations import ExplainSettings, explain_attack, explain_defense
from medrobust.study.identity import derive_seed
from medrobust.study.plan import Cell, plan_cells
from medrobust.study.poisoning import check_poisonings_on_data, run_poisoning_cell
from medrobust.study.spec import EXECUTION_KEYS, StudySpec
from medrobust.study.store import CellResult, ExampleRow, ResultStore, TextSample
from medrobust.study.treatment import run_treatment_group
from medrobust.training import FitConfig, fit, load_checkpoint, predict_logits
from medrobust.treatment import require_simglucose

if TYPE_CHECKING:
    from medrobust.study.executors import Executor

logger = logging.getLogger(__name__)

ATTACK_BATCH = 256
TEXT_SAMPLES = 5  # attacked texts stored per text-attack cell, for the report
TIMED_EXAMPLES = 1000  # test examples timed for the inference cost, best of TIMING_REPEATS
TIMING_REPEATS = 3


def build_defense(cell: Cell) -> Defense:
    """The cell's defense with its parameters on the cell's task."""
    if cell.defense is None:
        raise ConfigError(f"{cell.label} has no defense.")
    return DEFENSES.get(cell.defense)(**cell.defense_params)


def train_or_load(
    cell: Cell, task: Task, checkpoints: Path
) -> tuple[nn.Module, TensorSplits, float]:
    """The trained model of ``cell`` (from its checkpoint if an earlier run saved one).

    A cell with a ``train_share`` trains on that share of the training split only (the model of
    another institution); validation and test splits are the task's. A defense that retrains
    builds and trains the model its way; one that only wraps leaves it undefended here. A
    ``pretrained`` model is trained already: undefended, it is built and returned as it is (its
    "training time" is the time to build and load it); a defense that retrains fine-tunes it.

    Returns the model, its input tensors and the training time in seconds.
    """
    inputs = prepare_inputs(task, cell.model_params)
    torch.manual_seed(cell.init_seed)
    defense = build_defense(cell) if cell.retrained else None
    start = time.perf_counter()
    if defense is not None:
        model = defense.build(cell.model, task, inputs, dict(cell.model_params))
    else:
        model = build_model(cell.model, task, inputs, cell.model_params)
    model = model.to(cell.device)
    if cell.pretrained and defense is None:
        return model.eval(), inputs, time.perf_counter() - start
    checkpoint = checkpoints / f"{cell.training_key}.pt"
    sidecar = checkpoint.with_suffix(".json")
    if checkpoint.exists() and sidecar.exists():
        load_checkpoint(model, checkpoint)
        model.to(cell.device).eval()
        return model, inputs, float(json.loads(sidecar.read_text())["train_seconds"])
    x_train, y_train, groups = inputs.x["train"], inputs.y["train"], task.train.groups
    if cell.train_share is not None:
        part, of = cell.train_share
        rows = share_indices(task.train.y, task.train.groups, part, of, cell.split_seed)
        x_train, y_train = x_train[torch.from_numpy(rows)], y_train[torch.from_numpy(rows)]
        groups = None if groups is None else groups[rows]
    config = FitConfig(**cell.training)
    if defense is not None:
        data = TrainingData(x_train, y_train, inputs.x["val"], inputs.y["val"], groups)
        result = defense.fit(
            model, task, data, config=config, seed=cell.init_seed, checkpoint=checkpoint
        )
    else:
        result = fit(
            model,
            x_train,
            y_train,
            inputs.x["val"],
            inputs.y["val"],
            config=config,
            seed=cell.init_seed,
            checkpoint=checkpoint,
        )
    write_text_atomically(
        sidecar,
        json.dumps(
            {
                "train_seconds": result.train_seconds,
                "epochs_run": result.epochs_run,
                "best_epoch": result.best_epoch,
            }
        ),
    )
    return model, inputs, result.train_seconds


def _prefixed(prefix: str, values: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}_{k}": v for k, v in values.items()}


def _flip_rates(
    y: np.ndarray, clean_pred: np.ndarray, adv_pred: np.ndarray, positive: int
) -> dict[str, float]:
    """For a binary task, the success rate on each true class: correctly detected disease made
    to read healthy (a missed detection) and correctly cleared cases made to raise an alarm."""
    pos = y == positive
    return {
        "success_rate_positive": success_rate(y[pos], clean_pred[pos], adv_pred[pos]),
        "success_rate_negative": success_rate(y[~pos], clean_pred[~pos], adv_pred[~pos]),
    }


def _inference_ms(model: nn.Module, x: torch.Tensor) -> float:
    """Milliseconds per example of a batched forward pass: the best of TIMING_REPEATS."""
    times = []
    for _ in range(TIMING_REPEATS):
        start = time.perf_counter()
        predict_logits(model, x)
        times.append(time.perf_counter() - start)
    return 1000.0 * min(times) / max(len(x), 1)


def _text_samples(
    tokenizer: Any,
    x: torch.Tensor,
    x_adv: torch.Tensor,
    subset: np.ndarray,
    flipped: np.ndarray,
) -> list[TextSample]:
    """Up to TEXT_SAMPLES changed texts, those whose prediction the attack flipped first."""
    changed = (x != x_adv).any(dim=1).numpy()
    order = [*np.flatnonzero(changed & flipped), *np.flatnonzero(changed & ~flipped)]
    chosen = sorted(int(i) for i in order[:TEXT_SAMPLES])
    if not chosen:
        return []
    originals = decode(tokenizer, x[chosen])
    adversarials = decode(tokenizer, x_adv[chosen])
    return [
        TextSample(int(subset[i]), original, adversarial)
        for i, original, adversarial in zip(chosen, originals, adversarials, strict=True)
    ]


def _attack_params(
    cls: Callable[..., Any], params: dict[str, Any], tokenizer: Any
) -> dict[str, Any]:
    """The cell's attack parameters. A token attack that protects special ids (HotFlip) gets
    those of the tokenizer that made the ids, unless the cell names them: a Hugging Face
    vocabulary's [CLS] and [SEP] are not the ids of medrobust's own tokenizer."""
    if (
        tokenizer is None
        or "special_ids" in params
        or "special_ids" not in inspect.signature(cls).parameters
    ):
        return dict(params)
    return {**params, "special_ids": list(protected_token_ids(tokenizer))}


@dataclass(frozen=True)
class CellOutcome:
    """What evaluating one cell produces, before it is stored."""

    metrics: dict[str, float]
    rows: list[ExampleRow]
    attack_config: dict[str, Any] = field(default_factory=dict)
    samples: list[TextSample] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    figures: list[tuple[str, bytes]] = field(default_factory=list)


def evaluate_cell(
    cell: Cell,
    task: Task,
    model: nn.Module,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    surrogate: nn.Module | None = None,
    tokenizer: Any = None,
    defense: Defense | None = None,
    base: nn.Module | None = None,
) -> CellOutcome:
    """Metrics, example rows, the attack's resolved parameters and (for token attacks) original
    vs adversarial texts of one cell on the test split.

    ``model`` is the module evaluated and attacked: for a defended cell, the defense's wrapper
    around ``base``, the trained model (which its certificate reads). A transfer cell crafts its
    examples on ``surrogate``; an adaptive cell on ``defense.adaptive(model)``.
    """
    labels = y_test.numpy()
    # Randomized defenses draw from torch's global generator: seed it per cell.
    torch.manual_seed(derive_seed(cell.cell_id, "evaluate"))
    if cell.attack is None:
        logits = predict_logits(model, x_test)
        pred = predictions(logits).numpy()
        clean = clinical_metrics(
            labels,
            pred,
            positive_class=task.positive_class,
            num_classes=task.num_classes,
            scores=probabilities(logits).numpy(),
        )
        rows = [ExampleRow(i, int(labels[i]), int(pred[i])) for i in range(len(labels))]
        metrics = _prefixed("clean", clean.as_dict())
        # Gradient-masking checks (text models in embedding space) on a seeded probe.
        rng = np.random.default_rng(derive_seed(cell.split_seed, "masking", cell.trial))
        probe = np.sort(rng.choice(len(labels), size=min(len(labels), 100), replace=False))
        flags = masking_checks(
            model,
            x_test[probe],
            y_test[probe].to(x_test.device),
            task.domain,
            seed=cell.init_seed,
        )
        metrics.update({f"masking_{k}": float(v) for k, v in flags.items()})
        timings = {"inference_ms": _inference_ms(model, x_test[:TIMED_EXAMPLES])}
        if defense is not None:
            rng = np.random.default_rng(derive_seed(cell.split_seed, "subset", cell.trial))
            chosen = np.sort(
                rng.choice(
                    len(labels), size=min(len(labels), cell.max_attack_examples), replace=False
                )
            )
            start = time.perf_counter()
            certificate = defense.certify(
                base if base is not None else model,
                task,
                x_test[chosen],
                y_test[chosen],
                seed=derive_seed(cell.init_seed, "certify"),
            )
            if certificate:
                metrics.update(certificate)
                timings["certify_seconds"] = time.perf_counter() - start
        return CellOutcome(metrics, rows, timings=timings)

    rng = np.random.default_rng(derive_seed(cell.split_seed, "subset", cell.trial))
    harmful = get_task_spec(task.name).harmful_targets if cell.targeted else {}
    # Targeted cells attack the classes that have a harmful misreading, each toward it.
    pool = (
        np.flatnonzero(np.isin(labels, list(harmful))) if cell.targeted else np.arange(len(labels))
    )
    subset = np.sort(rng.choice(pool, size=min(len(pool), cell.max_attack_examples), replace=False))
    x, y = x_test[subset], y_test[subset]
    target = torch.tensor([harmful[int(c)] for c in y]) if cell.targeted else None
    attack_cls = ATTACKS.get(cell.attack)
    attack = attack_cls(
        norm=cell.norm or "linf",
        eps=float(cell.eps or 0.0),
        domain=task.domain,
        seed=cell.attack_seed,
        **_attack_params(attack_cls, cell.attack_params, tokenizer),
    )
    crafter = model if surrogate is None else surrogate
    if cell.adaptive:
        if defense is None:
            raise ConfigError(f"{cell.label}: an adaptive cell needs its defense.")
        crafter = defense.adaptive(model)
    if cell.eot > 1:
        crafter = EOT(crafter, samples=cell.eot)
    clean_pred = predictions(predict_logits(model, x)).numpy()
    adversarial = torch.cat(
        [
            attack(
                crafter,
                x[i : i + ATTACK_BATCH],
                y[i : i + ATTACK_BATCH],
                target=None if target is None else target[i : i + ATTACK_BATCH],
            )
            for i in range(0, len(x), ATTACK_BATCH)
        ]
    )
    adv_logits = attack.adversarial_logits(model, x, adversarial)
    adv_pred = predictions(adv_logits).numpy()
    norms = attack.perturbation_sizes(model, x, adversarial)
    positive, classes = task.positive_class, task.num_classes
    metrics = {
        **_prefixed(
            "clean",
            clinical_metrics(
                y.numpy(), clean_pred, positive_class=positive, num_classes=classes
            ).as_dict(),
        ),
        **_prefixed(
            "adv",
            clinical_metrics(
                y.numpy(),
                adv_pred,
                positive_class=positive,
                num_classes=classes,
                scores=probabilities(adv_logits).numpy(),
            ).as_dict(),
        ),
        "success_rate": success_rate(y.numpy(), clean_pred, adv_pred),
        # share of originally correct examples read as their harmful target (NaN untargeted)
        "target_success_rate": (
            target_success_rate(y.numpy(), clean_pred, adv_pred, target.numpy())
            if target is not None
            else math.nan
        ),
        "mean_linf": finite_mean(norms["linf"]),
        "mean_l2": finite_mean(norms["l2"]),
        "mean_l0": finite_mean(norms["l0"]),
    }
    if classes == 2:
        metrics.update(_flip_rates(y.numpy(), clean_pred, adv_pred, positive))
    rows = [
        ExampleRow(
            int(subset[i]),
            int(y[i]),
            int(clean_pred[i]),
            int(adv_pred[i]),
            float(norms["linf"][i]),
            float(norms["l2"][i]),
            float(norms["l0"][i]),
        )
        for i in range(len(subset))
    ]
    samples = []
    if tokenizer is not None and attack.inputs == "tokens" and attack.perturbs == "inputs":
        flipped = (clean_pred == y.numpy()) & (adv_pred != y.numpy())
        samples = _text_samples(tokenizer, x, adversarial, subset, flipped)
    timings = {}
    figures: list[tuple[str, bytes]] = []
    if cell.explain is not None:
        start = time.perf_counter()
        model_title = cell.model_label or cell.model
        if cell.defense is not None:
            model_title += f" + {cell.defense_label}"
        explained, figures = explain_attack(
            ExplainSettings.from_dict(cell.explain),
            model,
            task,
            x,
            adversarial,
            y,
            seed=derive_seed(cell.cell_id, "explain"),
            panel_title=(model_title, cell.evaluation) if cell.trial == 0 else None,
            adv_pred=adv_pred,
            tokenizer=tokenizer,
        )
        metrics.update(explained)
        timings["explain_seconds"] = time.perf_counter() - start
    return CellOutcome(metrics, rows, attack.params(), samples, timings, figures)


def run_group(cells: Sequence[dict[str, Any]], output: str) -> Iterator[CellResult]:
    """Train (or load) the model shared by ``cells`` and evaluate each; yields finished cells.

    Surrogates of transfer cells are trained (or loaded from their checkpoints) on first use.
    """
    parsed = [Cell(**c) for c in cells]
    first = parsed[0]
    if first.poisoning is not None:
        yield from (_run_poisoning(cell) for cell in parsed)
        return
    if first.treatment is not None:
        yield from run_treatment_group(parsed, output)
        return
    checkpoints = Path(output) / "checkpoints"
    task = load_task(first.task, seed=first.split_seed)
    model, inputs, train_seconds = train_or_load(first, task, checkpoints)
    x_test, y_test = inputs.x["test"].to(first.device), inputs.y["test"]
    surrogates: dict[str, nn.Module] = {}
    wrapped: dict[str, tuple[Defense, nn.Module]] = {}
    for cell in parsed:
        start = time.perf_counter()
        defense, evaluated = None, model
        if cell.defense is not None:
            if cell.defense_label not in wrapped:
                built = build_defense(cell)
                wrapped[cell.defense_label] = (built, built.wrap(model, task))
            defense, evaluated = wrapped[cell.defense_label]
        surrogate = None
        if cell.source is not None:
            source = cell.source_cell()
            if source.training_key not in surrogates:
                trained, source_inputs, _ = train_or_load(source, task, checkpoints)
                if not torch.equal(source_inputs.x["test"], inputs.x["test"]):
                    raise ConfigError(
                        f"{cell.label}: a transfer attack needs a surrogate that reads the same "
                        f"inputs; {source.model_label!r} and {cell.model_label!r} encode the test "
                        "split differently (for text: give both the same vocabulary settings)."
                    )
                surrogates[source.training_key] = trained
            surrogate = surrogates[source.training_key]
        outcome = evaluate_cell(
            cell,
            task,
            evaluated,
            x_test,
            y_test,
            surrogate=surrogate,
            tokenizer=inputs.tokenizer,
            defense=defense,
            base=model,
        )
        if cell.explain is not None and cell.attack is None and cell.defense is not None:
            explain_start = time.perf_counter()
            undefended = model
            if cell.retrained:  # the undefended twin trains in its own group (or has already)
                twin = cell.undefended()
                if twin.training_key not in surrogates:
                    surrogates[twin.training_key] = train_or_load(twin, task, checkpoints)[0]
                undefended = surrogates[twin.training_key]
            outcome.metrics.update(
                explain_defense(
                    ExplainSettings.from_dict(cell.explain),
                    evaluated,
                    undefended,
                    task,
                    x_test,
                    y_test,
                    seed=derive_seed(cell.cell_id, "explain"),
                )
            )
            outcome.timings["explain_seconds"] = time.perf_counter() - explain_start
        record = cell.to_dict()
        if outcome.attack_config:
            record["attack_config"] = outcome.attack_config
        # The report names classes and computes FNR/FPR for the declared positive class.
        record["class_names"] = list(task.class_names)
        record["positive_class"] = task.positive_class
        yield CellResult(
            cell.cell_id,
            record,
            outcome.metrics,
            outcome.rows,
            train_seconds,
            time.perf_counter() - start,
            outcome.samples,
            outcome.timings,
            outcome.figures,
        )


PROVENANCE_PACKAGES = (
    "medrobust",
    "torch",
    "numpy",
    "scipy",
    "statsmodels",
    "scikit-learn",
    "wfdb",
    "simglucose",
)


def run_provenance(task_names: Sequence[str], device: str) -> dict[str, Any]:
    """What a reviewer needs to reproduce a run: when it started, on what software and
    hardware, and the checksums of the data files its tasks read (each verified on locating)."""
    versions = {"python": platform.python_version()}
    for package in PROVENANCE_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    data_files = [
        {
            "path": file.path,
            "checksum": f"sha256:{file.sha256}" if file.sha256 else f"md5:{file.md5}",
            "url": file.url,
        }
        for file in required_files(task_names)
    ]
    return {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "device": device,
        "versions": versions,
        "data_files": data_files,
    }


def _run_poisoning(cell: Cell) -> CellResult:
    """A poisoning cell: its model is trained on the poisoned training split of its own."""
    if cell.poisoning is None:
        raise ConfigError(f"{cell.label} is not a poisoning cell.")
    start = time.perf_counter()
    metrics, train_seconds = run_poisoning_cell(
        task_name=cell.task,
        split_seed=cell.split_seed,
        model=cell.model,
        model_params=cell.model_params,
        training=cell.training,
        init_seed=cell.init_seed,
        poisoning=cell.poisoning,
        seed=cell.attack_seed,
    )
    return CellResult(
        cell.cell_id,
        cell.to_dict(),
        metrics,
        [],
        train_seconds,
        time.perf_counter() - start - train_seconds,
    )


def group_cells(cells: Sequence[Cell]) -> list[list[Cell]]:
    """Cells grouped by the trained model they share, in plan order."""
    groups: dict[str, list[Cell]] = {}
    for cell in cells:
        groups.setdefault(cell.training_key, []).append(cell)
    return list(groups.values())


def run_study(
    spec: StudySpec,
    *,
    output: str | Path | None = None,
    on_cell: Callable[[CellResult, int, int], None] | None = None,
    executor: Executor | str | None = None,
) -> Path:
    """Run the cells of ``spec`` missing from its store; returns the store's path.

    Data files for every task are located (or downloaded) first, so a missing file fails before
    any compute with one message that lists them all. Each cell is stored as soon as it is
    finished, whichever executor runs it.

    Args:
        spec: the validated study.
        output: folder for the store, checkpoints and reports (default: ``spec.output``).
        on_cell: called after each stored cell with (result, cells done, cells total).
        executor: how the cell groups run: ``"local"`` or ``"ray"`` (with the spec's execution
            settings), an :class:`~medrobust.study.executors.Executor`, or ``None`` for the
            spec's ``executor``.
    """
    from medrobust.study import executors  # local: executors imports this module

    if not isinstance(executor, executors.Executor):
        execution = spec.execution
        if executor is not None:
            execution = dataclasses.replace(execution, executor=executor)
        executor = executors.make_executor(execution, device=spec.device)
    out = Path(output or spec.output)
    output_folder(out, create=False)  # a file of that name fails now, before any compute
    ensure_files([t.name for t in spec.tasks])
    if spec.treatment is not None:
        require_simglucose()  # a missing install fails now, not after the other tasks ran
    check_poisonings_on_data(spec.poisonings, [t.name for t in spec.tasks])
    cells = plan_cells(spec)
    # Where results go, the device, the declared intended use and how the study runs (executor,
    # cluster, retries, resources) do not change the rows.
    ignored = ("output", "device", "intended_use", *EXECUTION_KEYS)
    identity = {k: v for k, v in spec.to_dict().items() if k not in ignored}
    store = ResultStore(out / "results.sqlite", identity)
    try:
        # The store is this study's: what a killed run left half-written can go.
        remove_stale_temporaries(out)
        provenance = run_provenance([t.name for t in spec.tasks], spec.device)
        store.record_run({**provenance, "intended_use": spec.intended_use})
        done = store.done_ids()
        todo = [c for c in cells if c.cell_id not in done]
        finished = len(cells) - len(todo)
        if finished:
            logger.info("resuming: %d of %d cells already in the store", finished, len(cells))
        groups = [[c.to_dict() for c in group] for group in group_cells(todo)]
        with contextlib.closing(executor.run(groups, str(out))) as results:
            for result in results:
                if result.cell_id in done:  # a retried group yields its cells again
                    continue
                store.write(result)
                done.add(result.cell_id)
                finished += 1
                if on_cell is not None:
                    on_cell(result, finished, len(cells))
    finally:
        store.close()
    return out / "results.sqlite"
