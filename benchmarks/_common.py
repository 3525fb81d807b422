"""What the benchmark scripts share: their environment, options, timing and small trained models.

``benchmarks/attacks.py`` and ``benchmarks/defenses.py`` import this module as ``_common``: run as
``python benchmarks/<script>.py``, a script's own folder is first on ``sys.path``. It imports no
medrobust at module level, because :func:`setup_environment` has to put this checkout's ``src``
on the path first: a script calls it right after importing this module and only then imports
medrobust (the helpers here that need medrobust import it when called).

One idea, one place:

- the environment: :func:`setup_environment` (real data offline, a private cache, this
  checkout's package) and :func:`steady_allocator` (fixed glibc thresholds);
- the options every benchmark has and what they set up: :func:`new_parser` (``--quick``,
  ``--threads``), :func:`add_library_options` (``--libraries``, ``--default-allocator``),
  :func:`start_run` (threads, allocator, the run's header, the optional libraries via
  :func:`load_libraries`);
- the examples and models: :func:`test_examples`, :func:`train`, :func:`train_on_splits`,
  :func:`accuracy` and :class:`TrainedModel`;
- the timing: :func:`rotated_rounds` (interleaved rounds, collector paused), the paired-round
  ratios :func:`time_ratio` and :func:`throughput_ratio`, and :func:`verdict`.
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import gc
import importlib
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from medrobust.models import TensorSplits
    from medrobust.training import FitConfig

REPO = Path(__file__).resolve().parents[1]
"""The repository root: the folder above ``benchmarks``."""


# -- environment ---------------------------------------------------------------------------------


def setup_environment() -> None:
    """Real data offline, a private cache unless one is set, and this checkout's own package
    (ahead of any installed copy, so that a fresh clone measures its own code).

    ``MEDROBUST_DATA`` defaults to ``../shared/data`` beside the repository, ``MEDROBUST_OFFLINE``
    to 1; without ``MEDROBUST_CACHE`` a temporary folder serves, removed at exit.
    """
    if not os.environ.get("MEDROBUST_DATA", "").strip():
        os.environ["MEDROBUST_DATA"] = str(REPO.parent / "shared" / "data")
    os.environ.setdefault("MEDROBUST_OFFLINE", "1")
    if not os.environ.get("MEDROBUST_CACHE", "").strip():
        cache = tempfile.mkdtemp(prefix="medrobust-bench-")
        atexit.register(shutil.rmtree, cache, ignore_errors=True)
        os.environ["MEDROBUST_CACHE"] = cache
    if (REPO / "src" / "medrobust").is_dir():
        sys.path.insert(0, str(REPO / "src"))


def steady_allocator() -> bool:
    """Fix glibc's allocator thresholds (where there is glibc); True where that worked.

    By default glibc hands large freed blocks back to the OS and faults them in again on the
    next allocation, with a threshold that moves with the history of allocations: which contender
    ran just before changed a contender's time by up to 15 % here. Fixed, high thresholds keep
    freed memory for reuse, the same for every contender and for the limit.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, 1 << 30)) and bool(libc.mallopt(-1, 1 << 30))  # MMAP, TRIM
    except (OSError, AttributeError):
        return False


def load_libraries(
    wanted: set[str], names: Mapping[str, str], submodules: Mapping[str, Sequence[str]]
) -> dict[str, Any]:
    """Import each wanted library and the ``submodules`` the benchmark needs of it, printing its
    version; one not wanted or not installed is reported and left out.

    Args:
        wanted: the import names asked for (``--libraries``).
        names: import name -> name printed, in the order of the report.
        submodules: import name -> modules imported with it (a missing one makes the library
            count as not installed).

    Returns:
        import name -> module, for the libraries found.
    """
    found: dict[str, Any] = {}
    for name, shown in names.items():
        if name not in wanted:
            print(f"  {shown:<13} skipped (--libraries)")
            continue
        try:
            with warnings.catch_warnings(action="ignore"):  # their import-time deprecation noise
                module = importlib.import_module(name)
                for submodule in submodules.get(name, ()):
                    importlib.import_module(submodule)
        except ImportError as exc:
            print(f"  {shown:<13} not installed ({exc.name or exc})")
            continue
        found[name] = module
        print(f"  {shown:<13} {getattr(module, '__version__', '?')}")
    return found


# -- options and the start of a run --------------------------------------------------------------


def new_parser(description: str, quick_help: str) -> argparse.ArgumentParser:
    """A parser with the options every benchmark has first: ``--quick`` and ``--threads``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: steadiest on a shared machine)",
    )
    return parser


def add_library_options(
    parser: argparse.ArgumentParser, libraries: Sequence[str], libraries_help: str
) -> None:
    """The options every benchmark has last: ``--libraries`` (default: all of ``libraries``)
    and ``--default-allocator``."""
    parser.add_argument("--libraries", default=",".join(libraries), help=libraries_help)
    parser.add_argument(
        "--default-allocator",
        action="store_true",
        help="leave glibc's allocator thresholds alone (noisier timings)",
    )


def start_run(
    args: argparse.Namespace,
    title: str,
    names: Mapping[str, str],
    submodules: Mapping[str, Sequence[str]],
) -> dict[str, Any]:
    """Set torch's threads and the allocator as ``args`` ask, print the run's header (``title``,
    versions, data folder, allocator) and load the libraries (see :func:`load_libraries`)."""
    torch.set_num_threads(args.threads)
    steady = steady_allocator() if not args.default_allocator else False
    print(
        f"medrobust {title} benchmark: torch {torch.__version__}, {args.threads} thread(s), "
        f"{os.cpu_count()} CPU(s), {'quick' if args.quick else 'full'} run"
    )
    print(f"data: {os.environ['MEDROBUST_DATA']}")
    print(f"allocator: {'glibc with fixed thresholds' if steady else 'default'}")
    print("libraries:")
    wanted = {s.strip() for s in args.libraries.split(",") if s.strip()}
    return load_libraries(wanted, names, submodules)


# -- examples and models -------------------------------------------------------------------------


def test_examples(inputs: TensorSplits, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``size`` examples of the test split, then of the validation split."""
    x = torch.cat([inputs.x["test"], inputs.x["val"]])[:size]
    y = torch.cat([inputs.y["test"], inputs.y["val"]])[:size]
    return x.contiguous(), y


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    config: FitConfig,
) -> float:
    """Fit ``model`` with medrobust's ``fit`` (seed 0), then leave it in eval mode with its
    weights frozen: nobody needs weight gradients here (ART and Foolbox would store them).
    ``model`` may be a wrapper such as ``GaussianNoiseAugmentation``: its module and parameters
    are the wrapped model's. Returns the seconds it took."""
    from medrobust.training import fit

    start = time.perf_counter()
    fit(model, x, y, x_val, y_val, config=config, seed=0)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return time.perf_counter() - start


def train_on_splits(model: nn.Module, inputs: TensorSplits, config: FitConfig) -> float:
    """:func:`train` on the train split of ``inputs``, with its validation split."""
    return train(
        model, inputs.x["train"], inputs.y["train"], inputs.x["val"], inputs.y["val"], config
    )


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Percentage of ``x`` that ``model`` labels ``y``."""
    from medrobust.metrics import predictions

    with torch.no_grad():
        return 100.0 * float((predictions(model(x.detach())) == y).float().mean())


@dataclass
class TrainedModel:
    """A small model trained for a benchmark, with the examples every contender runs on (each
    script subclasses it with what its contenders need besides)."""

    key: str  # short name: the first column of every table
    description: str
    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    classes: int
    train_s: float  # seconds its training took

    @cached_property
    def clean_accuracy(self) -> float:
        """Percentage of ``x`` the model labels ``y``."""
        return accuracy(self.model, self.x, self.y)


# -- timing --------------------------------------------------------------------------------------


def rotated_rounds(
    rounds: int, calls: Callable[[int], Mapping[str, Callable[[], Any]]], keep: int = 0
) -> tuple[dict[str, list[float]], dict[str, list[Any]]]:
    """Time ``rounds`` rounds; round ``r`` runs each of ``calls(r)`` (name -> zero-argument call,
    the same names every round) once, in their order rotated by ``r``, so that every contender
    runs after every other as often as the rounds allow.

    The garbage collector is paused inside the rounds (no collector pause inside a timed call)
    and collects once after each round.

    Returns:
        name -> seconds per round, and name -> outputs of the first ``keep`` rounds (the
        others are dropped as soon as they return, inside the timed call).
    """
    first = calls(0)
    names = list(first)
    times: dict[str, list[float]] = {name: [] for name in names}
    outputs: dict[str, list[Any]] = {name: [] for name in names}
    gc.collect()
    gc.disable()
    try:
        for r in range(rounds):
            this_round = first if r == 0 else calls(r)
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                if r < keep:
                    outputs[name].append(this_round[name]())
                else:
                    this_round[name]()
                times[name].append(time.perf_counter() - start)
            gc.collect()
    finally:
        gc.enable()
    return times, outputs


def time_ratio(times: Mapping[str, list[float]], name: str, reference: str) -> float:
    """Median over rounds of ``name``'s time over ``reference``'s time in the same round (so
    that load from other processes cancels as far as it can)."""
    return statistics.median(a / b for a, b in zip(times[name], times[reference], strict=True))


def throughput_ratio(times: Mapping[str, list[float]], name: str, reference: str) -> float:
    """``name``'s throughput relative to ``reference``'s on the same work: the median over
    rounds of ``reference``'s time over ``name``'s time in the same round."""
    return time_ratio(times, reference, name)


def verdict(ok: bool) -> str:
    """A goal met or not, as the tables print it."""
    return "PASS" if ok else "MISS"
