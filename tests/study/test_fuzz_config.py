"""Hostile study configs: every mutation of a valid config, and any text in a config file, ends in
a valid study or a ConfigError (never an internal traceback), and a huge grid is refused before
any compute with the estimated number of cells."""

from __future__ import annotations

import copy
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from medrobust.errors import ConfigError
from medrobust.study import load_spec, parse_spec, plan_cells
from medrobust.study.spec import MAX_CELLS
from tests import fuzz
from tests.study.conftest import small_config


def _rich_config() -> dict[str, Any]:
    """The small study with a defense, a targeted and a transfer attack, a poisoning and the
    insulin-dosing task: many keys for the mutations to reach."""
    raw = small_config()
    raw["study"]["intended_use"] = "Second reader."
    raw["tasks"][0]["models"] = ["mlp", {"name": "mlp", "label": "site2", "train_share": [2, 2]}]
    raw["attacks"].append({"name": "pgd", "targeted": True, "eps": [0.1], "eot": 2})
    raw["attacks"].append({"name": "fgsm", "transfer": True, "eps": {"tabular": [0.3]}})
    raw["defenses"] = [
        {
            "name": "randomized_smoothing",
            "label": "smooth",
            "overrides": {"tabular": {"sigma": 0.25}, "image": {"sigma": 0.1}},
            "attacks": ["pgd"],
            "models": ["mlp"],
        }
    ]
    raw["poisonings"] = [{"name": "label_flip", "rates": [0.1], "tasks": ["wisconsin"]}]
    raw["treatment"] = {
        "patients": ["adult#001", "child#001"],
        "training_patients": ["adult#002"],
        "hours": 2,
        "window": 6,
        "demonstrations": 1,
        "demonstration_hours": 3,
        "baseline": True,
        "policy": {"hidden": 16, "depth": 1, "epochs": 5, "batch_size": 64, "lr": 0.01},
        "surrogate": {"hidden": 8},
        "attacks": [
            {"name": "pgd", "eps": [10, 30], "directions": ["overdose"], "params": {"steps": 3}},
            {"name": "fgsm", "label": "tr", "eps": 20, "transfer": True},
            {"name": "bias", "eps": [30]},
        ],
        "defenses": [
            {"name": "plausibility_filter", "params": {"max_rate": 4.0}, "attacks": ["bias"]},
            {"name": "action_smoothing", "params": {"sigma": 10, "samples": 4}, "eot": 2},
            {"name": "adversarial_training", "params": {"eps": 20, "steps": 2}},
        ],
    }
    return raw


RICH = _rich_config()


def test_the_config_the_mutations_start_from_is_valid() -> None:
    assert len(plan_cells(parse_spec(RICH))) > 20


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside a config (dict keys and list indices)."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, (*prefix, index))
    return found


PATHS = _paths(RICH)

scalars = (
    st.none()
    | st.booleans()
    | st.sampled_from([0, 1, -1, 2, 3, 10**6, 10**12, 2**63, -(2**63)])
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([0.0, -0.0, 1e-12, 0.5, 1e308, math.inf, -math.inf, math.nan])
    | st.text(max_size=12)
    | st.sampled_from(
        ["", "fgsm", "pgd", "mlp", "wisconsin", "image", "linf", "l2", "../x", "file:/nope.npz"]
    )
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


def _get(config: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        config = config[key]
    return config


@st.composite
def mutated_configs(draw: st.DrawFn) -> dict[str, Any]:
    """The rich config with one to four mutations: a value replaced, a key or item removed, an
    unknown key added, or a list grown."""
    config = copy.deepcopy(RICH)
    for _ in range(draw(st.integers(1, 4))):
        paths = _paths(config)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent, key = _get(config, path[:-1]), path[-1]
        kind = draw(st.sampled_from(["replace", "replace", "remove", "add_key", "grow"]))
        if kind == "replace":
            parent[key] = draw(values)
        elif kind == "remove":
            del parent[key]
        elif kind == "add_key" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=8))] = draw(values)
        elif kind == "grow" and isinstance(parent[key], list):
            parent[key] = parent[key] * draw(st.integers(2, 5))
    return config


def _check_valid(config: dict[str, Any]) -> None:
    """A config that parses is a study that can be planned and stored."""
    spec = parse_spec(config)
    cells = plan_cells(spec)
    assert 0 < len(cells) <= MAX_CELLS
    assert len({c.cell_id for c in cells}) == len(cells)  # every cell has its own id
    json.dumps(spec.to_dict(), allow_nan=False)  # the store's identity is plain JSON
    for cell in cells:
        if cell.eps is not None:
            assert math.isfinite(cell.eps) and cell.eps >= 0


@settings(max_examples=400)
@given(config=mutated_configs())
def test_every_mutated_config_is_a_study_or_a_config_error(config: dict[str, Any]) -> None:
    fuzz.outcome("study configs (mutated)", lambda: _check_valid(config))


@settings(max_examples=100)
@given(config=values)
def test_any_value_as_a_whole_config_is_refused_clearly(config: Any) -> None:
    result, _ = fuzz.outcome("study configs (arbitrary values)", lambda: _check_valid(config))
    assert result != fuzz.ACCEPTED  # no arbitrary value is a study: tasks are required


@settings(max_examples=150)
@given(
    text=st.text(max_size=200)
    | st.binary(max_size=200).map(lambda b: b.decode("latin-1"))
    | mutated_configs().map(yaml.safe_dump),
    suffix=st.sampled_from([".toml", ".yaml", ".yml"]),
    raw_bytes=st.booleans(),
)
def test_any_config_file_text_is_a_study_or_a_config_error(
    text: str, suffix: str, raw_bytes: bool
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"study{suffix}"
        if raw_bytes:
            path.write_bytes(text.encode("latin-1", "replace"))
        else:
            path.write_text(text, encoding="utf-8")
        fuzz.outcome("study config files (any text, mutated configs)", lambda: load_spec(path))


def test_yaml_tags_that_construct_objects_are_refused_without_running_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    hostile = tmp_path / "hostile.yaml"
    hostile.write_text(
        f'study: !!python/object/apply:os.system ["touch {marker}"]\n'
        "tasks: [{name: wisconsin, models: [mlp]}]\n"
    )
    with pytest.raises(ConfigError, match="cannot be parsed"):
        load_spec(hostile)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"trials": 10**12},
            r"about 6,000,000,000,000 cells \(1,000,000,000,000 trials of 6 cells each\)",
        ),
        ({"trials": 20_000}, "more than the limit of 100,000"),
    ],
)
def test_a_huge_grid_is_refused_in_a_second_with_the_estimated_cell_count(
    change: dict[str, Any], expected: str
) -> None:
    raw = small_config(**change)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=expected) as info:
        parse_spec(raw)
    assert time.perf_counter() - start < 5
    assert "nothing was computed" in str(info.value)


def test_a_grid_huge_within_one_trial_is_refused_without_planning_it_all() -> None:
    raw = small_config(trials=1)
    eps = [round(0.001 * i, 6) for i in range(1, 401)]
    raw["attacks"] = [
        {"name": "fgsm", "eps": {"tabular": eps}, "params": {}},
        *[
            {"name": "pgd", "eps": {"tabular": eps}, "params": {"steps": steps}}
            for steps in range(1, 400)
        ],
    ]
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"100,001\+ cells each"):
        parse_spec(raw)
    assert time.perf_counter() - start < 60
