"""Downloads against a local HTTP server: verification, resume, failures, archives."""

from __future__ import annotations

import hashlib
import io
import socket
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from medrobust.data import files as files_mod
from medrobust.data.files import DataFile, FetchSession, fetch, fetch_all
from medrobust.errors import ChecksumError, DataNotFoundError

if TYPE_CHECKING:
    from conftest import LocalServer

BODY = bytes(range(256)) * 400  # 102,400 bytes


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cache_files(cache: Path) -> list[str]:
    """Every file in the cache, relative, sorted."""
    if not cache.exists():
        return []
    return sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file())


def served(server: LocalServer, path: str = "/blob.bin", body: bytes = BODY) -> DataFile:
    server.files[path] = body
    return DataFile(path="remote/blob.bin", url=server.url(path), sha256=sha(body), size=len(body))


def test_download_verifies_and_lands_atomically(http_server: LocalServer, isolated_env: Path):
    file = served(http_server)
    path = fetch(file)
    assert path == isolated_env / "remote" / "blob.bin"
    assert path.read_bytes() == BODY
    assert cache_files(isolated_env) == ["remote/blob.bin"]
    # A second fetch uses the verified cache copy and does not ask the server again.
    assert fetch(file) == path
    assert len(http_server.requests) == 1


def test_download_resumes_a_partial_file(http_server: LocalServer, isolated_env: Path):
    file = served(http_server)
    part = isolated_env / "remote" / "blob.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(BODY[:30_000])
    path = fetch(file)
    assert path.read_bytes() == BODY
    assert http_server.requests == [("/blob.bin", "bytes=30000-")]
    assert cache_files(isolated_env) == ["remote/blob.bin"]


def test_complete_partial_file_is_finished(http_server: LocalServer, isolated_env: Path):
    file = served(http_server)
    part = isolated_env / "remote" / "blob.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(BODY)
    assert fetch(file).read_bytes() == BODY  # the server answers 416 to the Range request
    assert cache_files(isolated_env) == ["remote/blob.bin"]


def test_resume_when_the_server_ignores_range(http_server: LocalServer, isolated_env: Path):
    http_server.honour_range = False
    file = served(http_server)
    part = isolated_env / "remote" / "blob.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(BODY[:30_000])
    assert fetch(file).read_bytes() == BODY


def test_stale_partial_file_is_restarted(http_server: LocalServer, isolated_env: Path):
    file = served(http_server)
    part = isolated_env / "remote" / "blob.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"garbage" * 100)
    assert fetch(file).read_bytes() == BODY
    assert [r[1] for r in http_server.requests] == ["bytes=700-", None]


def test_checksum_mismatch_leaves_no_file(http_server: LocalServer, isolated_env: Path):
    http_server.files["/blob.bin"] = BODY
    file = DataFile(path="remote/blob.bin", url=http_server.url("/blob.bin"), sha256=sha(b"other"))
    with pytest.raises(ChecksumError) as info:
        fetch(file)
    message = str(info.value)
    assert "remote/blob.bin" in message
    assert sha(b"other") in message and sha(BODY) in message
    assert file.url in message
    assert str(isolated_env / "remote" / "blob.bin") in message
    assert cache_files(isolated_env) == []


def test_interrupted_download_keeps_only_the_part_then_resumes(
    http_server: LocalServer, isolated_env: Path
):
    file = served(http_server)
    http_server.cut_after = 40_000
    with pytest.raises(DataNotFoundError, match="interrupted") as info:
        fetch(file)
    assert "remote/blob.bin" in str(info.value)
    assert cache_files(isolated_env) == ["remote/blob.bin.part"]
    http_server.cut_after = None
    assert fetch(file).read_bytes() == BODY
    assert http_server.requests[-1] == ("/blob.bin", "bytes=40000-")
    assert cache_files(isolated_env) == ["remote/blob.bin"]


def test_wrong_cached_copy_is_replaced(http_server: LocalServer, isolated_env: Path):
    file = served(http_server)
    target = isolated_env / "remote" / "blob.bin"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"corrupt")
    assert fetch(file).read_bytes() == BODY


def test_http_error_is_reported(http_server: LocalServer):
    file = DataFile(path="remote/nothere.bin", url=http_server.url("/nothere"), sha256=sha(b"x"))
    with pytest.raises(DataNotFoundError, match="HTTP 404"):
        fetch(file)


def test_unreachable_host_is_tried_once(monkeypatch: pytest.MonkeyPatch, isolated_env: Path):
    monkeypatch.delenv("MEDROBUST_OFFLINE", raising=False)
    with socket.socket() as sock:  # a port that nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    calls: list[str] = []
    real_open = files_mod._open_url

    def counting_open(request: Any, timeout: float) -> Any:
        calls.append(request.full_url)
        return real_open(request, timeout)

    monkeypatch.setattr(files_mod, "_open_url", counting_open)
    wanted = [
        DataFile(path=f"remote/{i}.bin", url=f"http://127.0.0.1:{port}/{i}", sha256=sha(b"x"))
        for i in range(3)
    ]
    session = FetchSession(timeout=2.0)
    with pytest.raises(DataNotFoundError) as info:
        fetch_all(wanted, session)
    assert len(info.value.missing) == 3
    assert len(calls) == 1
    assert f"127.0.0.1:{port}" in session.unreachable
    assert "earlier in this call" in str(info.value)
    assert cache_files(isolated_env) == []


def test_offline_mode_makes_no_request(http_server: LocalServer, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MEDROBUST_OFFLINE", "1")
    file = served(http_server)
    with pytest.raises(DataNotFoundError, match="MEDROBUST_OFFLINE"):
        fetch(file)
    assert http_server.requests == []


def test_files_without_checksum_are_never_downloaded(http_server: LocalServer):
    http_server.files["/free.bin"] = BODY
    file = DataFile(path="remote/free.bin", url=http_server.url("/free.bin"))
    with pytest.raises(DataNotFoundError, match="by hand") as info:
        fetch(file)
    assert file.url in str(info.value)
    assert http_server.requests == []


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def test_archive_members_are_extracted_safely(http_server: LocalServer, isolated_env: Path):
    payload = _zip(
        {
            "Foo/Foo_TRAIN.txt": b"1 0.5 0.25\n2 0.1 0.2\n",
            "../../Foo_TEST.txt": b"1 0.3 0.4\n",
            "../evil.txt": b"should never be written",
            "Foo/notes.md": b"not a member",
        }
    )
    http_server.files["/Foo.zip"] = payload
    archive = DataFile(
        path="foo/Foo.zip",
        url=http_server.url("/Foo.zip"),
        sha256=sha(payload),
        members=("Foo_TRAIN.txt", "Foo_TEST.txt"),
    )
    train = DataFile(path="foo/Foo_TRAIN.txt", url=archive.url, archive=archive)
    test = DataFile(path="foo/Foo_TEST.txt", url=archive.url, archive=archive)
    assert fetch(train).read_bytes() == b"1 0.5 0.25\n2 0.1 0.2\n"
    assert fetch(test).read_bytes() == b"1 0.3 0.4\n"
    assert cache_files(isolated_env) == [
        "foo/Foo.zip",
        "foo/Foo.zip.members.json",
        "foo/Foo_TEST.txt",
        "foo/Foo_TRAIN.txt",
    ]
    assert not (isolated_env.parent / "evil.txt").exists()
    assert len(http_server.requests) == 1
    # A tampered member is caught by the extraction manifest, deleted and extracted again.
    (isolated_env / "foo" / "Foo_TRAIN.txt").write_bytes(b"tampered")
    assert fetch(train).read_bytes() == b"1 0.5 0.25\n2 0.1 0.2\n"


def test_archive_missing_member(http_server: LocalServer):
    payload = _zip({"Foo_TRAIN.txt": b"1 2 3\n"})
    http_server.files["/Foo.zip"] = payload
    archive = DataFile(
        path="foo/Foo.zip",
        url=http_server.url("/Foo.zip"),
        sha256=sha(payload),
        members=("Foo_TRAIN.txt", "Foo_TEST.txt"),
    )
    test = DataFile(path="foo/Foo_TEST.txt", url=archive.url, archive=archive)
    with pytest.raises(DataNotFoundError, match=r"holds no member Foo_TEST\.txt"):
        fetch(test)
