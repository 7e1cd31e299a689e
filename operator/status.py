"""What a FractalJob's status says, computed from the queue's view of its job.

Phases: Pending (seen, not yet submitted), Queued, Running, Assembling,
Succeeded, Failed. Conditions follow the Kubernetes convention (type, status,
reason, message, lastTransitionTime, observedGeneration); a condition keeps
its transition time while its status does not change.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any

from fractalq.proto import fractalq_pb2 as pb

PENDING, QUEUED, RUNNING, ASSEMBLING, SUCCEEDED, FAILED = (
    "Pending",
    "Queued",
    "Running",
    "Assembling",
    "Succeeded",
    "Failed",
)
FINAL = (SUCCEEDED, FAILED)

_PHASES = {pb.QUEUED: QUEUED, pb.RUNNING: RUNNING, pb.SUCCEEDED: ASSEMBLING}


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(
    existing: Sequence[Mapping[str, Any]],
    kind: str,
    status: bool,
    reason: str,
    message: str,
    generation: int,
) -> list[dict[str, Any]]:
    """``existing`` conditions with ``kind`` set; other kinds are kept as they are."""
    value = "True" if status else "False"
    kept = [dict(c) for c in existing if c.get("type") != kind]
    previous = next((c for c in existing if c.get("type") == kind), None)
    since = (
        previous.get("lastTransitionTime") if previous and previous.get("status") == value else None
    )
    kept.append(
        {
            "type": kind,
            "status": value,
            "reason": reason,
            "message": message,
            "lastTransitionTime": since or now_iso(),
            "observedGeneration": generation,
        }
    )
    return sorted(kept, key=lambda c: str(c["type"]))


def progress(job: pb.Job) -> dict[str, Any]:
    """Status fields for a job the queue knows about."""
    fields: dict[str, Any] = {
        "bandsTotal": job.total,
        "bandsDone": job.succeeded,
        "progress": f"{job.succeeded}/{job.total}",
    }
    if job.state in _PHASES:
        fields["phase"] = _PHASES[job.state]
    elif job.state in (pb.FAILED, pb.CANCELLED):
        fields["phase"] = FAILED
        fields["message"] = job.reason or "the render job ended without finishing"
    return fields
