"""Fixtures of the study tests: the real data folder, an isolated cache, small configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from medrobust.study import ResultStore, parse_spec, run_study
from tests.conftest import real_data_dir


@pytest.fixture
def data_env(real_data: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """MEDROBUST_DATA at the real offline folder, a private cache, and no downloads."""
    folder = real_data
    monkeypatch.setenv("MEDROBUST_DATA", str(folder))
    monkeypatch.setenv("MEDROBUST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MEDROBUST_OFFLINE", "1")
    return folder


@pytest.fixture
def no_data_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No offline folder, an empty cache, and no network."""
    monkeypatch.delenv("MEDROBUST_DATA", raising=False)
    monkeypatch.setenv("MEDROBUST_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("MEDROBUST_OFFLINE", "1")


def small_config(**study: Any) -> dict[str, Any]:
    """A study of Wisconsin (MLP) and BreastMNIST (small CNN), two trials, FGSM and PGD."""
    return {
        "study": {"name": "small", "trials": 2, "seed": 3, "max_attack_examples": 40, **study},
        "tasks": [
            {
                "name": "wisconsin",
                "models": ["mlp"],
                "training": {"epochs": 30, "patience": 5, "batch_size": 32},
            },
            {
                "name": "breastmnist",
                "models": [{"name": "small_cnn", "params": {"width": 8}}],
                "training": {"epochs": 2, "batch_size": 64},
            },
        ],
        "attacks": [
            {"name": "fgsm", "eps": {"image": [0.01], "tabular": [0.2]}},
            {
                "name": "pgd",
                "norm": "l2",
                "params": {"steps": 5},
                "eps": {"image": [0.5], "tabular": [1.0]},
            },
        ],
    }


@pytest.fixture(scope="session")
def reference_rows(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Any], list[Any]]:
    """Rows of one uninterrupted run of :func:`small_config`, in this process (one thread):
    what a resumed, killed or distributed run of the same config must reproduce."""
    folder = tmp_path_factory.mktemp("reference")
    env = pytest.MonkeyPatch()
    data = real_data_dir()
    if data is None:
        pytest.skip("no offline data folder (set MEDROBUST_DATA)")
    env.setenv("MEDROBUST_DATA", str(data))
    env.setenv("MEDROBUST_CACHE", str(folder / "cache"))
    env.setenv("MEDROBUST_OFFLINE", "1")
    try:
        store = run_study(parse_spec(small_config()), output=folder / "out")
    finally:
        env.undo()
    with ResultStore(store) as results:
        return results.result_rows()
