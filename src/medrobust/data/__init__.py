"""What is evaluated: tasks (dataset, splits, class names, positive class) and their data files.

Public API:

- :data:`TASKS`, :func:`task_names`, :func:`get_task_spec`, :func:`load_task`: the tasks.
- :func:`required_files`, :func:`ensure_files`: every file the tasks need, checked (and
  downloaded) before any compute, with one error listing everything missing.
- :func:`cache_dir`, :func:`offline_dir`: where files are looked for (``MEDROBUST_CACHE``,
  ``MEDROBUST_DATA``); ``MEDROBUST_OFFLINE=1`` disables downloads.
- :class:`DataFile`, :func:`fetch`: one catalogue file and how it is found.
"""

from __future__ import annotations

from medrobust.data.files import DataFile, cache_dir, fetch, offline_dir
from medrobust.data.task import Split, Task, TaskSpec
from medrobust.data.tasks import (
    TASKS,
    ensure_files,
    get_task_spec,
    load_task,
    required_files,
    task_names,
)

__all__ = [
    "TASKS",
    "DataFile",
    "Split",
    "Task",
    "TaskSpec",
    "cache_dir",
    "ensure_files",
    "fetch",
    "get_task_spec",
    "load_task",
    "offline_dir",
    "required_files",
    "task_names",
]
