"""The registry of task types and the contract of a task function.

The coordinator, the worker and the dashboard know task types only through
this registry. It is filled from three places (:func:`_load`, :func:`load`):
the queue's diagnostic types (``noop``, ``sleep``, ``fail``), every module an
installed package names in the ``fractalq.tasks`` entry-point group (fractalq's
fractal types are one such package entry, like any other), and ``--tasks``
modules. The coordinator checks payloads with the same registry, so a type
must be known where the coordinator runs too (the same package installed, or
the same ``--tasks``): a worker offering a type it does not know is refused.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import os
import sys
import types
from collections.abc import Callable, Iterable

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
PixelCount = Callable[[bytes], int]
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
    # Warmed before the types without it (a worker warms its types one after
    # another): the types whose first task users wait for (a band, a tile), not held
    # up on a cold cache by the seconds of compiling that deep zooms need.
    warm_first: bool = False
    # Seconds an attempt may run before the worker stops it and reports it
    # failed (a job may set another limit for its tasks).
    time_limit: float = config.DEFAULT_TIME_LIMIT
    # A result limit above the queue's MAX_RESULT_BYTES (0: the queue's), for a
    # type whose result is its output (a tile's PNG, not a storage key).
    max_result_bytes: int = 0
    # The pixels a (checked) payload renders, for a holder's pixel quota; None:
    # a type that renders no image.
    pixels: PixelCount | None = None

    def pixels_of(self, payload: bytes) -> int:
        """What ``pixels`` says of an already checked payload; 0 for other types."""
        if self.pixels is None:
            return 0
        try:
            return max(int(self.pixels(payload)), 0)
        except (InvalidPayload, ValueError, TypeError, RecursionError):
            return 0


_REGISTRY: dict[str, TaskType] = {}

# Where task types come from: the queue's own diagnostic types, always there;
# the modules the installed packages name in this entry-point group (fractalq's
# own fractal types among them, ENTRY_POINT_GROUP in pyproject.toml); and the
# modules a command names with --tasks. They are loaded on first lookup, so
# that importing the registry stays cheap.
ENTRY_POINT_GROUP = "fractalq.tasks"
_BUILTIN = "fractalq.tasks.builtin"
_loaded = False
_modules: list[str] = []  # the --tasks modules loaded, for the worker's child processes


class TaskLoadError(Exception):
    """Task types could not be loaded; the message names the module and why, in one line."""


def _register_from(target: object) -> None:
    """An entry point's or --tasks' target: a module registers as it is imported; a
    function (MODULE:FUNCTION) registers when called, with no arguments."""
    if callable(target) and not isinstance(target, types.ModuleType):
        target()


def _describe(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    importlib.import_module(_BUILTIN)
    found = sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
    if not any(entry.dist is not None and entry.dist.name == "fractalq" for entry in found):
        # Metadata from before the entry points existed: the fractal types would be missing.
        raise TaskLoadError(
            f"fractalq's own {ENTRY_POINT_GROUP!r} entry points are not installed:"
            " install the package again (pip install -e .)"
        )
    for entry in found:
        package = f", package {entry.dist.name}" if entry.dist is not None else ""
        try:
            _register_from(entry.load())
        except Exception as error:
            raise TaskLoadError(
                f"task types of entry point {entry.name!r} ({entry.value}{package}):"
                f" {_describe(error)}"
            ) from None


def load(modules: Iterable[str] = ()) -> None:
    """Load the task types of the entry points and of ``modules`` (``MODULE`` or
    ``MODULE:FUNCTION``, as ``--tasks`` takes them); a :class:`TaskLoadError` if one fails.

    ``MODULE`` is looked for in the current folder too, as ``python -m`` would.
    """
    _load()
    for spec in modules:
        if spec in _modules:
            continue
        module_name, _, function = spec.partition(":")
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.append(os.getcwd())
        try:
            target: object = importlib.import_module(module_name)
            if function:
                target = getattr(target, function)
            _register_from(target)
        except Exception as error:
            raise TaskLoadError(f"task types of --tasks {spec}: {_describe(error)}") from None
        _modules.append(spec)


def loaded_modules() -> tuple[str, ...]:
    """The ``--tasks`` modules loaded so far (a new worker process loads them too)."""
    return tuple(_modules)


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
    warm_first: bool = False,
    time_limit: float = config.DEFAULT_TIME_LIMIT,
    max_result_bytes: int = 0,
    pixels: PixelCount | None = None,
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
            warm_first,
            time_limit,
            max_result_bytes,
            pixels,
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
