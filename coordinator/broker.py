"""The broker: jobs, leases, retries, dead letters and workers, as plain logic.

Everything here is synchronous and takes the current time as an argument, so
it can be tested without a network or a clock. The gRPC service
(:mod:`.service`) translates requests into calls on one :class:`Broker`, and a
:class:`Journal` (:mod:`.store`) records every change for a restart.

Leases: leasing a task increments its attempt count, and the attempt number is
the lease's identity. A report (complete, fail, release) names the attempt it
holds; one that is not the task's live lease changes nothing and is counted as
ignored. The exception is a completion that arrives after its lease was lost
but before the task was leased again: the result is as good as any other
(rendering is idempotent), so it is taken rather than redone.

A lease ends when the task completes, fails, is released (handed back unrun:
the attempt is not counted), or when its worker is lost (missed heartbeats or
a broken heartbeat stream: the attempt counts, so a task that kills its
workers is dead-lettered like one that raises).
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Protocol

from fractalq import config
from fractalq.config import QueueLimits, RetryPolicy
from fractalq.coordinator.jobs import Job, JobState, TaskState
from fractalq.coordinator.queue import DelayQueue, ReadyQueue
from fractalq.retry import retry_delay


class BrokerError(Exception):
    """A request the broker refuses; the message is meant for the client."""


class InvalidRequest(BrokerError):
    pass


class NotFound(BrokerError):
    pass


class AlreadyExists(BrokerError):
    pass


class UnknownWorker(NotFound):
    pass


class Journal(Protocol):
    """Where the broker records changes so that a restart can rebuild it."""

    def job_added(self, job: Job) -> None: ...

    def job_changed(self, job: Job) -> None: ...

    def task_changed(
        self, job: Job, index: int, result: bytes | None = None, error: str | None = None
    ) -> None: ...

    def forget_finished(self, before: float, keep: list[int]) -> None:
        """Drop the finished jobs that finished before ``before``, but those of seq ``keep``."""


class NullJournal:
    def job_added(self, job: Job) -> None:
        pass

    def job_changed(self, job: Job) -> None:
        pass

    def task_changed(
        self, job: Job, index: int, result: bytes | None = None, error: str | None = None
    ) -> None:
        pass

    def forget_finished(self, before: float, keep: list[int]) -> None:
        pass


@dataclasses.dataclass(frozen=True)
class JobSpec:
    """A validated submission."""

    task_type: str
    payloads: list[bytes] | None  # one per task, or None for `count` copies of `payload`
    payload: bytes
    count: int
    priority: int
    max_attempts: int
    labels: dict[str, str]
    job_id: str = ""

    @property
    def total(self) -> int:
        return len(self.payloads) if self.payloads is not None else self.count

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for part in (self.task_type, str(self.priority), str(self.max_attempts), str(self.total)):
            digest.update(part.encode())
            digest.update(b"\0")
        for payload in self.payloads if self.payloads is not None else [self.payload]:
            digest.update(len(payload).to_bytes(8, "little"))
            digest.update(payload)
        return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class LeasedTask:
    job_id: str
    index: int
    task_type: str
    payload: bytes
    attempt: int


@dataclasses.dataclass(eq=False)
class WorkerRecord:
    worker_id: str
    task_types: tuple[str, ...]
    concurrency: int
    hostname: str
    last_seen: float
    leases: set[tuple[str, int]] = dataclasses.field(default_factory=set)
    draining: bool = False
    completed: int = 0
    failed: int = 0


@dataclasses.dataclass(frozen=True)
class Counters:
    succeeded: int = 0
    failed: int = 0
    dead: int = 0


class Broker:
    def __init__(
        self,
        *,
        journal: Journal | None = None,
        worker_timeout: float = config.DEFAULT_WORKER_TIMEOUT,
        limits: QueueLimits | None = None,
        retry: RetryPolicy | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.journal: Journal = journal or NullJournal()
        self.worker_timeout = worker_timeout
        self.limits = limits or QueueLimits()
        self.retry = retry or RetryPolicy()
        self._rng = rng or random.Random()
        self.jobs: dict[str, Job] = {}
        self.workers: dict[str, WorkerRecord] = {}
        self._ready = ReadyQueue()
        self._delayed = DelayQueue()
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._owners: dict[tuple[str, int], WorkerRecord] = {}  # live lease -> its worker
        self._next_seq = 1
        self.succeeded = 0
        self.failed = 0
        self.dead = 0
        # Hooks for the transport layer: wake long polls, push job watches.
        self.on_ready: Callable[[], None] = lambda: None
        self.on_job_change: Callable[[Job], None] = lambda job: None

    # ---- restoring -------------------------------------------------------

    def restore(self, jobs: list[Job]) -> None:
        """Take back jobs loaded from the journal (leases were lost with the process)."""
        for job in sorted(jobs, key=lambda job: job.seq):
            self.jobs[job.job_id] = job
            self._next_seq = max(self._next_seq, job.seq + 1)
            if job.state.finished:
                self._remember_finished(job)
            else:
                job.rebuild_ready()
                self._ready.push(job)

    # ---- jobs ------------------------------------------------------------

    def submit(self, spec: JobSpec, now: float, job_id: str) -> tuple[Job, bool]:
        """Queue a validated job; returns it and whether it was created."""
        fingerprint = spec.fingerprint()
        existing = self.jobs.get(job_id)
        if existing is not None:
            if existing.fingerprint != fingerprint:
                raise AlreadyExists(f"job {job_id!r} already exists with different tasks")
            return existing, False
        job = Job(
            job_id=job_id,
            seq=self._next_seq,
            task_type=spec.task_type,
            priority=spec.priority,
            max_attempts=spec.max_attempts,
            total=spec.total,
            fingerprint=fingerprint,
            created_at=now,
            payloads=spec.payloads,
            shared_payload=spec.payload if spec.payloads is None else b"",
            labels=dict(spec.labels),
        )
        self._next_seq += 1
        self.jobs[job_id] = job
        self.journal.job_added(job)
        self._ready.push(job)
        self.on_ready()
        self.on_job_change(job)
        return job, True

    def get_job(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def cancel(self, job_id: str, reason: str, now: float) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        if not job.state.finished:
            self._finish(job, JobState.CANCELLED, reason or "cancelled", now)
        return job

    def recent_jobs(self, limit: int, active_only: bool = False) -> list[Job]:
        """The newest jobs in memory first, at most ``limit``."""
        jobs = sorted(self.jobs.values(), key=lambda job: job.seq, reverse=True)
        if active_only:
            jobs = [job for job in jobs if not job.state.finished]
        return jobs[: max(limit, 0)]

    def active_jobs(self) -> Iterator[Job]:
        return (job for job in self.jobs.values() if not job.state.finished)

    def _finish(self, job: Job, state: JobState, reason: str, now: float) -> None:
        """End a job: drop its waiting tasks; leased ones end when they report.

        Keeping those leases until their workers report (or are lost) lets a
        client see how many tasks are still running for a cancelled job, for
        example to clean up their output only once nothing can still write it.
        """
        if state is not JobState.SUCCEEDED:
            for index, value in enumerate(job.states):
                if value in (TaskState.QUEUED, TaskState.DELAYED):
                    job.set_state(index, TaskState.CANCELLED)
        job.state = state
        job.reason = reason[: config.MAX_REASON_LENGTH]
        job.finished_at = now
        self.journal.job_changed(job)
        job.drop_payloads()
        self._remember_finished(job)
        self.on_job_change(job)

    def _remember_finished(self, job: Job) -> None:
        self._finished[job.job_id] = None
        while len(self._finished) > config.FINISHED_JOBS_IN_MEMORY:
            old, _ = self._finished.popitem(last=False)
            if self.jobs[old].counts[TaskState.LEASED]:
                continue  # still running somewhere; remembered again when it settles
            self.jobs.pop(old, None)

    def forget_finished(self, before: float) -> int:
        """Forget the jobs that finished before ``before`` (retention); returns how many.

        A finished job whose leases are still out (a cancelled job with running
        tasks) is kept until they settle.
        """
        forgotten = 0
        for job_id in list(self._finished):
            job = self.jobs[job_id]
            if job.finished_at < before and not job.counts[TaskState.LEASED]:
                del self._finished[job_id]
                del self.jobs[job_id]
                forgotten += 1
        # The database holds older finished jobs too; it keeps those still in play.
        keep = [
            job.seq
            for job in self.jobs.values()
            if not job.state.finished or job.counts[TaskState.LEASED]
        ]
        self.journal.forget_finished(before, keep)
        return forgotten

    def _settle(self, job: Job, index: int) -> None:
        """A leased task of a finished job has reported or lost its worker: discard it."""
        self._drop_lease(job, index)
        job.set_state(index, TaskState.CANCELLED)
        if job.settled():
            job.drop_payloads()  # now also its task states
            self._remember_finished(job)
        self.on_job_change(job)

    # ---- workers ---------------------------------------------------------

    def register_worker(
        self,
        worker_id: str,
        task_types: tuple[str, ...],
        concurrency: int,
        hostname: str,
        now: float,
    ) -> WorkerRecord:
        worker = self.workers.get(worker_id)
        if worker is None:
            worker = WorkerRecord(worker_id, task_types, concurrency, hostname, now)
            self.workers[worker_id] = worker
        else:  # a reconnect: keep its leases
            worker.task_types, worker.concurrency, worker.hostname = (
                task_types,
                concurrency,
                hostname,
            )
            worker.last_seen = now
        return worker

    def worker(self, worker_id: str, now: float | None = None) -> WorkerRecord:
        """The live worker ``worker_id``; ``now`` also counts as a sign of life."""
        worker = self.workers.get(worker_id)
        if worker is None:
            raise UnknownWorker(f"unknown worker {worker_id!r}: register first")
        if now is not None:
            worker.last_seen = now
        return worker

    def heartbeat(self, worker_id: str, draining: bool, now: float) -> WorkerRecord:
        worker = self.worker(worker_id, now)
        worker.draining = draining
        return worker

    def expire_workers(self, now: float) -> list[str]:
        """Declare dead every worker silent for longer than the timeout."""
        silent = [
            worker_id
            for worker_id, worker in self.workers.items()
            if now - worker.last_seen > self.worker_timeout
        ]
        for worker_id in silent:
            self.worker_lost(worker_id, f"no heartbeat for {self.worker_timeout:g}s", now)
        return silent

    def worker_lost(self, worker_id: str, why: str, now: float) -> int:
        """Forget a worker; its tasks go back to the queue (the attempt counts)."""
        worker = self.workers.pop(worker_id, None)
        if worker is None:
            return 0
        for job_id, index in sorted(worker.leases):
            job = self.jobs[job_id]
            if job.state.finished:
                self._settle(job, index)
                continue
            del self._owners[(job_id, index)]
            attempt = job.attempts[index]
            message = f"worker {worker_id} lost ({why}) during attempt {attempt}"
            if attempt >= job.max_attempts:
                self._dead_letter(job, index, message, now)
            else:
                job.push_ready(index)
                self.journal.task_changed(job, index, error=message)
                self._ready.push(job)
        if worker.leases:
            self.on_ready()
        return len(worker.leases)

    def unregister_worker(self, worker_id: str) -> int:
        """A worker leaving on purpose: what it still holds goes back uncounted."""
        worker = self.workers.pop(worker_id, None)
        if worker is None:
            return 0
        for job_id, index in sorted(worker.leases):
            job = self.jobs[job_id]
            if job.state.finished:
                self._settle(job, index)
                continue
            del self._owners[(job_id, index)]
            self._release(job, index)
        if worker.leases:
            self.on_ready()
        return len(worker.leases)

    # ---- leasing and reports ---------------------------------------------

    def lease(self, worker_id: str, max_tasks: int, now: float) -> list[LeasedTask]:
        worker = self.worker(worker_id, now)
        if worker.draining:
            return []
        self.promote_due(now)
        leased: list[LeasedTask] = []
        for job, index in self._ready.lease(worker.task_types, max_tasks):
            if job.state is JobState.QUEUED:
                job.state = JobState.RUNNING
                job.started_at = now
                self.journal.job_changed(job)
                self.on_job_change(job)
            worker.leases.add((job.job_id, index))
            self._owners[(job.job_id, index)] = worker
            leased.append(
                LeasedTask(
                    job.job_id, index, job.task_type, job.payload(index), job.attempts[index]
                )
            )
        return leased

    def _live_lease(self, worker_id: str, job_id: str, index: int, attempt: int) -> Job | None:
        """The job, if (job_id, index, attempt) is a live lease held by ``worker_id``.

        A live lease of a finished job is settled here and not returned.
        """
        job = self.jobs.get(job_id)
        if job is None or job.settled() or not 0 <= index < job.total:
            return None
        if job.states[index] != TaskState.LEASED or job.attempts[index] != attempt:
            return None
        owner = self._owners.get((job_id, index))
        if owner is None or owner.worker_id != worker_id:
            return None
        if job.state.finished:
            self._settle(job, index)
            return None
        return job

    def _drop_lease(self, job: Job, index: int) -> None:
        worker = self._owners.pop((job.job_id, index), None)
        if worker is not None:
            worker.leases.discard((job.job_id, index))

    def complete(
        self, worker_id: str, job_id: str, index: int, attempt: int, result: bytes, now: float
    ) -> bool:
        """Record a result; False when the report was late, duplicate or cancelled."""
        worker = self.workers.get(worker_id)
        if worker is not None:
            worker.last_seen = now
        job = self.jobs.get(job_id)
        if job is None or job.settled() or not 0 <= index < job.total:
            return False
        state = job.states[index]
        live = state == TaskState.LEASED and job.attempts[index] == attempt
        if job.state.finished:
            if live:
                self._settle(job, index)
            return False
        if not live and state not in (TaskState.QUEUED, TaskState.DELAYED):
            return False  # finished already, or leased again to someone else
        if live:
            self._drop_lease(job, index)
        job.set_state(index, TaskState.SUCCEEDED)
        self.journal.task_changed(job, index, result=result)
        self.succeeded += 1
        if worker is not None:
            worker.completed += 1
        if job.counts[TaskState.SUCCEEDED] == job.total:
            self._finish(job, JobState.SUCCEEDED, "", now)
        else:
            self.on_job_change(job)
        return True

    def fail(
        self, worker_id: str, job_id: str, index: int, attempt: int, message: str, now: float
    ) -> bool:
        """Record a failed attempt: retry after a backoff, or dead-letter."""
        worker = self.workers.get(worker_id)
        if worker is not None:
            worker.last_seen = now
        job = self._live_lease(worker_id, job_id, index, attempt)
        if job is None:
            return False
        self._drop_lease(job, index)
        self.failed += 1
        if worker is not None:
            worker.failed += 1
        message = message[: config.MAX_REASON_LENGTH] or "task failed"
        if attempt >= job.max_attempts:
            self._dead_letter(job, index, message, now)
        else:
            job.set_state(index, TaskState.DELAYED)
            self._delayed.push(now + retry_delay(self.retry, attempt, self._rng), job, index)
            self.journal.task_changed(job, index, error=message)
            self.on_job_change(job)
        return True

    def release(self, worker_id: str, job_id: str, index: int, attempt: int) -> bool:
        """Take back a task its worker did not run; the attempt is not counted."""
        job = self._live_lease(worker_id, job_id, index, attempt)
        if job is None:
            return False
        self._drop_lease(job, index)
        self._release(job, index)
        self.on_ready()
        return True

    def _release(self, job: Job, index: int) -> None:
        job.attempts[index] -= 1
        job.push_ready(index)
        self._ready.push(job)
        self.on_job_change(job)

    def _dead_letter(self, job: Job, index: int, message: str, now: float) -> None:
        job.set_state(index, TaskState.DEAD)
        self.journal.task_changed(job, index, error=message)
        self.dead += 1
        reason = f"task {index} dead-lettered after {job.attempts[index]} attempt(s): {message}"
        self._finish(job, JobState.FAILED, reason, now)

    def promote_due(self, now: float) -> int:
        """Move tasks whose backoff is over back into the ready queue."""
        promoted = 0
        for job_id, index in self._delayed.pop_due(now):
            job = self.jobs.get(job_id)
            if job is None or job.state.finished or job.states[index] != TaskState.DELAYED:
                continue
            job.push_ready(index)
            self._ready.push(job)
            promoted += 1
        if promoted:
            self.on_ready()
        return promoted

    def next_due(self) -> float | None:
        return self._delayed.next_due()

    # ---- statistics ------------------------------------------------------

    def depth_by_priority(self) -> dict[int, tuple[int, int]]:
        """priority -> (queued, leased), counting tasks waiting out a backoff as queued."""
        depth: dict[int, tuple[int, int]] = {}
        for job in self.active_jobs():
            queued, leased = depth.get(job.priority, (0, 0))
            depth[job.priority] = (
                queued + job.counts[TaskState.QUEUED] + job.counts[TaskState.DELAYED],
                leased + job.counts[TaskState.LEASED],
            )
        return depth

    def totals(self) -> dict[TaskState, int]:
        totals = {state: 0 for state in TaskState}
        for job in self.active_jobs():
            for state, count in job.counts.items():
                totals[state] += count
        return totals
