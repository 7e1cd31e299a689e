"""The gRPC face of the broker: translate, delegate, map errors to status codes.

Nothing here decides anything about the queue; it converts messages, waits
where the protocol waits (long polls, watches, durable commits) and turns
:class:`~.broker.BrokerError` into gRPC status codes with the broker's message.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from fractalq import config
from fractalq.config import CoordinatorConfig
from fractalq.coordinator import validation
from fractalq.coordinator.broker import (
    AlreadyExists,
    Broker,
    BrokerError,
    InvalidRequest,
    NotFound,
)
from fractalq.coordinator.jobs import Job, JobState, TaskState
from fractalq.coordinator.store import GroupCommit, SqliteJournal
from fractalq.proto import fractalq_pb2 as pb
from fractalq.proto import fractalq_pb2_grpc as pb_grpc

log = logging.getLogger("fractalq.coordinator")

_CODES: dict[type[BrokerError], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
}

R = TypeVar("R")


def _status(error: BrokerError) -> grpc.StatusCode:
    for kind, code in _CODES.items():
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.FAILED_PRECONDITION


def _unary(
    method: Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[R]],
) -> Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[R]]:
    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> R:
        try:
            return await method(self, request, context)
        except BrokerError as error:
            await context.abort(_status(error), str(error))
            raise  # abort raises; this is for the type checker

    return wrapper


def job_message(job: Job, results: list[bytes] | None = None) -> pb.Job:
    counts = job.counts
    return pb.Job(
        job_id=job.job_id,
        task_type=job.task_type,
        priority=job.priority,
        max_attempts=job.max_attempts,
        state=int(job.state),  # type: ignore[arg-type]
        reason=job.reason,
        total=job.total,
        queued=counts[TaskState.QUEUED] + counts[TaskState.DELAYED],
        leased=counts[TaskState.LEASED],
        succeeded=counts[TaskState.SUCCEEDED],
        dead=counts[TaskState.DEAD],
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        labels=job.labels,
        results=results or [],
    )


class JobWatches:
    """One event per watched job, set (and replaced) whenever the job changes."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def event(self, job_id: str) -> asyncio.Event:
        return self._events.setdefault(job_id, asyncio.Event())

    def notify(self, job: Job) -> None:
        event = self._events.pop(job.job_id, None)
        if event is not None:
            event.set()


class CoordinatorService(pb_grpc.CoordinatorServicer):
    def __init__(
        self,
        broker: Broker,
        settings: CoordinatorConfig,
        journal: SqliteJournal | None = None,
        commit: GroupCommit | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.broker = broker
        self.settings = settings
        self.journal = journal
        self.commit = commit
        self.clock = clock
        self.stopping = False
        self._ready = asyncio.Event()
        self._watches = JobWatches()
        broker.on_ready = self._wake
        broker.on_job_change = self._watches.notify

    def _wake(self) -> None:
        self._ready.set()
        self._ready = asyncio.Event()

    async def _durable(self) -> None:
        if self.commit is not None:
            await self.commit.durable()

    def _job(self, job_id: str) -> Job:
        job = self.broker.get_job(job_id)
        if job is None and self.journal is not None:
            job = self.journal.load_job(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        return job

    # ---- workers ---------------------------------------------------------

    @_unary
    async def RegisterWorker(
        self, request: pb.RegisterWorkerRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RegisterWorkerResponse:
        if not request.worker_id:
            raise InvalidRequest("worker_id is empty")
        if not request.task_types:
            raise InvalidRequest("a worker must offer at least one task type")
        self.broker.register_worker(
            request.worker_id,
            tuple(request.task_types),
            max(1, request.concurrency),
            request.hostname,
            self.clock(),
        )
        log.info("worker %s registered (%s)", request.worker_id, ", ".join(request.task_types))
        return pb.RegisterWorkerResponse(
            heartbeat_interval=self.settings.heartbeat_interval,
            worker_timeout=self.settings.worker_timeout,
        )

    async def Heartbeat(
        self,
        request_iterator: AsyncIterator[pb.HeartbeatRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.HeartbeatResponse]:
        worker_id = ""
        try:
            async for beat in request_iterator:
                try:
                    worker = self.broker.heartbeat(beat.worker_id, beat.draining, self.clock())
                except BrokerError as error:
                    await context.abort(_status(error), str(error))
                worker_id = beat.worker_id
                yield pb.HeartbeatResponse(leased=len(worker.leases))
        finally:
            # A worker leaving on purpose unregisters first; a stream that ends
            # otherwise (the process died, the network went) loses the worker
            # at once rather than after the heartbeat timeout.
            if worker_id in self.broker.workers and not self.stopping:
                lost = self.broker.worker_lost(worker_id, "heartbeat stream ended", self.clock())
                log.warning(
                    "worker %s lost: heartbeat stream ended (%d leases back)", worker_id, lost
                )

    @_unary
    async def GetTask(
        self, request: pb.GetTaskRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetTaskResponse:
        limit = min(max(request.max_tasks, 1), config.MAX_TASKS_PER_LEASE)
        wait = min(max(request.wait_seconds, 0.0), config.MAX_LONG_POLL_SECONDS)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            ready = self._ready  # before leasing, so a wake-up in between is not missed
            leased = self.broker.lease(request.worker_id, limit, self.clock())
            remaining = deadline - loop.time()
            if leased or remaining <= 0:
                break
            due = self.broker.next_due()
            if due is not None:
                remaining = min(remaining, max(due - self.clock(), 0.0) + 0.001)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ready.wait(), remaining)
        return pb.GetTaskResponse(
            tasks=[
                pb.Task(
                    job_id=task.job_id,
                    index=task.index,
                    task_type=task.task_type,
                    payload=task.payload,
                    attempt=task.attempt,
                )
                for task in leased
            ]
        )

    @_unary
    async def CompleteTask(
        self, request: pb.CompleteTaskRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ReportResponse:
        now = self.clock()
        accepted = sum(
            self.broker.complete(
                request.worker_id, r.task.job_id, r.task.index, r.task.attempt, r.result, now
            )
            for r in request.results
        )
        if accepted:
            await self._durable()
        return pb.ReportResponse(accepted=accepted, ignored=len(request.results) - accepted)

    @_unary
    async def FailTask(
        self, request: pb.FailTaskRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ReportResponse:
        now = self.clock()
        accepted = sum(
            self.broker.fail(
                request.worker_id, e.task.job_id, e.task.index, e.task.attempt, e.message, now
            )
            for e in request.errors
        )
        if accepted:
            await self._durable()
        return pb.ReportResponse(accepted=accepted, ignored=len(request.errors) - accepted)

    @_unary
    async def ReleaseTasks(
        self, request: pb.ReleaseTasksRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ReportResponse:
        accepted = sum(
            self.broker.release(request.worker_id, t.job_id, t.index, t.attempt)
            for t in request.tasks
        )
        return pb.ReportResponse(accepted=accepted, ignored=len(request.tasks) - accepted)

    @_unary
    async def UnregisterWorker(
        self, request: pb.UnregisterWorkerRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.UnregisterWorkerResponse:
        released = self.broker.unregister_worker(request.worker_id)
        log.info("worker %s left (%d leases back)", request.worker_id, released)
        return pb.UnregisterWorkerResponse(released=released)

    # ---- clients ---------------------------------------------------------

    @_unary
    async def SubmitJob(
        self, request: pb.SubmitJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SubmitJobResponse:
        spec = validation.job_spec(
            task_type=request.task_type,
            payloads=list(request.payloads),
            payload=request.payload,
            count=request.count,
            priority=request.priority,
            max_attempts=request.max_attempts,
            labels=dict(request.labels),
            job_id=request.job_id,
            limits=self.settings.limits,
        )
        job_id = spec.job_id or validation.new_job_id()
        known = self.broker.get_job(job_id) is not None
        if not known and self.journal is not None and self.journal.load_job(job_id) is not None:
            raise AlreadyExists(f"job {job_id!r} already exists (finished long ago)")
        job, created = self.broker.submit(spec, self.clock(), job_id)
        await self._durable()
        if created:
            log.info(
                "job %s: %d %s task(s), priority %d", job_id, job.total, job.task_type, job.priority
            )
        return pb.SubmitJobResponse(job=job_message(job), created=created)

    @_unary
    async def GetJob(
        self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Job:
        job = self._job(request.job_id)
        # What a client reads is durable: a restart never shows it less progress.
        await self._durable()
        results = None
        if request.include_results and job.counts[TaskState.SUCCEEDED] and self.journal:
            results = self.journal.results(job)
        return job_message(job, results)

    async def WatchJob(
        self, request: pb.WatchJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.Job]:
        try:
            job = self._job(request.job_id)
        except BrokerError as error:
            await context.abort(_status(error), str(error))
        while True:
            changed = self._watches.event(request.job_id)
            # The job object lives on while the message is sent: decide on the
            # snapshot sent, or a job finishing meanwhile would end the stream
            # without its final state ever being sent.
            message = job_message(job)
            yield message
            if JobState(message.state).finished:
                return
            await changed.wait()
            job = self._job(request.job_id)
            if not job.state.finished:  # the final state goes out at once
                await asyncio.sleep(0.02)  # coalesce bursts of changes into one message
                job = self._job(request.job_id)

    @_unary
    async def ListJobs(
        self, request: pb.ListJobsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListJobsResponse:
        jobs = self.broker.recent_jobs(
            request.limit or config.DEFAULT_LIST_LIMIT, request.active_only
        )
        return pb.ListJobsResponse(jobs=[job_message(job) for job in jobs])

    @_unary
    async def CancelJob(
        self, request: pb.CancelJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Job:
        job = self.broker.cancel(request.job_id, request.reason, self.clock())
        await self._durable()
        return job_message(job)

    @_unary
    async def GetStats(
        self, request: pb.GetStatsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Stats:
        return self.stats()

    def stats(self) -> pb.Stats:
        broker, now = self.broker, self.clock()
        totals = broker.totals()
        return pb.Stats(
            queued=totals[TaskState.QUEUED],
            delayed=totals[TaskState.DELAYED],
            leased=totals[TaskState.LEASED],
            jobs_active=sum(1 for _ in broker.active_jobs()),
            tasks_succeeded=broker.succeeded,
            tasks_failed=broker.failed,
            tasks_dead=broker.dead,
            by_priority=[
                pb.PriorityDepth(priority=priority, queued=queued, leased=leased)
                for priority, (queued, leased) in sorted(broker.depth_by_priority().items())
            ],
            workers=[
                pb.WorkerInfo(
                    worker_id=worker.worker_id,
                    hostname=worker.hostname,
                    task_types=worker.task_types,
                    concurrency=worker.concurrency,
                    leased=len(worker.leases),
                    completed=worker.completed,
                    failed=worker.failed,
                    draining=worker.draining,
                    last_seen_seconds_ago=max(now - worker.last_seen, 0.0),
                )
                for worker in broker.workers.values()
            ],
        )
