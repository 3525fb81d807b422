"""Command-line interface: a thin layer that parses, calls the library and prints."""

from __future__ import annotations

import argparse
import dataclasses
import json
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
        print(
            "error: 'medrobust tasks show' needs a task name ('medrobust tasks' lists them)",
            file=sys.stderr,
        )
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


def _print_report(paths: list[Path], store: Path | None = None) -> None:
    """The report's headline results, then where the report and its files are."""
    from medrobust.study.report import headline_section

    print(headline_section(paths[0].read_text(encoding="utf-8")))
    html = [p for p in paths if p.suffix == ".html"]
    print(f"\nReport: {html[0] if html else paths[0]} (Markdown: {paths[0]})")
    folder = paths[0].parent
    written = [store] if store is not None else []
    print(f"Wrote {len(paths)} files in {folder}" + (f" and the store {store}" if written else ""))


def _cmd_study(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from medrobust.study import CellResult, load_spec, run_study, write_report

    spec = load_spec(args.config)
    if args.executor is not None or args.address is not None:  # the flags override the config
        execution = dataclasses.replace(
            spec.execution,
            executor=args.executor or ("ray" if args.address else spec.execution.executor),
            address=args.address or spec.execution.address,
        )
        spec = dataclasses.replace(spec, execution=execution)
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
    _print_report(write_report(store), store)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from medrobust.study import write_report

    store = Path(args.store)
    if not store.is_file():
        print(f"error: no results store at {store}", file=sys.stderr)
        return 2
    _print_report(write_report(store, args.output))
    return 0


def _value(text: str) -> Any:
    """A command-line parameter value: JSON (numbers, true/false, lists), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _named(text: str, what: str) -> dict[str, Any]:
    """``NAME[:key=value,...]`` -> ``{"name": NAME, "params": {key: value}}``."""
    name, _, rest = text.partition(":")
    params: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(
                f"{what} parameters must be key=value, e.g. 'pgd:steps=20'. Got {item!r}."
            )
        params[key.strip()] = _value(value.strip())
    return {"name": name.strip(), "params": params} if params else {"name": name.strip()}


class _AttackAction(argparse.Action):
    """``--attack NAME[:key=value,...]`` starts a new attack entry."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        entries = list(getattr(namespace, self.dest) or [])
        try:
            entries.append(_named(str(values), "Attack"))
        except argparse.ArgumentTypeError as exc:
            parser.error(f"argument --attack: {exc}")
        setattr(namespace, self.dest, entries)


class _AttackOption(argparse.Action):
    """``--eps``/``--norm``: set on the attack given last (or on every attack when before any)."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        entries = getattr(namespace, "attacks", None)
        key = self.dest
        if entries:
            entries[-1][key] = values
        else:
            setattr(namespace, f"default_{key}", values)


def _cmd_audit(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from medrobust.auditing import audit
    from medrobust.study import CellResult, write_report

    attacks = args.attacks
    if attacks is not None:
        for entry in attacks:
            if "eps" not in entry and args.default_eps is not None:
                entry["eps"] = args.default_eps
            if "norm" not in entry and args.default_norm is not None:
                entry["norm"] = args.default_norm
    elif args.default_eps is not None or args.default_norm is not None:
        print("error: --eps and --norm follow the --attack they set", file=sys.stderr)
        return 2
    model, checkpoint = args.model, args.checkpoint
    if args.arch is not None:
        if checkpoint is not None:
            print(
                "error: with --arch, --model is the checkpoint; drop --checkpoint", file=sys.stderr
            )
            return 2
        model, checkpoint = args.arch, args.model
    data_options = {
        "modality": args.modality,
        "classes": args.classes,
        "positive": args.positive,
        "domain": args.domain,
        "label": args.label_column,
        "split": args.split_column,
        "text": args.text_column,
    }
    data_options = {k: v for k, v in data_options.items() if v is not None}
    training = {"epochs": args.epochs} if args.epochs is not None else None
    if args.lr is not None:
        training = {**(training or {}), "lr": args.lr}
    output = Path(args.output)
    bars: list[tqdm[Any]] = []

    def progress(result: CellResult, done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, desc="cells", unit="cell", disable=args.quiet))
        bars[0].n = done
        bars[0].refresh()

    try:
        store = audit(
            model,
            task=args.task,
            data=args.data,
            data_options=data_options or None,
            checkpoint=checkpoint,
            model_params=args.param,
            label=args.label,
            train=args.train,
            training=training,
            attacks=attacks,
            defenses=args.defenses or (),
            trials=args.trials,
            seed=args.seed,
            max_attack_examples=args.max_attack_examples,
            device=args.device,
            output=output,
            report=False,
            on_cell=progress,
        )
    finally:
        for bar in bars:
            bar.close()
    _print_report(write_report(store), store)
    return 0


def _add_audit_parser(sub: Any) -> None:
    audit = sub.add_parser(
        "audit",
        help="evaluate your own model on a task or data file under attacks and defenses",
        description=(
            "Audit a trained model: --model package.module:factory or path/to/file.py:factory "
            "(a callable returning an nn.Module) with --checkpoint STATE_DICT.pt, or a "
            "registered architecture with --arch NAME --model STATE_DICT.pt, or a Hugging Face "
            "sequence classifier saved with save_pretrained, --model huggingface:DIR (text; "
            "--param max_length=N, default 128); on --task NAME or --data FILE.npz|.csv. Writes "
            "the store and report of a study."
        ),
    )
    audit.add_argument(
        "--model",
        required=True,
        help="module:factory, file.py:factory, huggingface:DIR, or .pt (with --arch)",
    )
    audit.add_argument("--checkpoint", help="state dict of the model (torch.save(state_dict))")
    audit.add_argument("--arch", help="registered architecture whose state dict is --model")
    audit.add_argument(
        "--param",
        type=lambda text: _named(f"model:{text}", "Model").get("params"),
        help="factory keyword arguments, key=value[,key=value] (values as JSON)",
    )
    audit.add_argument("--label", help="the model's name in the report")
    audit.add_argument("--train", action="store_true", help="train the model instead")
    where = audit.add_mutually_exclusive_group(required=True)
    where.add_argument("--task", help="task name (medrobust tasks lists them)")
    where.add_argument(
        "--data", help="your data: .npz (x_train, y_train, x_test, y_test) or .csv (also text)"
    )
    audit.add_argument("--modality", choices=["image", "ecg", "tabular", "text"], help="of --data")
    audit.add_argument("--classes", help="class names of --data, comma-separated")
    audit.add_argument("--positive", help="the disease class of --data (label or class name)")
    audit.add_argument("--domain", help="valid input range of --data, 'low,high'")
    audit.add_argument("--label-column", help="label column of a CSV (default: label)")
    audit.add_argument("--split-column", help="train/val/test column of a CSV (default: split)")
    audit.add_argument("--text-column", help="text column of a text CSV (default: text)")
    audit.add_argument(
        "--attack",
        dest="attacks",
        action=_AttackAction,
        metavar="NAME[:k=v,...]",
        help="an attack (repeat for more); default FGSM and PGD",
    )
    audit.add_argument(
        "--eps",
        dest="eps",
        action=_AttackOption,
        type=float,
        nargs="+",
        help="budgets of the --attack before it (default: the modality's)",
    )
    audit.add_argument(
        "--norm", dest="norm", action=_AttackOption, help="norm of the --attack before it"
    )
    audit.add_argument(
        "--defense",
        dest="defenses",
        action="append",
        type=lambda text: _named(text, "Defense"),
        metavar="NAME[:k=v,...]",
        help="a defense (repeat for more)",
    )
    audit.add_argument("--epochs", type=int, help="epochs of training or defense fine-tuning")
    audit.add_argument("--lr", type=float, help="learning rate of training or fine-tuning")
    audit.add_argument("--trials", type=int, default=3, help="independent trials (default 3)")
    audit.add_argument("--seed", type=int, default=0)
    audit.add_argument("--max-attack-examples", type=int, default=500)
    audit.add_argument("--device", default="cpu")
    audit.add_argument("--output", default="medrobust-audit", help="output folder")
    audit.add_argument("--quiet", action="store_true", help="no progress bar")
    audit.set_defaults(func=_cmd_audit, default_eps=None, default_norm=None)


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
    study.add_argument(
        "--executor",
        choices=["local", "ray"],
        help="run the cell groups in this process or as Ray tasks (default: the config's)",
    )
    study.add_argument(
        "--address",
        help="Ray cluster to connect to, e.g. auto or ray://host:10001 (implies --executor ray)",
    )
    study.set_defaults(func=_cmd_study)

    report = sub.add_parser("report", help="write the report of a results store")
    report.add_argument("store", help="path to results.sqlite")
    report.add_argument("--output", help="folder for the report files (default: beside the store)")
    report.set_defaults(func=_cmd_report)

    _add_audit_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medrobust`` command; returns the exit status."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if any("\x00" in arg for arg in argv):
        parser.error("arguments cannot contain NUL bytes")
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
    except OSError as exc:  # the file system refused: no permission, disk full, not a folder
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished cells are kept in the store, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
