"""Task types: the one registry that the coordinator and the workers share.

A task type is a name, a payload check and a function. The coordinator uses the
check to refuse a bad submission before it is queued; workers look the function
up by name and run it. Adding a task type is one :func:`task_type` decorator.
"""

from fractalq.tasks.registry import (
    InvalidPayload,
    TaskContext,
    TaskType,
    available,
    get,
    names,
    task_type,
    time_limit,
)

__all__ = [
    "InvalidPayload",
    "TaskContext",
    "TaskType",
    "available",
    "get",
    "names",
    "task_type",
    "time_limit",
]
