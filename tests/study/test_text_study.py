"""Text attacks in a study: embedding-space and token attacks, stored texts, HotFlip transfer."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from medrobust.errors import ConfigError
from medrobust.study import ResultStore, parse_spec, run_study, write_report


def text_config() -> dict[str, Any]:
    """Medical abstracts with two tiny Transformers of the same vocabulary, one trial."""
    params = {"dim": 32, "heads": 2, "layers": 1, "max_length": 128, "vocab_size": 5000}
    return {
        "study": {"name": "text", "trials": 1, "seed": 0, "max_attack_examples": 40},
        "tasks": [
            {
                "name": "medical_abstracts",
                "training": {"epochs": 3, "batch_size": 64, "lr": 3e-3},
                "models": [
                    {"name": "transformer", "params": params},
                    {"name": "transformer", "label": "wide", "params": {**params, "dim": 48}},
                ],
            }
        ],
        "attacks": [
            {"name": "embedding_pgd", "params": {"steps": 5}, "eps": [0.1]},
            {"name": "hotflip", "norm": "l0", "params": {"candidates": 4}, "eps": [0.02]},
            {
                "name": "hotflip",
                "norm": "l0",
                "params": {"candidates": 4},
                "eps": [0.02],
                "transfer": True,
            },
        ],
    }


def test_text_study_stores_changed_tokens_and_shows_texts(data_env: Path, tmp_path: Path) -> None:
    store = run_study(parse_spec(text_config()), output=tmp_path)
    with ResultStore(store) as results:
        cells = results.cells()
        hotflip = [c for c in cells if c["attack"] == "hotflip" and c["source"] is None]
        for cell in hotflip:
            rows = results.examples(cell["cell_id"])
            changed = [r.l0 for r in rows]
            assert all(r.linf is None and r.l2 is None for r in rows)  # ids have no L2
            assert max(changed) >= 1 and cell["metrics"]["success_rate"] > 0
            assert cell["metrics"]["mean_l0"] == pytest.approx(sum(changed) / len(changed))
            samples = results.samples(cell["cell_id"])
            assert samples and all(s.original != s.adversarial for s in samples)
        clean = [c for c in cells if c["attack"] is None]  # masking checked in embedding space
        assert clean and all(c["metrics"]["masking_unbounded_attack_fails"] == 0 for c in clean)
        embedding = [c for c in cells if c["attack"] == "embedding_pgd"]
        assert embedding and all(c["metrics"]["mean_linf"] <= 0.1 + 1e-5 for c in embedding)
        assert not any(math.isnan(c["metrics"]["mean_l0"]) for c in embedding)
    report = write_report(store)[0].read_text()
    assert "Attacked clinical texts" in report and "~~" in report and "**" in report
    assert "Transfer matrix, medical_abstracts: hotflip (l0)" in report


def test_embedding_attacks_cannot_transfer() -> None:
    raw = text_config()
    raw["attacks"] = [{"name": "embedding_pgd", "eps": [0.1], "transfer": True}]
    with pytest.raises(ConfigError, match="cannot be a transfer attack"):
        parse_spec(raw)
