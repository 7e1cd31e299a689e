"""The broker: jobs, leases, retries, dead letters and workers, as plain logic.

Everything here is synchronous and takes the current time as an argument, so
it can be tested without a network or a clock. The gRPC service
(:mod:`.service`) translates requests into calls on one :class:`Broker`, and a
:class:`Journal` (:mod:`.store`) records every change for a restart.

Sessions: registering a worker opens a session with a secret the broker makes
(:attr:`WorkerRecord.session`). Every later worker call is authenticated by
:meth:`Broker.session` (the id and the secret, compared in constant time) and
the resulting :class:`WorkerRecord` is what leasing and reporting take, so
nothing a worker does can be done under another worker's name. An id held by
a live session cannot be registered again but by that session (a reconnect,
which keeps its leases).

Leases: leasing a task increments its attempt count, and the attempt number is
the lease's identity. A report (complete, fail, release) changes a task only
when it comes from the session that holds that exact lease; anything else
(late, duplicate, another worker's, a guessed attempt) changes nothing and is
counted as ignored. A result that arrives after its lease was lost is
ignored too, and the task runs again: rendering is idempotent, and taking
results from a session that no longer holds the lease would let anyone who
registers complete tasks nobody ran.

A lease ends when the task completes, fails, is released (handed back unrun:
the attempt is not counted), or when its worker is lost (missed heartbeats or
a broken heartbeat stream: the attempt counts, so a task that kills its
workers is dead-lettered like one that raises).

Dead letters: each failed attempt's error is kept with its task (bounded:
``MAX_ATTEMPT_ERRORS`` a task, ``MAX_ERRORS_IN_MEMORY`` in all). A task that
fails its last attempt is dead-lettered and its job FAILED, but the job is
*held* (:attr:`Job.dead_letters_held`): its payloads, task states and dead
tasks' errors stay, its cleanup waits, until :meth:`Broker.requeue` puts it
back on the queue (the dead tasks with their attempts reset, the job as it
was: what succeeded stays done), :meth:`Broker.purge` lets it go (then its
cleanup runs), or the retention forgets it (a purge first). A held job's
payloads count in ``max_queued_bytes`` like an unfinished job's.

Quotas: a job records its owner (the holder of the submitting token, see
:mod:`.policy`), and :meth:`Broker.submit` and :meth:`Broker.requeue` check a
:class:`~fractalq.config.HolderQuota` when given one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import random
from collections import OrderedDict
from collections.abc import Iterator
from typing import Protocol

from fractalq import config, tasks
from fractalq.config import HolderQuota, QueueLimits, RetryPolicy
from fractalq.coordinator.errors import (
    AlreadyExists,
    InvalidRequest,
    NotFound,
    OverQuota,
    ResourceExhausted,
    WrongState,
)
from fractalq.coordinator.jobs import (
    AttemptError,
    Job,
    JobState,
    Stage,
    StageSpec,
    StageTask,
    TaskState,
)
from fractalq.coordinator.listeners import Listeners
from fractalq.coordinator.queue import DelayQueue, ReadyQueue
from fractalq.coordinator.workers import WorkerRecord, WorkerRegistry
from fractalq.retry import retry_delay


class Journal(Protocol):
    """Where the broker records changes so that a restart can rebuild it."""

    def job_added(self, job: Job) -> None: ...

    def job_changed(self, job: Job) -> None: ...

    def task_changed(
        self, job: Job, index: int, result: bytes | None = None, error: str | None = None
    ) -> None: ...

    def forget_finished(self, before: float, keep: list[int]) -> None:
        """Drop the finished jobs that finished before ``before``, but those of seq ``keep``."""


class _KeptJobsOnly:
    """The journal, told nothing of transient jobs: they never outlive the process."""

    def __init__(self, journal: Journal) -> None:
        self.inner = journal

    def job_added(self, job: Job) -> None:
        if not job.transient:
            self.inner.job_added(job)

    def job_changed(self, job: Job) -> None:
        if not job.transient:
            self.inner.job_changed(job)

    def task_changed(
        self, job: Job, index: int, result: bytes | None = None, error: str | None = None
    ) -> None:
        if not job.transient:
            self.inner.task_changed(job, index, result, error)

    def forget_finished(self, before: float, keep: list[int]) -> None:
        self.inner.forget_finished(before, keep)


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
    first: StageSpec | None = None
    final: StageSpec | None = None
    time_limit: float = 0.0
    cleanup: StageSpec | None = None
    # Not journaled, forgotten as soon as it finished and nothing of it runs,
    # its results only handed to the listeners (the explorer's tiles).
    transient: bool = False
    # Pixels its parallel tasks render, for a holder's quota (0: not a render).
    pixels: int = 0

    @property
    def total(self) -> int:
        return len(self.payloads) if self.payloads is not None else self.count

    def _stages(self) -> list[StageSpec]:
        return [stage for stage in (self.first, self.final) if stage is not None]

    def payload_bytes(self) -> int:
        stages = sum(len(stage.payload) for stage in self._stages())
        if self.payloads is not None:
            return stages + sum(map(len, self.payloads))
        return stages + len(self.payload)

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        parts = [self.task_type, str(self.priority), str(self.max_attempts), str(self.total)]
        stage_payloads = []
        if self.time_limit:  # only when set, so that older fingerprints stay valid
            parts.append(repr(self.time_limit))
        stages = (("first", self.first), ("final", self.final), ("cleanup", self.cleanup))
        for name, stage in stages:
            if stage is not None:
                parts += [name, stage.task_type]
                stage_payloads.append(stage.payload)
        for part in parts:
            digest.update(part.encode())
            digest.update(b"\0")
        payloads = self.payloads if self.payloads is not None else [self.payload]
        for payload in itertools.chain(payloads, stage_payloads):
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
    time_limit: float = 0.0


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
        self.journal: Journal = _KeptJobsOnly(journal or NullJournal())
        self.worker_timeout = worker_timeout
        self.limits = limits or QueueLimits()
        self.retry = retry or RetryPolicy()
        self._rng = rng or random.Random()
        self.jobs: dict[str, Job] = {}
        self.registry = WorkerRegistry(self.limits.max_workers, worker_timeout)
        self._ready = ReadyQueue()
        self._delayed = DelayQueue()
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._owners: dict[tuple[str, int], WorkerRecord] = {}  # live lease -> its worker
        self._next_seq = 1
        self.succeeded = 0
        self.failed = 0
        self.dead = 0
        self.requeued = 0
        self.purged = 0
        self.reports_ignored = 0
        # Unfinished jobs, and the payload bytes they and the held jobs hold
        # (both bounded by limits).
        self.active = 0
        self.queued_bytes = 0
        # Failed jobs holding dead letters (oldest first), and their dead tasks.
        self.held: OrderedDict[str, None] = OrderedDict()
        self.dead_letters = 0
        self.errors_kept = 0  # AttemptErrors in memory, all jobs together
        self._owned: dict[str, set[str]] = {}  # owner -> its unfinished jobs' ids
        # What happens here, for the layers around (:mod:`.listeners`).
        self.listeners = Listeners()

    # ---- restoring -------------------------------------------------------

    def restore(self, jobs: list[Job], now: float) -> None:
        """Take back jobs loaded from the journal (leases were lost with the process)."""
        for job in sorted(jobs, key=lambda job: job.seq):
            self.jobs[job.job_id] = job
            self._next_seq = max(self._next_seq, job.seq + 1)
            self.errors_kept += sum(map(len, job.errors.values()))
            if job.dead_letters_held:
                self.queued_bytes += job.payload_bytes()
                self._hold(job)
            elif job.state.finished:
                self._remember_finished(job)
            else:
                job.rebuild_ready()
                job.ready_at = now  # queue waits count from this start
                self._ready.push(job)
                self.active += 1
                self.queued_bytes += job.payload_bytes()
                self._owned.setdefault(job.owner, set()).add(job.job_id)
        # A cleanup the last process decided on but did not get to submit.
        for job in [job for job in self.jobs.values() if job.state.finished]:
            self._clean_up(job, now)

    # ---- jobs ------------------------------------------------------------

    def submit(
        self,
        spec: JobSpec,
        now: float,
        job_id: str,
        owner: str = "",
        quota: HolderQuota | None = None,
    ) -> tuple[Job, bool]:
        """Queue a validated job of ``owner``; returns it and whether it was created.

        ``quota``: the owner's, checked before anything changes (OverQuota).
        """
        fingerprint = spec.fingerprint()
        existing = self.jobs.get(job_id)
        if existing is not None:
            if existing.owner != owner:
                raise AlreadyExists(f"job {job_id!r} already exists (another holder's)")
            if existing.fingerprint != fingerprint:
                raise AlreadyExists(f"job {job_id!r} already exists with different tasks")
            return existing, False
        if quota is not None:
            self._check_quota(owner, quota, spec.total + len(spec._stages()), spec.pixels)
        if self.active >= self.limits.max_active_jobs:
            raise ResourceExhausted(
                f"the queue holds {self.active} unfinished jobs, its limit; retry when some finish"
            )
        size = spec.payload_bytes()
        if self.queued_bytes + size > self.limits.max_queued_bytes:
            raise ResourceExhausted(
                f"the queue holds {self.queued_bytes} bytes of payloads; {size} more would pass"
                f" its limit of {self.limits.max_queued_bytes}; retry when jobs finish"
            )
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
            first=StageTask(spec.first.task_type, spec.first.payload) if spec.first else None,
            final=StageTask(spec.final.task_type, spec.final.payload) if spec.final else None,
            time_limit=spec.time_limit,
            cleanup=spec.cleanup,
            transient=spec.transient,
            owner=owner,
        )
        job.start()
        self._next_seq += 1
        self.jobs[job_id] = job
        self.active += 1
        self.queued_bytes += size
        self._owned.setdefault(owner, set()).add(job_id)
        self.journal.job_added(job)
        self._ready.push(job)
        self.listeners.ready()
        self.listeners.job_changed(job)
        return job, True

    def _check_quota(self, owner: str, quota: HolderQuota, tasks: int, pixels: int) -> None:
        """OverQuota, naming the limit, if ``owner`` may not queue one more job of
        ``tasks`` tasks and ``pixels`` pixels."""
        who = f"holder {owner!r}"
        if quota.job_pixels and pixels > quota.job_pixels:
            raise OverQuota(
                f"a job of {pixels} pixels is over the quota of {who}: at most"
                f" {quota.job_pixels} pixels a job (--quota-job-pixels)"
            )
        owned = [self.jobs[job_id] for job_id in self._owned.get(owner, ())]
        if quota.active_jobs and len(owned) + 1 > quota.active_jobs:
            raise OverQuota(
                f"{who} has {len(owned)} unfinished jobs, its quota"
                f" (--quota-active-jobs {quota.active_jobs}); retry when some finish"
            )
        queued = sum(job.unfinished_tasks() for job in owned)
        if quota.queued_tasks and queued + tasks > quota.queued_tasks:
            raise OverQuota(
                f"{who} has {queued} tasks to run; {tasks} more would pass its quota"
                f" (--quota-queued-tasks {quota.queued_tasks}); retry when some finish"
            )

    def owned_by(self, owner: str) -> int:
        """How many unfinished jobs ``owner`` has."""
        return len(self._owned.get(owner, ()))

    def get_job(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def cancel(self, job_id: str, reason: str, now: float) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        if not job.state.finished:
            self._finish(job, JobState.CANCELLED, reason or "cancelled", now)
        return job

    def recent_jobs(
        self, limit: int, active_only: bool = False, owner: str | None = None
    ) -> list[Job]:
        """The newest jobs in memory first, at most ``limit``; ``owner``: only theirs."""
        jobs = sorted(self.jobs.values(), key=lambda job: job.seq, reverse=True)
        if active_only:
            jobs = [job for job in jobs if not job.state.finished]
        if owner is not None:
            jobs = [job for job in jobs if job.owner == owner]
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
            for _, task in job.stage_tasks():
                if task.state in (TaskState.QUEUED, TaskState.DELAYED, TaskState.WAITING):
                    task.state = TaskState.CANCELLED
        job.state = state
        job.reason = reason[: config.MAX_REASON_LENGTH]
        job.finished_at = now
        self.active -= 1
        self._owned_job_ended(job)
        dead = set(job.dead_tasks()) if state is JobState.FAILED else set()
        for index in [i for i in job.errors if i not in dead]:
            self._drop_errors(job, index)
        if dead and not job.transient:
            job.dead_letters_held = True  # its payloads stay, counted, for a requeue
            self.journal.job_changed(job)
            self._hold(job)
        else:
            self.journal.job_changed(job)
            self.queued_bytes -= job.payload_bytes()
            job.drop_payloads()
            self._remember_finished(job)
        self.listeners.job_changed(job)
        self._clean_up(job, now)

    def _owned_job_ended(self, job: Job) -> None:
        owned = self._owned.get(job.owner)
        if owned is not None:
            owned.discard(job.job_id)
            if not owned:
                del self._owned[job.owner]

    def _hold(self, job: Job) -> None:
        """Keep a failed job and its dead letters (until requeued, purged or forgotten)."""
        self.held[job.job_id] = None
        self.dead_letters += len(job.dead_tasks())

    def _remember_finished(self, job: Job) -> None:
        if job.transient:  # nobody looks it up later: gone once nothing of it runs
            if not job.leased_out():
                self.jobs.pop(job.job_id, None)
            return
        self._finished[job.job_id] = None
        while len(self._finished) > config.FINISHED_JOBS_IN_MEMORY:
            old, _ = self._finished.popitem(last=False)
            if self.jobs[old].leased_out():
                continue  # still running somewhere; remembered again when it settles
            self.jobs.pop(old, None)

    def forget_finished(self, before: float, now: float | None = None) -> int:
        """Forget the jobs that finished before ``before`` (retention); returns how many.

        A finished job whose leases are still out (a cancelled job with running
        tasks) is kept until they settle. A job holding dead letters is purged
        first (its cleanup job, submitted at ``now``, outlives it).
        """
        for job_id in [job_id for job_id in self.held if self.jobs[job_id].finished_at < before]:
            self.purge(job_id, before if now is None else now)
        forgotten = 0
        for job_id in list(self._finished):
            job = self.jobs[job_id]
            if job.finished_at < before and not job.leased_out():
                del self._finished[job_id]
                del self.jobs[job_id]
                forgotten += 1
        # The database holds older finished jobs too; it keeps those still in play.
        keep = [job.seq for job in self.jobs.values() if not job.state.finished or job.leased_out()]
        self.journal.forget_finished(before, keep)
        return forgotten

    def _settle(self, job: Job, index: int, now: float) -> None:
        """A leased task of a finished job has reported or lost its worker: discard it."""
        self._drop_lease(job, index)
        job.set_state(index, TaskState.CANCELLED)
        if job.settled() and not job.dead_letters_held:
            job.drop_payloads()  # now also its task states
            self._remember_finished(job)
        self.listeners.job_changed(job)
        self._clean_up(job, now)

    def _clean_up(self, job: Job, now: float) -> None:
        """Submit a failed or cancelled job's cleanup, once nothing of it runs any more.

        Waiting until no task is out means a band still being written when the
        job was cancelled cannot land after its cleanup.
        """
        if (
            job.cleanup is None
            or job.cleanup_job
            or job.state is JobState.SUCCEEDED
            or job.dead_letters_held  # a requeue would need what it removes
            or not job.settled()
        ):
            return
        spec = JobSpec(
            task_type=job.cleanup.task_type,
            payloads=None,
            payload=job.cleanup.payload,
            count=1,
            priority=job.priority,
            max_attempts=job.max_attempts,
            labels={"cleanup-of": job.job_id},
        )
        job.cleanup_job = job.job_id + config.CLEANUP_SUFFIX
        with contextlib.suppress(AlreadyExists, ResourceExhausted):  # already, or no room now
            self.submit(spec, now, job.cleanup_job, owner=job.owner)
        self.journal.job_changed(job)

    # ---- workers ---------------------------------------------------------

    @property
    def workers(self) -> dict[str, WorkerRecord]:
        return self.registry.workers

    @property
    def requests_refused(self) -> int:
        """Worker calls refused: an id held by another session, a wrong secret, too many."""
        return self.registry.refused

    def expire_workers(self, now: float) -> list[str]:
        """Declare dead every worker silent for longer than the timeout."""
        silent = self.registry.silent(now)
        for worker in silent:
            self.worker_lost(worker, f"no heartbeat for {self.worker_timeout:g}s", now)
        return [worker.worker_id for worker in silent]

    def worker_lost(self, worker: WorkerRecord, why: str, now: float) -> int:
        """End a session; its tasks go back to the queue (the attempt counts)."""
        return self._end_session(worker, now, why)

    def unregister_worker(self, worker: WorkerRecord, now: float) -> int:
        """A worker leaving on purpose: what it still holds goes back uncounted."""
        return self._end_session(worker, now, None)

    def _end_session(self, worker: WorkerRecord, now: float, lost: str | None) -> int:
        """Remove a live session and take its leases back: a lost worker's attempts
        count (``lost`` says why), a leaving worker's do not. How many it held."""
        if not self.registry.remove(worker):
            return 0
        for job_id, index in sorted(worker.leases):
            job = self.jobs[job_id]
            if job.state.finished:
                self._settle(job, index, now)
                continue
            del self._owners[(job_id, index)]
            if lost is None:
                self._release(job, index, now)
                continue
            attempt = job.attempts_of(index)
            message = f"worker {worker.worker_id} lost ({lost}) during attempt {attempt}"
            self._record_error(job, index, AttemptError(attempt, now, worker.worker_id, message))
            if attempt >= job.max_attempts:
                self._dead_letter(job, index, message, now)
            else:
                job.push_ready(index, now)
                self.journal.task_changed(job, index, error=message)
                self._ready.push(job)
        if worker.leases:
            self.listeners.ready()
        return len(worker.leases)

    # ---- leasing and reports ---------------------------------------------

    def lease(self, worker: WorkerRecord, max_tasks: int, now: float) -> list[LeasedTask]:
        if worker.draining or not self.registry.is_live(worker):
            return []
        worker.last_seen = now
        self.promote_due(now)
        leased: list[LeasedTask] = []
        for job, index in self._ready.lease(worker.task_types, max_tasks):
            task_type = job.task_type_of(index)
            self.listeners.leased(task_type, job.waited(index, now))
            if job.state is JobState.QUEUED:
                job.state = JobState.PREPARING if job.stage is Stage.FIRST else JobState.RUNNING
                job.started_at = now
                self.journal.job_changed(job)
                self.listeners.job_changed(job)
            worker.leases.add((job.job_id, index))
            self._owners[(job.job_id, index)] = worker
            leased.append(
                LeasedTask(
                    job.job_id,
                    index,
                    task_type,
                    job.payload(index),
                    job.attempts_of(index),
                    # A job's limit is for its parallel tasks; its first and
                    # final tasks (an assembly, say) keep their types' own.
                    job.time_limit if index < job.total else 0.0,
                )
            )
        return leased

    def _live_lease(
        self, worker: WorkerRecord, job_id: str, index: int, attempt: int, now: float
    ) -> Job | None:
        """The job, if (job_id, index, attempt) is a live lease held by ``worker``.

        A live lease of a finished job is settled here and not returned. Any
        other report counts as ignored.
        """
        job = self.jobs.get(job_id)
        if (
            job is None
            or job.settled()
            or not 0 <= index < job.size
            or job.state_of(index) != TaskState.LEASED
            or job.attempts_of(index) != attempt
            or self._owners.get((job_id, index)) is not worker
        ):
            self.reports_ignored += 1
            return None
        if job.state.finished:
            self._settle(job, index, now)
            self.reports_ignored += 1
            return None
        return job

    def _drop_lease(self, job: Job, index: int) -> None:
        worker = self._owners.pop((job.job_id, index), None)
        if worker is not None:
            worker.leases.discard((job.job_id, index))

    def complete(
        self,
        worker: WorkerRecord,
        job_id: str,
        index: int,
        attempt: int,
        result: bytes,
        now: float,
        seconds: float = 0.0,
    ) -> bool:
        """Record a result; False when it is not ``worker``'s live lease (changes nothing).

        ``seconds``: how long the attempt ran, as its worker says (0: not said).
        """
        worker.last_seen = now
        job = self._live_lease(worker, job_id, index, attempt, now)
        if job is None:
            return False
        task_type = job.task_type_of(index)
        limit = max(self.limits.max_result_bytes, _result_limit(task_type))
        if len(result) > limit:
            self.listeners.ran(task_type, "failed", seconds)
            message = f"its result is {len(result)} bytes, more than the limit of {limit}"
            self._failed_attempt(worker, job, index, attempt, message, now)
            return True
        self.listeners.ran(task_type, "succeeded", seconds)
        self._drop_lease(job, index)
        job.set_state(index, TaskState.SUCCEEDED)
        self._drop_errors(job, index)
        if job.final is not None and index == job.final_index:
            job.final.result = result
        elif job.lone and index == 0:
            job.lone_result = result
        self.journal.task_changed(job, index, result=result)
        self.succeeded += 1
        worker.completed += 1
        self.listeners.task_result(job, index, result)
        if not job.stage_done():
            self.listeners.job_changed(job)
        elif job.advance():  # the next stage's tasks are ready now
            job.ready_at = now
            job.state = JobState.FINISHING if job.stage is Stage.FINAL else JobState.RUNNING
            self.journal.job_changed(job)
            self._ready.push(job)
            self.listeners.ready()
            self.listeners.job_changed(job)
        else:
            self._finish(job, JobState.SUCCEEDED, "", now)
        return True

    def fail(
        self,
        worker: WorkerRecord,
        job_id: str,
        index: int,
        attempt: int,
        message: str,
        now: float,
        seconds: float = 0.0,
    ) -> bool:
        """Record a failed attempt: retry after a backoff, or dead-letter.

        ``seconds``: how long the attempt ran, as its worker says (0: not said).
        """
        worker.last_seen = now
        job = self._live_lease(worker, job_id, index, attempt, now)
        if job is None:
            return False
        self.listeners.ran(job.task_type_of(index), "failed", seconds)
        self._failed_attempt(worker, job, index, attempt, message, now)
        return True

    def _failed_attempt(
        self, worker: WorkerRecord, job: Job, index: int, attempt: int, message: str, now: float
    ) -> None:
        self._drop_lease(job, index)
        self.failed += 1
        worker.failed += 1
        message = message[: config.MAX_REASON_LENGTH] or "task failed"
        self._record_error(job, index, AttemptError(attempt, now, worker.worker_id, message))
        if attempt >= job.max_attempts:
            self._dead_letter(job, index, message, now)
        else:
            job.set_state(index, TaskState.DELAYED)
            self._delayed.push(now + retry_delay(self.retry, attempt, self._rng), job, index)
            self.journal.task_changed(job, index, error=message)
            self.listeners.job_changed(job)

    def release(
        self, worker: WorkerRecord, job_id: str, index: int, attempt: int, now: float
    ) -> bool:
        """Take back a task its worker did not run; the attempt is not counted."""
        job = self._live_lease(worker, job_id, index, attempt, now)
        if job is None:
            return False
        self._drop_lease(job, index)
        self._release(job, index, now)
        self.listeners.ready()
        return True

    def _release(self, job: Job, index: int, now: float) -> None:
        job.uncount_attempt(index)
        job.push_ready(index, now)
        self._ready.push(job)
        self.listeners.job_changed(job)

    def _dead_letter(self, job: Job, index: int, message: str, now: float) -> None:
        job.set_state(index, TaskState.DEAD)
        self.journal.task_changed(job, index, error=message)
        self.dead += 1
        which = f"task {index}"
        if (task := job.stage_task(index)) is not None:
            which = f"the {'first' if task is job.first else 'final'} task ({task.task_type})"
        attempts = job.attempts_of(index)
        reason = f"{which} dead-lettered after {attempts} attempt(s): {message}"
        self._finish(job, JobState.FAILED, reason, now)

    # ---- attempt errors and dead letters ---------------------------------

    def _record_error(self, job: Job, index: int, error: AttemptError) -> None:
        """Keep why an attempt failed: the task's latest few, within the global bound."""
        if job.transient:
            return
        error = dataclasses.replace(error, message=error.message[: config.MAX_ATTEMPT_ERROR_LENGTH])
        kept = job.errors.get(index)
        if self.errors_kept >= config.MAX_ERRORS_IN_MEMORY:
            # Full: a task keeps its latest error only, or none (then its dead
            # letter still says why, in the job's reason and the journal).
            if kept:
                self.errors_kept -= len(kept) - 1
                kept[:] = [error]
            return
        kept = job.errors.setdefault(index, [])
        kept.append(error)
        self.errors_kept += 1
        if len(kept) > config.MAX_ATTEMPT_ERRORS:
            kept.pop(0)
            self.errors_kept -= 1

    def _drop_errors(self, job: Job, index: int) -> None:
        self.errors_kept -= len(job.errors.pop(index, ()))

    def _held_job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        if not job.dead_letters_held:
            if job.state is JobState.FAILED:
                raise WrongState(
                    f"job {job_id!r} holds no dead letters any more (purged, or failed"
                    " before this version of the coordinator)"
                )
            state = job.state.name
            raise WrongState(f"job {job_id!r} is {state}: it holds no dead letters")
        return job

    def requeue(
        self,
        job_id: str,
        tasks: list[int],
        now: float,
        quota: HolderQuota | None = None,
    ) -> tuple[Job, int]:
        """Put a held job's dead tasks back on the queue (all, or ``tasks``, which must
        then name every one), attempts reset; the job runs again from where it failed.
        Returns the job and how many tasks were requeued."""
        job = self._held_job(job_id)
        dead = job.dead_tasks()
        chosen = set(tasks) if tasks else set(dead)
        for index in sorted(chosen):
            if index not in dead:
                raise InvalidRequest(f"task {index} of job {job_id!r} is not dead-lettered")
        if left := sorted(set(dead) - chosen):
            raise WrongState(
                f"job {job_id!r} cannot run again while task(s) {left} stay dead-lettered:"
                " requeue them too"
            )
        if quota is not None:
            self._check_quota(job.owner, quota, job.unfinished_tasks(), 0)
        if self.active >= self.limits.max_active_jobs:
            raise ResourceExhausted(
                f"the queue holds {self.active} unfinished jobs, its limit; retry when some finish"
            )
        del self.held[job_id]
        self.dead_letters -= len(dead)
        self.requeued += len(chosen)
        job.reopen(chosen)
        job.ready_at, job.returned_at = now, {}
        self.active += 1
        self._owned.setdefault(job.owner, set()).add(job_id)
        self.journal.job_changed(job)
        for index in sorted(chosen):
            self.journal.task_changed(job, index)
        self._ready.push(job)
        self.listeners.ready()
        self.listeners.job_changed(job)
        return job, len(chosen)

    def purge(self, job_id: str, now: float) -> tuple[Job, int]:
        """Drop a held job's dead letters: it is an ordinary failed job from now on,
        and its cleanup (if it has one) runs. Returns it and how many were dropped."""
        job = self._held_job(job_id)
        dead = len(job.dead_tasks())
        del self.held[job_id]
        self.dead_letters -= dead
        self.purged += dead
        job.dead_letters_held = False
        for index in list(job.errors):
            self._drop_errors(job, index)
        self.journal.job_changed(job)
        self.queued_bytes -= job.payload_bytes()
        job.drop_payloads()
        if not job.leased_out():
            self._remember_finished(job)
        self.listeners.job_changed(job)
        self._clean_up(job, now)
        return job, dead

    def held_jobs(self, owner: str | None = None) -> list[Job]:
        """The jobs holding dead letters, the latest failed first; ``owner``: theirs."""
        jobs = [self.jobs[job_id] for job_id in self.held]
        jobs = [job for job in jobs if owner is None or job.owner == owner]
        return sorted(jobs, key=lambda job: (job.finished_at, job.seq), reverse=True)

    def promote_due(self, now: float) -> int:
        """Move tasks whose backoff is over back into the ready queue."""
        promoted = 0
        for job_id, index in self._delayed.pop_due(now):
            job = self.jobs.get(job_id)
            if job is None or job.state.finished or job.state_of(index) != TaskState.DELAYED:
                continue
            job.push_ready(index, now)
            self._ready.push(job)
            promoted += 1
        if promoted:
            self.listeners.ready()
        return promoted

    def next_due(self) -> float | None:
        return self._delayed.next_due()

    # ---- statistics ------------------------------------------------------

    def depth_by_priority(self) -> dict[int, tuple[int, int]]:
        """priority -> (queued, leased), counting tasks waiting out a backoff as queued."""
        depth: dict[int, tuple[int, int]] = {}
        for job in self.active_jobs():
            counts = _counts(job)
            queued, leased = depth.get(job.priority, (0, 0))
            depth[job.priority] = (
                queued + counts[TaskState.QUEUED] + counts[TaskState.DELAYED],
                leased + counts[TaskState.LEASED],
            )
        return depth

    def totals(self) -> dict[TaskState, int]:
        totals = {state: 0 for state in TaskState}
        for job in self.active_jobs():
            for state, count in _counts(job).items():
                totals[state] += count
        return totals


def _result_limit(task_type: str) -> int:
    """The larger result limit a task type may declare (0: none; the queue's applies)."""
    try:
        return tasks.get(task_type).max_result_bytes
    except KeyError:  # a type no longer registered: only the queue's limit
        return 0


def _counts(job: Job) -> dict[TaskState, int]:
    """A job's tasks by state, its released stage tasks included (they are queue depth)."""
    counts = dict(job.counts)
    if job.stage is not Stage.PARALLEL:  # the parallel tasks wait for the first one
        counts[TaskState.WAITING] += counts[TaskState.QUEUED]
        counts[TaskState.QUEUED] = 0
    for _, task in job.stage_tasks():
        counts[task.state] += 1
    return counts
