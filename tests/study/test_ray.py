"""The Ray executor: the rows of a local run, progress per cell, resumption and retries."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from medrobust.errors import ConfigError, GroupFailedError
from medrobust.study import (
    Cell,
    CellResult,
    ResultStore,
    parse_spec,
    plan_cells,
    run_group,
    run_study,
)
from medrobust.study.executors import GroupRunner, RayExecutor
from medrobust.study.spec import ExecutionSpec
from tests.study.conftest import small_config

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    """A local Ray instance with two CPUs for the module; the executor uses it as it is."""
    if ray.is_initialized():
        pytest.skip("a Ray instance is running in this process already")
    ray.init(
        num_cpus=2,
        object_store_memory=100 * 2**20,  # cells are small; leave the machine's memory alone
        include_dashboard=False,
        log_to_driver=False,
        logging_level="WARNING",
    )
    yield
    ray.shutdown()


def recording_runner(folder: Path, fail: dict[int, str] | None = None) -> GroupRunner:
    """:func:`run_group` that writes each attempt at a group (its process and cells) to
    ``folder`` as ``<task>-<trial>-<attempt>.json``, and fails after the group's first cell
    where ``fail`` says (trial -> how): "crash once" (the worker dies), "raise once", "raise"
    (every attempt) or "config" (a ConfigError, every attempt)."""
    fail = fail or {}

    def runner(cells: Sequence[dict[str, Any]], output: str) -> Iterator[CellResult]:
        name = f"{cells[0]['task']}-{cells[0]['trial']}"
        attempt = len(list(folder.glob(f"{name}-*.json"))) + 1
        record = {"pid": os.getpid(), "cells": [Cell(**c).cell_id for c in cells]}
        (folder / f"{name}-{attempt}.json").write_text(json.dumps(record))
        trial = cells[0]["trial"]
        how = fail.get(trial)
        for i, result in enumerate(run_group(cells, output)):
            if i == 1 and how is not None:
                if how == "crash once" and attempt == 1:
                    os._exit(1)
                if how == "raise" or (how == "raise once" and attempt == 1):
                    raise RuntimeError(f"unexpected failure of trial {trial}")
                if how == "config":
                    raise ConfigError(f"a config problem in trial {trial}")
            yield result

    return runner


def attempts(folder: Path, task: str, trial: int) -> list[dict[str, Any]]:
    """The attempts :func:`recording_runner` recorded at a group, in order."""
    files = sorted(folder.glob(f"{task}-{trial}-*.json"))
    return [json.loads(f.read_text()) for f in files]


def task_rows(rows: tuple[list[Any], list[Any]], task: str) -> tuple[list[Any], list[Any]]:
    """The cell and example rows of one task's cells."""
    cells = [c for c in rows[0] if json.loads(c[1])["task"] == task]
    ids = {c[0] for c in cells}
    return cells, [e for e in rows[1] if e[0] in ids]


def test_ray_run_equals_a_local_run_and_reports_each_cell(
    ray_cluster: None, data_env: Path, tmp_path: Path, reference_rows: tuple[list, list]
) -> None:
    spec = parse_spec(small_config(executor="ray"))
    folder = tmp_path / "attempts"
    folder.mkdir()
    executor = RayExecutor(spec.execution, runner=recording_runner(folder))
    progress: list[tuple[str, int, int]] = []
    store = run_study(
        spec,
        output=tmp_path / "out",
        executor=executor,
        on_cell=lambda r, done, total: progress.append((r.cell_id, done, total)),
    )
    with ResultStore(store) as results:
        assert results.result_rows() == reference_rows
    total = len(plan_cells(spec))
    assert [(done, of) for _, done, of in progress] == [(i, total) for i in range(1, total + 1)]
    assert sorted(i for i, _, _ in progress) == sorted(c.cell_id for c in plan_cells(spec))
    # each group ran once, in a Ray worker, not in this process
    runs = [attempts(folder, t, trial) for t in ("wisconsin", "breastmnist") for trial in (0, 1)]
    assert [len(r) for r in runs] == [1, 1, 1, 1]
    assert all(r["pid"] != os.getpid() for group in runs for r in group)
    # how a study runs is no part of its identity: the local config reopens the store, done
    again: list[int] = []
    run_study(
        parse_spec(small_config()), output=tmp_path / "out", on_cell=lambda *a: again.append(1)
    )
    assert again == []


def test_a_resumed_ray_run_runs_only_the_missing_cells(
    ray_cluster: None, data_env: Path, tmp_path: Path, reference_rows: tuple[list, list]
) -> None:
    spec = parse_spec(small_config())
    cells = plan_cells(spec)

    class Stop(Exception):
        pass

    def stop_after_four(result: CellResult, done: int, total: int) -> None:
        if done == 4:
            raise Stop

    # a Ray run (as the config says) interrupted on the driver: the groups still running stop
    with pytest.raises(Stop):
        run_study(
            parse_spec(small_config(executor="ray")),
            output=tmp_path / "out",
            on_cell=stop_after_four,
        )
    with ResultStore(tmp_path / "out" / "results.sqlite") as results:
        stored = results.done_ids()
    assert len(stored) == 4
    folder = tmp_path / "attempts"
    folder.mkdir()
    seen: list[int] = []
    run_study(
        spec,
        output=tmp_path / "out",
        executor=RayExecutor(spec.execution, runner=recording_runner(folder)),
        on_cell=lambda r, done, total: seen.append(done),
    )
    assert seen == list(range(5, len(cells) + 1))
    ran = [cell for path in folder.glob("*.json") for cell in json.loads(path.read_text())["cells"]]
    assert sorted(ran) == sorted({c.cell_id for c in cells} - stored)  # the missing cells only
    with ResultStore(tmp_path / "out" / "results.sqlite") as results:
        assert results.result_rows() == reference_rows


def test_failed_groups_are_retried_or_fail_the_study_after_the_others_are_stored(
    ray_cluster: None, data_env: Path, tmp_path: Path, reference_rows: tuple[list, list]
) -> None:
    raw = small_config(executor="ray", retries=1)
    raw["tasks"] = raw["tasks"][:1]  # Wisconsin only: two groups (trials) of three cells
    spec = parse_spec(raw)
    expected = task_rows(reference_rows, "wisconsin")

    def run(name: str, fail: dict[int, str]) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        stored: list[str] = []
        executor = RayExecutor(spec.execution, runner=recording_runner(folder, fail))
        try:
            run_study(
                spec,
                output=folder / "out",
                executor=executor,
                on_cell=lambda r, done, total: stored.append(r.cell_id),
            )
        finally:
            assert len(stored) == len(set(stored))  # no cell stored twice
        assert len(stored) == 6
        return folder

    # a worker that dies and a group that raises are retried; each cell is stored once
    folder = run("flaky", {0: "crash once", 1: "raise once"})
    assert [len(attempts(folder, "wisconsin", trial)) for trial in (0, 1)] == [2, 2]
    with ResultStore(folder / "out" / "results.sqlite") as results:
        assert results.result_rows() == expected

    # a config error is not retried; an unexpected one is, up to `retries`; then the study
    # fails naming the group, with every other cell stored
    for how, tries in (("config", 1), ("raise", 2)):
        with pytest.raises(GroupFailedError, match=r"wisconsin/mlp/trial 1 \(3 cells\)") as info:
            run(how, {1: how})
        folder = tmp_path / how
        assert len(attempts(folder, "wisconsin", 1)) == tries
        assert len(attempts(folder, "wisconsin", 0)) == 1
        assert "1 of its cells stored" in str(info.value)
        if how == "config":
            assert isinstance(info.value.__cause__, ConfigError)
        with ResultStore(folder / "out" / "results.sqlite") as results:
            assert len(results.done_ids()) == 3 + 1


def test_ray_settings_are_validated_and_stay_out_of_the_identity() -> None:
    spec = parse_spec(
        small_config(
            executor="ray",
            address="auto",
            retries=0,
            resources={"cpus": 2, "tasks": {"breastmnist": {"gpus": 0.5}}},
        )
    )
    execution = spec.execution
    assert execution.resources_for("wisconsin").cpus == 2
    assert execution.resources_for("breastmnist").gpus == 0.5
    assert execution.resources_for("breastmnist").cpus == 2  # inherited
    assert parse_spec(small_config()).execution == ExecutionSpec()
    assert "executor" not in parse_spec(small_config()).to_dict()  # old stores keep identity
    bad = [
        ({"executor": "dask"}, r"study.executor must be 'local' or 'ray'. Got 'dask' instead"),
        ({"retries": -1}, r"study.retries must be an integer from 0 to 100. Got -1 instead"),
        ({"resources": {"cpus": 0}}, r"study.resources.cpus must be a number > 0. Got 0"),
        ({"resources": {"gpus": 1.5}}, r"study.resources.gpus must be a whole number or a"),
        ({"resources": {"tasks": {"ecg5000": {}}}}, r"names 'ecg5000', which the study does"),
        ({"resources": {"memory": 1}}, r"Unknown key\(s\) \['memory'\] in \[study.resources\]"),
    ]
    for study, message in bad:
        with pytest.raises(ConfigError, match=message):
            parse_spec(small_config(**study))
