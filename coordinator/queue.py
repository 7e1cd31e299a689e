"""The priority queue: which ready task is leased next.

Lower priority numbers first; equal priorities in submission order. Every task
of a job shares the job's priority and submission number, so the heap holds
*jobs* keyed by ``(priority, seq)``, and each job yields its own ready tasks in
index order (see :mod:`.jobs`). A lease is O(log jobs) and a million queued
tasks are one heap entry per job, not per task.

There is one heap per task type, so a worker only ever sees the types it can
run. A job's ready tasks are all of one type, its current stage's
(:attr:`~.jobs.Job.ready_type`); when its stage changes it gets an entry in
the next type's heap. Entries are removed lazily: a job whose ready set ran
dry, or whose stage moved on, is dropped when it reaches the top.

Tasks waiting out a retry backoff sit in :class:`DelayQueue` until due.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from fractalq.coordinator.jobs import Job

_Entry = tuple[int, int, str]  # (priority, seq, job_id)


class ReadyQueue:
    def __init__(self) -> None:
        self._heaps: dict[str, list[_Entry]] = {}
        self._queued: dict[str, str] = {}  # job id -> the type of its live heap entry
        self._jobs: dict[str, Job] = {}

    def push(self, job: Job) -> None:
        """Make sure ``job`` has an entry; call whenever it gains a ready task."""
        task_type = job.ready_type
        if self._queued.get(job.job_id) == task_type or not job.has_ready():
            return
        self._queued[job.job_id] = task_type
        self._jobs[job.job_id] = job
        heap = self._heaps.setdefault(task_type, [])
        heapq.heappush(heap, (job.priority, job.seq, job.job_id))

    def _top(self, task_type: str) -> Job | None:
        heap = self._heaps.get(task_type)
        while heap:
            job = self._jobs.get(heap[0][2])
            if (
                job is not None
                and job.ready_type == task_type
                and job.has_ready()
                and not job.state.finished
            ):
                return job
            heapq.heappop(heap)
            if job is not None and self._queued.get(job.job_id) == task_type:
                del self._queued[job.job_id]
                self._jobs.pop(job.job_id, None)
        return None

    def lease(self, task_types: Iterable[str], limit: int) -> list[tuple[Job, int]]:
        """Lease up to ``limit`` tasks, best first, among ``task_types``: (job, index) pairs."""
        types = list(task_types)
        taken: list[tuple[Job, int]] = []
        while len(taken) < limit:
            best: Job | None = None
            for task_type in types:
                job = self._top(task_type)
                if job is not None and (
                    best is None or (job.priority, job.seq) < (best.priority, best.seq)
                ):
                    best = job
            if best is None:
                break
            while len(taken) < limit:
                index = best.lease_next()
                if index is None:
                    break
                taken.append((best, index))
        return taken

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._queued


class DelayQueue:
    """Tasks that become ready at a given time (retries after backoff)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str, int]] = []  # (due, seq, job_id, index)

    def push(self, due: float, job: Job, index: int) -> None:
        heapq.heappush(self._heap, (due, job.seq, job.job_id, index))

    def pop_due(self, now: float) -> list[tuple[str, int]]:
        due: list[tuple[str, int]] = []
        while self._heap and self._heap[0][0] <= now:
            _, _, job_id, index = heapq.heappop(self._heap)
            due.append((job_id, index))
        return due

    def next_due(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def __len__(self) -> int:
        return len(self._heap)
