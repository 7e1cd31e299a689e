"""The worker: register, heartbeat, pull, run, report; reconnect; drain on stop.

One asyncio loop runs three cooperating loops over one connection (a
*session*): the heartbeat stream, the pull loop (long-polling GetTask for as
many tasks as there are free slots) and the reporter (sending finished
results in batches). The pull loop's and the reporter's requests share one
Work stream (:mod:`.calls`). Tasks themselves run on threads or child processes
(:mod:`.executor`) and outlive sessions: when the coordinator goes away the
worker keeps running what it holds, keeps the reports, and reconnects with
backoff; the reports are delivered when it is back (a coordinator that
restarted takes them if the task was not leased again).

Storage outages (:mod:`.outage`): a task whose storage stays unreachable is
neither failed nor handed back; it keeps its lease and attempt and runs again
once storage answers. Meanwhile the worker pulls nothing and its heartbeats
carry the error.

Stopping (SIGTERM): no new task is pulled, the heartbeat says "draining",
running tasks get until the grace period to finish, their reports are sent,
whatever is still running is handed back (UnregisterWorker returns every
lease the coordinator still counts as ours) and the worker exits.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import Any

import grpc

from fractalq import config, tasks
from fractalq.proto import fractalq_pb2 as pb
from fractalq.proto import fractalq_pb2_grpc as pb_grpc
from fractalq.retry import retry_delay
from fractalq.tasks import TaskContext
from fractalq.worker.calls import StreamCalls, TaskCalls, UnaryCalls
from fractalq.worker.executor import Outcome, StorageUnavailable, TaskFailed, TaskRunner
from fractalq.worker.memory import release_large_allocations
from fractalq.worker.outage import StorageOutage
from fractalq.worker.settings import WorkerSettings
from fractalq.worker.window import LeaseWindow

log = logging.getLogger("fractalq.worker")

_RECONNECT_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.NOT_FOUND,  # the coordinator forgot us (restart, timeout): register again
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
}

LONG_POLL_SECONDS = 10.0


class SessionLost(Exception):
    pass


class WorkerError(Exception):
    """The coordinator refused this worker for good (a bad token, a taken id): one line."""


def _hostname() -> str:
    """This host's name as the coordinator accepts it (letters, digits, . _ -)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())
    return name[: config.MAX_HOSTNAME_LENGTH]


def new_worker_id() -> str:
    # The id must start with a letter or digit and fit the coordinator's limit.
    suffix = f"-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    host = _hostname().lstrip("._-")[: config.MAX_WORKER_ID_LENGTH - len(suffix)]
    return f"{host or 'worker'}{suffix}"


class Worker:
    def __init__(
        self, settings: WorkerSettings, worker_id: str | None = None, storage_error: str = ""
    ) -> None:
        """``storage_error``: the storage was unreachable when the worker started;
        it begins as in an outage (no task until a probe of the storage answers)."""
        self.settings = settings
        self._storage_error_at_start = storage_error
        self.worker_id = worker_id or new_worker_id()
        self.task_types = tuple(settings.task_types or tasks.available(bool(settings.storage)))
        for name in self.task_types:
            tasks.get(name)  # unknown names fail here, before connecting
        self._runner = TaskRunner(settings.concurrency)
        # Every lease held (waiting for a slot or running), and those waiting, in
        # the order leased. `concurrency` slot loops take them (:meth:`_slot`).
        self._held: set[tuple[str, int, int]] = set()
        self._waiting: collections.deque[pb.Task] = collections.deque()
        self._work = asyncio.Event()  # set when a task joins _waiting
        self._busy = 0  # slots running a task (or a batch of them, one at a time)
        self._slot_loops: list[asyncio.Task[None]] = []
        self._window = LeaseWindow(settings.concurrency, settings.prefetch)
        self._asking = 0  # tasks the pull loop's GetTask in flight asks for
        self._results: list[pb.TaskResult] = []
        self._errors: list[pb.TaskError] = []
        self._reports_waiting = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._idle = asyncio.Event()  # set when no slot is busy
        self._idle.set()
        self._stop = asyncio.Event()
        # Set to send a heartbeat at once (a storage outage began or ended).
        self._beat_now = asyncio.Event()
        self._beating = asyncio.Event()  # the coordinator answers this session's beats
        self._outage = StorageOutage(settings.storage, self._beat_now.set)
        self.completed = 0
        self.failed = 0
        # The secret the coordinator issued at registration; presented again
        # on a reconnect to resume the same session (and keep its leases).
        self._session_id = ""
        # The token, sent with each call (cheaper than a channel interceptor).
        self._metadata = settings.endpoint.metadata
        self._reconnects = 0  # failed connections in a row
        self._warmed = False
        self._unary = False  # the coordinator has no Work stream: one call per request

    def stop(self) -> None:
        """Begin draining: take nothing new, finish or hand back, then return from run()."""
        self._stop.set()

    def start_in_outage(self, storage_error: str) -> None:
        """As ``storage_error`` of the constructor: begin as in a storage outage (if any)."""
        self._storage_error_at_start = storage_error

    def warm(self) -> None:
        """Load what the task types need, in the background (once; run() does it too)."""
        if not self._warmed:
            self._warmed = True
            self._runner.warm(self.task_types)

    def close(self) -> None:
        """Stop what warm() started, for a worker that will not run()."""
        self._runner.shutdown(wait=False)

    # ---- the outer loop ----------------------------------------------------

    async def run(self) -> None:
        release_large_allocations()
        self.warm()
        self._runner.announce_warm_up()
        # The slots outlive sessions: what runs goes on while the worker reconnects.
        self._slot_loops = [
            asyncio.create_task(self._slot()) for _ in range(self.settings.concurrency)
        ]
        if self._storage_error_at_start:
            self._outage.report(self._storage_error_at_start)
        loop = asyncio.get_running_loop()
        stop_deadline: float | None = None
        try:
            while True:
                if self._stop.is_set() and stop_deadline is None:
                    stop_deadline = loop.time() + self.settings.grace_period
                try:
                    await self._session()
                    return
                except (grpc.aio.AioRpcError, SessionLost) as error:
                    code = error.code() if isinstance(error, grpc.aio.AioRpcError) else None
                    if code is grpc.StatusCode.ALREADY_EXISTS:
                        # Our ids are unique per process, so this is a registration
                        # of ours whose answer was lost: a session we never learned
                        # holds the id until it times out. Start afresh under a new
                        # id (what that session leased comes back on its timeout).
                        old, self.worker_id = self.worker_id, new_worker_id()
                        self._session_id = ""
                        log.warning("worker id %s is taken; registering as %s", old, self.worker_id)
                        continue
                    if code is grpc.StatusCode.UNIMPLEMENTED and not self._unary:
                        self._unary = True
                        log.warning("the coordinator has no Work stream: leases and reports"
                                    " go as calls of their own")  # fmt: skip
                        continue
                    if code is not None and code not in _RECONNECT_CODES:
                        raise WorkerError(f"the coordinator refused: {_brief(error)}") from None
                    if self._stop.is_set():
                        stop_deadline = stop_deadline or loop.time() + self.settings.grace_period
                        if loop.time() >= stop_deadline or not self._busy:
                            log.warning("stopping without the coordinator: %s", _brief(error))
                            return
                    self._reconnects += 1
                    delay = retry_delay(config.RECONNECT_BACKOFF, self._reconnects)
                    log.warning(
                        "coordinator connection lost (%s); retrying in %.1fs", _brief(error), delay
                    )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), delay)
        finally:
            for task in self._slot_loops:
                task.cancel()
            self._outage.close()
            self._runner.shutdown(wait=False)

    async def _session(self) -> None:
        # TLS, the worker token and the message-size limits come with the channel.
        async with self.settings.endpoint.aio_channel(add_token=False) as channel:
            stub = pb_grpc.CoordinatorStub(channel)
            registered = await stub.RegisterWorker(
                pb.RegisterWorkerRequest(
                    worker_id=self.worker_id,
                    task_types=self.task_types,
                    concurrency=self.settings.concurrency,
                    hostname=_hostname(),
                    session=self._session_id,
                ),
                timeout=10,
                metadata=self._metadata,
            )
            self._session_id = registered.session
            self._reconnects = 0  # the next loss backs off from the start again
            log.info("worker %s registered at %s", self.worker_id, self.settings.coordinator)
            self._beating.clear()
            calls: TaskCalls = (
                UnaryCalls(stub, self._metadata)
                if self._unary
                else StreamCalls(stub, self._metadata)
            )
            loops = [
                asyncio.create_task(self._heartbeat(stub, registered.heartbeat_interval)),
                asyncio.create_task(self._report(calls)),
            ]
            pull = asyncio.create_task(self._pull(calls))
            try:
                done, _ = await asyncio.wait([pull, *loops], return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()  # raises what broke the session
                # The pull loop ended: we are draining.
                await self._drain(stub, calls)
            finally:
                for task in [pull, *loops]:
                    task.cancel()
                await asyncio.gather(pull, *loops, return_exceptions=True)
                calls.close()

    # ---- the three loops ---------------------------------------------------

    async def _heartbeat(self, stub: pb_grpc.CoordinatorStub, interval: float) -> None:
        async def beats() -> AsyncIterator[pb.HeartbeatRequest]:
            said_draining = False
            while True:
                self._beat_now.clear()
                yield pb.HeartbeatRequest(
                    worker_id=self.worker_id,
                    session=self._session_id,
                    draining=self._stop.is_set(),
                    storage_error=self._outage.error,
                    running=self._busy,
                )
                # The next beat after the interval, or at once to say "draining"
                # (once) or that storage went down or came back.
                said_draining = said_draining or self._stop.is_set()
                wake = [self._beat_now.wait()]
                if not said_draining:
                    wake.append(self._stop.wait())
                await _first_of(wake, interval)

        call = stub.Heartbeat(beats(), metadata=self._metadata)
        async for _ in call:
            self._beating.set()
        raise SessionLost("heartbeat stream closed by the coordinator")

    async def _pull(self, calls: TaskCalls) -> None:
        # No lease before the coordinator has answered a heartbeat: a worker
        # killed while it holds tasks then always breaks a heartbeat stream, and
        # its tasks go back at once rather than after the worker timeout.
        await self._beating.wait()
        stop = asyncio.create_task(self._stop.wait())
        try:
            while not self._stop.is_set():
                if self._outage.down:
                    # No new task while storage is down; those held wait for it.
                    await _first_of([self._outage.wait_up(), self._stop.wait()], None)
                    continue
                free = self._window.size - len(self._held)
                # Ask when a slot would otherwise go idle, or for a batch worth a call.
                if free <= 0 or (
                    len(self._waiting) >= self.settings.concurrency and free < self._window.refill
                ):
                    self._slot_free.clear()
                    freed = asyncio.create_task(self._slot_free.wait())
                    await asyncio.wait([stop, freed], return_when=asyncio.FIRST_COMPLETED)
                    freed.cancel()
                    continue
                get = asyncio.ensure_future(
                    calls.get_task(
                        pb.GetTaskRequest(
                            worker_id=self.worker_id,
                            session=self._session_id,
                            max_tasks=free,
                            wait_seconds=LONG_POLL_SECONDS,
                        ),
                        seconds=LONG_POLL_SECONDS + 10,
                    )
                )
                self._asking = free
                await asyncio.wait([get, stop], return_when=asyncio.FIRST_COMPLETED)
                self._asking = 0
                if not get.done():
                    get.cancel()  # stopping; leases caught in flight return on unregister
                    break
                leased = get.result().tasks
                self._took(leased, free)
                if leased:
                    await asyncio.sleep(0)  # the slots start them before the next call
        finally:
            self._asking = 0
            stop.cancel()

    def _room(self) -> int:
        """How many more tasks to lease now (beyond those a GetTask asks for)."""
        return max(0, self._window.size - len(self._held) - self._asking)

    def _took(self, leased: Sequence[pb.Task], asked: int) -> None:
        """Queue tasks leased by a GetTask (or with a report's answer) for the slots."""
        self._window.leased(len(leased), asked)
        for task in leased:
            key = (task.job_id, task.index, task.attempt)
            if key not in self._held:  # a lease we hold already is not run twice
                self._held.add(key)
                self._waiting.append(task)
        if leased:
            self._work.set()

    # ---- running tasks -----------------------------------------------------

    async def _slot(self) -> None:
        """One slot: take the next waiting task (or a run of them) and run it, forever."""
        while True:
            while not self._waiting or self._stop.is_set():
                self._work.clear()
                await self._work.wait()
            batch = self._take()
            self._busy += 1
            self._idle.clear()
            try:
                if len(batch) == 1 and self._runner.runs_in_process(batch[0].task_type):
                    await self._execute(batch[0])
                else:
                    await self._execute_batch(batch)
            finally:
                self._busy -= 1
                if not self._busy:
                    self._idle.set()
                self._reports_waiting.set()
                self._slot_free.set()

    def _take(self) -> list[pb.Task]:
        """The next waiting task, and after it, when it runs on a thread, the waiting
        tasks that follow on threads too, up to this slot's share of those waiting."""
        first = self._waiting.popleft()
        batch = [first]
        if not self._window.batching or self._runner.runs_in_process(first.task_type):
            return batch
        share = min(-(-len(self._waiting) // self.settings.concurrency), config.REPORT_BATCH)
        while len(batch) <= share and self._waiting:
            if self._runner.runs_in_process(self._waiting[0].task_type):
                break
            batch.append(self._waiting.popleft())
        return batch

    def _context(self, task: pb.Task) -> TaskContext:
        return TaskContext(self.settings.storage, task.job_id, task.index, task.attempt)

    async def _execute_batch(self, batch: list[pb.Task]) -> None:
        """Run thread tasks one after another on one thread; a task that met a storage
        outage goes through :meth:`_execute` (it waits for storage), and those left
        unrun go back to the front of the queue, or are handed back when stopping."""
        items = [(t.task_type, t.payload, self._context(t), t.time_limit) for t in batch]
        outcomes: list[Outcome] = []
        unrun = list(range(len(batch)))
        if not (self._outage.down and any(_needs_storage(t.task_type) for t in batch)):
            # One task has nothing to leave unrun when stopping: no watch on the stop.
            stop = self._stop if len(items) > 1 else None
            outcomes, unrun = await self._runner.run_batch(items, stop)
        for outcome in outcomes:
            task = batch[outcome.index]
            if isinstance(outcome.result, StorageUnavailable):
                self._outage.report(str(outcome.result))
                unrun.insert(0, outcome.index)
                continue
            self._window.ran(outcome.seconds)
            self._record(task, outcome.result, outcome.seconds)
        if not unrun:
            return
        if self._stop.is_set():
            for index in unrun:  # never started: handed back when the worker unregisters
                task = batch[index]
                self._held.discard((task.job_id, task.index, task.attempt))
            return
        first, *rest = [batch[index] for index in unrun]
        self._waiting.extendleft(reversed(rest))
        if rest:
            self._work.set()
        await self._execute(first)  # waits out the outage, if that is what stopped the batch

    async def _execute(self, task: pb.Task) -> None:
        outcome: bytes | Exception
        began = time.perf_counter()
        try:
            outcome = await self._run(task, self._context(task))
        except Exception as error:  # whatever happens, the task is reported
            outcome = error
        seconds = time.perf_counter() - began
        self._window.ran(seconds)
        self._record(task, outcome, seconds)

    def _record(self, task: pb.Task, outcome: bytes | Exception, seconds: float) -> None:
        """Queue the report of a task that ran (for ``seconds``); its lease is no longer
        ours to run."""
        self._held.discard((task.job_id, task.index, task.attempt))
        ref = pb.TaskRef(job_id=task.job_id, index=task.index, attempt=task.attempt)
        if isinstance(outcome, Exception):
            self.failed += 1
            log.warning(
                "task %s/%d attempt %d failed: %s", task.job_id, task.index, task.attempt, outcome
            )
            self._errors.append(pb.TaskError(task=ref, message=str(outcome), seconds=seconds))
        else:
            self.completed += 1
            self._results.append(pb.TaskResult(task=ref, result=outcome, seconds=seconds))

    async def _run(self, task: pb.Task, context: TaskContext) -> bytes:
        """Run the task, and through a storage outage again once storage answers.

        While storage is down the task keeps its lease and its attempt (see
        :mod:`.outage`); if storage is still down ``storage_outage_limit``
        seconds after the task first had to wait, it fails with the last error.
        """
        loop = asyncio.get_running_loop()
        limit = self.settings.storage_outage_limit
        waiting_since: float | None = None
        last_error = ""
        while True:
            if waiting_since is None and self._outage.down and _needs_storage(task.task_type):
                # It would only meet the outage: wait for storage first.
                waiting_since, last_error = loop.time(), self._outage.error
            if waiting_since is not None and self._outage.down:
                remaining = waiting_since + limit - loop.time()
                try:
                    await asyncio.wait_for(self._outage.wait_up(), max(remaining, 0.0))
                except TimeoutError:
                    raise TaskFailed(
                        f"storage unavailable for {limit:g}s, the limit: {last_error}"
                    ) from None
            try:
                return await self._runner.run(
                    task.task_type, task.payload, context, task.time_limit
                )
            except StorageUnavailable as error:
                last_error = str(error)
                if waiting_since is None:
                    waiting_since = loop.time()
                    log.info(
                        "task %s/%d attempt %d waits for storage (the attempt is kept): %s",
                        task.job_id,
                        task.index,
                        task.attempt,
                        error,
                    )
                self._outage.report(last_error)

    async def _report(self, calls: TaskCalls) -> None:
        while True:
            await self._reports_waiting.wait()
            if self._window.batching and len(self._results) < config.REPORT_BATCH:
                # Short tasks end in quick succession: one report for a few of them.
                await asyncio.sleep(config.REPORT_LINGER)
            self._reports_waiting.clear()
            await self._send_reports(calls, lease=True)

    async def _send_reports(self, calls: TaskCalls, lease: bool = False) -> None:
        """Send what ended; ``lease``: ask for the next tasks in the same call."""
        # Reports leave the lists only once the coordinator has answered.
        while self._results:
            batch = self._results[: config.REPORT_BATCH]
            room = (
                self._room() if lease and not self._stop.is_set() and not self._outage.down else 0
            )
            answer = await calls.complete(
                pb.CompleteTaskRequest(
                    worker_id=self.worker_id, session=self._session_id, results=batch,
                    max_tasks=room,
                ),
                seconds=30,
            )  # fmt: skip
            del self._results[: len(batch)]
            if room:
                self._took(answer.tasks, room)
                self._slot_free.set()  # the pull loop sees the room taken
        while self._errors:
            failures = self._errors[: config.REPORT_BATCH]
            await calls.fail(
                pb.FailTaskRequest(
                    worker_id=self.worker_id, session=self._session_id, errors=failures
                ),
                seconds=30,
            )
            del self._errors[: len(failures)]

    # ---- stopping ------------------------------------------------------------

    async def _drain(self, stub: pb_grpc.CoordinatorStub, calls: TaskCalls) -> None:
        for task in self._waiting:  # prefetched, never started: handed back on unregister
            self._held.discard((task.job_id, task.index, task.attempt))
        self._waiting.clear()
        if self._busy:
            log.info(
                "draining: waiting up to %.0fs for %d task(s)",
                self.settings.grace_period,
                self._busy,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), self.settings.grace_period)
            if self._busy:
                log.warning("grace period over: handing back %d task(s)", self._busy)
        await self._send_reports(calls)
        response = await stub.UnregisterWorker(
            pb.UnregisterWorkerRequest(worker_id=self.worker_id, session=self._session_id),
            timeout=10,
            metadata=self._metadata,
        )
        log.info(
            "worker %s stopped (%d completed, %d failed, %d handed back)",
            self.worker_id,
            self.completed,
            self.failed,
            response.released,
        )


def _needs_storage(task_type: str) -> bool:
    with contextlib.suppress(KeyError):
        return tasks.get(task_type).needs_storage
    return False


async def _first_of(waits: list[Coroutine[Any, Any, Any]], seconds: float | None) -> None:
    """Wait until one of ``waits`` is done or ``seconds`` pass; cancel the others."""
    pending = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(pending, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future in pending:
            future.cancel()


def _brief(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return str(error)
