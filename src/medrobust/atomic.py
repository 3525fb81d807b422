"""Atomic file writes: a temporary file in the same folder, renamed over the final name, so that a
crash never leaves a half-written file under the final name."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def write_atomically(dest: Path, writer: Callable[[IO[bytes]], object]) -> None:
    """Create ``dest`` atomically: ``writer(handle)`` fills a temporary file that is renamed.

    Args:
        dest: the final path; its folder is created.
        writer: fills the binary file handle it is given.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            writer(handle)
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def write_text_atomically(dest: Path, text: str) -> None:
    """Create the UTF-8 text file ``dest`` atomically."""
    write_atomically(dest, lambda handle: handle.write(text.encode("utf-8")))


def write_bytes_atomically(dest: Path, data: bytes) -> None:
    """Create the binary file ``dest`` atomically."""
    write_atomically(dest, lambda handle: handle.write(data))
