"""Jobs and the states of their tasks, as the coordinator holds them in memory.

A job keeps one byte of state and one byte of attempt count per task instead
of an object per task, so a million queued tasks cost a few megabytes. Its
ready tasks are the indices from ``next_fresh`` onwards (never leased yet)
plus a small heap of indices that came back (lease lost, released, retry due);
both are read in index order, so a job's tasks run in submission order.
"""

from __future__ import annotations

import dataclasses
import enum
import heapq


class TaskState(enum.IntEnum):
    QUEUED = 0
    LEASED = 1
    DELAYED = 2  # failed, waiting out its retry backoff
    SUCCEEDED = 3
    DEAD = 4  # dead-lettered: failed max_attempts times
    CANCELLED = 5


class JobState(enum.IntEnum):
    # Same numbers as the proto's JobState.
    QUEUED = 1
    RUNNING = 2
    SUCCEEDED = 3
    FAILED = 4
    CANCELLED = 5

    @property
    def finished(self) -> bool:
        return self >= JobState.SUCCEEDED


@dataclasses.dataclass(eq=False)
class Job:
    job_id: str
    seq: int  # global submission order, the tie-breaker between equal priorities
    task_type: str
    priority: int
    max_attempts: int
    total: int
    fingerprint: str
    created_at: float
    # One payload per task, or one shared by every task.
    payloads: list[bytes] | None = None
    shared_payload: bytes = b""
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    state: JobState = JobState.QUEUED
    reason: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0
    states: bytearray = dataclasses.field(default_factory=bytearray)
    attempts: bytearray = dataclasses.field(default_factory=bytearray)
    next_fresh: int = 0
    returned: list[int] = dataclasses.field(default_factory=list)
    counts: dict[TaskState, int] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.states:
            self.states = bytearray(self.total)  # all QUEUED
            self.attempts = bytearray(self.total)
        self.counts = {state: 0 for state in TaskState}
        for value in self.states:
            self.counts[TaskState(value)] += 1

    def payload_bytes(self) -> int:
        """What its payloads hold (a shared payload counts once); 0 once dropped."""
        if self.payloads is not None:
            return sum(map(len, self.payloads))
        return len(self.shared_payload)

    def payload(self, index: int) -> bytes:
        return self.payloads[index] if self.payloads is not None else self.shared_payload

    def set_state(self, index: int, state: TaskState) -> None:
        old = TaskState(self.states[index])
        self.counts[old] -= 1
        self.counts[state] += 1
        self.states[index] = state

    def task_state(self, index: int) -> TaskState:
        return TaskState(self.states[index])

    # ---- the ready set ---------------------------------------------------

    def has_ready(self) -> bool:
        return self.counts[TaskState.QUEUED] > 0

    def push_ready(self, index: int) -> None:
        """Mark a task ready again (it must be below next_fresh)."""
        self.set_state(index, TaskState.QUEUED)
        heapq.heappush(self.returned, index)

    def lease_next(self) -> int | None:
        """Lease the lowest ready index (attempts + 1), or None; skips stale entries."""
        index = self._pop_ready()
        if index is not None:
            self.set_state(index, TaskState.LEASED)
            self.attempts[index] += 1
        return index

    def _pop_ready(self) -> int | None:
        while self.returned:
            index = heapq.heappop(self.returned)
            if self.states[index] == TaskState.QUEUED:
                return index
        while self.next_fresh < self.total:
            index = self.next_fresh
            self.next_fresh += 1
            if self.states[index] == TaskState.QUEUED:
                return index
        return None

    def rebuild_ready(self) -> None:
        """After loading from disk: queued tasks below the fresh tail go in the heap."""
        last = self.total
        while last > 0 and self.states[last - 1] == TaskState.QUEUED:
            last -= 1
        self.next_fresh = last
        self.returned = [i for i in range(last) if self.states[i] == TaskState.QUEUED]
        heapq.heapify(self.returned)

    def drop_payloads(self) -> None:
        """A finished job keeps no payloads; its task states go once no lease is out."""
        self.payloads = None
        self.shared_payload = b""
        self.returned = []
        if not self.counts[TaskState.LEASED]:
            self.states = bytearray()
            self.attempts = bytearray()

    def settled(self) -> bool:
        """Finished, and no worker still holds one of its tasks."""
        return self.state.finished and not self.counts[TaskState.LEASED]
