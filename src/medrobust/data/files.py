"""Data files: where they live, how they are verified and how they are downloaded.

A :class:`DataFile` names one file by its path relative to the data folder (the same layout as the
offline folder: ``medmnist/breastmnist.npz``, ``mitdb/100.dat``), its canonical URL and its
checksum. :func:`fetch` finds a file in this order:

1. ``$MEDROBUST_DATA/<path>``, the offline folder. The file is verified against its checksum; a
   mismatch raises :class:`~medrobust.errors.ChecksumError`. This folder is never written to.
2. ``<cache_dir()>/<path>``. A copy with a wrong checksum is deleted and fetched again.
3. A download from the canonical URL into ``<cache>/<path>.part``. An existing ``.part`` is
   resumed with an HTTP Range request. The download is verified and then renamed atomically
   (``os.replace``) to ``<cache>/<path>``, so a half-written file never carries the final name. A
   ``.part`` left by an interrupted transfer is kept so that the next call resumes it; one that
   fails verification is deleted.

A file that comes inside an archive (the ECG5000 members of ``ECG5000.zip``) is taken from the
offline folder or the cache when it is there. Otherwise the archive is fetched (offline folder,
cache or download, verified like any file) and only its expected members are extracted into the
cache: by base name, never by the path stored in the archive, all or none (each member goes to
a temporary file first, and the files are renamed only once every member has been read and its
CRC checked, so a damaged archive leaves nothing in the cache). A file may also list
``alternatives``, copies of the same data in other formats, any one of which satisfies it.

Files without a known checksum (generic ``medmnist:<subset>`` and ``ucr:<Name>`` tasks outside the
catalogue) are read from the offline folder or the cache **without verification**, and are never
downloaded: an unverified download could silently change what is evaluated. Place such files by
hand.

Verification results are memoised in-process per (path, size, mtime), so repeated loads do not
rehash. A download that fails because a host is unreachable marks that host, and the same
:class:`FetchSession` does not try it again, so that :func:`fetch_all` stays fast offline.

Environment:
    MEDROBUST_DATA: the offline data folder (optional, read-only).
    MEDROBUST_CACHE: the cache folder (default ``~/.cache/medrobust``).
    MEDROBUST_OFFLINE: ``1`` (or ``true``/``yes``/``on``) disables downloads.
    MEDROBUST_DOWNLOAD_TIMEOUT: seconds before a connection or read gives up (default 10).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import os
import re
import tempfile
import threading
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any
from urllib.parse import urlsplit

from medrobust.atomic import write_atomically
from medrobust.data.npzfile import ZIP_READ_ERRORS
from medrobust.errors import (
    ChecksumError,
    CorruptDataError,
    DataNotFoundError,
    MissingFile,
    ParameterError,
)

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10.0
_CHUNK = 1 << 20
_TRUE = {"1", "true", "yes", "on"}
_HEX = re.compile(r"^[0-9a-f]+$")
# Largest archive member medrobust extracts; guards against zip bombs.
_MAX_MEMBER_BYTES = 2 << 30


@dataclass(frozen=True)
class DataFile:
    """One data file: where it goes in the data folder, where it comes from and its checksum.

    Attributes:
        path: path relative to the data folder, with ``/`` separators, e.g.
            ``"medmnist/breastmnist.npz"``.
        url: canonical download URL (for an archive member, the archive's URL).
        sha256: published or established sha256, lowercase hex; preferred when known.
        md5: published md5 (MedMNIST publishes only md5), used when no sha256 is known.
        size: size in bytes, when known.
        archive: the archive this file can be extracted from, if it is not downloaded itself.
        members: for an archive, the base names of the members medrobust extracts from it.
        alternatives: the same data in other files (other formats), any one of which will do.
    """

    path: str
    url: str
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None
    archive: DataFile | None = None
    members: tuple[str, ...] = ()
    alternatives: tuple[DataFile, ...] = field(default=())

    def __post_init__(self) -> None:
        pure = PurePosixPath(self.path)
        if (
            not self.path
            or "\\" in self.path
            or pure.is_absolute()
            or any(part in ("", ".", "..") for part in self.path.split("/"))
        ):
            raise ParameterError(
                "The 'path' of a DataFile must be a relative path inside the data folder. "
                f"Got {self.path!r} instead."
            )
        for name, value, length in (("sha256", self.sha256, 64), ("md5", self.md5, 32)):
            if value is not None and (len(value) != length or not _HEX.match(value)):
                raise ParameterError(
                    f"The {name!r} of DataFile {self.path!r} must be {length} lowercase hex "
                    f"digits. Got {value!r} instead."
                )
        if self.size is not None and self.size < 0:
            raise ParameterError(
                f"The 'size' of DataFile {self.path!r} must be >= 0. Got {self.size} instead."
            )
        if self.archive is not None:
            expected = str(PurePosixPath(self.archive.path).parent / pure.name)
            if self.path != expected or pure.name not in self.archive.members:
                raise ParameterError(
                    f"The archive member {self.path!r} must be listed in the members of "
                    f"{self.archive.path!r} and live beside it. Got members "
                    f"{self.archive.members!r} instead."
                )

    @property
    def name(self) -> str:
        """The file's base name."""
        return PurePosixPath(self.path).name

    @property
    def checksum(self) -> tuple[str, str] | None:
        """``(algorithm, hex digest)``: sha256 when known, else md5, else None."""
        if self.sha256 is not None:
            return ("sha256", self.sha256)
        if self.md5 is not None:
            return ("md5", self.md5)
        return None

    @property
    def verifiable(self) -> bool:
        """Whether a checksum is known (only such files are ever downloaded)."""
        return self.checksum is not None


# -- folders and switches ---------------------------------------------------------------------


def cache_dir() -> Path:
    """The cache folder: ``$MEDROBUST_CACHE``, or ``~/.cache/medrobust``. Created on first write."""
    value = os.environ.get("MEDROBUST_CACHE", "").strip()
    return Path(value).expanduser() if value else Path("~/.cache/medrobust").expanduser()


def offline_dir() -> Path | None:
    """The offline data folder ``$MEDROBUST_DATA``, or None when it is not set."""
    value = os.environ.get("MEDROBUST_DATA", "").strip()
    return Path(value).expanduser() if value else None


def downloads_enabled() -> bool:
    """False when ``$MEDROBUST_OFFLINE`` is set to 1/true/yes/on."""
    return os.environ.get("MEDROBUST_OFFLINE", "").strip().lower() not in _TRUE


def download_timeout() -> float:
    """Seconds before a connection or a read gives up (``$MEDROBUST_DOWNLOAD_TIMEOUT``, 10)."""
    value = os.environ.get("MEDROBUST_DOWNLOAD_TIMEOUT", "").strip()
    if not value:
        return DEFAULT_TIMEOUT_S
    try:
        timeout = float(value)
    except ValueError:
        timeout = -1.0
    if not timeout > 0:
        raise ParameterError(
            "The MEDROBUST_DOWNLOAD_TIMEOUT environment variable must be a number of seconds > 0. "
            f"Got {value!r} instead."
        )
    return timeout


# -- checksums --------------------------------------------------------------------------------

_DIGEST_MEMO: dict[tuple[str, int, int, str], str] = {}
_MEMO_LOCK = threading.Lock()


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, memoised per (path, size, mtime) in this process.

    Args:
        path: the file.
        algorithm: ``"sha256"`` or ``"md5"``.

    Returns:
        The lowercase hex digest.
    """
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, algorithm)
    with _MEMO_LOCK:
        cached = _DIGEST_MEMO.get(key)
    if cached is not None:
        return cached
    digest = _hash_file(path, algorithm)
    with _MEMO_LOCK:
        _DIGEST_MEMO[key] = digest
    return digest


def _hash_file(path: Path, algorithm: str) -> str:
    hasher = hashlib.new(algorithm)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            hasher.update(block)
    return hasher.hexdigest()


def clear_digest_memo() -> None:
    """Forget memoised checksums (for tests that rewrite files in place)."""
    with _MEMO_LOCK:
        _DIGEST_MEMO.clear()


# -- errors -----------------------------------------------------------------------------------


class _Missing(Exception):
    """Internal: a file could not be had; carries the MissingFile for the final error."""

    def __init__(self, file: DataFile, reason: str) -> None:
        offline = offline_dir()
        if offline is not None and not offline.is_dir():
            reason += f"; note that MEDROBUST_DATA={offline} is not a folder"
        super().__init__(reason)
        self.missing = MissingFile(relative_path=_display_path(file), url=file.url, reason=reason)


def _display_path(file: DataFile) -> str:
    if not file.alternatives:
        return file.path
    others = ", ".join(alt.name for alt in file.alternatives)
    return f"{file.path} (or {others})"


def _not_found(missing: Sequence[MissingFile]) -> DataNotFoundError:
    offline = offline_dir()
    return DataNotFoundError(missing, str(offline) if offline else None, str(cache_dir()))


def _where_to_put(file: DataFile) -> str:
    offline = offline_dir()
    places = [str(cache_dir() / file.path)]
    if offline is not None:
        places.insert(0, str(offline / file.path))
    return " or ".join(places)


def _checksum_error(
    file: DataFile, where: str, algorithm: str, expected: str, actual: str, note: str
) -> ChecksumError:
    return ChecksumError(
        f"The data file {file.path!r} {where} has {algorithm} {actual}, but the canonical "
        f"file has {algorithm} {expected}. {note} Download a good copy from {file.url} and put "
        f"it at {_where_to_put(file)}."
    )


# -- fetching ---------------------------------------------------------------------------------


@dataclass
class FetchSession:
    """State shared by the fetches of one call: the hosts found unreachable so far.

    Attributes:
        unreachable: host names that failed to connect; they are not tried again.
        timeout: seconds before a connection or read gives up.
        allow_download: whether downloads may be attempted at all.
    """

    unreachable: set[str] = field(default_factory=set)
    timeout: float = field(default_factory=download_timeout)
    allow_download: bool = field(default_factory=downloads_enabled)


def fetch(file: DataFile, session: FetchSession | None = None) -> Path:
    """Return a local, verified path of ``file``, downloading it into the cache if needed.

    Args:
        file: the file to find.
        session: shared state of a multi-file call (a new one when None).

    Returns:
        The path of the file (or of one of its ``alternatives``).

    Raises:
        DataNotFoundError: the file is neither offline nor in the cache and cannot be downloaded.
        ChecksumError: the file offline, or a fresh download, does not match its checksum.
    """
    try:
        return _locate(file, session or FetchSession())
    except _Missing as missing:
        raise _not_found([missing.missing]) from None


def fetch_all(files: Iterable[DataFile], session: FetchSession | None = None) -> dict[str, Path]:
    """Fetch every file, then report every missing one in one error.

    Args:
        files: the files; duplicates (by path) are fetched once.
        session: shared state (a new one when None).

    Returns:
        ``{file.path: local path}``.

    Raises:
        DataNotFoundError: listing every file that could not be had.
        ChecksumError: listing every file whose checksum is wrong (raised first).
    """
    session = session or FetchSession()
    found: dict[str, Path] = {}
    missing: list[MissingFile] = []
    bad: list[str] = []
    for file in files:
        if file.path in found:
            continue
        try:
            found[file.path] = _locate(file, session)
        except _Missing as err:
            missing.append(err.missing)
        except ChecksumError as err:
            bad.append(str(err))
    if bad:
        raise ChecksumError("\n".join(bad))
    if missing:
        raise _not_found(missing)
    return found


def find_local(file: DataFile) -> Path | None:
    """Return ``file`` from the offline folder or the cache, or None; never downloads.

    An archive that holds the file is extracted if the archive itself is present locally.

    Raises:
        ChecksumError: a copy in the offline folder has a wrong checksum.
    """
    try:
        return _locate(file, FetchSession(allow_download=False))
    except _Missing:
        return None


def _locate(file: DataFile, session: FetchSession) -> Path:
    candidates = (file, *file.alternatives)
    offline = offline_dir()
    if offline is not None:
        for candidate in candidates:
            path = offline / candidate.path
            if path.is_file():
                _verify_offline(candidate, path)
                return path
    cache = cache_dir()
    for candidate in candidates:
        path = cache / candidate.path
        if path.is_file() and _verify_cached(candidate, path):
            return path
    if file.archive is not None:
        archive = file.archive
        try:
            archive_path = _locate(archive, session)
        except _Missing as err:
            raise _Missing(
                file, f"it comes inside {archive.path}, which could not be had: {err}"
            ) from None
        _extract(archive, archive_path)
        for candidate in candidates:
            path = cache / candidate.path
            if path.is_file() and _verify_cached(candidate, path):
                return path
        raise _Missing(file, f"{archive.path} holds no member {file.name}")
    return _download(file, session)


def _verify_offline(file: DataFile, path: Path) -> None:
    checksum = file.checksum
    if checksum is None:
        return
    algorithm, expected = checksum
    actual = file_digest(path, algorithm)
    if actual != expected:
        raise _checksum_error(
            file,
            f"at {path}",
            algorithm,
            expected,
            actual,
            "The offline folder is never modified by medrobust; replace the file there.",
        )


def _verify_cached(file: DataFile, path: Path) -> bool:
    """True if the cached copy verifies (or has no checksum); a wrong copy is deleted."""
    expected: tuple[str, str] | None = None
    if file.archive is not None:
        digest = _read_manifest(cache_dir() / file.archive.path)[1].get(file.name)
        if digest is not None:
            expected = ("sha256", digest)
    if expected is None:
        expected = file.checksum
    if expected is None:
        return True
    algorithm, value = expected
    actual = file_digest(path, algorithm)
    if actual == value:
        return True
    logger.warning(
        "Deleting %s from the cache: its %s is %s, expected %s.", path, algorithm, actual, value
    )
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return False


# -- downloading ------------------------------------------------------------------------------


class _Unreachable(Exception):
    """Internal: the host could not be reached (refused, unknown, timed out)."""


class _DownloadFailed(Exception):
    """Internal: the host answered, but the transfer failed."""


def _open_url(request: urllib.request.Request, timeout: float) -> Any:
    """Open ``request``; a seam for tests."""
    return urllib.request.urlopen(request, timeout=timeout)


def _download(file: DataFile, session: FetchSession) -> Path:
    checksum = file.checksum
    if checksum is None:
        raise _Missing(
            file,
            "no checksum is known for it, so medrobust never downloads it; download it from "
            "the URL and put it in place by hand",
        )
    if not session.allow_download:
        raise _Missing(file, "downloads are disabled (MEDROBUST_OFFLINE is set)")
    host = urlsplit(file.url).netloc
    if host in session.unreachable:
        raise _Missing(file, f"{host} could not be reached earlier in this call")
    algorithm, expected = checksum
    dest = cache_dir() / file.path
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _dir_lock(dest.parent):
        if dest.is_file() and _verify_cached(file, dest):
            return dest
        for _attempt in range(2):
            try:
                resumed = _http_get(file.url, part, session.timeout)
            except _Unreachable as err:
                session.unreachable.add(host)
                raise _Missing(file, f"could not reach {host}: {err}") from None
            except _DownloadFailed as err:
                raise _Missing(file, f"the download failed: {err}") from None
            actual = _hash_file(part, algorithm)
            if actual == expected:
                os.replace(part, dest)
                logger.info("Downloaded %s to %s.", file.url, dest)
                return dest
            part.unlink()
            if not resumed:
                raise _checksum_error(
                    file,
                    f"downloaded from {file.url}",
                    algorithm,
                    expected,
                    actual,
                    "The download was deleted.",
                )
            logger.warning("A resumed download of %s was wrong; starting over.", file.url)
    raise AssertionError("unreachable")  # pragma: no cover


def _http_get(url: str, part: Path, timeout: float) -> bool:
    """Download ``url`` into ``part``, resuming it if it exists. Returns whether it resumed."""
    start = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "medrobust"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    try:
        response = _open_url(request, timeout)
    except urllib.error.HTTPError as err:
        err.close()
        if err.code == 416 and start:
            return True  # the .part is complete already; verification decides
        raise _DownloadFailed(f"HTTP {err.code} {err.reason} from {url}") from None
    except urllib.error.URLError as err:
        raise _Unreachable(str(err.reason)) from None
    except (TimeoutError, ConnectionError) as err:
        raise _Unreachable(str(err) or type(err).__name__) from None
    except (OSError, http.client.HTTPException) as err:
        raise _DownloadFailed(str(err) or type(err).__name__) from None
    with response:
        status = getattr(response, "status", 200)
        resumed = bool(start) and status == 206
        if resumed and not str(response.headers.get("Content-Range", "")).startswith(
            f"bytes {start}-"
        ):
            resumed = False
            part.unlink()
            raise _DownloadFailed(f"{url} answered a Range request with a wrong Content-Range")
        length = response.headers.get("Content-Length")
        received = 0
        try:
            with part.open("ab" if resumed else "wb") as handle:
                for block in iter(lambda: response.read(_CHUNK), b""):
                    handle.write(block)
                    received += len(block)
        except TimeoutError as err:
            raise _Unreachable(f"timed out while reading {url}") from err
        except (OSError, http.client.HTTPException) as err:
            raise _DownloadFailed(
                f"interrupted after {received} bytes ({type(err).__name__}); the partial file "
                f"{part} is kept and will be resumed"
            ) from None
        if length is not None and length.isdigit() and received < int(length):
            raise _DownloadFailed(
                f"interrupted after {received} of {length} bytes; the partial file {part} is "
                "kept and will be resumed"
            )
    return resumed


@contextlib.contextmanager
def _dir_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``directory`` (POSIX; a no-op elsewhere)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# -- archives ---------------------------------------------------------------------------------


def _manifest_path(archive_in_cache: Path) -> Path:
    return archive_in_cache.with_name(archive_in_cache.name + ".members.json")


def _read_manifest(archive_in_cache: Path) -> tuple[str, dict[str, str]]:
    """``(archive sha256, {member: sha256})`` of the last extraction, or ``("", {})``."""
    path = _manifest_path(archive_in_cache)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        archive = str(data["archive_sha256"])
        members = {str(k): str(v) for k, v in dict(data["members"]).items()}
    except (OSError, ValueError, KeyError, TypeError):
        return "", {}
    return archive, members


def _extract(archive: DataFile, archive_path: Path) -> None:
    """Extract the expected members of a verified zip archive into the cache, all or none."""
    target_dir = cache_dir() / PurePosixPath(archive.path).parent
    target_dir.mkdir(parents=True, exist_ok=True)
    wanted = set(archive.members)
    archive_sha256 = file_digest(archive_path, "sha256")
    previous, members = _read_manifest(cache_dir() / archive.path)
    if previous == archive_sha256 and all((target_dir / m).is_file() for m in members):
        return
    staged: dict[str, tuple[Path, str]] = {}  # member -> (temporary file, sha256)
    try:
        with zipfile.ZipFile(archive_path) as zf:
            for info in zf.infolist():
                name = PurePosixPath(info.filename.replace("\\", "/")).name
                if info.is_dir() or name not in wanted or name in staged:
                    continue
                if info.file_size > _MAX_MEMBER_BYTES:
                    raise CorruptDataError(
                        f"The member {info.filename!r} of {archive_path} claims "
                        f"{info.file_size} bytes, more than medrobust extracts."
                    )
                with zf.open(info) as source:
                    staged[name] = _stage(source, target_dir / name)
        for name, (temporary, _) in staged.items():
            os.replace(temporary, target_dir / name)
    except ZIP_READ_ERRORS as err:
        raise CorruptDataError(
            f"The archive {archive_path} ({archive.path}) could not be read "
            f"({type(err).__name__}: {err}). Delete it and download a good copy from "
            f"{archive.url}."
        ) from None
    finally:
        for temporary, _ in staged.values():
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
    record = {"archive_sha256": archive_sha256, "members": {n: s for n, (_, s) in staged.items()}}
    text = json.dumps(record, indent=1, sort_keys=True).encode("utf-8")
    write_atomically(_manifest_path(cache_dir() / archive.path), lambda handle: handle.write(text))


def _stage(source: IO[bytes], dest: Path) -> tuple[Path, str]:
    """Copy ``source`` to a temporary file beside ``dest``; return it and its sha256.

    The temporary file is removed if the copy fails (a damaged member fails its CRC at the end).
    """
    hasher = hashlib.sha256()
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    temporary = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            for block in iter(lambda: source.read(_CHUNK), b""):
                hasher.update(block)
                handle.write(block)
        os.chmod(temporary, 0o644)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
    return temporary, hasher.hexdigest()


def describe(file: DataFile, path: Path) -> dict[str, str]:
    """Provenance of a located file for ``Task.metadata``: its checksum as verified (or not).

    Args:
        file: the catalogue entry.
        path: where it was found.

    Returns:
        ``{"path": ..., "sha256": ...}`` (sha256 computed if the catalogue has none).
    """
    return {"path": _relative_to_roots(file, path), "sha256": file_digest(path, "sha256")}


def _relative_to_roots(file: DataFile, path: Path) -> str:
    for root in (offline_dir(), cache_dir()):
        if root is None:
            continue
        with contextlib.suppress(ValueError):
            return path.resolve().relative_to(root.resolve()).as_posix()
    return file.path
