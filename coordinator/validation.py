"""Checks on what clients send, before anything is queued.

Each check raises :class:`~.broker.InvalidRequest` with a message that names
the field and the rule, so the client's user learns what to fix.
"""

from __future__ import annotations

import re
import uuid

from fractalq import config, tasks
from fractalq.config import QueueLimits
from fractalq.coordinator.broker import InvalidRequest, JobSpec

_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")


def new_job_id() -> str:
    return uuid.uuid4().hex


def check_job_id(job_id: str) -> str:
    if not job_id:
        raise InvalidRequest("job_id is empty")
    if len(job_id) > config.MAX_JOB_ID_LENGTH or not _JOB_ID.match(job_id):
        raise InvalidRequest(
            f"job_id must be 1-{config.MAX_JOB_ID_LENGTH} characters of letters, digits"
            " and . _ : - (starting with a letter or digit)"
        )
    return job_id


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
) -> JobSpec:
    """A validated :class:`JobSpec` from the fields of a SubmitJob request."""
    if job_id:
        check_job_id(job_id)
    try:
        kind = tasks.get(task_type)
    except KeyError as error:
        raise InvalidRequest(str(error.args[0])) from None
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
    low, high = config.PRIORITY_RANGE
    if not low <= priority <= high:
        raise InvalidRequest(f"priority must be between {low} and {high}")
    if max_attempts == 0:
        max_attempts = limits.default_max_attempts
    if not 1 <= max_attempts <= limits.max_attempts:
        raise InvalidRequest(f"max_attempts must be between 1 and {limits.max_attempts}")
    if len(labels) > config.MAX_LABELS or any(
        len(key) + len(value) > config.MAX_LABEL_BYTES for key, value in labels.items()
    ):
        raise InvalidRequest(
            f"at most {config.MAX_LABELS} labels of {config.MAX_LABEL_BYTES} bytes each"
        )
    checked: set[bytes] = set()
    for index, one in enumerate(payloads or [payload]):
        if len(one) > limits.max_payload_bytes:
            raise InvalidRequest(
                f"payload {index} is {len(one)} bytes, more than {limits.max_payload_bytes}"
            )
        if one in checked:
            continue
        try:
            kind.check(one)
        except tasks.InvalidPayload as error:
            raise InvalidRequest(f"payload {index} for {task_type!r}: {error}") from None
        checked.add(one)
    return JobSpec(
        task_type=task_type,
        payloads=list(payloads) if payloads else None,
        payload=b"" if payloads else payload,
        count=total,
        priority=priority,
        max_attempts=max_attempts,
        labels=dict(labels),
        job_id=job_id,
    )
