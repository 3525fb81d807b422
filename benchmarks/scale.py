"""How a study scales: the same small study run locally and on Ray with one and two workers.

Run from the repository root (about 3 minutes on 2 quiet CPU cores; ``--quick`` under 1)::

    pip install "medrobust[distributed]"   # Ray
    python benchmarks/scale.py [--quick] [--trials N] [--rounds N]

The real data come from ``MEDROBUST_DATA`` (else ``../shared/data`` beside the repository).

**What runs.** A study of Wisconsin (MLP) and BreastMNIST (small CNN), each with a clean
evaluation, FGSM and PGD-10 per trial: one cell group (a trained model and its three cells) per
task and trial. Each round runs it three times, in an order rotated from round to round, each
into a fresh output folder (so each run trains every model again):

1. the local executor, in this process, with ``--threads`` torch threads (default 1);
2. the Ray executor on a local Ray instance with 1 CPU: one group at a time, in a worker;
3. the Ray executor on a local Ray instance with 2 CPUs: two groups at a time.

Each group asks Ray for 1 CPU and runs torch with 1 thread. Starting the Ray instance
(``ray.init``) is timed apart and not counted; starting its worker processes (a Python with torch
and medrobust each) is, as in any real run.

**What it prints.** Medians over the rounds (default 3; a shared machine is noisy): wall time
and cells per minute of each run, Ray's overhead per cell and per group (the 1-worker run's time
minus the local run's in the same round), split into the worker's start (its extra time to the
first stored cell) and the rest per group, the speed-up of 2 workers over 1 in the same round
beside its ceiling (the groups' total work over the larger of the largest group and half the
work), the machine's load average before and after, and whether every store holds identical
rows (exit status 1 if not).
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from _common import new_parser, setup_environment  # benchmarks/, first on sys.path

setup_environment()

from medrobust.data import load_task  # noqa: E402
from medrobust.study import CellResult, ResultStore, parse_spec, plan_cells, run_study  # noqa: E402
from medrobust.study.runner import group_cells  # noqa: E402
from medrobust.study.spec import StudySpec  # noqa: E402

TASKS = ("wisconsin", "breastmnist")


def study_config(trials: int, quick: bool) -> dict[str, Any]:
    """Wisconsin MLP and BreastMNIST small CNN, FGSM and PGD-10, ``trials`` trials."""
    return {
        "study": {
            "name": "scale",
            "trials": trials,
            "seed": 0,
            "max_attack_examples": 100 if quick else 300,
        },
        "tasks": [
            {
                "name": "wisconsin",
                "models": ["mlp"],
                "training": {"epochs": 60, "patience": 10, "batch_size": 32},
            },
            {
                "name": "breastmnist",
                "models": [{"name": "small_cnn", "params": {"width": 16}}],
                "training": {"epochs": 2 if quick else 8, "batch_size": 64},
            },
        ],
        "attacks": [
            {"name": "fgsm", "eps": {"image": [0.01], "tabular": [0.2]}},
            {
                "name": "pgd",
                "norm": "l2",
                "params": {"steps": 10},
                "eps": {"image": [0.5], "tabular": [1.0]},
            },
        ],
    }


RUNS = {
    "local": ("local (in-process)", None),
    "ray1": ("ray, 1 worker CPU", 1),
    "ray2": ("ray, 2 worker CPUs", 2),
}
"""Each run: its name in the table and the CPUs of its Ray instance (None: the local executor)."""


@dataclass
class Run:
    """What one run of the study measured."""

    seconds: float  # wall time of run_study
    first_cell: float  # seconds from the start of run_study to the first stored cell
    init_seconds: float  # ray.init, not counted in ``seconds`` (0 for the local executor)
    busy: dict[str, float]  # group (task/trial) -> its train + evaluation seconds
    rows: tuple[list[Any], list[Any]]  # the store's result rows


def run_once(spec: StudySpec, output: Path, ray_cpus: int | None) -> Run:
    """Run ``spec`` into the fresh folder ``output``: locally, or on a local Ray instance with
    ``ray_cpus`` CPUs, started before the clock starts and shut down after it stops."""
    busy: dict[str, float] = {}
    stored: list[float] = []

    def on_cell(result: CellResult, done: int, total: int) -> None:
        stored.append(time.perf_counter())
        key = f"{result.cell['task']}/{result.cell['trial']}"
        # each cell carries its group's training time: count it once per group
        busy[key] = busy.get(key, result.train_seconds) + result.eval_seconds

    init_seconds = 0.0
    if ray_cpus is not None:
        import ray

        start = time.perf_counter()
        ray.init(
            num_cpus=ray_cpus, include_dashboard=False, log_to_driver=False, logging_level="WARNING"
        )
        init_seconds = time.perf_counter() - start
    try:
        start = time.perf_counter()
        store = run_study(
            spec, output=output, executor="local" if ray_cpus is None else "ray", on_cell=on_cell
        )
        seconds = time.perf_counter() - start
    finally:
        if ray_cpus is not None:
            ray.shutdown()
    with ResultStore(store) as results:
        rows = results.result_rows()
    return Run(seconds, stored[0] - start, init_seconds, busy, rows)


def main() -> int:
    """Run the benchmark; the exit status is 1 if the executors' rows differ."""
    parser = new_parser(__doc__.splitlines()[0], "two trials, fewer epochs and examples, 1 round")
    parser.add_argument("--trials", type=int, default=None, help="trials (default 4, quick 2)")
    parser.add_argument(
        "--rounds", type=int, default=None, help="rounds of the three runs (default 3, quick 1)"
    )
    args = parser.parse_args()
    try:
        import ray
    except ImportError:
        print('Ray is not installed: pip install "medrobust[distributed]"')
        return 1
    torch.set_num_threads(args.threads)
    trials = args.trials or (2 if args.quick else 4)
    rounds = args.rounds or (1 if args.quick else 3)
    spec = parse_spec(study_config(trials, args.quick))
    cells = plan_cells(spec)
    groups = group_cells(cells)
    print(
        f"medrobust scale benchmark: torch {torch.__version__}, ray {ray.__version__}, "
        f"{args.threads} thread(s) locally, {os.cpu_count()} CPU(s), "
        f"{'quick' if args.quick else 'full'} run, {rounds} round(s)"
    )
    print(f"data: {os.environ['MEDROBUST_DATA']}")
    sizes = "/".join(map(str, sorted({len(g) for g in groups})))
    print(
        f"study: {' + '.join(TASKS)}, {trials} trials: {len(cells)} cells in {len(groups)} "
        f"groups of {sizes} cells (one trained model each)"
    )
    for task in TASKS:  # read each data file once before timing, for every run alike
        load_task(task, seed=0)
    load_before = os.getloadavg()[0]

    runs: dict[str, list[Run]] = {name: [] for name in RUNS}
    folder = Path(tempfile.mkdtemp(prefix="medrobust-scale-"))
    try:
        for r in range(rounds):  # each round runs all three, in an order rotated by r
            names = list(RUNS)
            for name in names[r % 3 :] + names[: r % 3]:
                runs[name].append(run_once(spec, folder / f"{name}-{r}", RUNS[name][1]))
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    n = len(cells)

    def median(values: Iterable[float]) -> float:
        return statistics.median(list(values))

    print(f"\nmedian over rounds   {'wall s':>8} {'cells/min':>10} {'vs local':>9}")
    local = [run.seconds for run in runs["local"]]
    for name, (label, _) in RUNS.items():
        seconds = [run.seconds for run in runs[name]]
        print(
            f"{label:<20} {median(seconds):>8.1f} {median(60 * n / s for s in seconds):>10.1f} "
            f"{median(a / b for a, b in zip(local, seconds, strict=True)):>8.2f}x"
        )
    init = {c: median(run.init_seconds for run in runs[f"ray{c}"]) for c in (1, 2)}
    print(
        f"Ray start (ray.init, not counted above): {init[1]:.1f} s (1 CPU), "
        f"{init[2]:.1f} s (2 CPUs)"
    )
    pairs = list(zip(runs["ray1"], runs["local"], strict=True))
    overhead = median(a.seconds - b.seconds for a, b in pairs)
    worker_start = median(a.first_cell - b.first_cell for a, b in pairs)
    print(
        f"Ray overhead (1 worker - local, same round): {overhead / n:.2f} s per cell, "
        f"{overhead / len(groups):.2f} s per group, {overhead:.1f} s per run; of which "
        f"{worker_start:.1f} s before the first cell (starting the worker process), "
        f"{(overhead - worker_start) / len(groups):.2f} s per group after it"
    )
    busy = runs["local"][0].busy
    work, largest, typical = sum(busy.values()), max(busy.values()), median(busy.values())
    ceiling = work / max(largest, work / 2)
    over_one = median(
        a.seconds / b.seconds for a, b in zip(runs["ray1"], runs["ray2"], strict=True)
    )
    print(
        f"speed-up with 2 workers over 1 (same round): {over_one:.2f}x; ceiling {ceiling:.2f}x "
        f"({work:.1f} s of group work, largest group {largest:.1f} s, median {typical:.1f} s)"
    )
    print(
        f"load average (1 min) of this machine's {os.cpu_count()} CPUs: {load_before:.1f} before "
        f"the runs, {os.getloadavg()[0]:.1f} after (other processes share the CPUs)"
    )
    first = runs["local"][0].rows
    same = all(run.rows == first for name in RUNS for run in runs[name])
    print(
        f"rows identical across executors and rounds: {'yes' if same else 'NO'} "
        f"({len(first[0])} cells, {len(first[1])} example rows)"
    )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
