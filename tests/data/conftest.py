"""Fixtures of the data tests: an isolated cache, a local server.

``real_data`` (the offline data folder) comes from ``tests/conftest.py``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Every test gets its own cache, no offline folder and no downloads unless it sets them."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("MEDROBUST_CACHE", str(cache))
    monkeypatch.setenv("MEDROBUST_OFFLINE", "1")
    monkeypatch.delenv("MEDROBUST_DATA", raising=False)
    monkeypatch.delenv("MEDROBUST_DOWNLOAD_TIMEOUT", raising=False)
    return cache


@pytest.fixture
def offline(real_data: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """MEDROBUST_DATA points at the real offline folder for this test."""
    monkeypatch.setenv("MEDROBUST_DATA", str(real_data))
    return real_data


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.files``; honours ``Range: bytes=N-``; can cut transfers short."""

    server: LocalServer

    def do_GET(self) -> None:
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        body = server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        range_header = self.headers.get("Range")
        if range_header and server.honour_range:
            start = int(range_header.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if server.cut_after is not None:
            self.wfile.write(payload[: server.cut_after])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output quiet."""


class LocalServer(ThreadingHTTPServer):
    """A local HTTP server for download tests."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.honour_range = True
        self.cut_after: int | None = None

    def url(self, path: str) -> str:
        """The URL of ``path`` on this server."""
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


@pytest.fixture
def http_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalServer]:
    """A running local server; downloads are enabled for the test."""
    monkeypatch.delenv("MEDROBUST_OFFLINE", raising=False)
    server = LocalServer()
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
