"""Task types: the one registry that the coordinator and the workers share.

A task type is a name, a payload check and a function. The coordinator uses the
check to refuse a bad submission before it is queued; workers look the function
up by name and run it. Adding a task type is one :func:`task_type` decorator in
a module that the ``fractalq.tasks`` entry-point group (or ``--tasks``) names.
"""

from fractalq.tasks.registry import (
    ENTRY_POINT_GROUP,
    InvalidPayload,
    TaskContext,
    TaskLoadError,
    TaskType,
    available,
    get,
    load,
    loaded_modules,
    names,
    task_type,
    time_limit,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "InvalidPayload",
    "TaskContext",
    "TaskLoadError",
    "TaskType",
    "available",
    "get",
    "load",
    "loaded_modules",
    "names",
    "task_type",
    "time_limit",
]
