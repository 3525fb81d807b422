"""Audit your own model: a study of one trained model on one task, with a study's store and report.

An audit is a study (:mod:`medrobust.study`) built from a few arguments, so it writes exactly the
same results store and report (clean table, attacks, worst case, defenses, certificates)::

    store = medrobust.audit("mypkg.models:make_cnn", checkpoint="cnn.pt", task="breastmnist",
                            attacks=["fgsm", "pgd"], defenses=["input_quantization"])

The model:

- ``"package.module:factory"`` or ``"path/to/file.py:factory"``: a callable returning an
  ``nn.Module`` (called with ``model_params``), imported by the generic model name
  ``python:<target>`` (:mod:`medrobust.models.user`);
- a registered architecture (``"small_cnn"``) with a ``checkpoint``;
- ``"huggingface:/path/to/dir"``: a Hugging Face sequence classifier saved with
  ``save_pretrained`` (model and fast tokenizer in one directory), for text tasks; it is loaded
  from local files only, the task's text is encoded with its own tokenizer (``model_params``
  ``max_length``, default 128), and the SHA-256 of the directory's files is recorded. Its head
  must have the task's number of classes; ``train=True`` initialises a new one where it does not
  (see :mod:`medrobust.models.user`);
- in Python, the factory itself (imported by name where it can be, else registered in this
  process) or an ``nn.Module`` instance (its state dict is saved to the output folder).

``checkpoint`` is a state dict loaded with ``torch.load(..., weights_only=True)``; its SHA-256 is
recorded, so the store identifies the weights. The model is **trained already** and is evaluated
as given (``pretrained``); ``train=True`` instead trains the architecture on the task's training
split in every trial, as a study does.

Defenses that only wrap the model (``stochastic_activation_pruning``, ``input_quantization``) wrap
the user's model. Defenses that retrain (``adversarial_training``, ``trades``,
``randomized_smoothing``) fine-tune a copy of it on the task's training split with ``training``
(default: 5 epochs, patience 2) and their own training hooks. ``lipschitz`` replaces the
architecture with its own, so it cannot defend a given trained model and is refused (allowed
with ``train=True``). A defense or attack that does not serve the task's modality is refused too.

The task: a name (``"breastmnist"``, ``"medmnist:dermamnist"``, ...) or ``data``: a user's
``.npz`` or ``.csv`` (tabular, or text with a ``text`` column; :mod:`medrobust.data.userfile`),
loaded by the generic task name ``file:<path>?...&sha256=<checksum>``.

Attacks: names, with the defaults of each modality's budgets (:data:`DEFAULT_EPS`), or tables in a
study config's ``[[attacks]]`` form (``{"name": "pgd", "eps": [0.03], "params": {"steps": 20}}``).
Defenses: names or ``[[defenses]]`` tables; ``randomized_smoothing`` gets its ``sigma`` per
modality (:data:`DEFAULT_SIGMA`) unless one is given.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medrobust.attacks import ATTACKS
from medrobust.data import get_task_spec, load_task
from medrobust.data.userfile import file_sha256, file_task_name
from medrobust.defenses import DEFENSES, Defense
from medrobust.errors import ConfigError
from medrobust.models import MODELS, build_model, prepare_inputs
from medrobust.models.user import (
    HF_PREFIX,
    LIVE_PREFIX,
    PYTHON_PREFIX,
    directory_sha256,
    hf_directory,
    register_live,
    split_target,
)
from medrobust.study import CellResult, StudySpec, run_study, write_report
from medrobust.study.spec import parse_spec
from medrobust.training import save_checkpoint
from medrobust.types import Modality

# Per norm and modality: budgets in each modality's input units (images in [0, 1]; ECG and
# tabular data in the units of the task, e.g. SD units where standardised; text: embedding
# entries for L-inf, the fraction of tokens for L0). As in the default study.
DEFAULT_EPS: dict[str, dict[str, list[float]]] = {
    "linf": {"image": [1 / 255, 4 / 255], "ecg": [0.05, 0.1], "tabular": [0.05, 0.2],
             "text": [0.05, 0.1]},
    "l2": {"image": [0.25], "ecg": [0.5], "tabular": [0.5], "text": [0.5]},
    "l0": {"image": [0.02], "ecg": [0.05], "tabular": [0.1], "text": [0.01, 0.02]},
}  # fmt: skip
DEFAULT_ATTACKS: dict[str, list[dict[str, Any]]] = {
    "text": [{"name": "embedding_pgd"}, {"name": "hotflip", "norm": "l0"}],
    "other": [{"name": "fgsm"}, {"name": "pgd", "params": {"steps": 10}}],
}
DEFAULT_SIGMA = {"image": 0.12, "ecg": 0.25, "tabular": 0.25}
DEFAULT_FINE_TUNING: dict[str, Any] = {"epochs": 5, "patience": 2}
DEFAULT_OUTPUT = "medrobust-audit"


def _replaces_architecture(defense: type[Defense]) -> bool:
    """Whether the defense builds its own architecture instead of the model it defends."""
    return defense.build is not Defense.build


def _importable_name(factory: Callable[..., Any]) -> str | None:
    """``python:module:name`` for a top-level function or class of an importable module."""
    module = getattr(factory, "__module__", None)
    qualname = getattr(factory, "__qualname__", "")
    if not module or module == "__main__" or not qualname.isidentifier():
        return None
    try:
        found = getattr(importlib.import_module(module), qualname, None)
    except ImportError:
        return None
    return f"{PYTHON_PREFIX}{module}:{qualname}" if found is factory else None


def _resolve_model(
    model: str | Callable[..., nn.Module] | nn.Module,
    checkpoint: str | Path | None,
    label: str | None,
    params: dict[str, Any],
    train: bool,
    output: Path,
) -> dict[str, Any]:
    """The ``[[tasks.models]]`` table of the audited model."""
    if isinstance(model, nn.Module):
        if checkpoint is not None:
            raise ConfigError(
                "The 'checkpoint' parameter of audit applies to a factory or an architecture; an "
                "nn.Module instance carries its weights already. Got both."
            )
        label = label or type(model).__name__.lower()
        instance = copy.deepcopy(model).cpu()
        name = register_live(label, lambda: copy.deepcopy(instance))
        checkpoint = output / f"model-{label}.pt"
        save_checkpoint(model, checkpoint)
    elif callable(model) and not isinstance(model, str):
        found = _importable_name(model)
        default_label = getattr(model, "__name__", "model")
        label = label or default_label
        name = found or register_live(label, model)
    elif isinstance(model, str):
        text = model.strip()
        if text.startswith(HF_PREFIX):
            path = hf_directory(text)
            name = HF_PREFIX + str(path)
            label = label or path.name
            params = {"hf_tokenizer": str(path), **params, "hf_sha256": directory_sha256(path)}
            if train:
                params.setdefault("hf_new_head", True)
            elif params.get("hf_new_head"):
                raise ConfigError(
                    "The 'hf_new_head' param of a Hugging Face model initialises an untrained "
                    "head, so it needs train=True (--train). Got it for a model evaluated as "
                    "given."
                )
        elif text.startswith((PYTHON_PREFIX, LIVE_PREFIX)):
            name = text
            label = label or text.rpartition(":")[2]
        elif text in MODELS:
            name = text
            label = label or text
            if checkpoint is None and not train:
                raise ConfigError(
                    f"The registered architecture {text!r} is untrained: give its trained "
                    "weights as 'checkpoint', or train=True (--train) to train it on the task."
                )
        else:
            module, attr = split_target(text)
            if module.endswith(".py") or "/" in module or "\\" in module:
                module = str(Path(module).expanduser().resolve())
            name = f"{PYTHON_PREFIX}{module}:{attr}"
            label = label or attr
    else:
        raise ConfigError(
            "The 'model' parameter of audit must be 'package.module:factory', "
            "'path/to/file.py:factory', a registered architecture, a factory or an nn.Module. "
            f"Got {type(model).__name__} instead."
        )
    if checkpoint is not None:
        path = Path(checkpoint).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"The model checkpoint {str(checkpoint)!r} does not exist.")
        params = {**params, "checkpoint": str(path), "checkpoint_sha256": file_sha256(path)}
    entry: dict[str, Any] = {"name": name, "label": label, "params": params}
    if not train:
        entry["pretrained"] = True
    return entry


def _attack_table(raw: str | Mapping[str, Any], task_name: str, modality: str) -> dict[str, Any]:
    table: dict[str, Any] = {"name": raw} if isinstance(raw, str) else dict(raw)
    name = table.get("name")
    if not isinstance(name, str):
        raise ConfigError(f"An attack of audit needs a 'name'. Got {raw!r} instead.")
    cls = ATTACKS.get(name)
    if modality not in {m.value for m in cls.modalities}:
        usable = [
            a for a in ATTACKS.names() if modality in {m.value for m in ATTACKS.get(a).modalities}
        ]
        raise ConfigError(
            f"The attack {name!r} does not apply to {modality} inputs of task {task_name!r}. "
            f"Attacks for {modality} inputs: {usable}."
        )
    if "eps" not in table:
        norm = str(table.get("norm", "linf")).lower()
        eps = DEFAULT_EPS.get(norm, {}).get(modality)
        if eps is None:
            raise ConfigError(f"The attack {name!r} with norm {norm!r} needs an 'eps'.")
        table["eps"] = list(eps)
    return table


def _defense_table(
    raw: str | Mapping[str, Any], task_name: str, modality: str, train: bool
) -> dict[str, Any]:
    table: dict[str, Any] = {"name": raw} if isinstance(raw, str) else dict(raw)
    name = table.get("name")
    if not isinstance(name, str):
        raise ConfigError(f"A defense of audit needs a 'name'. Got {raw!r} instead.")
    cls = DEFENSES.get(name)
    allowed = [
        d
        for d in DEFENSES.names()
        if Modality(modality) in DEFENSES.get(d).modalities
        and (train or not _replaces_architecture(DEFENSES.get(d)))
    ]
    if Modality(modality) not in cls.modalities:
        raise ConfigError(
            f"The {name} defense does not apply to {modality} inputs of task {task_name!r}. "
            f"Allowed defenses: {allowed}."
        )
    if not train and _replaces_architecture(cls):
        raise ConfigError(
            f"The {name} defense replaces the model's architecture with its own, so it cannot "
            f"defend your trained model (audit it with train=True / --train to train both). "
            f"Allowed defenses: {allowed}."
        )
    if name == "randomized_smoothing":
        params = dict(table.get("params", {}))
        params.setdefault("sigma", DEFAULT_SIGMA.get(modality, 0.25))
        table["params"] = params
    return table


def audit_spec(
    model: str | Callable[..., nn.Module] | nn.Module,
    *,
    task: str | None = None,
    data: str | Path | None = None,
    data_options: Mapping[str, Any] | None = None,
    checkpoint: str | Path | None = None,
    model_params: Mapping[str, Any] | None = None,
    label: str | None = None,
    train: bool = False,
    training: Mapping[str, Any] | None = None,
    attacks: Sequence[str | Mapping[str, Any]] | None = None,
    defenses: Sequence[str | Mapping[str, Any]] = (),
    trials: int = 3,
    seed: int = 0,
    max_attack_examples: int = 500,
    device: str = "cpu",
    output: str | Path = DEFAULT_OUTPUT,
) -> StudySpec:
    """The validated study of an audit (see :func:`audit` for the arguments); nothing runs.

    Raises:
        ConfigError: a bad argument (with what is allowed).
        UnknownNameError: an unknown task, attack, defense or architecture name.
        ParameterError: an out-of-range attack or defense parameter.
    """
    if (task is None) == (data is None):
        raise ConfigError(
            "An audit needs exactly one of 'task' (a task name) and 'data' (an .npz or .csv "
            f"file). Got task={task!r} and data={data!r} instead."
        )
    if data is not None:
        path = Path(data).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"The data file {str(data)!r} does not exist.")
        options = {k: v for k, v in dict(data_options or {}).items() if v is not None}
        options.setdefault("sha256", file_sha256(path))
        task_name = file_task_name(path, **options)
    else:
        if data_options:
            raise ConfigError("The 'data_options' of audit apply to a 'data' file only.")
        task_name = str(task)
    modality = get_task_spec(task_name).modality.value
    chosen = attacks
    if chosen is None:
        chosen = DEFAULT_ATTACKS["text" if modality == "text" else "other"]
    attack_tables = [_attack_table(a, task_name, modality) for a in chosen]
    defense_tables = [_defense_table(d, task_name, modality, train) for d in defenses]
    out = Path(output)
    # Last: an nn.Module instance is saved to the output folder here.
    entry = _resolve_model(model, checkpoint, label, dict(model_params or {}), train, out)
    entry["training"] = dict(training or ({} if train else DEFAULT_FINE_TUNING))
    raw = {
        "study": {
            "name": f"audit of {entry['label']}",
            "trials": trials,
            "seed": seed,
            "max_attack_examples": max_attack_examples,
            "device": device,
            "output": str(out),
        },
        "tasks": [{"name": task_name, "models": [entry]}],
        "attacks": attack_tables,
        "defenses": defense_tables,
    }
    return parse_spec(raw)


def check_model(spec: StudySpec) -> None:
    """Build the audited model and run it on two test inputs, so that a model that does not fit
    the task fails now, not after the first attack.

    Raises:
        ConfigError: the model cannot be built, fails on the inputs, or gives logits of the
            wrong shape.
    """
    entry = spec.tasks[0]
    model_entry = entry.models[0]
    task = load_task(entry.name, seed=0)
    inputs = prepare_inputs(task, model_entry.params)
    model = build_model(model_entry.name, task, inputs, model_entry.params).eval()
    x = inputs.x["test"][:2]
    try:
        with torch.no_grad():
            logits = model(x)
    except Exception as exc:
        raise ConfigError(
            f"The model {model_entry.label!r} fails on inputs of task {entry.name!r} of shape "
            f"{tuple(x.shape)}: {type(exc).__name__}: {exc}"
        ) from exc
    k = task.num_classes
    shape = tuple(getattr(logits, "shape", ()))
    if shape not in ((len(x), k), *([(len(x), 1)] if k == 2 else [])):
        one = " (or (N, 1) for a binary task)" if k == 2 else ""
        raise ConfigError(
            f"The model {model_entry.label!r} must give logits of shape (N, {k}){one} for the "
            f"{k} classes of task {entry.name!r}. Got {shape} on inputs of shape "
            f"{tuple(x.shape)} instead."
        )


def audit(
    model: str | Callable[..., nn.Module] | nn.Module,
    *,
    task: str | None = None,
    data: str | Path | None = None,
    data_options: Mapping[str, Any] | None = None,
    checkpoint: str | Path | None = None,
    model_params: Mapping[str, Any] | None = None,
    label: str | None = None,
    train: bool = False,
    training: Mapping[str, Any] | None = None,
    attacks: Sequence[str | Mapping[str, Any]] | None = None,
    defenses: Sequence[str | Mapping[str, Any]] = (),
    trials: int = 3,
    seed: int = 0,
    max_attack_examples: int = 500,
    device: str = "cpu",
    output: str | Path = DEFAULT_OUTPUT,
    report: bool = True,
    on_cell: Callable[[CellResult, int, int], None] | None = None,
) -> Path:
    """Evaluate your model on a task or data file under attacks and defenses; write the store
    (and the report) of a study.

    Args:
        model: ``"package.module:factory"``, ``"path/to/file.py:factory"``, a registered
            architecture name, ``"huggingface:/path/to/saved_model_dir"``, a factory (callable
            returning an ``nn.Module``) or an ``nn.Module``.
        task: a task name (``"breastmnist"``, ``"medmnist:<subset>"``, ...); or
        data: an ``.npz`` or ``.csv`` file (see :mod:`medrobust.data.userfile`; a CSV with a
            text column is text), with ``data_options`` (``modality``, ``classes``,
            ``positive``, ``domain``, ``label``, ``split``, ``text``).
        checkpoint: a state dict file for the model (``torch.save(model.state_dict(), path)``).
        model_params: keyword arguments of the factory or architecture.
        label: the model's name in the report (default: the factory's or class's name).
        train: train the model on the task in every trial instead of evaluating it as given.
        training: :class:`~medrobust.training.FitConfig` fields for training (``train=True``) or
            for the fine-tuning of defenses that retrain (default: 5 epochs, patience 2).
        attacks: attack names or ``[[attacks]]`` tables; default FGSM and PGD (L-inf) at the
            modality's budgets (text: embedding PGD and HotFlip).
        defenses: defense names or ``[[defenses]]`` tables; default none.
        trials: independent trials (attack seeds and, where the task re-splits, splits).
        seed: the audit's seed.
        max_attack_examples: a seeded subset of the test split attacked per cell.
        device: ``"cpu"`` or ``"cuda[:N]"``.
        output: folder of the store, checkpoints and report; a rerun resumes there.
        report: write the report (``report.md`` and its tables) beside the store.
        on_cell: called after each stored cell with (result, cells done, cells total).

    Returns:
        The path of the results store (``<output>/results.sqlite``).

    Raises:
        ConfigError, UnknownNameError, ParameterError: a bad argument, before any compute.
        DataNotFoundError, ChecksumError, CorruptDataError: the data cannot be had or used.
    """
    spec = audit_spec(
        model,
        task=task,
        data=data,
        data_options=data_options,
        checkpoint=checkpoint,
        model_params=model_params,
        label=label,
        train=train,
        training=training,
        attacks=attacks,
        defenses=defenses,
        trials=trials,
        seed=seed,
        max_attack_examples=max_attack_examples,
        device=device,
        output=output,
    )
    check_model(spec)
    store = run_study(spec, output=output, on_cell=on_cell)
    if report:
        write_report(store)
    return store


__all__ = ["DEFAULT_EPS", "audit", "audit_spec", "check_model"]
