"""The one exception tree of medrobust.

Every error the library raises on purpose derives from :class:`MedrobustError` and also from the
built-in class a caller would naturally catch::

    MedrobustError
    ├── ConfigError (ValueError)            a study config or keyword is wrong
    ├── ParameterError (ValueError)         a hyperparameter is out of its allowed range
    ├── InputError (ValueError)             a tensor or array given to the library is unusable
    ├── UnknownNameError (LookupError)      a task, model, attack or defense name is not registered
    ├── DataError                           a data file problem
    │   ├── DataNotFoundError (FileNotFoundError)   files missing offline and not downloadable
    │   ├── ChecksumError (ValueError)              a file's checksum differs from the canonical one
    │   └── CorruptDataError (ValueError)           a file is truncated or malformed
    ├── StoreError (RuntimeError)           a results store is corrupt, foreign or inconsistent
    └── GroupFailedError (RuntimeError)     a cell group failed after its retries (distributed)

Messages follow the form "The 'eps' parameter of PGD must be >= 0. Got -0.1 instead."
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class MedrobustError(Exception):
    """Base class of every error raised on purpose by medrobust."""


class ConfigError(MedrobustError, ValueError):
    """A study configuration is invalid."""


class ParameterError(MedrobustError, ValueError):
    """A hyperparameter is outside its allowed range or of the wrong type."""


class InputError(MedrobustError, ValueError):
    """An input tensor or array has the wrong shape, dtype or values."""


class UnknownNameError(MedrobustError, LookupError):
    """A name is not registered; the message lists close matches."""


class DataError(MedrobustError):
    """Base class of data file problems."""


@dataclass(frozen=True)
class MissingFile:
    """One file a task needs that could be found neither offline nor by download."""

    relative_path: str
    url: str
    reason: str


class DataNotFoundError(DataError, FileNotFoundError):
    """Data files are missing; the message says which file to put where and its URL."""

    def __init__(self, missing: Sequence[MissingFile], offline_dir: str | None, cache_dir: str):
        self.missing = tuple(missing)
        lines = [f"{len(self.missing)} data file(s) are missing and could not be downloaded:"]
        for item in self.missing:
            lines.append(f"  - {item.relative_path}  (from {item.url}; {item.reason})")
        where = [f"the cache directory {cache_dir}/<file>"]
        if offline_dir:
            where.insert(0, f"the offline folder MEDROBUST_DATA={offline_dir}/<file>")
        else:
            where.append("a folder named by MEDROBUST_DATA as <folder>/<file>")
        lines.append("Put each file at " + ", or at ".join(where) + ".")
        super().__init__("\n".join(lines))


class ChecksumError(DataError, ValueError):
    """A data file does not match its canonical checksum."""


class CorruptDataError(DataError, ValueError):
    """A data file is truncated or not in its documented format."""


class StoreError(MedrobustError, RuntimeError):
    """A results store is corrupt, belongs to another study, or is inconsistent."""


class GroupFailedError(MedrobustError, RuntimeError):
    """A cell group failed (after its retries); the cells finished before are in the store."""
