"""Executors: where and how a study's cell groups run.

A cell group is one trained model and the cells that evaluate it (:func:`group_cells`); it is
the unit of work and of parallelism. An executor takes the groups as plain cell dicts and yields
each finished cell as soon as it is done; :func:`~medrobust.study.runner.run_study` stores it
(one transaction per cell) before it asks for the next, so a failure never loses finished work.

- :class:`LocalExecutor` runs the groups one after another in this process.
- :class:`RayExecutor` runs each group as a Ray streaming-generator task: every cell travels back
  to the driver as the worker yields it. A group whose worker died, or that raised an unexpected
  error, is retried (``retries`` times) from its start; a group that raised a
  :class:`~medrobust.errors.MedrobustError` (a config or data problem, which fails the same way
  every time) is not. The driver skips cells it already has, so a retried group never stores a
  cell twice. A group that still fails does not stop the others: the study fails with a
  :class:`GroupFailedError` naming it once every other group is done and stored.

Each Ray task asks for its group's CPUs and GPUs (:class:`~medrobust.study.spec.GroupResources`)
and runs torch with as many threads as it has whole CPUs, so that its rows equal those of a local
run with that many threads. Workers get the driver's ``MEDROBUST_*`` environment variables (data
folder, cache, offline mode). Checkpoints go to ``<output>/checkpoints`` as in a local run: on a
shared filesystem a transfer cell's surrogate is trained once; without one a worker that misses
it trains it again (deterministically, so the rows are the same).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from medrobust.errors import ConfigError, GroupFailedError, MedrobustError
from medrobust.study.plan import Cell
from medrobust.study.runner import run_group
from medrobust.study.spec import ExecutionSpec
from medrobust.study.store import CellResult

logger = logging.getLogger(__name__)

GroupRunner = Callable[[Sequence[dict[str, Any]], str], Iterator[CellResult]]
"""Runs one cell group: (cell dicts, output folder) -> finished cells (:func:`run_group`)."""

Group = Sequence[dict[str, Any]]

ENV_PREFIX = "MEDROBUST_"


def group_label(group: Group) -> str:
    """A cell group's name in messages: task/model[+defense it trains with]/trial, cell count."""
    first = Cell(**group[0])
    model = first.model_label or first.model
    if first.retrained:
        model += f"+{first.defense_label}"
    if first.poisoning is not None:
        model += f"+{first.poisoning['label']}"
    if first.treatment is not None and first.treatment.get("trained_with") is not None:
        model += f"+{first.treatment['defense']['label']}"
    return f"{first.task}/{model}/trial {first.trial} ({len(group)} cells)"


class Executor(ABC):
    """Runs cell groups and yields their finished cells, in any order."""

    @abstractmethod
    def run(self, groups: Sequence[Group], output: str) -> Generator[CellResult, None, None]:
        """Run ``groups`` (each a list of cell dicts sharing a trained model). A caller that
        stops early closes the generator (``contextlib.closing``), which stops what still runs.

        Args:
            groups: the cell groups to run.
            output: the study's output folder (checkpoints go to ``<output>/checkpoints``).

        Yields:
            The finished cells, each as soon as it is done.

        Raises:
            GroupFailedError: (Ray) a group failed; raised after every other group is done.
        """


class LocalExecutor(Executor):
    """Runs the groups one after another in this process, with its torch settings.

    Args:
        runner: runs one group (default :func:`run_group`).
    """

    def __init__(self, runner: GroupRunner = run_group):
        self.runner = runner

    def run(self, groups: Sequence[Group], output: str) -> Generator[CellResult, None, None]:
        """Run each group in order; an error propagates as it is raised."""
        for group in groups:
            yield from self.runner(group, output)


@dataclass(frozen=True)
class _Failure:
    """What a Ray task yields instead of raising a MedrobustError, so that Ray does not retry it."""

    message: str
    error: BaseException | None  # the error itself where it survives pickling


def _failure(exc: MedrobustError) -> _Failure:
    try:
        error: BaseException | None = pickle.loads(pickle.dumps(exc))
    except Exception:  # an error with a custom __init__ (DataNotFoundError) may not unpickle
        error = None
    return _Failure(f"{type(exc).__name__}: {exc}", error)


def _group_task(
    runner: GroupRunner, group: Group, output: str, threads: int
) -> Iterator[CellResult | _Failure]:
    """The body of a Ray task: one group with ``threads`` torch threads, each cell yielded."""
    torch.set_num_threads(threads)  # a worker process serves many tasks: set it every time
    try:
        yield from runner(group, output)
    except MedrobustError as exc:
        yield _failure(exc)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(
            'The Ray executor needs Ray. Install it with: pip install "medrobust[distributed]"'
        ) from exc
    return ray


class RayExecutor(Executor):
    """Runs each cell group as a Ray task (see the module docstring).

    Connects to ``execution.address`` if given, else starts a Ray instance on this machine (no
    dashboard, worker output kept out of the driver's terminal); a Ray instance already
    initialized in this process (``ray.init`` by the caller) is used as it is. Only an instance
    (or connection) this executor started is shut down at the end.

    Args:
        execution: the study's execution settings: address, retries and resources per group.
        device: the study's device; a CUDA study needs GPUs in its resources.
        runner: runs one group on a worker (default :func:`run_group`); it must be picklable.
    """

    def __init__(
        self, execution: ExecutionSpec, *, device: str = "cpu", runner: GroupRunner = run_group
    ):
        _import_ray()  # a missing Ray fails before the study computes anything
        self.execution = execution
        self.device = device
        self.runner = runner

    def _check_resources(self, groups: Sequence[Group]) -> None:
        if not self.device.startswith("cuda"):
            return
        if self.device not in ("cuda", "cuda:0"):
            raise ConfigError(
                f"study.device must be 'cuda' with the Ray executor: Ray gives each cell group "
                f"the GPUs it asks for, which it sees as cuda:0. Got {self.device!r} instead."
            )
        for task in sorted({group[0]["task"] for group in groups}):
            if self.execution.resources_for(task).gpus == 0:
                raise ConfigError(
                    f"study.device is {self.device!r}, but the cell groups of task {task!r} ask "
                    "Ray for no GPU, so Ray may place them on a worker without one. Set "
                    "study.resources.gpus (e.g. 1, or 0.5 to share a GPU between two groups)."
                )

    def _connect(self, ray: Any) -> bool:
        """Connect to Ray if this process is not connected; True if this call connected."""
        if ray.is_initialized():
            return False
        address = self.execution.address
        if address is None:
            ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
            return True
        try:
            if address.startswith("ray://"):  # Ray Client takes few of ray.init's options
                ray.init(address=address, logging_level=logging.WARNING)
            else:
                ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, ray.exceptions.RayError) as exc:
            raise ConfigError(
                f"Cannot connect to the Ray cluster at study.address {address!r}: {exc}"
            ) from exc
        return True

    def run(self, groups: Sequence[Group], output: str) -> Generator[CellResult, None, None]:
        """Submit every group at once (Ray queues them by resources) and yield cells as workers
        finish them; a cell yielded twice by a retried group is yielded once."""
        if not groups:
            return
        self._check_resources(groups)
        ray = _import_ray()
        started = self._connect(ray)
        pending: dict[Any, tuple[str, int]] = {}  # generator -> (label, cells yielded)
        try:
            remote = ray.remote(_group_task)
            env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}
            for group in groups:
                resources = self.execution.resources_for(group[0]["task"])
                label = group_label(group)
                options: dict[str, Any] = {
                    "num_returns": "streaming",
                    "num_cpus": resources.cpus,
                    "num_gpus": resources.gpus,
                    "max_retries": self.execution.retries,
                    "retry_exceptions": True,  # a MedrobustError is yielded, never raised
                    "name": f"medrobust {label}",
                }
                if env:
                    options["runtime_env"] = {"env_vars": env}
                task = remote.options(**options).remote(
                    self.runner, list(group), output, resources.threads
                )
                pending[task] = (label, 0)
            seen: set[str] = set()
            failures: list[tuple[str, BaseException | None]] = []
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for task in ready:
                    label, count = pending[task]
                    try:
                        item = ray.get(next(task))
                    except StopIteration:
                        del pending[task]
                        continue
                    except ray.exceptions.RayError as exc:  # failed after its retries
                        cause = getattr(exc, "cause", None) or exc
                        message = (
                            f"{label} failed after {self.execution.retries + 1} attempt(s) "
                            f"({count} of its cells stored): {type(cause).__name__}: {cause}"
                        )
                        logger.error("%s", message)
                        failures.append((message, exc))
                        del pending[task]
                        continue
                    if isinstance(item, _Failure):
                        message = (
                            f"{label} failed ({count} of its cells stored; not retried: a "
                            f"medrobust error fails the same way every time): {item.message}"
                        )
                        logger.error("%s", message)
                        failures.append((message, item.error))
                        del pending[task]
                        continue
                    pending[task] = (label, count + 1)
                    if item.cell_id not in seen:
                        seen.add(item.cell_id)
                        yield item
            if failures:
                message = "\n".join(f"  - {m}" for m, _ in failures)
                raise GroupFailedError(
                    f"{len(failures)} of {len(groups)} cell group(s) failed:\n{message}\n"
                    "Every finished cell is in the store; fix the cause and rerun the study to "
                    "run the missing cells."
                ) from failures[0][1]
        finally:
            for task in pending:  # an error or interrupt on the driver: stop what still runs
                with contextlib.suppress(Exception):  # never hide the error that got us here
                    ray.cancel(task, force=True)
            if started:
                ray.shutdown()


def make_executor(execution: ExecutionSpec, *, device: str = "cpu") -> Executor:
    """The executor that ``execution.executor`` names."""
    if execution.executor == "ray":
        return RayExecutor(execution, device=device)
    return LocalExecutor()
