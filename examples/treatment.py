"""Insulin dosing under sensor attack on the UVa/Padova simulator (issue 8), as a table.

Trains the behaviour-cloned dosing policy (and an adversarially trained one) on an adolescent,
an adult and a child, then prints per patient the clinical outcomes, mean ± SD over 3 seeded
meal scenarios of 12 h, for simglucose's basal-bolus controller, the clean policy, PGD attacks
(eps 30 mg/dL) towards overdose and underdose, and each defense. Runs in a few minutes on 2
CPU cores: ``python examples/treatment.py`` (needs ``pip install "medrobust[treatment]"``).
"""

from __future__ import annotations

import time

import torch

from medrobust.stats import summarize
from medrobust.treatment import (
    ActionSmoothing,
    EpisodeConfig,
    PlausibilityFilter,
    PolicyController,
    SensorAttack,
    basal_bolus_controller,
    collect_demonstrations,
    run_episode,
    train_policy,
)

PATIENTS = ("adolescent#001", "adult#001", "child#001")
SEEDS = (11, 12, 13)
HOURS = 12.0


def main() -> None:
    torch.set_num_threads(1)
    start = time.perf_counter()
    demos = collect_demonstrations(PATIENTS, [0], hours=24)
    policy = train_policy(demos, seed=0)
    robust = train_policy(demos, seed=0, adversarial=SensorAttack(eps=30, steps=3))
    print(f"demonstrations {len(demos.doses)}, trained in {time.perf_counter() - start:.0f} s")
    over = SensorAttack(eps=30, direction="overdose")
    under = SensorAttack(eps=30, direction="underdose")
    smoothing = ActionSmoothing(sigma=15, samples=16)
    conditions = {
        "BBController": lambda c: run_episode(c, basal_bolus_controller(c.patient)),
        "policy clean": lambda c: run_episode(c, PolicyController(policy)),
        "PGD overdose": lambda c: run_episode(c, PolicyController(policy), attack=over),
        "PGD underdose": lambda c: run_episode(c, PolicyController(policy), attack=under),
        "overdose + filter": lambda c: run_episode(
            c, PolicyController(policy), attack=over, sensor_filter=PlausibilityFilter()
        ),
        "overdose + smoothing": lambda c: run_episode(
            c, PolicyController(policy, smoothing), attack=over, surrogate=policy
        ),
        "adv-trained clean": lambda c: run_episode(c, PolicyController(robust)),
        "adv-trained overdose": lambda c: run_episode(c, PolicyController(robust), attack=over),
    }
    header = f"{'patient':15s} {'condition':21s} {'TIR':>13s} {'TBR<70':>13s} {'TBR<54':>13s}"
    header += f" {'TAR>180':>13s} {'risk index':>13s} {'ms/step':>8s}"
    print(header)
    for patient in PATIENTS:
        for name, run in conditions.items():
            episodes = [run(EpisodeConfig(patient, hours=HOURS, seed=s)) for s in SEEDS]
            outs = [e.outcomes() for e in episodes]
            cells = [
                summarize([getattr(o, key) for o in outs]).format(2).split(" [")[0]
                for key in ("tir", "tbr70", "tbr54", "tar180", "risk_index")
            ]
            seconds = sum(
                e.attack_seconds + e.filter_seconds + e.controller_seconds for e in episodes
            )
            steps = sum(len(e.windows) for e in episodes)
            print(
                f"{patient:15s} {name:21s} "
                + " ".join(f"{c:>13s}" for c in cells)
                + f" {1000 * seconds / steps:8.2f}"
            )
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
