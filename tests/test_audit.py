"""``medrobust audit``: a model defined outside the package, trained here on real data, audited
through the CLI and the Python API into a study's store and report; user data files; bad input."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import medrobust
from medrobust.auditing import audit, audit_spec
from medrobust.cli import main
from medrobust.data import load_task
from medrobust.data.userfile import file_task_name
from medrobust.errors import ChecksumError, ConfigError, CorruptDataError, UnknownNameError
from medrobust.metrics import predictions
from medrobust.models import prepare_inputs
from medrobust.study import ResultStore
from medrobust.training import FitConfig, fit, predict_logits

FIXTURES = Path(__file__).parent / "audit_fixtures"
MODELS_FILE = FIXTURES / "user_models.py"


@pytest.fixture(autouse=True)
def _env(real_data: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MEDROBUST_DATA", str(real_data))
    monkeypatch.setenv("MEDROBUST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MEDROBUST_OFFLINE", "1")
    monkeypatch.syspath_prepend(str(FIXTURES))  # 'user_models:factory' imports from here


@pytest.fixture(scope="module")
def user_models() -> Any:
    sys.path.insert(0, str(FIXTURES))
    try:
        import user_models
    finally:
        sys.path.remove(str(FIXTURES))
    return user_models


@pytest.fixture(scope="module")
def cnn_checkpoint(
    real_data: Path, user_models: Any, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The fixture file's TinyCNN trained briefly on BreastMNIST, saved as a state dict."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEDROBUST_DATA", str(real_data))
        patch.setenv("MEDROBUST_OFFLINE", "1")
        task = load_task("breastmnist")
    inputs = prepare_inputs(task)
    model = user_models.tiny_cnn()
    config = FitConfig(epochs=8, patience=0, lr=3e-3, class_weight="balanced")
    fit(model, inputs.x["train"], inputs.y["train"], inputs.x["val"], inputs.y["val"],
        config=config, seed=0)  # fmt: skip
    path = tmp_path_factory.mktemp("user") / "tiny_cnn.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def wisconsin_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Wisconsin task's splits written as a user's .npz."""
    task = load_task("wisconsin", seed=0)
    path = tmp_path_factory.mktemp("data") / "tumours.npz"
    np.savez(
        path,
        x_train=task.train.x, y_train=task.train.y,
        x_val=task.val.x, y_val=task.val.y,
        x_test=task.test.x, y_test=task.test.y,
    )  # fmt: skip
    return path


def _by_label(store: Path) -> dict[str, dict[str, Any]]:
    with ResultStore(store) as opened:
        cells = opened.cells()
    from medrobust.study.plan import Cell

    fields = set(Cell.__dataclass_fields__)
    return {Cell(**{k: v for k, v in c.items() if k in fields}).label: c for c in cells}


def test_cli_audits_a_model_defined_outside_the_package(
    cnn_checkpoint: Path, user_models: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "audit"
    argv = [
        "audit",
        "--model", f"{MODELS_FILE}:tiny_cnn",
        "--checkpoint", str(cnn_checkpoint),
        "--task", "breastmnist",
        "--attack", "fgsm", "--eps", "0.03",
        "--attack", "pgd:steps=5", "--eps", "0.03",
        "--defense", "input_quantization",
        "--trials", "1", "--max-attack-examples", "80",
        "--output", str(out), "--quiet",
    ]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "breastmnist / tiny_cnn: clean accuracy" in printed  # the headline results
    assert (out / "report.md").is_file() and f"Report: {out / 'report.html'}" in printed
    assert "Accuracy under attack" in (out / "report.md").read_text()
    cells = _by_label(out / "results.sqlite")
    m = "breastmnist/tiny_cnn"
    assert set(cells) == {
        f"{m}/clean/trial 0",
        f"{m}/fgsm-linf eps=0.03/trial 0",
        f"{m}/pgd-linf eps=0.03/trial 0",
        f"{m}+input_quantization/clean/trial 0",
        f"{m}+input_quantization/fgsm-linf eps=0.03/trial 0",
        f"{m}+input_quantization/fgsm-linf eps=0.03 adaptive/trial 0",
        f"{m}+input_quantization/pgd-linf eps=0.03/trial 0",
        f"{m}+input_quantization/pgd-linf eps=0.03 adaptive/trial 0",
    }
    clean = cells[f"{m}/clean/trial 0"]
    assert clean["pretrained"] is True
    assert clean["model"] == f"python:{MODELS_FILE}:tiny_cnn"
    assert len(clean["model_params"]["checkpoint_sha256"]) == 64
    # Evaluated as given, not retrained: the store's accuracy is the checkpoint's.
    task = load_task("breastmnist")
    model = user_models.tiny_cnn()
    model.load_state_dict(torch.load(cnn_checkpoint, weights_only=True))
    x = prepare_inputs(task).x["test"]
    expected = float((predictions(predict_logits(model, x)).numpy() == task.test.y).mean())
    assert clean["metrics"]["clean_accuracy"] == pytest.approx(expected)
    assert clean["metrics"]["clean_balanced_accuracy"] > 0.6  # it learned both classes
    pgd = cells[f"{m}/pgd-linf eps=0.03/trial 0"]["metrics"]
    assert pgd["adv_accuracy"] < pgd["clean_accuracy"] - 0.1
    # A rerun resumes: every cell is in the store already.
    assert main(argv) == 0
    assert len(_by_label(out / "results.sqlite")) == 8


def test_python_api_on_a_user_npz_with_a_retraining_defense(
    wisconsin_npz: Path, user_models: Any, tmp_path: Path
) -> None:
    """A factory object trained by the audit itself on a user's .npz, fine-tuned by adversarial
    training; the task records the file's checksum and the declared classes."""
    store = audit(
        user_models.tiny_mlp,
        data=wisconsin_npz,
        data_options={"classes": ["malignant", "benign"], "positive": "malignant"},
        train=True,
        training={"epochs": 40, "patience": 5, "batch_size": 32, "lr": 3e-3},
        attacks=[{"name": "pgd", "eps": [0.5], "params": {"steps": 5}}],
        defenses=[{"name": "adversarial_training", "params": {"eps": 0.5}}],
        trials=1,
        output=tmp_path / "npz",
    )
    assert store == tmp_path / "npz" / "results.sqlite"
    assert (tmp_path / "npz" / "report.md").is_file()
    cells = _by_label(store)
    assert len(cells) == 4
    clean = next(c for c in cells.values() if c["attack"] is None and c["defense"] is None)
    assert clean["task"].startswith(f"file:{wisconsin_npz}?")
    assert "sha256=" in clean["task"] and clean["model"] == "python:user_models:tiny_mlp"
    assert clean["class_names"] == ["malignant", "benign"] and clean["positive_class"] == 0
    assert clean["metrics"]["clean_accuracy"] > 0.9
    attacked = next(c for c in cells.values() if c["attack"] and c["defense"] is None)
    defended = next(c for c in cells.values() if c["attack"] and c["defense"])
    assert attacked["metrics"]["adv_accuracy"] < attacked["metrics"]["clean_accuracy"]
    assert defended["metrics"]["adv_accuracy"] > attacked["metrics"]["adv_accuracy"]


def test_python_api_wraps_an_in_memory_module(
    cnn_checkpoint: Path, user_models: Any, tmp_path: Path
) -> None:
    model = user_models.tiny_cnn()
    model.load_state_dict(torch.load(cnn_checkpoint, weights_only=True))
    spec = audit_spec(
        model, task="breastmnist", defenses=["stochastic_activation_pruning"], output=tmp_path
    )
    entry = spec.tasks[0].models[0]
    assert entry.name == "live:tinycnn" and entry.pretrained
    assert Path(entry.params["checkpoint"]).parent == tmp_path
    assert [a.name for a in spec.attacks] == ["fgsm", "pgd"]
    assert spec.attacks[1].eps["all"] == pytest.approx((1 / 255, 4 / 255))
    assert "audit" in medrobust.__all__ and medrobust.audit is audit


# -- user data files -------------------------------------------------------------------------


def test_csv_with_class_names_and_a_split_column(tmp_path: Path) -> None:
    rows = ["age,marker,split,diagnosis"]
    for i in range(40):
        rows.append(f"{30 + i},{i % 7 * 0.5},{('train', 'train', 'test')[i % 3]},"
                    f"{'sick' if i % 2 else 'well'}")  # fmt: skip
    path = tmp_path / "cohort.csv"
    path.write_text("\n".join(rows) + "\n")
    task = load_task(file_task_name(path, label="diagnosis", positive="sick"))
    assert task.class_names == ("sick", "well") and task.positive_class == 0
    assert task.train.x.shape[1] == 2 and len(task.test) == 13
    assert len(task.train) + len(task.val) == 27 and len(task.val) > 0
    assert task.metadata["source_files"][0]["sha256"]


def test_bad_npz_files_say_what_is_wrong(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((20, 4)).astype(np.float32)
    y = np.arange(20) % 2
    missing = tmp_path / "missing.npz"
    np.savez(missing, x_train=x, y_train=y, x_test=x)
    with pytest.raises(CorruptDataError, match=r"lacks the keys \['y_test'\].*Allowed: a \.npz"):
        load_task(file_task_name(missing))
    shapes = tmp_path / "shapes.npz"
    np.savez(shapes, x_train=x, y_train=y[:5], x_test=x, y_test=y)
    with pytest.raises(CorruptDataError, match=r"y_train has shape \(5,\) for 20 inputs"):
        load_task(file_task_name(shapes))
    labels = tmp_path / "labels.npz"
    np.savez(labels, x_train=x, y_train=y * 3, x_test=x, y_test=y)
    with pytest.raises(CorruptDataError, match=r"labels range over \[0, 3\], outside \[0, 1\]"):
        load_task(file_task_name(labels, classes="a,b"))
    good = tmp_path / "good.npz"
    np.savez(good, x_train=x, y_train=y, x_test=x, y_test=y)
    with pytest.raises(ChecksumError, match="the file changed"):
        load_task(file_task_name(good, sha256="0" * 64))
    with pytest.raises(ConfigError, match="Unknown data file option"):
        file_task_name(good, colour="red")


# -- bad input: typed errors, exit status 2 with the message --------------------------------


def _audit_cli(*args: str) -> list[str]:
    return ["audit", "--task", "breastmnist", "--trials", "1", *args]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", f"{MODELS_FILE}:no_such_factory"], "has no callable 'no_such_factory'"),
        (["--model", f"{MODELS_FILE}:not_a_factory"], "has no callable 'not_a_factory'"),
        (["--model", "no_such_module_xyz:make"], "'no_such_module_xyz' cannot be imported"),
        (["--model", "tiny_cnn"], "must be given as 'package.module:factory'"),
        (
            ["--model", "user_models:tiny_cnn", "--checkpoint", "/nonexistent/model.pt"],
            "checkpoint '/nonexistent/model.pt' does not exist",
        ),
        (["--model", "user_models:tiny_cnn", "--attack", "pgdd"], "Unknown attack 'pgdd'"),
        (["--model", "user_models:tiny_cnn", "--attack", "hotflip"], "does not apply to image"),
        (
            ["--model", "user_models:tiny_cnn", "--defense", "lipschitz"],
            r"replaces the model's architecture.*Allowed defenses: \['adversarial_training'",
        ),
        (["--model", "user_models:tiny_cnn:outputs=3"], "must be given as"),
        (["--model", "user_models:tiny_cnn", "--param", "outputs=3"], r"logits of shape \(N, 2\)"),
        (["--model", "small_cnn"], "is untrained: give its trained weights"),
    ],
)
def test_cli_bad_input_exits_2_with_the_message(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main([*_audit_cli("--output", str(tmp_path / "out")), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert re.search(message, err), err
    assert not (tmp_path / "out" / "results.sqlite").exists()


def test_bad_checkpoints_are_refused_without_unpickling(
    user_models: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = tmp_path / "mlp.pt"
    torch.save(user_models.tiny_mlp().state_dict(), wrong)
    assert main([*_audit_cli("--model", "user_models:tiny_cnn", "--checkpoint", str(wrong))]) == 2
    assert "does not fit the model built by 'python:user_models:tiny_cnn'" in (
        capsys.readouterr().err
    )
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": user_models.TinyCNN()}, pickled)  # a whole module: needs unpickling
    with pytest.raises(ConfigError, match="cannot be read as a state dict with weights_only=True"):
        audit("user_models:tiny_cnn", checkpoint=pickled, task="breastmnist", output=tmp_path)
    assert not (tmp_path / "results.sqlite").exists()


def test_api_needs_exactly_one_of_task_and_data(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exactly one of 'task'"):
        audit_spec("user_models:tiny_cnn", output=tmp_path)
    with pytest.raises(UnknownNameError, match="Unknown task 'breastmnsit'"):
        audit_spec("user_models:tiny_cnn", task="breastmnsit", output=tmp_path)


def test_a_registered_architecture_with_a_checkpoint(tmp_path: Path) -> None:
    """``--arch small_cnn --model weights.pt``: the registry builds it, the checkpoint fills it."""
    from medrobust.auditing import check_model
    from medrobust.models import build_model

    task = load_task("breastmnist")
    weights = tmp_path / "small_cnn.pt"
    torch.save(build_model("small_cnn", task, prepare_inputs(task), {"width": 8}).state_dict(),
               weights)  # fmt: skip
    spec = audit_spec(
        "small_cnn", checkpoint=weights, model_params={"width": 8}, task="breastmnist",
        output=tmp_path,
    )  # fmt: skip
    entry = spec.tasks[0].models[0]
    assert entry.name == "small_cnn" and entry.pretrained
    assert entry.params["checkpoint"] == str(weights.resolve())
    check_model(spec)
    with pytest.raises(ConfigError, match="does not fit the model built by 'small_cnn'"):
        check_model(audit_spec("small_cnn", checkpoint=weights, task="breastmnist"))
