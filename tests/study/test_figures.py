"""The report's figures, drawn from small synthetic records of the report's tables."""

from __future__ import annotations

import csv
import io
import math
import re
from typing import Any

import matplotlib.image
import pytest

from medrobust.study import figures as figures_module
from medrobust.study.figures import (
    MAX_BAR_CONFIGS,
    FigureImage,
    accuracy_under_attack_figures,
    accuracy_vs_eps_figures,
    build_figures,
    certified_accuracy_figures,
    clinical_shift_figures,
    overhead_figures,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EPS = (2 / 255, 4 / 255, 8 / 255)
NAN = math.nan


def summary(prefix: str, mean: float, sd: float, trials: int) -> dict[str, float]:
    """The four fields of one summary, as the report writes them (no spread with one trial)."""
    if trials < 2 or math.isnan(mean):
        return {f"{prefix}_mean": mean} | {
            f"{prefix}_{k}": NAN for k in ("sd", "ci_low", "ci_high")
        }
    half = 2.0 * sd
    return {
        f"{prefix}_mean": mean,
        f"{prefix}_sd": sd,
        f"{prefix}_ci_low": mean - half,
        f"{prefix}_ci_high": mean + half,
    }


def attack_record(
    task: str,
    model: str,
    attack: str,
    eps: float,
    *,
    targeted: bool = False,
    trials: int = 3,
    norm: str = "linf",
) -> dict[str, Any]:
    adv = max(0.9 - 12 * eps - (0.1 if attack == "pgd" else 0.0), 0.05)
    return {
        "task": task,
        "model": model,
        "attack": attack,
        "norm": norm,
        "eps": eps,
        "targeted": targeted,
        "trials": trials,
        **summary("clean_accuracy", 0.9, 0.01, trials),
        **summary("adv_accuracy", adv, 0.02, trials),
        **summary("success_rate", 1 - adv / 0.9, 0.02, trials),
        **summary("target_success_rate", 0.4 if targeted else NAN, 0.05, trials),
        "paired_t": 5.0,
        "paired_p": 0.01,
        "masking_flags": "",
    }


def defense_record(
    task: str, model: str, defense: str, eps: float, evaluation: str = "plain"
) -> dict[str, Any]:
    post_attack = max(0.9 - 12 * eps, 0.05)
    gain = {"adversarial_training": 0.2, "smoothing": 0.3}.get(defense, 0.1)
    post_defense = min(post_attack + (gain if evaluation == "plain" else gain / 3), 0.85)
    return {
        "task": task,
        "model": model,
        "defense": defense,
        "attack": "pgd",
        "norm": "linf",
        "eps": eps,
        "targeted": False,
        "evaluation": evaluation,
        "trials": 3,
        **summary("pre_attack", 0.9, 0.01, 3),
        **summary("post_attack", post_attack, 0.02, 3),
        **summary("defended_clean", 0.86, 0.01, 3),
        **summary("post_defense", post_defense, 0.03, 3),
        **summary("improvement", post_defense - post_attack, 0.03, 3),
    }


def overhead_record(
    task: str, model: str, defense: str, *, absolute: bool, trials: int = 3
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "task": task,
        "model": model,
        "defense": defense,
        "trials": trials,
        **summary("training_ratio", 3.5, 0.2, trials),
        **summary("inference_ratio", 1.2, 0.1, trials),
        **summary("certify_seconds", 4.0 if defense == "smoothing" else NAN, 0.5, trials),
    }
    if absolute:
        record |= {
            **summary("train_seconds", 35.0, 2.0, trials),
            **summary("inference_ms", 12.0, 1.0, trials),
            **summary("undefended_train_seconds", 10.0, 1.0, trials),
            **summary("undefended_inference_ms", 10.0, 0.5, trials),
        }
    return record


def certified_record(task: str, model: str, defense: str, radius: float) -> dict[str, Any]:
    return {
        "task": task,
        "model": model,
        "defense": defense,
        "radius": radius,
        "trials": 3,
        **summary("certified_accuracy", max(0.8 - radius, 0.0), 0.03, 3),
        **summary("mean_radius", 0.4, 0.02, 3),
        **summary("abstain_rate", 0.1, 0.01, 3),
        **summary("lipschitz_bound", NAN, NAN, 3),
    }


def clinical_record(
    task: str, model: str, defense: str, eps: float, class_name: str, *, trials: int = 3
) -> dict[str, Any]:
    return {
        "task": task,
        "model": model,
        "defense": defense,
        "attack": "pgd",
        "norm": "linf",
        "eps": eps,
        "targeted": False,
        "evaluation": "plain",
        "class_name": class_name,
        "trials": trials,
        **summary("fnr_before", 0.1, 0.01, trials),
        **summary("fnr_after", 0.1 + 5 * eps, 0.02, trials),
        **summary("fnr_shift", 5 * eps, 0.02, trials),
        **summary("fpr_before", 0.08, 0.01, trials),
        **summary("fpr_after", 0.08 - eps, 0.02, trials),
        **summary("fpr_shift", -eps, 0.02, trials),
    }


def study_records() -> dict[str, list[dict[str, Any]]]:
    """Two image tasks with attacks, a one-trial tabular task, an ECG task whose curves come
    from its defense records alone, and a multi-class task for the FNR/FPR chart."""
    attacks = [
        attack_record("breastmnist", model, attack, eps)
        for model in ("cnn", "resnet18")
        for attack in ("fgsm", "pgd")
        for eps in EPS
    ]
    attacks.append(attack_record("breastmnist", "cnn", "pgd", EPS[1], targeted=True))
    attacks += [attack_record("wisconsin", "mlp", "pgd", eps, trials=1) for eps in EPS[:2]]
    defenses = [
        defense_record("breastmnist", "cnn", defense, eps, evaluation)
        for defense, evaluation in (
            ("adversarial_training", "plain"),
            ("smoothing", "plain"),
            ("smoothing", "adaptive (EOT)"),
        )
        for eps in EPS
    ]
    defenses += [defense_record("ecg", "conv1d", "jpeg", eps) for eps in EPS]
    overhead = [
        overhead_record("breastmnist", "cnn", defense, absolute=True)
        for defense in ("adversarial_training", "smoothing")
    ]
    # The older records without absolute times fall back to the ratios.
    overhead.append(overhead_record("wisconsin", "mlp", "lipschitz", absolute=False, trials=1))
    certified = [
        certified_record("breastmnist", "cnn", "smoothing", radius) for radius in (0, 0.25, 0.5)
    ]
    clinical = [
        clinical_record("breastmnist", "cnn", defense, eps, "malignant")
        for defense in ("undefended", "adversarial_training")
        for eps in EPS
    ]
    clinical += [
        clinical_record("dermamnist", "cnn", "undefended", EPS[1], f"class {i}", trials=1)
        for i in range(7)
    ]
    return {
        "attacks": attacks,
        "defenses": defenses,
        "overhead": overhead,
        "certified": certified,
        "clinical": clinical,
    }


EXPECTED = {
    "accuracy_under_attack_breastmnist",
    "accuracy_under_attack_wisconsin",
    "accuracy_vs_eps_breastmnist",
    "accuracy_vs_eps_ecg",
    "accuracy_vs_eps_wisconsin",
    "defense_overhead_breastmnist",
    "defense_overhead_wisconsin",
    "certified_accuracy_breastmnist",
    "fnr_fpr_shift_breastmnist",
    "fnr_fpr_shift_dermamnist",
}


@pytest.fixture(scope="module")
def figures() -> list[FigureImage]:
    return build_figures(study_records())


def by_name(figures: list[FigureImage]) -> dict[str, FigureImage]:
    return {figure.name: figure for figure in figures}


def test_every_kind_of_figure_is_drawn(figures: list[FigureImage]) -> None:
    assert {figure.name for figure in figures} == EXPECTED


def test_names_are_unique_and_safe_for_file_names(figures: list[FigureImage]) -> None:
    names = [figure.name for figure in figures]
    assert len(names) == len(set(names))
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", name) for name in names)


def test_names_stay_unique_when_task_names_differ_only_in_odd_characters() -> None:
    records = [attack_record(task, "cnn", "pgd", EPS[0]) for task in ("a b", "a/b")]
    names = [figure.name for figure in accuracy_under_attack_figures(records)]
    assert names == ["accuracy_under_attack_a_b", "accuracy_under_attack_a_b_2"]


def test_figures_are_decodable_pngs_of_a_sensible_size(figures: list[FigureImage]) -> None:
    for figure in figures:
        assert figure.png.startswith(PNG_SIGNATURE), figure.name
        image = matplotlib.image.imread(io.BytesIO(figure.png), format="png")
        height, width = image.shape[:2]
        assert 700 <= width <= 1200, figure.name
        assert 300 <= height <= 2000, figure.name
        assert figure.title
        assert figure.caption.endswith("."), figure.name


def test_the_same_records_give_the_same_bytes(figures: list[FigureImage]) -> None:
    assert build_figures(study_records()) == figures


def test_missing_or_empty_records_give_no_figure() -> None:
    assert build_figures({}) == []
    assert build_figures({key: [] for key in study_records()}) == []
    assert accuracy_under_attack_figures([]) == []
    assert accuracy_vs_eps_figures([], []) == []
    assert overhead_figures([]) == []
    assert certified_accuracy_figures([]) == []
    assert clinical_shift_figures([]) == []


@pytest.mark.parametrize(
    ("key", "prefixes"),
    [
        ("attacks", {"accuracy_under_attack", "accuracy_vs_eps"}),
        ("defenses", {"accuracy_vs_eps"}),
        ("overhead", {"defense_overhead"}),
        ("certified", {"certified_accuracy"}),
        ("clinical", {"fnr_fpr_shift"}),
    ],
)
def test_each_kind_comes_from_its_own_records(key: str, prefixes: set[str]) -> None:
    names = [figure.name for figure in build_figures({key: study_records()[key]})]
    assert names
    assert {name.rsplit("_", 1)[0] for name in names} == prefixes


def test_eps_curves_need_two_budgets_of_an_untargeted_attack() -> None:
    one_budget = [attack_record("t", "cnn", "pgd", EPS[0])]
    targeted = [attack_record("t", "cnn", "pgd", eps, targeted=True) for eps in EPS]
    assert accuracy_vs_eps_figures(one_budget) == []
    assert accuracy_vs_eps_figures(targeted) == []


def test_captions_name_the_error_bars(figures: list[FigureImage]) -> None:
    named = by_name(figures)
    assert "95% CI" in named["accuracy_under_attack_breastmnist"].caption
    assert "single trial" in named["accuracy_under_attack_wisconsin"].caption
    assert "SD" in named["defense_overhead_breastmnist"].caption
    assert "relative" in named["defense_overhead_wisconsin"].title
    assert "percentage points" in named["fnr_fpr_shift_breastmnist"].caption


def test_a_missing_ci_falls_back_to_the_sd() -> None:
    records = [attack_record("t", "cnn", "pgd", eps) for eps in EPS]
    for record in records:
        for field in ("ci_low", "ci_high"):
            del record[f"adv_accuracy_{field}"], record[f"clean_accuracy_{field}"]
    (figure,) = accuracy_under_attack_figures(records)
    assert "± SD over trials" in figure.caption
    assert "CI" not in figure.caption


def test_long_lists_are_capped_and_the_caption_says_so(figures: list[FigureImage]) -> None:
    records = [
        attack_record("t", "cnn", attack, eps, norm=norm)
        for attack in ("fgsm", "pgd")
        for norm in ("linf", "l2")
        for eps in [i / 255 for i in range(1, 11)]
    ]
    assert len(records) == 40
    (figure,) = accuracy_under_attack_figures(records)
    assert f"Only {MAX_BAR_CONFIGS} of 40 attack configurations" in figure.caption
    assert figure.png.startswith(PNG_SIGNATURE)
    assert "Only 6 of 7 classes" in by_name(figures)["fnr_fpr_shift_dermamnist"].caption


def test_records_read_back_from_csv_give_the_same_figures() -> None:
    records = {key: study_records()[key] for key in ("attacks", "clinical")}
    read_back = {}
    for key, rows in records.items():
        buffer = io.StringIO()
        fields = list(dict.fromkeys(name for row in rows for name in row))
        writer = csv.DictWriter(buffer, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        read_back[key] = list(csv.DictReader(io.StringIO(buffer.getvalue())))
    assert build_figures(read_back) == build_figures(records)


def test_long_task_names_give_short_distinct_file_names() -> None:
    """A user data file's task name holds its path and checksum; a figure's file name must
    still fit the file system and stay unique."""
    stem = "file:/data/" + "very_long_folder_name/" * 12 + "audit.csv?label=diagnosis&sha256="
    first, second = (
        figures_module._slug("accuracy", stem + "a" * 64),
        figures_module._slug("accuracy", stem + "b" * 64),
    )
    assert len(first) <= figures_module.MAX_STEM and len(second) <= figures_module.MAX_STEM
    assert first != second and first.startswith("accuracy_file_data_very_long")
