"""What a FractalJob's status says, computed from the queue's view of its job.

Phases: Pending (seen, not yet submitted), Queued, Running, Assembling,
Succeeded, Failed. Conditions follow the Kubernetes convention (type, status,
reason, message, lastTransitionTime, observedGeneration); a condition keeps
its transition time while its status does not change.

:class:`StatusBuffer` decides when to write: only fields that differ from
what was last written, a phase change (or any other field) at once, progress
alone at most once per interval, so a FractalJob whose job does not move costs
the API server nothing.
"""

from __future__ import annotations

import copy
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
PROGRESS_FIELDS = frozenset({"bandsTotal", "bandsDone", "progress"})
# The Ready condition's reason while a Failed FractalJob's job holds its dead
# letters: not final yet, a requeue makes it run again.
DEAD_LETTERED = "DeadLettered"

# A job in its first stage is Running: its bands wait for it. A job whose
# bands are done is Assembling, whether a final task assembles it (FINISHING)
# or the operator does (SUCCEEDED, see image.py).
_PHASES = {
    pb.QUEUED: QUEUED,
    pb.PREPARING: RUNNING,
    pb.RUNNING: RUNNING,
    pb.FINISHING: ASSEMBLING,
    pb.SUCCEEDED: ASSEMBLING,
}


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


def dead_lettered(status: Mapping[str, Any]) -> bool:
    """Failed, with the job's dead letters held at the coordinator (it may be requeued)."""
    return status.get("phase") == FAILED and any(
        c.get("type") == "Ready" and c.get("reason") == DEAD_LETTERED
        for c in status.get("conditions") or []
    )


def finished(status: Mapping[str, Any], generation: int) -> bool:
    """True when this generation of the resource has reached its final phase (a
    dead-lettered one has not: its job may be requeued)."""
    return (
        status.get("observedGeneration") == generation
        and status.get("phase") in FINAL
        and not dead_lettered(status)
    )


def changes(current: Mapping[str, Any], fields: Mapping[str, Any]) -> dict[str, Any]:
    """The ``fields`` whose value differs from ``current`` (absent counts as None)."""
    return {key: value for key, value in fields.items() if current.get(key) != value}


class StatusBuffer:
    """What is to be written to a status, and when; no I/O and no clock of its own.

    ``written`` mirrors the status as last written. :meth:`add` keeps only real
    changes; :meth:`due` says how long the pending fields may wait: 0 for any
    field but progress, else until ``interval`` after the last progress write.
    """

    def __init__(self, written: Mapping[str, Any], interval: float) -> None:
        self.written: dict[str, Any] = copy.deepcopy(dict(written))
        self.interval = interval
        self.pending: dict[str, Any] = {}
        self._last: float | None = None  # when progress was last written

    def add(self, fields: Mapping[str, Any]) -> None:
        for key, value in fields.items():
            if self.written.get(key) != value:
                self.pending[key] = value
            else:  # back to what is written: nothing to say about it any more
                self.pending.pop(key, None)

    def get(self, key: str) -> Any:
        """A field as it will be once the pending fields are written."""
        return self.pending[key] if key in self.pending else self.written.get(key)

    def due(self, now: float) -> float | None:
        """Seconds until the pending fields should be written; None when there are none."""
        if not self.pending:
            return None
        if self._last is None or not self.pending.keys() <= PROGRESS_FIELDS:
            return 0.0
        return max(0.0, self._last + self.interval - now)

    def take(self) -> dict[str, Any]:
        """The pending fields, to write; :meth:`wrote` once they are written."""
        return copy.deepcopy(self.pending)

    def wrote(self, fields: Mapping[str, Any], now: float) -> None:
        """``fields`` (from :meth:`take`) are written; a failed write changes nothing."""
        for key, value in fields.items():
            self.written[key] = copy.deepcopy(value)
            if self.pending.get(key) == value:
                del self.pending[key]
        if fields.keys() & PROGRESS_FIELDS:
            self._last = now
