"""Atomic file writes: a temporary file in the same folder, renamed over the final name, so that a
crash never leaves a half-written file under the final name.

A temporary file is named ``.<final name>.<pid>.<random>.tmp`` after the process that writes it,
so that :func:`remove_stale_temporaries` can delete those of processes that were killed mid-write
and leave those of running ones alone.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from medrobust.errors import ConfigError


def output_folder(path: str | Path, *, create: bool = True) -> Path:
    """``path`` as a folder to write results into: refused (before anything is written) if it
    names an existing file, or is empty or holds a NUL byte; created if absent and ``create``."""
    text = str(path)
    if not text.strip() or "\x00" in text:
        raise ConfigError(f"The output folder {text!r} is no valid path.")
    folder = Path(text)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(
            f"The output folder {text!r} is an existing file; give a folder (it is created if "
            "absent)."
        )
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_atomically(dest: Path, writer: Callable[[IO[bytes]], object]) -> None:
    """Create ``dest`` atomically: ``writer(handle)`` fills a temporary file that is renamed.

    Args:
        dest: the final path; its folder is created.
        writer: fills the binary file handle it is given.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{dest.name}.{os.getpid()}.", suffix=".tmp", dir=dest.parent
    )
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


_TEMPORARY = re.compile(r"^\..+\.(?P<pid>[0-9]+)\.[a-z0-9_]+\.tmp$")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files that :func:`write_atomically` left in ``folder`` and below
    when its process was killed mid-write (those of running processes stay); returns them."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for path in folder.rglob(".*.tmp"):
        match = _TEMPORARY.match(path.name)
        if match and path.is_file() and not _running(int(match["pid"])):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed
