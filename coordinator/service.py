"""The gRPC face of the broker: check, translate, delegate, map errors to codes.

Nothing here decides anything about the queue; it checks what clients send
(:mod:`.validation`), converts messages, waits where the protocol waits (long
polls, watches, durable commits) and turns :class:`~.broker.BrokerError` into
gRPC status codes with the broker's message.

No client input can make a handler raise anything else: requests are parsed
by :func:`add_to_server`'s deserializers, which turn bytes that are not a
valid message into :class:`Malformed` instead of an exception inside gRPC
(which would log a traceback and send internal class names back), and
malformed requests are answered INVALID_ARGUMENT, counted and logged without
flooding the log (:mod:`.refusals`). An exception that still escapes a handler
is a bug: it is logged with its traceback and the client gets INTERNAL with
no detail.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2

from fractalq import config
from fractalq.coordinator import rpc, validation
from fractalq.coordinator.broker import Broker, JobSpec, LeasedTask
from fractalq.coordinator.deadletters import dead_letters
from fractalq.coordinator.errors import (
    AlreadyExists,
    BrokerError,
    InvalidRequest,
    NotFound,
    OverQuota,
    PermissionDenied,
    ResourceExhausted,
    WrongState,
)
from fractalq.coordinator.jobs import Job, JobState, StageTask, TaskState
from fractalq.coordinator.listeners import Listener
from fractalq.coordinator.policy import ANYONE, Caller, check_change, check_read, quota_for
from fractalq.coordinator.refusals import (
    INVALID,
    OVER_QUOTA,
    PERMISSION_DENIED,
    UNAUTHENTICATED,
    Refusals,
)
from fractalq.coordinator.rpc import Malformed
from fractalq.coordinator.settings import CoordinatorSettings
from fractalq.coordinator.store import GroupCommit, SqliteJournal
from fractalq.coordinator.validation import loggable
from fractalq.coordinator.workers import WorkerRecord
from fractalq.coordinator.workstream import WorkStream
from fractalq.proto import fractalq_pb2 as pb
from fractalq.proto import fractalq_pb2_grpc as pb_grpc
from fractalq.security.tokens import bearer

log = logging.getLogger("fractalq.coordinator")

SERVICE_NAME = "fractalq.v1.Coordinator"

_CODES: dict[type[BrokerError], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
}
# Refusals counted (and said in the log, rate-limited) by kind; the others
# (an unknown job, say) are ordinary answers.
_COUNTED: dict[type[BrokerError], str] = {
    InvalidRequest: INVALID,
    PermissionDenied: PERMISSION_DENIED,
    OverQuota: OVER_QUOTA,
}

R = TypeVar("R")
M = TypeVar("M")
Report = TypeVar("Report", pb.TaskResult, pb.TaskError, pb.TaskRef)


def _parsed(request: M | Malformed) -> M:
    """The request, or InvalidRequest if its bytes were not a valid message."""
    if isinstance(request, Malformed):
        raise InvalidRequest(str(request))
    return request


def _status(error: BrokerError) -> grpc.StatusCode:
    for kind, code in _CODES.items():
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.FAILED_PRECONDITION


def refusal_kind(error: BrokerError) -> str | None:
    """The kind of refusal ``error`` is counted as (:mod:`.refusals`), if any."""
    return next((name for cls, name in _COUNTED.items() if isinstance(error, cls)), None)


def _refusal(error: BrokerError) -> tuple[grpc.StatusCode, str, str | None]:
    """The status code, the message and the kind of refusal it is counted as."""
    return _status(error), str(error), refusal_kind(error)


def _response_type(method: str) -> type[Message]:
    output = pb.DESCRIPTOR.services_by_name["Coordinator"].methods_by_name[method].output_type
    kind: type[Message] = getattr(pb, output.name)
    return kind


def _unary(
    method: Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[R]],
) -> Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[R]]:
    name = method.__name__
    response_type = _response_type(name)

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> R:
        kind: str | None = None
        try:
            return await method(self, _parsed(request), context)
        except BrokerError as error:
            code, message, kind = _refusal(error)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed", name)  # a bug: keep its traceback for us
            code, message = grpc.StatusCode.INTERNAL, "internal error"
        _refuse(self, name, code, message, context, kind)
        return response_type()  # type: ignore[return-value]  # gRPC sends the status only

    return wrapper


def _refuse(
    service: CoordinatorService,
    method: str,
    code: grpc.StatusCode,
    message: str,
    context: grpc.aio.ServicerContext[Any, Any],
    kind: str | None,
) -> None:
    """End the call with ``code``, counting it as a refusal of ``kind`` (if any)."""
    if kind is not None:
        service.refusals.refused(kind, f"{method}: {loggable(message)}")
    rpc.set_status(context, code, message)


def _who(caller: Caller) -> str:
    return f"{caller.role.value} {caller.holder}" if caller.role else "a caller (no tokens)"


def add_to_server(service: CoordinatorService, server: grpc.aio.Server) -> None:
    """Serve ``service`` on ``server``, with deserializers that never raise
    (its methods refuse a :class:`~.rpc.Malformed` request themselves)."""
    descriptor = pb.DESCRIPTOR.services_by_name["Coordinator"]
    rpc.add_service(server, descriptor, pb, lambda method, _: getattr(service, method.name))


def add_health(service: CoordinatorService, health: Any, server: grpc.aio.Server) -> None:
    """Serve the standard health service: malformed calls are refused (INVALID_ARGUMENT)
    and counted like the coordinator's own, never a traceback in the log."""

    def malformed(method: str, request: Malformed) -> None:
        service.refusals.refused(INVALID, f"Health/{method}: {loggable(str(request))}")

    def behaviour(method: Any, response_type: type[Message]) -> Callable[..., Any]:
        return rpc.guarded(getattr(health, method.name), method, response_type, malformed)

    rpc.add_service(server, health_pb2.DESCRIPTOR.services_by_name["Health"], health_pb2, behaviour)


_TASK_STATES: dict[TaskState, pb.TaskState.ValueType] = {
    TaskState.WAITING: pb.TASK_WAITING,
    TaskState.QUEUED: pb.TASK_QUEUED,
    TaskState.LEASED: pb.TASK_LEASED,
    TaskState.DELAYED: pb.TASK_DELAYED,
    TaskState.SUCCEEDED: pb.TASK_SUCCEEDED,
    TaskState.DEAD: pb.TASK_DEAD,
    TaskState.CANCELLED: pb.TASK_CANCELLED,
}


def _stage_spec(request: pb.SubmitJobRequest, name: str) -> tuple[str, bytes] | None:
    if not request.HasField(name):  # type: ignore[arg-type]
        return None
    stage: pb.StageTask = getattr(request, name)
    return stage.task_type, stage.payload


def _stage_status(task: StageTask | None) -> pb.StageTaskStatus | None:
    if task is None:
        return None
    return pb.StageTaskStatus(
        task_type=task.task_type, state=_TASK_STATES[task.state], attempts=task.attempts
    )


def job_message(job: Job, results: list[bytes] | None = None, with_result: bool = True) -> pb.Job:
    """The job as the wire shows it. Listings leave out the final task's result (up to
    ``MAX_RESULT_BYTES`` each), so that a listing of ``MAX_LIST_LIMIT`` jobs stays
    well under the message limit; GetJob and WatchJob carry it."""
    counts = job.counts
    return pb.Job(
        first=_stage_status(job.first),
        final=_stage_status(job.final),
        result=job.result if with_result else b"",
        time_limit=job.time_limit,
        cleanup_job=job.cleanup_job,
        owner=job.owner,
        dead_letters_held=job.dead_letters_held,
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


def _tasks(leased: list[LeasedTask]) -> list[pb.Task]:
    return [
        pb.Task(
            job_id=task.job_id,
            index=task.index,
            task_type=task.task_type,
            payload=task.payload,
            attempt=task.attempt,
            time_limit=task.time_limit,
        )
        for task in leased
    ]


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


class _ServiceListener(Listener):
    """Wakes the workers' long polls and pushes changes to job watches."""

    def __init__(self, service: CoordinatorService) -> None:
        self._service = service

    def ready(self) -> None:
        self._service._wake()

    def job_changed(self, job: Job) -> None:
        self._service._watches.notify(job)


class CoordinatorService(pb_grpc.CoordinatorServicer):
    def __init__(
        self,
        broker: Broker,
        settings: CoordinatorSettings,
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
        self.refusals = Refusals()
        self._ready = asyncio.Event()
        self._watches = JobWatches()
        broker.listeners.add(_ServiceListener(self))

    def _wake(self) -> None:
        self._ready.set()
        self._ready = asyncio.Event()

    def caller(self, context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
        """Who makes this call: the token's role and holder (the interceptor has
        checked that there is a valid one), or anyone when tokens are off."""
        tokens = self.settings.tokens
        if tokens is None:
            return ANYONE
        header = next(
            (value for key, value in context.invocation_metadata() or () if key == "authorization"),
            None,
        )
        identity = tokens.identify(bearer(header if isinstance(header, str) else None))
        if identity is None:  # not past the interceptor: cannot happen
            raise PermissionDenied("a valid token is required")
        return Caller.of(identity)

    async def _durable(self) -> None:
        if self.commit is not None:
            await self.commit.durable()

    def find_job(self, job_id: str) -> Job:
        """The job, from memory or the database; BrokerError for a bad or unknown id."""
        return self._job(job_id)

    def _job(self, job_id: str) -> Job:
        validation.check_job_id(job_id)
        job = self.broker.get_job(job_id)
        if job is None and self.journal is not None:
            job = self.journal.load_job(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        return job

    # ---- workers ---------------------------------------------------------

    def _session(self, worker_id: str, session: str) -> WorkerRecord:
        validation.check_worker_id(worker_id)
        validation.check_session(session)
        return self.broker.registry.session(worker_id, session, self.clock())

    @_unary
    async def RegisterWorker(
        self, request: pb.RegisterWorkerRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RegisterWorkerResponse:
        worker_id = validation.check_worker_id(request.worker_id)
        task_types = validation.check_task_types(list(request.task_types))
        worker = self.broker.registry.register(
            worker_id,
            task_types,
            validation.check_concurrency(request.concurrency),
            validation.check_hostname(request.hostname),
            self.clock(),
            session=validation.check_session(request.session),
        )
        log.info("worker %s registered (%s)", worker_id, ", ".join(task_types))
        return pb.RegisterWorkerResponse(
            heartbeat_interval=self.settings.heartbeat_interval,
            worker_timeout=self.settings.worker_timeout,
            session=worker.session,
        )

    async def Heartbeat(
        self,
        request_iterator: AsyncIterator[pb.HeartbeatRequest | Malformed],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.HeartbeatResponse]:
        worker: WorkerRecord | None = None
        stream = 0
        try:
            async for beat in request_iterator:
                refusal = None
                try:
                    beat = _parsed(beat)
                    if worker is not None and beat.worker_id != worker.worker_id:
                        raise InvalidRequest("worker_id changed within one heartbeat stream")
                    current = self._session(beat.worker_id, beat.session)
                    if current is not worker:  # the first beat opens the stream
                        worker = current
                        worker.stream += 1
                        stream = worker.stream
                    self.broker.registry.heartbeat(
                        worker, beat.draining, self.clock(), beat.storage_error, beat.running
                    )
                except BrokerError as error:
                    refusal = _refusal(error)
                if refusal is not None or worker is None:
                    code, message, kind = refusal or (
                        grpc.StatusCode.INTERNAL,
                        "internal error",
                        None,
                    )
                    _refuse(self, "Heartbeat", code, message, context, kind)
                    return
                yield pb.HeartbeatResponse(leased=len(worker.leases))
        finally:
            # A worker leaving on purpose unregisters first; a stream that ends
            # otherwise (the process died, the network went) loses the worker
            # at once rather than after the heartbeat timeout, unless a newer
            # stream of the same session has opened since (a reconnect).
            if (
                worker is not None
                and worker.stream == stream
                and self.broker.registry.is_live(worker)
                and not self.stopping
            ):
                lost = self.broker.worker_lost(worker, "heartbeat stream ended", self.clock())
                log.warning(
                    "worker %s lost: heartbeat stream ended (%d leases back)",
                    worker.worker_id,
                    lost,
                )

    @_unary
    async def GetTask(
        self, request: pb.GetTaskRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetTaskResponse:
        return await self.get_task(request)

    @_unary
    async def CompleteTask(
        self, request: pb.CompleteTaskRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ReportResponse:
        return await self.complete_tasks(request)

    @_unary
    async def FailTask(
        self, request: pb.FailTaskRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ReportResponse:
        return await self.fail_tasks(request)

    @_unary
    async def ReleaseTasks(
        self, request: pb.ReleaseTasksRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ReportResponse:
        return await self.release_tasks(request)

    async def Work(
        self,
        requests: AsyncIterator[pb.WorkRequest | Malformed],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.WorkResponse]:
        stream = WorkStream(self, requests)
        async for answer in stream:
            yield answer
        if stream.refusal is not None:
            code, message, kind = _refusal(stream.refusal)
            _refuse(self, "Work", code, message, context, kind)
        elif stream.failure is not None:
            log.error("Work failed", exc_info=stream.failure)  # a bug: keep its traceback
            rpc.set_status(context, grpc.StatusCode.INTERNAL, "internal error")

    async def get_task(self, request: pb.GetTaskRequest) -> pb.GetTaskResponse:
        """GetTask (a call or a Work stream's request); BrokerError when refused."""
        worker = self._session(request.worker_id, request.session)
        limit = min(max(request.max_tasks, 1), config.MAX_TASKS_PER_LEASE)
        wait = validation.check_finite(request.wait_seconds, "wait_seconds")
        wait = min(wait, config.MAX_LONG_POLL_SECONDS)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            ready = self._ready  # before leasing, so a wake-up in between is not missed
            leased = self.broker.lease(worker, limit, self.clock())
            remaining = deadline - loop.time()
            if leased or remaining <= 0 or not self.broker.registry.is_live(worker):
                break
            due = self.broker.next_due()
            if due is not None:
                remaining = min(remaining, max(due - self.clock(), 0.0) + 0.001)
            with contextlib.suppress(TimeoutError):  # asyncio.timeout: no task per wait
                async with asyncio.timeout(remaining):
                    await ready.wait()
        return pb.GetTaskResponse(tasks=_tasks(leased))

    async def complete_tasks(self, request: pb.CompleteTaskRequest) -> pb.ReportResponse:
        """CompleteTask (a call or a Work stream's request); BrokerError when refused."""
        complete = self.broker.complete

        def apply(worker: WorkerRecord, r: pb.TaskResult, now: float) -> bool:
            task = r.task
            return complete(worker, task.job_id, task.index, task.attempt, r.result, now, r.seconds)

        return await self._report(
            request.worker_id, request.session, request.results, apply, max_tasks=request.max_tasks
        )

    async def fail_tasks(self, request: pb.FailTaskRequest) -> pb.ReportResponse:
        """FailTask (a call or a Work stream's request); BrokerError when refused."""
        fail = self.broker.fail

        def apply(worker: WorkerRecord, e: pb.TaskError, now: float) -> bool:
            task = e.task
            return fail(worker, task.job_id, task.index, task.attempt, e.message, now, e.seconds)

        return await self._report(request.worker_id, request.session, request.errors, apply)

    async def release_tasks(self, request: pb.ReleaseTasksRequest) -> pb.ReportResponse:
        """ReleaseTasks (a call or a Work stream's request); BrokerError when refused."""
        release = self.broker.release

        def apply(worker: WorkerRecord, t: pb.TaskRef, now: float) -> bool:
            return release(worker, t.job_id, t.index, t.attempt, now)

        # Not waited for: a release lost in a crash is a lease the restart takes back anyway.
        return await self._report(
            request.worker_id, request.session, request.tasks, apply, durable=False
        )

    async def _report(
        self,
        worker_id: str,
        session: str,
        reports: Sequence[Report],
        apply: Callable[[WorkerRecord, Report, float], bool],
        durable: bool = True,
        max_tasks: int = 0,
    ) -> pb.ReportResponse:
        """The path of every report RPC: each report applied under the worker's
        session, the answer once the accepted ones are durable, with the worker's
        next tasks when it asks (a stage these reports released, say)."""
        worker = self._session(worker_id, session)
        now = self.clock()
        accepted = sum(apply(worker, report, now) for report in reports)
        leased = []
        if max_tasks:
            leased = self.broker.lease(worker, min(max_tasks, config.MAX_TASKS_PER_LEASE), now)
        if accepted and durable:
            await self._durable()
        return pb.ReportResponse(
            accepted=accepted, ignored=len(reports) - accepted, tasks=_tasks(leased)
        )

    @_unary
    async def UnregisterWorker(
        self, request: pb.UnregisterWorkerRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.UnregisterWorkerResponse:
        worker = self._session(request.worker_id, request.session)
        released = self.broker.unregister_worker(worker, self.clock())
        log.info("worker %s left (%d leases back)", worker.worker_id, released)
        return pb.UnregisterWorkerResponse(released=released)

    # ---- clients ---------------------------------------------------------

    @_unary
    async def SubmitJob(
        self, request: pb.SubmitJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SubmitJobResponse:
        return await self.submit_job(request, self.caller(context))

    def submit_internal(self, spec: JobSpec, job_id: str, now: float | None = None) -> Job:
        """A job the coordinator makes for itself (the explorer's tiles, the orphan
        sweep): built in-process, so nothing to parse and no holder's quota, but the
        broker's limits apply (BrokerError when refused). Not waited for: a transient
        job is never journaled, and a sweep lost in a crash is queued again."""
        job, created = self.broker.submit(spec, self.clock() if now is None else now, job_id)
        if created and not spec.transient:
            log.info("job %s: %d %s task(s), queued by the coordinator", job_id, job.total,
                     job.task_type)  # fmt: skip
        return job

    async def submit_job(
        self, request: pb.SubmitJobRequest, caller: Caller = ANYONE
    ) -> pb.SubmitJobResponse:
        """SubmitJob without gRPC (the dashboard's form too); BrokerError when refused."""
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
            first=_stage_spec(request, "first"),
            final=_stage_spec(request, "final"),
            time_limit=request.time_limit,
            cleanup=_stage_spec(request, "cleanup"),
        )
        wait = validation.check_finite(request.wait_seconds, "wait_seconds")
        wait = min(max(wait, 0.0), config.MAX_SUBMIT_WAIT_SECONDS)
        job_id = spec.job_id or validation.new_job_id()
        known = self.broker.get_job(job_id) is not None
        # An id of the client's may be one only the database remembers (one of ours is new).
        if not known and spec.job_id and self.journal and self.journal.load_job(job_id):
            raise AlreadyExists(f"job {job_id!r} already exists (finished long ago)")
        job, created = self.broker.submit(
            spec,
            self.clock(),
            job_id,
            owner=caller.owner,
            quota=quota_for(caller, self.settings.quota) if self.settings.tokens else None,
        )
        if created:  # said once the job's first lease has gone out: not in its way
            asyncio.get_running_loop().call_soon(
                log.info,
                "job %s: %d %s task(s), priority %d",
                job_id,
                job.total,
                job.task_type,
                job.priority,
            )
        if wait > 0:
            await self._until_ended(job, wait)
        # The answer is the job as it stands now (a requeue could change it
        # while the commit runs); one commit holds the submission and its end.
        message = job_message(job)
        await self._durable()
        if wait > 0 and request.include_results and (results := self._results(job)):
            message.results.extend(results)
        return pb.SubmitJobResponse(job=message, created=created)

    async def _until_ended(self, job: Job, seconds: float) -> None:
        """Return once ``job`` (the broker's, which changes in place) has ended, or
        after ``seconds``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not job.state.finished and (left := deadline - loop.time()) > 0:
            changed = self._watches.event(job.job_id)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await changed.wait()

    def _results(self, job: Job) -> list[bytes] | None:
        """Each task's result (committed ones: call after :meth:`_durable`), or None."""
        if not (job.counts[TaskState.SUCCEEDED] and self.journal):
            return None
        results = self.journal.results(job)
        size = sum(map(len, results))
        if size > config.MAX_RESULTS_REPLY_BYTES:
            raise ResourceExhausted(
                f"the results of job {job.job_id} are {size} bytes, more than one reply"
                f" carries ({config.MAX_RESULTS_REPLY_BYTES})"
            )
        return results

    @_unary
    async def GetJob(
        self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Job:
        job = check_read(self.caller(context), self._job(request.job_id))
        # What a client reads is durable: a restart never shows it less progress.
        await self._durable()
        return job_message(job, self._results(job) if request.include_results else None)

    async def WatchJob(
        self, request: pb.WatchJobRequest | Malformed, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.Job]:
        refusal = None
        try:
            job_id = _parsed(request).job_id
            job = check_read(self.caller(context), self._job(job_id))
        except BrokerError as error:
            refusal = _refusal(error)
        if refusal is not None:
            code, details, kind = refusal
            _refuse(self, "WatchJob", code, details, context, kind)
            return
        while True:
            changed = self._watches.event(job_id)
            # The job object lives on while the message is sent: decide on the
            # snapshot sent, or a job finishing meanwhile would end the stream
            # without its final state ever being sent.
            message = job_message(job)
            yield message
            if JobState(message.state).finished:
                return
            await changed.wait()
            job = await self._coalesced(job_id)

    async def _coalesced(self, job_id: str) -> Job:
        """The job once a burst of changes is over: ``WATCH_COALESCE`` seconds after
        the first, or at once when it finishes (the final state is never held back)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + config.WATCH_COALESCE
        job = self._job(job_id)
        while not job.state.finished and (left := deadline - loop.time()) > 0:
            changed = self._watches.event(job_id)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await changed.wait()
            job = self._job(job_id)
        return job

    @_unary
    async def ListJobs(
        self, request: pb.ListJobsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListJobsResponse:
        owner = self.caller(context).listing_owner
        limit = validation.list_limit(request.limit)
        jobs = self.broker.recent_jobs(limit, request.active_only, owner)
        return pb.ListJobsResponse(jobs=[job_message(job, with_result=False) for job in jobs])

    @_unary
    async def CancelJob(
        self, request: pb.CancelJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Job:
        return await self.cancel_job(request, self.caller(context))

    async def cancel_job(self, request: pb.CancelJobRequest, caller: Caller = ANYONE) -> pb.Job:
        """CancelJob without gRPC; BrokerError when refused."""
        reason = validation.check_reason(request.reason)
        check_change(caller, self._job(request.job_id))
        job = self.broker.cancel(request.job_id, reason, self.clock())
        await self._durable()
        return job_message(job)

    # ---- dead letters ----------------------------------------------------

    def _held(self, job: Job) -> Job:
        """``job``, unless it is one only the database remembers: finished long
        ago, it holds no dead letters (those that do are always in memory)."""
        if self.broker.get_job(job.job_id) is None:
            raise WrongState(f"job {job.job_id!r} is {job.state.name}: it holds no dead letters")
        return job

    @_unary
    async def ListDeadLetters(
        self, request: pb.ListDeadLettersRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListDeadLettersResponse:
        return self.list_dead_letters(request, self.caller(context))

    def list_dead_letters(
        self, request: pb.ListDeadLettersRequest, caller: Caller = ANYONE
    ) -> pb.ListDeadLettersResponse:
        """The held dead letters the caller may read, the latest first; BrokerError."""
        limit = validation.list_limit(request.limit)
        if request.job_id:
            jobs = [check_read(caller, self._job(request.job_id))]
        else:
            jobs = self.broker.held_jobs(caller.listing_owner)
        return pb.ListDeadLettersResponse(dead_letters=dead_letters(jobs, limit))

    @_unary
    async def RequeueJob(
        self, request: pb.RequeueJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Job:
        return await self.requeue_job(request, self.caller(context))

    async def requeue_job(self, request: pb.RequeueJobRequest, caller: Caller = ANYONE) -> pb.Job:
        """RequeueJob without gRPC; BrokerError when refused."""
        job = self._held(check_change(caller, self._job(request.job_id)))
        quota = quota_for(caller, self.settings.quota) if self.settings.tokens else None
        job, count = self.broker.requeue(job.job_id, list(request.tasks), self.clock(), quota)
        await self._durable()
        log.info("job %s: %d dead-lettered task(s) requeued by %s", job.job_id, count, _who(caller))
        return job_message(job)

    @_unary
    async def PurgeJob(
        self, request: pb.PurgeJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PurgeJobResponse:
        return await self.purge_job(request, self.caller(context))

    async def purge_job(
        self, request: pb.PurgeJobRequest, caller: Caller = ANYONE
    ) -> pb.PurgeJobResponse:
        """PurgeJob without gRPC; BrokerError when refused."""
        job = self._held(check_change(caller, self._job(request.job_id)))
        job, count = self.broker.purge(job.job_id, self.clock())
        await self._durable()
        log.info("job %s: %d dead letter(s) purged by %s", job.job_id, count, _who(caller))
        return pb.PurgeJobResponse(job=job_message(job), purged=count)

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
            jobs_active=broker.active,
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
                    storage_error=worker.storage_error,
                    running=worker.running,
                    last_seen_seconds_ago=max(now - worker.last_seen, 0.0),
                )
                for worker in broker.workers.values()
            ],
            reports_ignored=broker.reports_ignored,
            requests_refused=broker.requests_refused,
            requests_invalid=self.refusals.counts[INVALID],
            requests_unauthenticated=self.refusals.counts[UNAUTHENTICATED],
            requests_denied=self.refusals.counts[PERMISSION_DENIED],
            dead_letters=broker.dead_letters,
            tasks_requeued=broker.requeued,
            tasks_purged=broker.purged,
            requests_over_quota=self.refusals.counts[OVER_QUOTA],
        )
