"""Diagnostic task types: ``noop``, ``sleep`` and ``fail``.

They exercise the queue without any application code: ``noop`` measures the
queue's own cost, ``sleep`` holds a lease for a while (for drain, crash and
time-limit tests), ``fail`` always raises (for retries and dead-lettering).
"""

from __future__ import annotations

import json
import time

from fractalq.tasks.registry import InvalidPayload, TaskContext, task_type

MAX_SLEEP_SECONDS = 3600.0


def _json_object(payload: bytes) -> dict[str, object]:
    if not payload:
        return {}
    try:
        value = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidPayload(f"payload is not JSON: {error}") from None
    except RecursionError:
        raise InvalidPayload("payload is not JSON: nested too deeply") from None
    if not isinstance(value, dict):
        raise InvalidPayload("payload must be a JSON object")
    return value


def _seconds(payload: bytes) -> float:
    seconds = _json_object(payload).get("seconds", 1.0)
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise InvalidPayload('"seconds" must be a number')
    if not 0 <= seconds <= MAX_SLEEP_SECONDS:
        raise InvalidPayload(f'"seconds" must be between 0 and {MAX_SLEEP_SECONDS:g}')
    return float(seconds)


def _check_sleep(payload: bytes) -> None:
    _seconds(payload)


def _check_json(payload: bytes) -> None:
    _json_object(payload)


@task_type("noop", check=_check_json)
def noop(payload: bytes, context: TaskContext) -> bytes:
    return b""


# Its limit is above the longest sleep a payload may ask for, so that only a job
# that sets a shorter limit stops a sleep.
@task_type("sleep", check=_check_sleep, time_limit=2 * MAX_SLEEP_SECONDS)
def sleep(payload: bytes, context: TaskContext) -> bytes:
    time.sleep(_seconds(payload))
    return b""


class DiagnosticFailure(RuntimeError):
    pass


@task_type("fail", check=_check_json)
def fail(payload: bytes, context: TaskContext) -> bytes:
    message = _json_object(payload).get("message", "task type 'fail' always fails")
    raise DiagnosticFailure(f"{message} (attempt {context.attempt})")
