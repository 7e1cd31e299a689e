"""The registry of task types and the contract of a task function."""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable

from fractalq import config


class InvalidPayload(ValueError):
    """A payload that its task type cannot run; the message says why."""


@dataclasses.dataclass(frozen=True)
class TaskContext:
    """What a running task may use besides its payload.

    It is plain data so that it can cross into a worker's child processes.
    """

    storage_url: str | None = None
    job_id: str = ""
    index: int = 0
    attempt: int = 1


TaskFunction = Callable[[bytes, TaskContext], bytes]
PayloadCheck = Callable[[bytes], None]
WarmUp = Callable[[], None]


@dataclasses.dataclass(frozen=True)
class TaskType:
    name: str
    run: TaskFunction
    check: PayloadCheck
    # CPU-bound tasks run in worker processes; the others on threads.
    cpu_bound: bool = False
    needs_storage: bool = False
    # Run once in each process that will run this type, when the worker starts:
    # imports and compiled code are ready before the first task arrives.
    warm: WarmUp | None = None
    # Seconds an attempt may run before the worker stops it and reports it
    # failed (a job may set another limit for its tasks).
    time_limit: float = config.DEFAULT_TIME_LIMIT
    # A result limit above the queue's MAX_RESULT_BYTES (0: the queue's), for a
    # type whose result is its output (a tile's PNG, not a storage key).
    max_result_bytes: int = 0


_REGISTRY: dict[str, TaskType] = {}

# Modules that register task types when imported; loaded on first lookup so
# that importing the registry stays cheap.
_PROVIDERS = (
    "fractalq.tasks.builtin",
    "fractalq.tasks.band",
    "fractalq.tasks.assemble",
    "fractalq.tasks.sweep",
    "fractalq.tasks.tile",
    "fractalq.tasks.zoom",
    "fractalq.tasks.encode",
)
_loaded = False


def _load() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in _PROVIDERS:
            importlib.import_module(module)


def _no_check(payload: bytes) -> None:
    return None


def _guarded(name: str, check: PayloadCheck) -> PayloadCheck:
    """``check``, but any failure of it is an :class:`InvalidPayload`.

    The coordinator runs checks on what clients send: a parser's own error
    (``json.loads`` raises RecursionError on deeply nested input) must refuse
    the payload, not escape as an internal error.
    """

    def guarded(payload: bytes) -> None:
        try:
            check(payload)
        except InvalidPayload:
            raise
        except RecursionError:
            raise InvalidPayload("payload is nested too deeply") from None
        except Exception:  # the class name is internal: it is not sent back
            raise InvalidPayload(f"not a valid {name!r} payload") from None

    return guarded


def task_type(
    name: str,
    *,
    check: PayloadCheck = _no_check,
    cpu_bound: bool = False,
    needs_storage: bool = False,
    warm: WarmUp | None = None,
    time_limit: float = config.DEFAULT_TIME_LIMIT,
    max_result_bytes: int = 0,
) -> Callable[[TaskFunction], TaskFunction]:
    """Register the decorated function as the task type ``name``."""

    def register(run: TaskFunction) -> TaskFunction:
        if name in _REGISTRY:
            raise ValueError(f"task type {name!r} is registered twice")
        if not 0 < time_limit <= config.MAX_TIME_LIMIT:
            raise ValueError(f"task type {name!r}: time_limit must be in (0, MAX_TIME_LIMIT]")
        _REGISTRY[name] = TaskType(
            name,
            run,
            _guarded(name, check),
            cpu_bound,
            needs_storage,
            warm,
            time_limit,
            max_result_bytes,
        )
        return run

    return register


def get(name: str) -> TaskType:
    """The task type called ``name``; KeyError names the known ones."""
    _load()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise KeyError(f"unknown task type {name!r} (known: {known})") from None


def names() -> list[str]:
    _load()
    return sorted(_REGISTRY)


def time_limit(kind: TaskType, requested: float) -> float:
    """Seconds an attempt of ``kind`` may run: the job's limit, or 0 for the type's."""
    return requested if requested > 0 else kind.time_limit


def available(has_storage: bool) -> list[str]:
    """The types a worker can serve: those that store results need storage."""
    _load()
    return sorted(name for name, kind in _REGISTRY.items() if has_storage or not kind.needs_storage)
