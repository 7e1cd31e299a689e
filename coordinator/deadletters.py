"""Dead letters as the wire shows them: one :class:`DeadLetter` per dead task.

A held job (FAILED, see :mod:`.broker`) keeps its dead tasks' states, payloads
and the errors of their attempts; this turns them into messages for
``ListDeadLetters``, ``fractalq dead`` and the dashboard, bounded by the
listing's limit (each message is a few kB at most: ``MAX_ATTEMPT_ERRORS``
errors of ``MAX_ATTEMPT_ERROR_LENGTH`` characters).
"""

from __future__ import annotations

from collections.abc import Iterable

from fractalq.coordinator.jobs import Job
from fractalq.proto import fractalq_pb2 as pb


def _stage(job: Job, index: int) -> str:
    task = job.stage_task(index)
    if task is None:
        return ""
    return "first" if task is job.first else "final"


def dead_letters(jobs: Iterable[Job], limit: int) -> list[pb.DeadLetter]:
    """The dead tasks of ``jobs`` (held ones; others have none), at most ``limit``."""
    found: list[pb.DeadLetter] = []
    for job in jobs:
        if not job.dead_letters_held:
            continue
        for index in job.dead_tasks():
            if len(found) >= limit:
                return found
            found.append(
                pb.DeadLetter(
                    job_id=job.job_id,
                    index=index,
                    task_type=job.task_type_of(index),
                    stage=_stage(job, index),
                    attempts=job.attempts_of(index),
                    errors=[
                        pb.AttemptError(
                            attempt=error.attempt,
                            at=error.at,
                            worker_id=error.worker,
                            message=error.message,
                        )
                        for error in job.errors.get(index, ())
                    ],
                    failed_at=job.finished_at,
                    owner=job.owner,
                    reason=job.reason,
                    payload_bytes=len(job.payload(index)),
                )
            )
    return found
