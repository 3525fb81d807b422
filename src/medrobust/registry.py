"""Name -> factory registries; an unknown name fails with close-match suggestions."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from medrobust.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from names to objects (usually factories) of one kind.

    Args:
        kind: what the entries are, used in error messages ("attack", "task", ...).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name``."""

        def decorate(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorate

    def add(self, name: str, obj: T) -> None:
        """Register ``obj`` under ``name``; a name can be registered once."""
        key = name.lower()
        if key in self._entries:
            raise ValueError(f"The {self.kind} {name!r} is already registered.")
        self._entries[key] = obj

    def get(self, name: str) -> T:
        """Return the entry called ``name`` (case-insensitive)."""
        key = str(name).lower()
        if key in self._entries:
            return self._entries[key]
        close = difflib.get_close_matches(key, list(self._entries), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownNameError(
            f"Unknown {self.kind} {name!r}.{hint} Known: {', '.join(sorted(self._entries))}."
        )

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)
