"""The glucose-trace figure of the treatment task: one attacked episode beside its clean twin
(same patient, meals and sensor noise), with what the controller saw and the insulin it gave."""

from __future__ import annotations

import numpy as np

from medrobust.errors import InputError
from medrobust.study.figures import (
    GREY,
    OKABE_ITO,
    WIDTH,
    FigureImage,
    _new_figure,
    _png,
    _slug,
    _style,
)
from medrobust.treatment import SAMPLE_MINUTES, Episode

TARGET_RANGE = (70.0, 180.0)  # mg/dL: time in range (Battelino et al. 2019)
SEVERE_LOW = 54.0


def glucose_trace_figure(clean: Episode, attacked: Episode, *, attack: str) -> FigureImage:
    """Blood glucose of ``attacked`` against ``clean``, the readings the attacked controller saw,
    and both insulin deliveries, over the episode.

    Args:
        clean: the episode without attack.
        attacked: the same episode (patient, seed, length) under ``attack``.
        attack: the attack's label for the title, e.g. ``"PGD overdose eps=30 mg/dL"``.

    Raises:
        InputError: the two episodes are not twins (patient, seed or length differ).
    """
    if clean.config != attacked.config or clean.bg.shape != attacked.bg.shape:
        raise InputError(
            "glucose_trace_figure needs two episodes of the same patient, seed and length. "
            f"Got {clean.config} and {attacked.config} instead."
        )
    patient = clean.config.patient
    hours = np.arange(clean.bg.size) * SAMPLE_MINUTES / 60.0
    clean_colour, attacked_colour = OKABE_ITO[4], OKABE_ITO[5]
    with _style():
        figure = _new_figure(WIDTH, 5.2)
        glucose, insulin = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1.4))
        glucose.axhspan(*TARGET_RANGE, color=OKABE_ITO[2], alpha=0.12, lw=0, label="70–180 mg/dL")
        glucose.axhline(SEVERE_LOW, color=GREY, lw=0.8, ls=":", label="54 mg/dL")
        glucose.plot(hours, clean.bg, color=clean_colour, lw=1.6, label="blood glucose, clean")
        glucose.plot(
            hours, attacked.bg, color=attacked_colour, lw=1.6, label="blood glucose, attacked"
        )
        simulated = attacked.simulated_steps
        glucose.plot(
            hours[:simulated],
            attacked.seen[:simulated],
            color=attacked_colour,
            lw=0.9,
            ls="--",
            label="reading the controller saw, attacked",
        )
        if simulated < hours.size:
            glucose.axvline(hours[simulated], color=GREY, lw=0.8)
            glucose.annotate(
                " simulator stopped: blood glucose left 10–600 mg/dL",
                (hours[simulated], float(attacked.bg[simulated])),
                xytext=(0, 12),
                textcoords="offset points",
                fontsize=7.5,
                color=GREY,
            )
        glucose.set_ylabel("mg/dL")
        glucose.legend(loc="upper right", fontsize=7.5, ncols=2)
        insulin.step(hours, clean.dose * 60.0, where="post", color=clean_colour, lw=1.2)
        insulin.step(
            hours[:simulated],
            attacked.dose[:simulated] * 60.0,
            where="post",
            color=attacked_colour,
            lw=1.2,
        )
        meals = np.flatnonzero(clean.meal > 0)
        if meals.size:
            insulin.scatter(
                hours[meals], np.zeros(meals.size), marker="^", color=GREY, s=14, label="meal"
            )
            insulin.legend(loc="upper right", fontsize=7.5)
        insulin.set_ylabel("insulin, U/h")
        insulin.set_xlabel("hours")
        figure.suptitle(f"{patient}: {attack} against the clean run")
        png = _png(figure)
    return FigureImage(
        _slug("glucose_trace", patient, attack),
        f"Glucose trace of {patient} under {attack}",
        "Blood glucose (solid) of the attacked episode and its clean twin (same meals and sensor "
        "noise), the readings the attacked controller received (dashed), and the insulin each "
        "delivered; the band is the 70–180 mg/dL target range, the dotted line 54 mg/dL.",
        png,
    )
