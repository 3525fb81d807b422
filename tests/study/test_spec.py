"""Study configs are validated before any compute, with clear errors."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from medrobust.data import TASKS
from medrobust.errors import ConfigError, UnknownNameError
from medrobust.study import load_spec, parse_spec, plan_cells
from tests.study.conftest import small_config


def test_default_study_covers_every_task_with_its_attacks() -> None:
    spec = load_spec()
    assert spec.trials == 5
    cells = plan_cells(spec)
    assert {t.name for t in spec.tasks} == set(TASKS.names())
    for task in TASKS.names():
        attacks = {c.attack for c in cells if c.task == task}
        if task == "medical_abstracts":  # FGSM/PGD/JSMA need continuous inputs
            assert attacks == {None, "embedding_fgsm", "embedding_pgd", "hotflip"}
        else:
            assert {"fgsm", "pgd", "jsma"} <= attacks
    transferred = {(c.task, c.model_label) for c in cells if c.source is not None}
    assert {("breastmnist", "resnet"), ("ecg5000", "conv1d")} <= transferred  # architectures
    assert ("mitbih", "conv1d@share2of2") in transferred  # institutions
    assert len({c.cell_id for c in cells}) == len(cells)
    dosing = [c.treatment for c in cells if c.treatment is not None]  # and insulin dosing
    assert {t["cohort"] for t in dosing} == {"adolescent", "adult", "child"}
    assert {(t["attack"] or {}).get("direction") for t in dosing} == {None, "overdose", "underdose"}
    assert {(t["defense"] or {}).get("name") for t in dosing} == {
        None,
        "plausibility_filter",
        "action_smoothing",
        "adversarial_training",
    }


def test_plan_is_stable_and_trials_reseed() -> None:
    spec = parse_spec(small_config())
    first, second = plan_cells(spec), plan_cells(parse_spec(small_config()))
    assert [c.cell_id for c in first] == [c.cell_id for c in second]
    wisconsin = [c for c in first if c.task == "wisconsin" and c.attack is None]
    assert len({c.split_seed for c in wisconsin}) == 2  # re-split task: a new split per trial
    breast = [c for c in first if c.task == "breastmnist" and c.attack is None]
    assert {c.split_seed for c in breast} == {0}  # official split
    assert len({c.init_seed for c in breast}) == 2


def test_yaml_and_toml_give_the_same_spec(tmp_path: Path) -> None:
    raw = small_config()
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    toml = """
[study]
name = "small"
trials = 2
seed = 3
max_attack_examples = 40

[[tasks]]
name = "wisconsin"
models = ["mlp"]
training = { epochs = 30, patience = 5, batch_size = 32 }

[[tasks]]
name = "breastmnist"
training = { epochs = 2, batch_size = 64 }
[[tasks.models]]
name = "small_cnn"
params = { width = 8 }

[[attacks]]
name = "fgsm"
eps = { image = [0.01], tabular = [0.2] }

[[attacks]]
name = "pgd"
norm = "l2"
params = { steps = 5 }
eps = { image = [0.5], tabular = [1.0] }
"""
    (tmp_path / "s.toml").write_text(toml)
    assert load_spec(tmp_path / "s.yaml") == load_spec(tmp_path / "s.toml") == parse_spec(raw)


def _with(change: dict[str, Any]) -> dict[str, Any]:
    raw = copy.deepcopy(small_config())
    for path, value in change.items():
        node: Any = raw
        keys = path.split(".")
        for key in keys[:-1]:
            node = node[int(key)] if key.isdigit() else node[key]
        last = keys[-1]
        if value is KeyError:
            del node[last]
        else:
            node[int(last) if last.isdigit() else last] = value
    return raw


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"study.trails": 3}, ConfigError, r"Unknown key\(s\) \['trails'\] in \[study\]"),
        ({"study.trials": 0}, ConfigError, "trials and study.max_attack_examples must be >= 1"),
        ({"study.trials": "five"}, ConfigError, "study.trials must be an integer"),
        ({"study.device": "tpu"}, ConfigError, "study.device must be 'cpu' or 'cuda"),
        ({"tasks.0.name": "wisconsn"}, UnknownNameError, "Did you mean 'wisconsin'"),
        ({"tasks.0.models": ["small_cnn"]}, ConfigError, "does not accept tabular inputs"),
        ({"tasks.0.models": []}, ConfigError, "must list at least one model"),
        ({"tasks.0.training.epochs": -1}, ConfigError, "'epochs' of fit must be an integer >= 1"),
        ({"tasks.0.training.lr_rate": 1}, ConfigError, r"Unknown key\(s\) \['lr_rate'\]"),
        ({"attacks.0.name": "fgms"}, UnknownNameError, "Did you mean 'fgsm'"),
        ({"attacks.0.eps": {"image": [-0.1]}}, ConfigError, "must be numbers >= 0"),
        ({"attacks.0.eps": KeyError}, ConfigError, "needs 'eps'"),
        ({"attacks.0.norm": "l3"}, ConfigError, "'norm' must be one of"),
        ({"attacks.0.eps": {"image": [2.0]}}, ConfigError, "<= the domain width"),
        ({"attacks.1.params": {"steps": 0}}, ConfigError, "'steps' parameter of PGD must be"),
        ({"attacks.1.params": {"stepz": 3}}, ConfigError, "unexpected keyword argument 'stepz'"),
        ({"tasks": []}, ConfigError, "at least one"),
        (
            {"attacks.0.targeted": "yes"},
            ConfigError,
            "attacks\\[0\\].targeted must be true or false",
        ),
    ],
)
def test_bad_configs_fail_before_compute(
    change: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        parse_spec(_with(change))


def test_duplicate_task_and_huge_grid_are_refused() -> None:
    raw = small_config()
    raw["tasks"].append(raw["tasks"][0])
    with pytest.raises(ConfigError, match="Each task may appear once"):
        parse_spec(raw)
    huge = small_config(trials=2000)
    huge["attacks"][0]["eps"] = {"all": [i / 1000 for i in range(100)]}
    with pytest.raises(ConfigError, match=r"cells each\), more than the limit"):
        parse_spec(huge)


def test_config_files_with_bad_names_or_syntax(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_spec(tmp_path / "missing.toml")
    (tmp_path / "study.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"must end in \.toml, \.yaml or \.yml"):
        load_spec(tmp_path / "study.json")
    (tmp_path / "broken.toml").write_text("[study\ntrials = ")
    with pytest.raises(ConfigError, match="cannot be parsed"):
        load_spec(tmp_path / "broken.toml")
