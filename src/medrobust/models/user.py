"""Models defined outside medrobust: generic model names that import a user's factory.

Two generic names stand beside the registry's architectures:

- ``python:<package.module>:<factory>`` or ``python:<path/to/file.py>:<factory>`` imports
  ``factory`` (a callable returning an ``nn.Module``) and calls it with the model's params;
- ``live:<label>`` names a factory handed over in this process (:func:`register_live`), e.g. an
  ``nn.Module`` instance given to :func:`medrobust.audit`. It works in the local process only.

Two params are reserved (:func:`medrobust.models.build_model` handles them for every model, so
they never reach a factory): ``checkpoint``, a state dict file loaded with
``torch.load(..., weights_only=True)`` (never unpickling arbitrary objects; a mapping with a
``"state_dict"`` entry, as Lightning writes, is accepted too), and ``checkpoint_sha256``, its
SHA-256, checked at every load so that a results store identifies the weights it evaluated.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medrobust.errors import ConfigError

PYTHON_PREFIX = "python:"
LIVE_PREFIX = "live:"
RESERVED = ("checkpoint", "checkpoint_sha256")

_LIVE: dict[str, Callable[..., nn.Module]] = {}


def is_user_model(name: str) -> bool:
    """Whether ``name`` is a generic ``python:`` or ``live:`` model name."""
    text = str(name)
    return text.startswith(PYTHON_PREFIX) or text.startswith(LIVE_PREFIX)


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
