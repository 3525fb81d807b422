"""Reading ``.npz`` files that may be damaged or hostile, with one typed error for every failure.

``numpy.load`` is not enough for a file a user places by hand:

- a member that does not start with the ``.npy`` magic comes back as ``bytes``, not an array;
- a damaged member raises ``zipfile.BadZipFile``, ``zlib.error`` or ``EOFError`` only when it is
  read, and a damaged archive leaks its file handle;
- a header may declare an absurd shape, and numpy tries to allocate terabytes before it finds
  that the data are missing;
- a bare ``.npy`` renamed ``.npz`` loads as an array, not as an archive.

:class:`NpzArchive` reads the zip itself. Each member's ``.npy`` header is checked before
anything is allocated: object dtypes are refused (so nothing is ever unpickled) and the declared
size must be exactly what the member holds. Every failure becomes the error the caller builds
from a reason (a :class:`~medrobust.errors.CorruptDataError` naming the file).
"""

from __future__ import annotations

import lzma
import math
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO

import numpy as np

_CHUNK = 1 << 20
# What zipfile and numpy's header parser raise on damaged input: a bad archive or CRC, a damaged
# deflate/lzma/bz2 stream (bz2 raises OSError), truncation, an unsupported compression method,
# an encrypted member (RuntimeError), a malformed header (ValueError, struct.error).
ZIP_READ_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    OSError,
    ValueError,
    OverflowError,
    struct.error,
    NotImplementedError,
    RuntimeError,
)


def _describe(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


class NpzArchive:
    """An open ``.npz`` archive; use it as a context manager.

    Args:
        path: the file.
        corrupt: builds the error to raise from a reason such as ``"it is not a zip archive"``.

    Raises:
        The error ``corrupt`` builds, when the file cannot be opened as a zip archive or two
        members have the same name.
    """

    def __init__(self, path: Path, corrupt: Callable[[str], Exception]) -> None:
        self._corrupt = corrupt
        self._members: dict[str, zipfile.ZipInfo] = {}
        self._handle: IO[bytes] | None = None
        try:
            self._handle = path.open("rb")
            self._zip = zipfile.ZipFile(self._handle)
            infos = self._zip.infolist()
        except ZIP_READ_ERRORS as err:
            self.close()
            raise corrupt(
                f"it is not a readable .npz, a zip archive of .npy arrays ({_describe(err)})"
            ) from None
        for info in infos:
            key = info.filename.removesuffix(".npy")
            if key in self._members:
                self.close()
                raise corrupt(f"it holds two arrays named {key!r}")
            self._members[key] = info

    def __enter__(self) -> NpzArchive:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the file."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    @property
    def keys(self) -> frozenset[str]:
        """The array names (member names without ``.npy``)."""
        return frozenset(self._members)

    def header(self, key: str) -> tuple[tuple[int, ...], np.dtype[np.generic]]:
        """The shape and dtype ``key`` declares, read without reading its data.

        Raises:
            The caller's error: the member is damaged, not an ``.npy``, holds Python objects, or
            declares more or fewer bytes than it holds.
        """
        with self._open(key) as member:
            shape, _, dtype, _ = self._read_header(key, member)
        return shape, dtype

    def read(self, key: str) -> np.ndarray:
        """The array ``key``, checked against its header before anything is allocated.

        Raises:
            The caller's error: as for :meth:`header`, or the data are damaged (bad CRC) or too
            large for this machine's memory.
        """
        with self._open(key) as member:
            shape, fortran, dtype, nbytes = self._read_header(key, member)
            count = math.prod(shape)
            try:
                flat = np.empty(count, dtype=dtype)
            except (MemoryError, ValueError) as err:
                raise self._corrupt(
                    f"the array {key!r} of shape {shape} ({nbytes} bytes) cannot be allocated "
                    f"({_describe(err)})"
                ) from None
            try:
                if nbytes:
                    target = flat.view(np.uint8)
                    for start in range(0, nbytes, _CHUNK):
                        block = target[start : start + _CHUNK]
                        data = member.read(len(block))
                        if len(data) != len(block):
                            raise EOFError(f"the data of {key!r} end early")
                        block[:] = np.frombuffer(data, dtype=np.uint8)
                member.read()  # reaching the end makes zipfile check the CRC
            except ZIP_READ_ERRORS as err:
                raise self._corrupt(f"the array {key!r} is damaged ({_describe(err)})") from None
        return flat.reshape(shape, order="F" if fortran else "C")

    def _open(self, key: str) -> IO[bytes]:
        info = self._members.get(key)
        if info is None:
            raise self._corrupt(f"it has no array {key!r}")
        try:
            return self._zip.open(info)
        except ZIP_READ_ERRORS as err:
            raise self._corrupt(f"the array {key!r} cannot be read ({_describe(err)})") from None

    def _read_header(
        self, key: str, member: IO[bytes]
    ) -> tuple[tuple[int, ...], bool, np.dtype[np.generic], int]:
        try:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
            else:
                raise ValueError(f".npy format version {version} is not supported")
            offset = member.tell()
        except ZIP_READ_ERRORS as err:
            raise self._corrupt(
                f"the member {key!r} is not a readable .npy array ({_describe(err)})"
            ) from None
        if dtype.hasobject:
            raise self._corrupt(
                f"the array {key!r} holds Python objects (dtype {dtype}), which medrobust never "
                "unpickles"
            )
        nbytes = math.prod(shape) * dtype.itemsize
        held = self._members[key].file_size - offset
        if nbytes != held:
            raise self._corrupt(
                f"the array {key!r} declares shape {shape} of {dtype} ({nbytes} bytes) but holds "
                f"{held} bytes (truncated or damaged)"
            )
        return tuple(int(n) for n in shape), bool(fortran), dtype, nbytes


__all__ = ["ZIP_READ_ERRORS", "NpzArchive"]
