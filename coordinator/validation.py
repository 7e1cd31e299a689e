"""Checks on what clients send, before the broker sees it.

Every field a client controls is checked here against a stated pattern or
limit from :mod:`fractalq.config`: ids, host names, task types, labels,
payload and job sizes, and numbers (finite only). Each check raises
:class:`~.broker.InvalidRequest` with a message that names the field and the
rule, so the client's user learns what to fix; the service answers it with
INVALID_ARGUMENT. Strings that pass are safe to put in a log line; strings
that are only echoed (reasons, error messages) go through :func:`loggable`.
"""

from __future__ import annotations

import math
import re
import uuid

from fractalq import config, tasks
from fractalq.config import QueueLimits
from fractalq.coordinator.broker import JobSpec
from fractalq.coordinator.errors import InvalidRequest
from fractalq.coordinator.jobs import StageSpec

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9._-]*$")
_LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
# Sessions are made by the broker (secrets.token_urlsafe(24): 32 characters).
MAX_SESSION_LENGTH = 64


def new_job_id() -> str:
    return uuid.uuid4().hex


def loggable(text: str, limit: int = 200) -> str:
    """``text`` fit for one log line: control characters escaped, length capped."""
    if len(text) > limit:
        text = text[:limit] + "..."
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _check_id(value: str, field: str, limit: int) -> str:
    if not value:
        raise InvalidRequest(f"{field} is empty")
    if len(value) > limit or not _ID.match(value):
        raise InvalidRequest(
            f"{field} must be 1-{limit} characters of letters, digits"
            " and . _ : - (starting with a letter or digit)"
        )
    return value


def check_job_id(job_id: str) -> str:
    return _check_id(job_id, "job_id", config.MAX_JOB_ID_LENGTH)


def check_worker_id(worker_id: str) -> str:
    return _check_id(worker_id, "worker_id", config.MAX_WORKER_ID_LENGTH)


def check_session(session: str) -> str:
    """A session the client claims; whether it is right is the broker's business."""
    if len(session) > MAX_SESSION_LENGTH:
        raise InvalidRequest(f"session is longer than {MAX_SESSION_LENGTH} characters")
    return session


def check_finite(value: float, field: str, low: float = 0.0) -> float:
    if not math.isfinite(value) or value < low:
        raise InvalidRequest(f"{field} must be a finite number of at least {low:g}")
    return value


def check_task_types(names: list[str]) -> tuple[str, ...]:
    """The task types a worker offers: known to this coordinator, no duplicates."""
    if not names:
        raise InvalidRequest("task_types is empty: a worker must offer at least one task type")
    if len(names) > config.MAX_TASK_TYPES:
        raise InvalidRequest(f"task_types lists more than {config.MAX_TASK_TYPES} types")
    for name in names:
        _check_task_type(name, offered=True)
    return tuple(dict.fromkeys(names))


def _check_task_type(name: str, offered: bool = False) -> tasks.TaskType:
    if len(name) > config.MAX_TASK_TYPE_LENGTH or not name.isprintable():
        raise InvalidRequest(
            f"task type names are at most {config.MAX_TASK_TYPE_LENGTH} printable characters"
        )
    try:
        return tasks.get(name)
    except KeyError as error:
        # A worker's type from a package or --tasks module that this coordinator lacks.
        hint = (
            ": the coordinator needs the task types its workers run (install their package"
            " where it runs too, or give it the same --tasks)"
            if offered
            else ""
        )
        raise InvalidRequest(f"{error.args[0]}{hint}") from None


def check_hostname(hostname: str) -> str:
    if len(hostname) > config.MAX_HOSTNAME_LENGTH or not _HOSTNAME.match(hostname):
        raise InvalidRequest(
            f"hostname must be at most {config.MAX_HOSTNAME_LENGTH} characters of letters,"
            " digits and . _ -"
        )
    return hostname


def check_concurrency(concurrency: int) -> int:
    if concurrency > config.MAX_CONCURRENCY:
        raise InvalidRequest(f"concurrency must be at most {config.MAX_CONCURRENCY}")
    return max(1, concurrency)


def check_reason(reason: str) -> str:
    if len(reason) > config.MAX_REASON_LENGTH:
        raise InvalidRequest(f"reason is longer than {config.MAX_REASON_LENGTH} characters")
    return reason


def list_limit(limit: int) -> int:
    """The number of jobs a listing returns: 0 means the default; capped."""
    return min(limit or config.DEFAULT_LIST_LIMIT, config.MAX_LIST_LIMIT)


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    if len(labels) > config.MAX_LABELS:
        raise InvalidRequest(f"at most {config.MAX_LABELS} labels")
    for key, value in labels.items():
        if len(key) > config.MAX_LABEL_KEY_LENGTH or not _LABEL_KEY.match(key):
            raise InvalidRequest(
                f"label key {loggable(key, 40)!r}: 1-{config.MAX_LABEL_KEY_LENGTH} characters"
                " of letters, digits and . _ / - (starting with a letter or digit)"
            )
        if len(value) > config.MAX_LABEL_VALUE_LENGTH or not value.isprintable():
            raise InvalidRequest(
                f"label {key!r}: values are at most {config.MAX_LABEL_VALUE_LENGTH}"
                " printable characters"
            )
    return dict(labels)


def job_spec(
    *,
    task_type: str,
    payloads: list[bytes],
    payload: bytes,
    count: int,
    priority: int,
    max_attempts: int,
    labels: dict[str, str],
    job_id: str,
    limits: QueueLimits,
    first: tuple[str, bytes] | None = None,
    final: tuple[str, bytes] | None = None,
    time_limit: float = 0.0,
    cleanup: tuple[str, bytes] | None = None,
) -> JobSpec:
    """A validated :class:`JobSpec` from the fields of a SubmitJob request."""
    if job_id:
        check_job_id(job_id)
    kind = _check_task_type(task_type)
    named = (("first", first), ("final", final), ("cleanup", cleanup))
    stages = {name: _stage(name, stage, limits) for name, stage in named}
    room = config.MAX_JOB_ID_LENGTH - len(config.CLEANUP_SUFFIX)  # for "<job_id>.cleanup"
    if cleanup is not None and len(job_id) > room:
        raise InvalidRequest(f"job_id of a job with a cleanup task is at most {room} characters")
    total = _task_count(payloads, payload, count, limits)
    max_attempts = _check_numbers(priority, max_attempts, time_limit, limits)
    check_labels(labels)
    size = sum(map(len, payloads)) if payloads else len(payload)
    size += sum(len(stage.payload) for stage in stages.values() if stage is not None)
    if size > limits.max_job_bytes:
        raise InvalidRequest(
            f"the job's payloads are {size} bytes, more than the limit of {limits.max_job_bytes}"
        )
    pixels_of = _check_payloads(kind, payloads or [payload], limits)
    pixels = sum(map(pixels_of.__getitem__, payloads)) if payloads else pixels_of[payload] * total
    return JobSpec(
        task_type=task_type,
        payloads=list(payloads) if payloads else None,
        payload=b"" if payloads else payload,
        count=total,
        priority=priority,
        max_attempts=max_attempts,
        labels=dict(labels),
        job_id=job_id,
        first=stages["first"],
        final=stages["final"],
        time_limit=time_limit,
        cleanup=stages["cleanup"],
        pixels=pixels,
    )


def _task_count(payloads: list[bytes], payload: bytes, count: int, limits: QueueLimits) -> int:
    """How many tasks: one per payload, or ``count`` of the one payload."""
    if payloads:
        if count not in (0, len(payloads)):
            raise InvalidRequest(f"count is {count} but {len(payloads)} payloads were given")
        if payload:
            raise InvalidRequest("give either payloads or payload with count, not both")
        total = len(payloads)
    else:
        total = count
    if total < 1:
        raise InvalidRequest("a job needs at least one task (count >= 1 or payloads)")
    if total > limits.max_tasks_per_job:
        raise InvalidRequest(f"{total} tasks is more than the limit of {limits.max_tasks_per_job}")
    return total


def _check_numbers(priority: int, max_attempts: int, time_limit: float, limits: QueueLimits) -> int:
    """Check the job's priority, attempts and time limit; its attempts (0: the default)."""
    if not math.isfinite(time_limit) or not 0 <= time_limit <= config.MAX_TIME_LIMIT:
        raise InvalidRequest(
            f"time_limit must be a number of seconds from 0 (the task type's default)"
            f" to {config.MAX_TIME_LIMIT:g}"
        )
    low, high = config.PRIORITY_RANGE
    if not low <= priority <= high:
        raise InvalidRequest(f"priority must be between {low} and {high}")
    if max_attempts == 0:
        max_attempts = limits.default_max_attempts
    if not 1 <= max_attempts <= limits.max_attempts:
        raise InvalidRequest(f"max_attempts must be between 1 and {limits.max_attempts}")
    return max_attempts


def _check_payloads(
    kind: tasks.TaskType, payloads: list[bytes], limits: QueueLimits
) -> dict[bytes, int]:
    """Check each distinct payload once, by its task type; the pixels each renders
    (for the quota)."""
    checked: dict[bytes, int] = {}  # payload -> the pixels it renders
    for index, one in enumerate(payloads):
        if one in checked:
            continue
        if len(one) > limits.max_payload_bytes:
            raise InvalidRequest(
                f"payload {index} is {len(one)} bytes, more than {limits.max_payload_bytes}"
            )
        try:
            kind.check(one)
        except tasks.InvalidPayload as error:
            raise InvalidRequest(f"payload {index} for {kind.name!r}: {error}") from None
        checked[one] = kind.pixels_of(one)
    return checked


def _stage(name: str, stage: tuple[str, bytes] | None, limits: QueueLimits) -> StageSpec | None:
    """A first or final task: a known type, a payload that type accepts."""
    if stage is None:
        return None
    task_type, payload = stage
    try:
        kind = _check_task_type(task_type)
    except InvalidRequest as error:
        raise InvalidRequest(f"{name}: {error}") from None
    if len(payload) > limits.max_payload_bytes:
        raise InvalidRequest(
            f"{name}: the payload is {len(payload)} bytes, more than {limits.max_payload_bytes}"
        )
    try:
        kind.check(payload)
    except tasks.InvalidPayload as error:
        raise InvalidRequest(f"{name}: payload for {task_type!r}: {error}") from None
    return StageSpec(task_type, payload)
