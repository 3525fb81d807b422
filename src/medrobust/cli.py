"""Command-line interface: a thin layer that parses, calls the library and prints."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medrobust import __version__
from medrobust.errors import MedrobustError


def _cmd_tasks(args: argparse.Namespace) -> int:
    from medrobust.data import TASKS, get_task_spec, load_task

    if args.action is None:
        print(f"{'task':<20} {'modality':<9} {'kind':<18} {'split':<9} summary")
        for name in TASKS.names():
            spec = TASKS.get(name)
            split = "re-split" if spec.resplits else "official"
            kind = spec.kind.value
            print(f"{name:<20} {spec.modality.value:<9} {kind:<18} {split:<9} {spec.summary}")
        print("\nGeneric names: medmnist:<subset> (official MedMNIST .npz), ucr:<Dataset> (UCR).")
        return 0
    if args.action != "show" or not args.name:
        print("usage: medrobust tasks [show NAME]", file=sys.stderr)
        return 2
    task = load_task(args.name, seed=args.seed)
    print(f"{task.name}: {task.description}")
    domain = f"[{task.domain.low}, {task.domain.high}]"
    print(f"modality {task.modality.value}, {task.kind.value}, domain {domain}")
    print("classes: " + ", ".join(f"{i} = {n}" for i, n in enumerate(task.class_names)))
    print(f"positive class: {task.positive_class} ({task.class_names[task.positive_class]})")
    for split_name, part in task.splits().items():
        counts = part.class_counts(task.num_classes)
        print(f"  {split_name:<5} x{tuple(part.x.shape)} class counts {counts}")
    harmful = get_task_spec(args.name).harmful_targets
    if harmful:
        names = task.class_names
        misreadings = ", ".join(f"{names[a]} -> {names[b]}" for a, b in harmful.items())
        print(f"harmful targets (targeted attacks): {misreadings}")
    for key, value in task.metadata.items():
        if key not in ("files", "checksums", "source_files"):
            print(f"  {key}: {value}")
    return 0


def _cmd_study(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from medrobust.study import CellResult, load_spec, run_study, write_report

    spec = load_spec(args.config)
    output = Path(args.output or spec.output)
    bars: list[tqdm[Any]] = []

    def progress(result: CellResult, done: int, total: int) -> None:
        if not bars:  # created on the first finished cell, so a failed start prints no bar
            bars.append(tqdm(total=total, desc="cells", unit="cell", disable=args.quiet))
        bars[0].n = done
        bars[0].set_postfix_str(result.cell["task"], refresh=False)
        bars[0].refresh()

    try:
        store = run_study(spec, output=output, on_cell=progress)
    finally:
        for bar in bars:
            bar.close()
    paths = write_report(store)
    print(paths[0].read_text(encoding="utf-8"))  # the report's tables, computed once
    print("Wrote " + ", ".join(str(p) for p in [store, *paths]))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from medrobust.study import write_report

    store = Path(args.store)
    if not store.is_file():
        print(f"error: no results store at {store}", file=sys.stderr)
        return 2
    paths = write_report(store, args.output)
    print(paths[0].read_text(encoding="utf-8"))
    print("Wrote " + ", ".join(str(p) for p in paths))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``medrobust`` command."""
    parser = argparse.ArgumentParser(
        prog="medrobust",
        description="Adversarial robustness of medical AI models, with statistics.",
    )
    parser.add_argument("--version", action="version", version=f"medrobust {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    tasks = sub.add_parser("tasks", help="list tasks, or show one task's splits")
    tasks.add_argument("action", nargs="?", choices=["show"], help="show one task")
    tasks.add_argument("name", nargs="?", help="task name")
    tasks.add_argument("--seed", type=int, default=0, help="split seed for re-split tasks")
    tasks.set_defaults(func=_cmd_tasks)

    study = sub.add_parser(
        "study", help="run a study from a TOML/YAML config (default study if none)"
    )
    study.add_argument("config", nargs="?", help="config file (.toml, .yaml)")
    study.add_argument("--output", help="output folder (default: the config's study.output)")
    study.add_argument("--quiet", action="store_true", help="no progress bar")
    study.set_defaults(func=_cmd_study)

    report = sub.add_parser("report", help="write the report of a results store")
    report.add_argument("store", help="path to results.sqlite")
    report.add_argument("--output", help="folder for the report files (default: beside the store)")
    report.set_defaults(func=_cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medrobust`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except MedrobustError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished cells are kept in the store, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
