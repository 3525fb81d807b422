"""Outcome classes of the property-based (fuzz) tests, counted for the session summary.

Every fuzz case ends in one of two ways a user can rely on: a correct result ("accepted") or a
documented error, a :class:`~medrobust.errors.MedrobustError` whose class names what was wrong
(argparse's usage error, exit status 2, for the command line). Anything else (an internal
traceback) propagates and fails the test. ``pytest`` prints the counts at the end of the run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

from medrobust.errors import MedrobustError

ACCEPTED = "accepted"
OUTCOMES: Counter[tuple[str, str]] = Counter()
NOTES: dict[str, list[str]] = {}

T = TypeVar("T")


def record(family: str, outcome: str) -> None:
    """Count one fuzz case of ``family`` that ended in ``outcome``."""
    OUTCOMES[(family, outcome)] += 1


def note(section: str, line: str) -> None:
    """A line for the session summary of a robustness test that is no fuzz case (e.g. where a
    kill landed and what resuming gave)."""
    NOTES.setdefault(section, []).append(line)


def outcome(family: str, call: Callable[[], T]) -> tuple[str, T | None]:
    """Run ``call``; return ("accepted", its result) or (the error class, None) for a
    MedrobustError, and count the case. Any other exception is a bug and propagates."""
    try:
        result = call()
    except MedrobustError as exc:
        assert str(exc).strip(), f"{type(exc).__name__} with an empty message"
        record(family, type(exc).__name__)
        return type(exc).__name__, None
    record(family, ACCEPTED)
    return ACCEPTED, result


def summary_lines() -> list[str]:
    """One line per fuzz family: its case count and outcome classes."""
    families: dict[str, Counter[str]] = {}
    for (family, result), count in OUTCOMES.items():
        families.setdefault(family, Counter())[result] += count
    lines = []
    for family in sorted(families):
        counts = families[family]
        parts = ", ".join(f"{name} {n}" for name, n in counts.most_common())
        lines.append(f"{family}: {sum(counts.values())} cases ({parts})")
    total = sum(OUTCOMES.values())
    if lines:
        lines.append(f"total: {total} fuzz cases, none ended in an internal error")
    return lines


def describe(value: Any, limit: int = 200) -> str:
    """A short repr for assertion messages."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
