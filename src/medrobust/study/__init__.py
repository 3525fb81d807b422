"""Studies: config -> plan of cells -> run -> results store -> report."""

from __future__ import annotations

from medrobust.study.identity import derive_seed
from medrobust.study.plan import Cell, plan_cells
from medrobust.study.report import build_tables, write_report
from medrobust.study.runner import run_group, run_study
from medrobust.study.spec import StudySpec, load_spec, parse_spec
from medrobust.study.store import CellResult, ExampleRow, ResultStore

__all__ = [
    "Cell",
    "CellResult",
    "ExampleRow",
    "ResultStore",
    "StudySpec",
    "build_tables",
    "derive_seed",
    "load_spec",
    "parse_spec",
    "plan_cells",
    "run_group",
    "run_study",
    "write_report",
]
