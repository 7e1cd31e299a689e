"""``storage.sweep``: remove the objects of jobs the coordinator no longer knows.

The coordinator queues it by itself (:mod:`fractalq.coordinator.housekeeping`).
Payload: ``{"before": <Unix time>, "keep": [job ids]}``. Every object under
``jobs/<job>/`` written before ``before`` is removed unless its job is in
``keep`` or it is the job's finished image (:func:`~fractalq.tasks.assemble.image_key`),
counts (:func:`~fractalq.tasks.band.image_counts_key`) or video
(:func:`~fractalq.tasks.encode.video_key`): those are what users asked for, and
they outlive the job's record. A zoom's keyframes and orbits are swept like bands. The result
is JSON: ``{"removed": N}``.
"""

from __future__ import annotations

import json
import logging
import math

from fractalq import config
from fractalq.storage import shared_storage
from fractalq.tasks.band import image_counts_key, image_key
from fractalq.tasks.encode import video_keys
from fractalq.tasks.registry import InvalidPayload, TaskContext, task_type

log = logging.getLogger("fractalq.worker")

PREFIX = "jobs/"


def parse_payload(payload: bytes) -> tuple[float, frozenset[str]]:
    try:
        data = json.loads(payload)
        before, keep = data["before"], data["keep"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise InvalidPayload(f"not a sweep payload: {error}") from None
    except RecursionError:
        raise InvalidPayload("not a sweep payload: nested too deeply") from None
    if isinstance(before, bool) or not isinstance(before, int | float) or not math.isfinite(before):
        raise InvalidPayload("before must be a time in seconds")
    if not isinstance(keep, list) or not all(isinstance(job, str) for job in keep):
        raise InvalidPayload("keep must be a list of job ids")
    return float(before), frozenset(keep)


def orphans(keys: list[str], keep: frozenset[str]) -> list[str]:
    """The keys among ``keys`` (all under jobs/) that the sweep removes."""
    found = []
    for key in keys:
        job = key[len(PREFIX) :].split("/", 1)[0]
        if (
            job
            and job not in keep
            and key not in (image_key(job), image_counts_key(job), *video_keys(job))
        ):
            found.append(key)
    return found


def _check(payload: bytes) -> None:
    parse_payload(payload)


@task_type(config.SWEEP_TASK_TYPE, check=_check, needs_storage=True)
def sweep(payload: bytes, context: TaskContext) -> bytes:
    if not context.storage_url:
        raise RuntimeError("this worker has no --storage to sweep")
    before, keep = parse_payload(payload)
    storage = shared_storage(context.storage_url)
    removed = orphans(storage.written_before(PREFIX, before), keep)
    storage.delete(removed)
    if removed:
        log.info("sweep removed %d object(s) of jobs the coordinator no longer knows", len(removed))
    return json.dumps({"removed": len(removed)}).encode()
