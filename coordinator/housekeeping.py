"""Jobs the coordinator queues by itself: the orphan sweep.

A render's intermediate objects (its bands) are removed by its own tasks: the
assembly, or the cleanup job of a render that failed or was cancelled. What
nobody removes are the objects of jobs the coordinator no longer knows, for
example after its database was lost. The coordinator does not read storage, so
it queues one task for a worker that does (``config.SWEEP_TASK_TYPE``, run by
:mod:`fractalq.tasks.sweep`), naming a cut-off time and the jobs to keep.

The keep list stays short whatever the queue holds: an object older than the
cut-off belongs to a job submitted before it, so only the known jobs submitted
before the cut-off need naming. Everything newer is left alone, so nothing a
live job still needs is removed. The cut-off is the retention: a job the
coordinator has forgotten by retention is one whose objects may go too.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import TYPE_CHECKING

from fractalq import config
from fractalq.coordinator.broker import Broker, JobSpec
from fractalq.coordinator.errors import AlreadyExists, ResourceExhausted

if TYPE_CHECKING:
    from fractalq.coordinator.service import CoordinatorService

log = logging.getLogger("fractalq.coordinator")


def sweep_payload(before: float, keep: list[str]) -> bytes:
    return json.dumps({"before": before, "keep": sorted(keep)}, separators=(",", ":")).encode()


def sweep_job_id(now: float, interval: float) -> str:
    """One sweep per interval: a second submission in the same interval is the same job."""
    return f"{config.SWEEP_JOB_PREFIX}{int(now // interval)}"


def can_sweep(broker: Broker) -> bool:
    """Whether a live worker runs sweeps (else the job would wait for one)."""
    return bool(broker.registry.offering(config.SWEEP_TASK_TYPE))


def queue_sweep(
    service: CoordinatorService, now: float, retention: float, interval: float
) -> str | None:
    """Queue this interval's sweep; returns its job id, or None if it was not queued."""
    broker, journal = service.broker, service.journal
    before = now - retention
    keep = {job.job_id for job in broker.jobs.values() if job.created_at < before}
    if journal is not None:
        keep.update(journal.job_ids_created_before(before))
    payload = sweep_payload(before, list(keep))
    if len(payload) > broker.limits.max_payload_bytes:
        log.warning("orphan sweep skipped: %d old jobs are too many to name in one task", len(keep))
        return None
    job_id = sweep_job_id(now, interval)
    spec = JobSpec(
        task_type=config.SWEEP_TASK_TYPE,
        payloads=None,
        payload=payload,
        count=1,
        priority=config.SWEEP_PRIORITY,
        max_attempts=broker.limits.default_max_attempts,
        labels={"housekeeping": "orphan-sweep"},
    )
    # Already queued this interval (before a restart, say), or no room now.
    with contextlib.suppress(AlreadyExists, ResourceExhausted):
        if journal is None or journal.load_job(job_id) is None:
            service.submit_internal(spec, job_id, now)
            return job_id
    return None
