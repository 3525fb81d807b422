"""Models defined outside medrobust: generic model names that import a user's factory.

Three generic names stand beside the registry's architectures:

- ``python:<package.module>:<factory>`` or ``python:<path/to/file.py>:<factory>`` imports
  ``factory`` (a callable returning an ``nn.Module``) and calls it with the model's params;
- ``live:<label>`` names a factory handed over in this process (:func:`register_live`), e.g. an
  ``nn.Module`` instance given to :func:`medrobust.audit`. It works in the local process only;
- ``huggingface:<directory>`` loads a Hugging Face sequence-classification model saved with
  ``save_pretrained`` (``AutoModelForSequenceClassification``, local files only: the network is
  never touched) and wraps it in :class:`~medrobust.models.text.HuggingFaceClassifier`. It needs
  the ``transformers`` extra (``pip install 'medrobust[text]'``) and serves text tasks. Its
  params (all optional but ``hf_tokenizer``, which :func:`medrobust.audit` sets):

  - ``hf_tokenizer``: the directory of the model's own (fast) tokenizer, usually the model's;
    :func:`medrobust.models.prepare_inputs` encodes the task's text with it instead of training
    a tokenizer on the task (:func:`hf_encode`);
  - ``max_length``: tokens per text, [CLS]/[SEP] included (default :data:`HF_MAX_LENGTH`);
  - ``hf_sha256``: the checksum of the directory's files (:func:`directory_sha256`), checked at
    every load, as ``checkpoint_sha256`` is;
  - ``hf_new_head``: ``True`` re-initialises the classification head for the task's classes
    (for training only: an audit sets it with ``train=True``). Otherwise a directory whose head
    has another number of labels than the task has classes, or no trained head at all (an
    encoder saved without one), is refused.

Two params are reserved (:func:`medrobust.models.build_model` handles them for every model, so
they never reach a factory): ``checkpoint``, a state dict file loaded with
``torch.load(..., weights_only=True)`` (never unpickling arbitrary objects; a mapping with a
``"state_dict"`` entry, as Lightning writes, is accepted too), and ``checkpoint_sha256``, its
SHA-256, checked at every load so that a results store identifies the weights it evaluated.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from medrobust.errors import ConfigError

if TYPE_CHECKING:
    from medrobust.data.task import Task

PYTHON_PREFIX = "python:"
LIVE_PREFIX = "live:"
HF_PREFIX = "huggingface:"
RESERVED = ("checkpoint", "checkpoint_sha256")
HF_PARAMS = ("hf_tokenizer", "max_length", "hf_sha256", "hf_new_head")
HF_MAX_LENGTH = 128
# Files of a saved model that identify it; caches and READMEs are left out of its checksum.
_HF_SUFFIXES = (".json", ".safetensors", ".bin", ".txt", ".model")

_LIVE: dict[str, Callable[..., nn.Module]] = {}


def is_user_model(name: str) -> bool:
    """Whether ``name`` is a generic ``python:``, ``live:`` or ``huggingface:`` model name."""
    return str(name).startswith((PYTHON_PREFIX, LIVE_PREFIX, HF_PREFIX))


def is_huggingface_model(name: str) -> bool:
    """Whether ``name`` is a generic ``huggingface:<directory>`` model name."""
    return str(name).startswith(HF_PREFIX)


def register_live(label: str, factory: Callable[..., nn.Module]) -> str:
    """Make ``factory`` buildable as ``live:<label>`` in this process; returns that name.

    A later registration under the same label replaces the earlier one.
    """
    if not label or any(c in label for c in ":/\\") or not label.isprintable():
        raise ConfigError(
            "The 'label' of a live model must be a non-empty name without ':', '/' or '\\'. "
            f"Got {label!r} instead."
        )
    _LIVE[label] = factory
    return LIVE_PREFIX + label


def split_target(target: str) -> tuple[str, str]:
    """``"pkg.mod:factory"`` or ``"path/file.py:factory"`` -> (module or path, factory name)."""
    module, sep, attr = str(target).rpartition(":")
    if not sep or not module or not attr.isidentifier():
        raise ConfigError(
            "A model must be given as 'package.module:factory' or 'path/to/file.py:factory' "
            f"(a callable that returns an nn.Module). Got {target!r} instead."
        )
    return module, attr


def _is_path(module: str) -> bool:
    return module.endswith(".py") or "/" in module or "\\" in module


def _import_file(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"The model file {str(path)!r} does not exist.")
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    name = f"medrobust_user_{path.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"The model file {str(path)!r} cannot be imported as Python.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ConfigError(
            f"Importing the model file {str(path)!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    return module


def load_factory(target: str) -> Callable[..., nn.Module]:
    """The callable named by ``package.module:factory`` or ``path/to/file.py:factory``.

    Raises:
        ConfigError: the target is malformed, cannot be imported, or names no callable.
    """
    module_name, attr = split_target(target)
    if _is_path(module_name):
        module = _import_file(Path(module_name).expanduser().resolve())
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(
                f"The model module {module_name!r} cannot be imported ({exc}). Give an "
                "importable 'package.module:factory' or a file 'path/to/file.py:factory'."
            ) from exc
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise ConfigError(
            f"The model module {module_name!r} has no callable {attr!r}; the factory must be a "
            "function or class that returns an nn.Module."
        )
    return factory  # type: ignore[no-any-return]


def factory_for(name: str) -> Callable[..., nn.Module]:
    """The factory behind a ``python:`` or ``live:`` model name."""
    if name.startswith(LIVE_PREFIX):
        label = name[len(LIVE_PREFIX) :]
        if label not in _LIVE:
            raise ConfigError(
                f"The live model {name!r} is not registered in this process; live models "
                "(nn.Module instances given to medrobust.audit) run in the local process only. "
                "Give a 'python:package.module:factory' name to run elsewhere."
            )
        return _LIVE[label]
    return load_factory(name[len(PYTHON_PREFIX) :])


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_state_dict(path: str | Path, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """A state dict from ``path`` (``torch.load(..., weights_only=True)``).

    Raises:
        ConfigError: the file is missing, its checksum differs from ``sha256``, or it holds
            something other than a mapping of parameter names to tensors.
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"The model checkpoint {str(file)!r} does not exist.")
    if sha256 is not None and file_sha256(file) != sha256:
        raise ConfigError(
            f"The model checkpoint {str(file)!r} changed since the audit recorded it "
            f"(sha256 {sha256[:12]}...); start a new output folder to audit the new weights."
        )
    try:
        loaded = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(
            f"The model checkpoint {str(file)!r} cannot be read as a state dict with "
            f"weights_only=True ({type(exc).__name__}: {exc}). Save it with "
            "torch.save(model.state_dict(), path)."
        ) from exc
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise ConfigError(
            f"The model checkpoint {str(file)!r} must hold a state dict (parameter name -> "
            "tensor), as torch.save(model.state_dict(), path) writes. Got "
            f"{type(loaded).__name__} instead."
        )
    return dict(loaded)


def load_weights(model: nn.Module, path: str | Path, sha256: str | None, name: str) -> None:
    """Load the state dict at ``path`` into ``model`` (checked against ``sha256`` if given).

    Raises:
        ConfigError: the file is missing or changed, holds no state dict, or does not fit.
    """
    state = read_state_dict(path, sha256)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(
            f"The model checkpoint {str(path)!r} does not fit the model built by {name!r}: {exc}"
        ) from exc


def build_user_model(name: str, hparams: Mapping[str, Any]) -> nn.Module:
    """Build the model named ``python:...`` or ``live:...`` by calling its factory.

    Args:
        name: the generic model name.
        hparams: keyword arguments of the factory.

    Raises:
        ConfigError: the factory cannot be found, fails, or returns no ``nn.Module``.
    """
    params = {k: v for k, v in hparams.items() if k not in RESERVED}
    factory = factory_for(name)
    try:
        model = factory(**params)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"The model factory of {name!r} failed with params {params}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"The model factory of {name!r} must return an nn.Module. "
            f"Got {type(model).__name__} instead."
        )
    return model


def _transformers(owner: str) -> Any:
    """The ``transformers`` module, or a ConfigError naming the extra that installs it."""
    try:
        import transformers
    except ImportError as exc:
        raise ConfigError(
            f"{owner} needs the transformers package, which is not installed. Install the text "
            "extra: pip install 'medrobust[text]'."
        ) from exc
    return transformers


def hf_directory(name_or_path: str | Path, *, what: str = "model") -> Path:
    """The absolute directory of ``huggingface:<directory>`` (or of a directory path).

    Args:
        name_or_path: a ``huggingface:`` model name or a directory.
        what: ``"model"`` (the directory must hold a ``config.json``) or ``"tokenizer"``.

    Raises:
        ConfigError: the directory does not exist or (for a model) holds no ``config.json``.
    """
    text = str(name_or_path)
    if text.startswith(HF_PREFIX):
        text = text[len(HF_PREFIX) :]
    path = Path(text).expanduser()
    if not text or not path.is_dir() or (what == "model" and not (path / "config.json").is_file()):
        wanted = "with a config.json, " if what == "model" else ""
        raise ConfigError(
            f"A Hugging Face {what} must be a local directory written by save_pretrained "
            f"({wanted}e.g. 'huggingface:/path/to/dir'). Got {str(name_or_path)!r} instead."
        )
    return path.resolve()


def directory_sha256(path: str | Path) -> str:
    """One SHA-256 of the files of a saved model directory that identify it (configs, weights,
    vocabularies: ``.json``, ``.safetensors``, ``.bin``, ``.txt``, ``.model`` at its top level),
    over their names and contents."""
    digest = hashlib.sha256()
    files = sorted(
        f for f in Path(path).iterdir() if f.is_file() and f.suffix.lower() in _HF_SUFFIXES
    )
    for file in files:
        digest.update(f"{file.name}\0{file_sha256(file)}\n".encode())
    return digest.hexdigest()


def _stamp(path: Path) -> tuple[int, ...]:
    return tuple(f.stat().st_mtime_ns for f in sorted(path.iterdir()) if f.is_file())


@functools.lru_cache(maxsize=8)
def _load_tokenizer(path: str, stamp: tuple[int, ...]) -> Any:
    del stamp  # part of the cache key only: a rewritten directory is read again
    transformers = _transformers(f"The Hugging Face tokenizer {path!r}")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            path, local_files_only=True, use_fast=True
        )
    except Exception as exc:
        raise ConfigError(
            f"The Hugging Face tokenizer in {path!r} cannot be loaded from local files: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(
            f"The Hugging Face tokenizer in {path!r} must be a fast tokenizer (a tokenizer.json, "
            "as AutoTokenizer.from_pretrained(..., use_fast=True).save_pretrained writes). "
            f"Got the slow {type(tokenizer).__name__} instead."
        )
    if tokenizer.pad_token_id is None:
        raise ConfigError(
            f"The Hugging Face tokenizer in {path!r} must have a padding token. Got none."
        )
    return tokenizer


def load_hf_tokenizer(path: str | Path) -> Any:
    """The fast ``transformers`` tokenizer saved in directory ``path`` (local files only).

    Raises:
        ConfigError: transformers is missing, or the directory holds no fast tokenizer with a
            padding token.
    """
    directory = hf_directory(path, what="tokenizer")
    return _load_tokenizer(str(directory), _stamp(directory))


def _max_length(hparams: Mapping[str, Any]) -> int:
    value = hparams.get("max_length", HF_MAX_LENGTH)
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise ConfigError(
            "The 'max_length' parameter of a Hugging Face model must be an integer >= 2 (tokens "
            f"per text, [CLS] and [SEP] included). Got {value!r} instead."
        )
    return value


def hf_encode(
    texts: Mapping[str, Sequence[str]], hparams: Mapping[str, Any]
) -> tuple[dict[str, np.ndarray], int, Any]:
    """Token ids of each split's texts by the model's own tokenizer (``hparams["hf_tokenizer"]``):
    special tokens added as the model expects them, truncated and padded with the tokenizer's pad
    id to ``max_length`` (default :data:`HF_MAX_LENGTH`).

    Returns:
        split name -> (N, max_length) int64 ids; the vocabulary size (the model's
        ``config.vocab_size`` where the directory has a config, else the tokenizer's length);
        and the ``tokenizers.Tokenizer`` behind the fast tokenizer, for
        :func:`~medrobust.models.text.decode`.

    Raises:
        ConfigError: the tokenizer cannot be loaded, ``max_length`` is bad or longer than the
            tokenizer allows, or it makes ids outside the model's vocabulary.
    """
    directory = hf_directory(hparams["hf_tokenizer"], what="tokenizer")
    tokenizer = load_hf_tokenizer(directory)
    max_length = _max_length(hparams)
    limit = int(getattr(tokenizer, "model_max_length", 0) or 0)
    if 0 < limit < 1_000_000 and max_length > limit:
        raise ConfigError(
            f"The 'max_length' parameter of a Hugging Face model must be <= {limit}, the "
            f"longest input of its tokenizer. Got {max_length} instead."
        )
    vocab_size = len(tokenizer)
    if (directory / "config.json").is_file():
        transformers = _transformers(f"The Hugging Face tokenizer {str(directory)!r}")
        config = transformers.AutoConfig.from_pretrained(str(directory), local_files_only=True)
        vocab_size = int(getattr(config, "vocab_size", None) or vocab_size)
    ids: dict[str, np.ndarray] = {}
    for split, batch in texts.items():
        encoded = tokenizer(
            [str(t) for t in batch],
            max_length=max_length,
            padding="max_length",
            truncation=True,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        ids[split] = np.asarray(encoded, dtype=np.int64).reshape(len(batch), max_length)
        if ids[split].size and int(ids[split].max()) >= vocab_size:
            raise ConfigError(
                f"The tokenizer in {str(directory)!r} makes token id {int(ids[split].max())}, "
                f"outside the model's vocabulary of {vocab_size}: give the model's own tokenizer."
            )
    return ids, vocab_size, tokenizer.backend_tokenizer


def build_huggingface_model(name: str, task: Task, hparams: Mapping[str, Any]) -> nn.Module:
    """Load ``huggingface:<directory>`` for ``task`` from local files, wrapped in
    :class:`~medrobust.models.text.HuggingFaceClassifier`, in eval mode and float32.

    Raises:
        ConfigError: transformers is missing; the directory, a param or the checksum is wrong;
            the classification head does not fit the task's classes or is missing (unless
            ``hf_new_head``); or the model cannot be loaded.
    """
    from medrobust.models.text import HuggingFaceClassifier  # local: text imports this package

    unknown = sorted(set(hparams) - set(HF_PARAMS))
    if unknown:
        raise ConfigError(
            f"The params of the Hugging Face model {name!r} must be among {list(HF_PARAMS)}. "
            f"Got {unknown} too."
        )
    if not hparams.get("hf_tokenizer"):
        raise ConfigError(
            f"The Hugging Face model {name!r} needs the param 'hf_tokenizer' (the directory of "
            "its own tokenizer, usually the model's), so that the task's text is encoded with "
            "the model's vocabulary; medrobust.audit sets it. Got none."
        )
    new_head = hparams.get("hf_new_head", False)
    if not isinstance(new_head, bool):
        raise ConfigError(
            f"The 'hf_new_head' parameter of a Hugging Face model must be true or false. "
            f"Got {new_head!r} instead."
        )
    path = hf_directory(name)
    sha256 = hparams.get("hf_sha256")
    if sha256 is not None and directory_sha256(path) != sha256:
        raise ConfigError(
            f"The Hugging Face model in {str(path)!r} changed since the audit recorded it "
            f"(sha256 {str(sha256)[:12]}...); start a new output folder to audit the new weights."
        )
    transformers = _transformers(f"The model {name!r}")
    classes = task.num_classes
    options: dict[str, Any] = {"local_files_only": True, "output_loading_info": True}
    try:
        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
        labels = int(config.num_labels)
        if new_head:
            options.update(num_labels=classes, ignore_mismatched_sizes=True)
        elif labels != classes and not (classes == 2 and labels == 1):
            raise ConfigError(
                f"The Hugging Face model {name!r} has a classification head with {labels} "
                f"labels; task {task.name!r} has {classes} classes. Give a model fine-tuned for "
                "these classes (or train it: train=True / --train initialises a new head)."
            )
        model, info = transformers.AutoModelForSequenceClassification.from_pretrained(
            str(path), **options
        )
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"The Hugging Face model {name!r} cannot be loaded from local files as a sequence "
            f"classifier: {type(exc).__name__}: {exc}"
        ) from exc
    missing = list(info.get("missing_keys", []))
    if missing and not new_head:
        raise ConfigError(
            f"The Hugging Face model {name!r} has no trained weights for {sorted(missing)[:4]}: "
            "an encoder saved without a fine-tuned classification head. Save the fine-tuned "
            "classifier (or train it: train=True / --train initialises a new head)."
        )
    pad_id = int(load_hf_tokenizer(hparams["hf_tokenizer"]).pad_token_id)
    return HuggingFaceClassifier(model.float(), pad_id=pad_id).eval()
