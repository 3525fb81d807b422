"""Crash safety: a study killed with SIGKILL at random points resumes to exactly the rows of an
uninterrupted run; a damaged, foreign or busy store is refused with a clear error and left as it
was; temporary files of killed writes are cleaned up."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from medrobust.atomic import remove_stale_temporaries, write_text_atomically
from medrobust.cli import main
from medrobust.errors import StoreError
from medrobust.study import ResultStore, parse_spec, plan_cells, run_study
from tests import fuzz
from tests.study.conftest import small_config

KILL_SEEDS = (101, 202, 303, 404, 505)


def _cells_in(store: Path) -> int:
    if not store.exists():
        return 0
    try:
        with sqlite3.connect(store, timeout=0.1) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM cells").fetchone()[0])
    except sqlite3.OperationalError:  # not created yet, or being written
        return 0


@pytest.mark.parametrize("seed", KILL_SEEDS)
def test_a_study_killed_at_a_random_point_resumes_to_the_rows_of_an_uninterrupted_run(
    seed: int, data_env: Path, tmp_path: Path, reference_rows: tuple[list[Any], list[Any]]
) -> None:
    rng = random.Random(seed)
    total = len(plan_cells(parse_spec(small_config())))
    # Kill once `after` cells are stored, plus a random delay: mid-training, mid-attack, between
    # a cell's rows, while a checkpoint or the report is being written. after = 0 kills during
    # start-up, data loading or the first training.
    after = rng.randrange(0, total)
    delay = rng.uniform(0.3, 2.5) if after == 0 else rng.uniform(0.0, 0.5)
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump(small_config()))
    out = tmp_path / "out"
    store = out / "results.sqlite"
    command = [sys.executable, "-m", "medrobust.cli", "study", str(config), "--output", str(out)]
    process = subprocess.Popen(  # one thread, as in this process: identical float reductions
        [*command, "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None and _cells_in(store) < after:
        time.sleep(0.02)
    time.sleep(delay)
    finished_before_kill = process.poll() is not None
    process.send_signal(signal.SIGKILL)
    process.wait()
    stored = _cells_in(store)
    if store.exists():  # the store a kill left behind is whole, with whole cells only
        with sqlite3.connect(store) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            partial = conn.execute(
                "SELECT COUNT(*) FROM cells c WHERE NOT EXISTS "
                "(SELECT 1 FROM timings t WHERE t.cell_id = c.cell_id)"
            ).fetchone()[0]
        assert partial == 0
    assert main(["study", str(config), "--output", str(out), "--quiet"]) == 0
    with ResultStore(store) as results:
        assert results.result_rows() == reference_rows
    for checkpoint in (out / "checkpoints").glob("*.pt"):  # whole files under final names
        torch.load(checkpoint, weights_only=True)
    leftovers = [p.name for p in out.rglob("*.tmp")]
    assert not leftovers, f"temporary files were left behind: {leftovers}"
    fuzz.note(
        "kill and resume",
        f"seed {seed}: SIGKILL after {stored} of {total} cells stored (+{delay:.2f} s"
        + (", run had already finished" if finished_before_kill else "")
        + "); resumed: rows identical to an uninterrupted run",
    )


@dataclass(frozen=True)
class StoreBytes:
    """A finished store's bytes and rows (with a short repr for hypothesis' reports)."""

    data: bytes
    rows: Any

    def __repr__(self) -> str:
        return f"StoreBytes({len(self.data)} bytes)"


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> StoreBytes:
    """The bytes of a finished one-trial tabular study's store, and its rows."""
    folder = tmp_path_factory.mktemp("store")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MEDROBUST_CACHE", str(folder / "cache"))
        env.setenv("MEDROBUST_OFFLINE", "1")
        raw = small_config(trials=1)
        raw["tasks"] = raw["tasks"][:1]
        path = run_study(parse_spec(raw), output=folder / "out")
    with ResultStore(path) as store:
        rows = store.result_rows()
    return StoreBytes(path.read_bytes(), rows)


def _damage(data: bytes, kind: str, at: float, length: int, seed: int) -> bytes:
    page = int.from_bytes(data[16:18], "big") or 65536
    pages = max(1, len(data) // page)
    if kind == "truncate":  # to 1 byte at least: an empty file is a new, empty store
        return data[: max(1, int(at * len(data)))]
    noise = random.Random(seed).randbytes(length)
    # "header": the file header and the schema page's b-tree header; "page": a page's header
    start = int(at * 120) if kind == "header" else page * int(at * pages)
    return data[:start] + noise + data[start + length :]


@settings(max_examples=120)
@given(
    kind=st.sampled_from(["truncate", "header", "page"]),
    at=st.floats(0.0, 0.999),
    length=st.integers(1, 64),
    seed=st.integers(0, 2**16),
)
def test_a_damaged_store_is_refused_clearly_and_left_as_it_was(
    small_store: StoreBytes, kind: str, at: float, length: int, seed: int
) -> None:
    damaged = _damage(small_store.data, kind, at, length, seed)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "results.sqlite"
        path.write_bytes(damaged)

        def open_and_read() -> Any:
            with ResultStore(path) as store:
                store.cells()
                return store.result_rows()

        result, read = fuzz.outcome("damaged results stores", open_and_read)
        if result == fuzz.ACCEPTED:  # damage that a store survives (unused header bytes)
            assert read == small_store.rows
        else:
            assert result == "StoreError"
            assert path.read_bytes() == damaged  # refused, never overwritten


def test_foreign_busy_and_folder_stores_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "a-folder.sqlite"
    folder.mkdir()
    with pytest.raises(StoreError, match="is a folder"):
        ResultStore(folder)
    store = tmp_path / "results.sqlite"
    with ResultStore(store, {"name": "x"}):
        pass
    blocker = sqlite3.connect(store, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another study holds the write lock
    try:
        with ResultStore(store) as busy:
            busy._conn.execute("PRAGMA busy_timeout = 100")
            with pytest.raises(StoreError, match="another study writing"):
                busy.record_run({"started": "now"})
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


def test_temporaries_of_killed_writers_are_removed_and_those_of_running_ones_kept(
    tmp_path: Path,
) -> None:
    code = (
        "import os, sys, tempfile; "
        "tempfile.mkstemp(prefix=f'.model.pt.{os.getpid()}.', suffix='.tmp', dir=sys.argv[1])"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)  # a writer that died
    (dead,) = tmp_path.glob(".model.pt.*.tmp")
    mine = tmp_path / f".report.md.{os.getpid()}.abcd1234.tmp"  # this process: still writing
    mine.write_text("half")
    precious = tmp_path / ".notes.tmp"  # not ours: no writer's pid in the name
    precious.write_text("keep")
    assert remove_stale_temporaries(tmp_path) == [dead]
    assert mine.exists() and precious.exists()
    write_text_atomically(tmp_path / "report.md", "whole")
    assert (tmp_path / "report.md").read_text() == "whole"
