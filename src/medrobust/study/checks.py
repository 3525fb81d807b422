"""Checks of a config's tables shared by the study's parsers: every error names where it is."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from medrobust.errors import ConfigError


def check_keys(where: str, given: Mapping[str, Any], allowed: set[str]) -> None:
    """Refuse keys of ``given`` outside ``allowed``."""
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise ConfigError(f"Unknown key(s) {unknown} in {where}. Allowed keys: {sorted(allowed)}.")


def expect(where: str, value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    """``value`` if it is a ``kind`` (a bool is no number), else a ConfigError saying ``what``."""
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ConfigError(f"{where} must be {what}. Got {value!r} instead.")
    return value


def expect_names(where: str, raw: Any) -> tuple[str, ...]:
    """``raw`` if it is a list of strings, as a tuple, else a ConfigError."""
    values = expect(where, raw, list, "a list of names")
    for value in values:
        expect(where, value, str, "a list of names")
    return tuple(values)


def check_finite(where: str, value: Any) -> None:
    """Refuse NaN and infinities anywhere in ``value`` (TOML and YAML can write them): no setting
    of a study is infinite, and the config is stored with the results as plain JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(
            f"{where} is {value!r}; a config takes finite numbers only (no nan or inf)."
        )
    if isinstance(value, Mapping):
        for key, child in value.items():
            check_finite(f"{where}.{key}", child)
    elif isinstance(value, list | tuple):
        for index, child in enumerate(value):
            check_finite(f"{where}[{index}]", child)
