"""Checks of a config's tables shared by the study's parsers: every error names where it is."""

from __future__ import annotations

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
