"""What the broker tells the rest of the coordinator: a list of listeners.

The broker is plain Python with no transport in it; the layers around it learn
what happened through :class:`Listener` objects added to ``broker.listeners``
(the gRPC service wakes long polls and pushes job watches, ``/metrics`` times
leases and runs, the dashboard keeps previews, the explorer answers tiles).
A listener overrides only the events it wants; each event goes to the
listeners in the order they were added, and one that raises is logged and
does not keep the event from the others, nor undo the broker's change.

The broker calls them on its hot path (every lease and report), so each
event keeps a list of only the listeners that override it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fractalq.coordinator.jobs import Job

log = logging.getLogger("fractalq.coordinator")

EVENTS = ("ready", "job_changed", "task_result", "leased", "ran")


class Listener:
    """A subscriber to the broker's events; each method does nothing unless overridden."""

    def ready(self) -> None:
        """A task may be ready to lease (wake the workers' long polls)."""

    def job_changed(self, job: Job) -> None:
        """A job's state or counts changed (push it to its watches)."""

    def task_result(self, job: Job, index: int, result: bytes) -> None:
        """A task's result was accepted."""

    def leased(self, task_type: str, waited: float) -> None:
        """A task was leased after ``waited`` seconds ready in the queue."""

    def ran(self, task_type: str, outcome: str, seconds: float) -> None:
        """A report was accepted: ``outcome`` "succeeded" or "failed", after ``seconds``."""


class Listeners:
    """The broker's listeners; calling an event calls each listener that has it."""

    def __init__(self) -> None:
        self._calls: dict[str, list[Callable[..., None]]] = {name: [] for name in EVENTS}

    def add(self, listener: Listener) -> None:
        for name in EVENTS:
            if getattr(type(listener), name) is not getattr(Listener, name):
                self._calls[name].append(getattr(listener, name))

    def _emit(self, name: str, *args: Any) -> None:
        for call in self._calls[name]:
            try:
                call(*args)
            except Exception:  # a listener's bug must not fail a worker's report
                log.exception("a listener of %s failed", name)

    def ready(self) -> None:
        self._emit("ready")

    def job_changed(self, job: Job) -> None:
        self._emit("job_changed", job)

    def task_result(self, job: Job, index: int, result: bytes) -> None:
        self._emit("task_result", job, index, result)

    def leased(self, task_type: str, waited: float) -> None:
        self._emit("leased", task_type, waited)

    def ran(self, task_type: str, outcome: str, seconds: float) -> None:
        self._emit("ran", task_type, outcome, seconds)
