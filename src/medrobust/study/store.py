"""The results store: one SQLite file, one row per cell and one row per example per cell.

A cell's rows are written in one transaction, so they appear all at once or not at all, and a
killed study resumes by running only the cells that are missing. Timings live in their own table:
they differ between runs, while the result rows of the same config and seed are identical.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medrobust.errors import StoreError

SCHEMA_VERSION = 3
APPLICATION_ID = 0x4D454452  # "MEDR": marks the file as a medrobust store

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cells (
    cell_id TEXT PRIMARY KEY,
    task TEXT NOT NULL,
    model TEXT NOT NULL,
    attack TEXT,
    norm TEXT,
    eps REAL,
    trial INTEGER NOT NULL,
    cell_json TEXT NOT NULL,
    metrics_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS examples (
    cell_id TEXT NOT NULL REFERENCES cells(cell_id),
    example INTEGER NOT NULL,
    label INTEGER NOT NULL,
    clean_pred INTEGER NOT NULL,
    adv_pred INTEGER,
    linf REAL,
    l2 REAL,
    l0 REAL,
    PRIMARY KEY (cell_id, example)
);
CREATE TABLE IF NOT EXISTS samples (
    cell_id TEXT NOT NULL REFERENCES cells(cell_id),
    example INTEGER NOT NULL,
    original TEXT NOT NULL,
    adversarial TEXT NOT NULL,
    PRIMARY KEY (cell_id, example)
);
CREATE TABLE IF NOT EXISTS figures (
    cell_id TEXT NOT NULL REFERENCES cells(cell_id),
    name TEXT NOT NULL,
    png BLOB NOT NULL,
    PRIMARY KEY (cell_id, name)
);
CREATE TABLE IF NOT EXISTS timings (
    cell_id TEXT PRIMARY KEY REFERENCES cells(cell_id),
    train_seconds REAL NOT NULL,
    eval_seconds REAL NOT NULL,
    other_json TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class ExampleRow:
    """The outcome of one test example in one cell."""

    example: int
    label: int
    clean_pred: int
    adv_pred: int | None = None
    linf: float | None = None
    l2: float | None = None
    l0: float | None = None


@dataclass(frozen=True)
class TextSample:
    """An attacked text shown in the report: the original and the adversarial text."""

    example: int
    original: str
    adversarial: str


@dataclass(frozen=True)
class CellResult:
    """Everything a finished cell writes. ``timings`` holds measured costs other than training
    and evaluation wall time (e.g. ``inference_ms``); like them, they vary from run to run and
    stay out of :meth:`ResultStore.result_rows`."""

    cell_id: str
    cell: dict[str, Any]
    metrics: dict[str, float]
    examples: Sequence[ExampleRow]
    train_seconds: float
    eval_seconds: float
    samples: Sequence[TextSample] = ()
    timings: dict[str, float] = field(default_factory=dict)
    figures: Sequence[tuple[str, bytes]] = ()


def _clean_json(value: Any) -> Any:
    """NaN and infinities are not JSON: NaN is stored as null, an infinity as "inf"/"-inf"."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, dict):
        return {k: _clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean_json(v) for v in value]
    return value


class ResultStore:
    """A study's SQLite results store.

    Args:
        path: the database file; created if absent. A file that is not a medrobust store, or a
            store of another study, is refused and never overwritten.
        study: the study's config dict; stored on creation and compared on reopening.
    """

    def __init__(self, path: str | Path, study: dict[str, Any] | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        existed = self.path.exists() and self.path.stat().st_size > 0
        if self.path.is_dir():
            raise StoreError(f"{self.path} is a folder; a results store is a file.")
        try:
            self._conn = sqlite3.connect(self.path, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path} cannot be opened as a results store: {exc}") from exc
        try:
            if existed:
                app_id = self._conn.execute("PRAGMA application_id").fetchone()[0]
                if app_id != APPLICATION_ID:
                    raise StoreError(
                        f"{self.path} is not a medrobust results store; refusing to touch it. "
                        "Choose another output folder."
                    )
                # Damage inside the file (a torn copy, a bad disk) is found now, not mid-study.
                problems = [r[0] for r in self._conn.execute("PRAGMA quick_check(5)")]
                if problems != ["ok"]:
                    raise StoreError(
                        f"{self.path} is a damaged results store ({'; '.join(problems)}); it was "
                        "left as it is. Restore it from a copy, or choose another output folder."
                    )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            if not existed:
                self._conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            self._conn.executescript(_SCHEMA)
        except StoreError:
            self._conn.close()
            raise
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise StoreError(f"{self.path} is corrupt or not a SQLite file: {exc}") from exc
        try:
            self._check_meta(study)
        except BaseException:
            self._conn.close()
            raise

    def _check_meta(self, study: dict[str, Any] | None) -> None:
        meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("schema_version", str(SCHEMA_VERSION)) != str(SCHEMA_VERSION):
            raise StoreError(
                f"{self.path} has schema version {meta['schema_version']}; this medrobust "
                f"reads version {SCHEMA_VERSION}."
            )
        if study is None:
            return
        study_json = json.dumps(study, sort_keys=True)
        if "study" in meta and meta["study"] != study_json:
            raise StoreError(
                f"{self.path} holds the results of a different study config. Use another "
                "output folder, or delete the store to start over."
            )
        with self._transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('study', ?)", (study_json,))

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StoreError(
                f"{self.path} cannot be written ({exc}): is another study writing to this "
                "output folder? Wait for it to finish, or choose another output folder."
            ) from exc
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def close(self) -> None:
        """Close the database."""
        self._conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def study(self) -> dict[str, Any] | None:
        """The study config stored with the results."""
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'study'").fetchone()
        return json.loads(row[0]) if row else None

    def record_run(self, provenance: dict[str, Any]) -> None:
        """Append one run's provenance (start time, software versions, data checksums) to the
        store's record of runs; a resumed study has one entry per run."""
        with self._transaction() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'runs'").fetchone()
            runs = json.loads(row[0]) if row else []
            runs.append(provenance)
            conn.execute(
                "INSERT OR REPLACE INTO meta VALUES ('runs', ?)",
                (json.dumps(runs, sort_keys=True),),
            )

    def runs(self) -> list[dict[str, Any]]:
        """The provenance of each run that wrote to the store, oldest first."""
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'runs'").fetchone()
        return list(json.loads(row[0])) if row else []

    def done_ids(self) -> set[str]:
        """Ids of the finished cells."""
        return {r[0] for r in self._conn.execute("SELECT cell_id FROM cells")}

    def write(self, result: CellResult) -> None:
        """Write a finished cell and its example rows in one transaction."""
        cell = result.cell
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO cells VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    result.cell_id,
                    cell["task"],
                    cell["model"],
                    cell["attack"],
                    cell["norm"],
                    cell["eps"],
                    cell["trial"],
                    json.dumps(_clean_json(cell), sort_keys=True, allow_nan=False),
                    json.dumps(_clean_json(result.metrics), sort_keys=True, allow_nan=False),
                ),
            )
            conn.executemany(
                "INSERT INTO examples VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        result.cell_id,
                        e.example,
                        e.label,
                        e.clean_pred,
                        e.adv_pred,
                        _clean_json(e.linf),
                        _clean_json(e.l2),
                        _clean_json(e.l0),
                    )
                    for e in result.examples
                ],
            )
            conn.executemany(
                "INSERT INTO samples VALUES (?, ?, ?, ?)",
                [(result.cell_id, t.example, t.original, t.adversarial) for t in result.samples],
            )
            conn.executemany(
                "INSERT INTO figures VALUES (?, ?, ?)",
                [(result.cell_id, name, png) for name, png in result.figures],
            )
            conn.execute(
                "INSERT INTO timings VALUES (?, ?, ?, ?)",
                (
                    result.cell_id,
                    result.train_seconds,
                    result.eval_seconds,
                    json.dumps(_clean_json(result.timings), sort_keys=True, allow_nan=False),
                ),
            )

    def cells(self) -> list[dict[str, Any]]:
        """All finished cells with their config, metrics and timings, in a stable order."""
        with closing(
            self._conn.execute(
                "SELECT c.cell_id, c.cell_json, c.metrics_json, t.train_seconds, t.eval_seconds, "
                "t.other_json "
                "FROM cells c JOIN timings t USING (cell_id) ORDER BY c.cell_id"
            )
        ) as cursor:
            rows = cursor.fetchall()
        out = []
        for cell_id, cell_json, metrics_json, train_s, eval_s, other_json in rows:
            metrics = {
                k: (math.nan if v is None else v) for k, v in json.loads(metrics_json).items()
            }
            out.append(
                {
                    "cell_id": cell_id,
                    **json.loads(cell_json),
                    "metrics": metrics,
                    "train_seconds": train_s,
                    "eval_seconds": eval_s,
                    "timings": json.loads(other_json),
                }
            )
        return out

    def result_rows(self) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """The cell rows and example rows (no timings), sorted: equal for equal config and seed."""
        cells = self._conn.execute(
            "SELECT cell_id, cell_json, metrics_json FROM cells ORDER BY cell_id"
        ).fetchall()
        examples = self._conn.execute("SELECT * FROM examples ORDER BY cell_id, example").fetchall()
        return cells, examples

    def examples(self, cell_id: str) -> list[ExampleRow]:
        """Example rows of one cell."""
        rows = self._conn.execute(
            "SELECT example, label, clean_pred, adv_pred, linf, l2, l0 FROM examples "
            "WHERE cell_id = ? ORDER BY example",
            (cell_id,),
        ).fetchall()
        return [ExampleRow(*r) for r in rows]

    def figure_cell_ids(self) -> set[str]:
        """Ids of the cells that drew figures while they ran (explanation panels)."""
        return {r[0] for r in self._conn.execute("SELECT DISTINCT cell_id FROM figures")}

    def figures(self, cell_id: str) -> list[tuple[str, bytes]]:
        """The figures one cell drew while it ran: (name, PNG)."""
        rows = self._conn.execute(
            "SELECT name, png FROM figures WHERE cell_id = ? ORDER BY name", (cell_id,)
        )
        return [(name, bytes(png)) for name, png in rows]

    def samples(self, cell_id: str) -> list[TextSample]:
        """The original and adversarial texts stored for one cell (text attacks only)."""
        rows = self._conn.execute(
            "SELECT example, original, adversarial FROM samples WHERE cell_id = ? ORDER BY example",
            (cell_id,),
        ).fetchall()
        return [TextSample(*r) for r in rows]
