"""Running one task: on a thread, or in a child process for CPU-bound types.

CPU-bound task types (fractal bands) run in child processes, one per slot, when
the worker runs more than one task at once, so they use every core instead of
sharing one interpreter lock; everything else runs on threads. Child processes
are spawned, not forked: the parent holds gRPC's threads, which a fork would
copy in an undefined state.

Time limits: an attempt that runs past its limit (the job's, or its type's
default; counted from when it is handed to its thread or process) is reported
failed with "timed out after N s". Each child process is a pool of its own,
one per slot, so that killing the process of a task past its limit stops that
task alone; a fresh one takes its place. A thread cannot be stopped: the task
is reported failed all the same and the thread is left to finish in the
background, its result ignored, while other threads serve the next tasks
(:class:`DaemonThreads`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import math
import multiprocessing
import queue
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from fractalq import config, tasks
from fractalq.storage.base import StorageError
from fractalq.tasks import TaskContext
from fractalq.worker.memory import release_large_allocations

log = logging.getLogger(__name__)


class TaskFailed(Exception):
    """The task raised; the message is what the coordinator records."""


class StorageUnavailable(Exception):
    """The task met a transient storage error that outlasted the storage layer's
    own retries: an outage, not the task's fault. The worker keeps the attempt
    and runs the task again once storage answers (see :mod:`.outage`)."""


def _failure(error: BaseException) -> Exception:
    # The task must raise the StorageError itself (a wrapped one is the task's
    # failure). From a child process it comes back pickled, its flag kept.
    if isinstance(error, StorageError) and error.transient:
        return StorageUnavailable(str(error))
    return TaskFailed(describe(error))


def run_task(task_type: str, payload: bytes, context: TaskContext) -> bytes:
    """Look the type up and run it; the same in a thread or a child process."""
    return tasks.get(task_type).run(payload, context)


def _start_process(modules: Iterable[str]) -> None:
    """A new worker process: bounded band memory, and the task types its parent has."""
    release_large_allocations()
    tasks.load(modules)


def warm_task(task_type: str) -> None:
    """Prepare this process for a task type (see :attr:`TaskType.warm`)."""
    warm = tasks.get(task_type).warm
    if warm is not None:
        warm()


def warm_order(task_types: Iterable[str]) -> list[str]:
    """The types that have a warm-up, in the order to warm them: ``warm_first`` ones first."""
    kinds = [tasks.get(name) for name in task_types]
    first = sorted(kinds, key=lambda kind: not kind.warm_first)  # stable: else as given
    return [kind.name for kind in first if kind.warm is not None]


def warm_tasks(task_types: list[str]) -> list[str]:
    """Warm each type in turn; returns what the warm-ups that failed failed with.

    One after another, not side by side: numba compiles one function at a time
    in a process (a lock), and warm-ups racing for it on a cold cache held a
    first band behind the deep-zoom kernels (24 s instead of 6).
    """
    failures = []
    for name in task_types:
        try:
            warm_task(name)
        except Exception as error:  # the next type's warm-up still runs
            failures.append(describe(error))
    return failures


def describe(error: BaseException) -> str:
    text = "".join(traceback.format_exception_only(type(error), error)).strip()
    return text or type(error).__name__


def _warm_failures(future: concurrent.futures.Future[list[str]]) -> list[str]:
    """What a finished run of warm_tasks() failed with."""
    if future.cancelled():
        return []
    error = future.exception()
    return future.result() if error is None else [describe(error)]


def _log_warm_failures(failures: list[str]) -> None:
    # Not fatal: the first task of the type will meet the same error and report it.
    for failure in failures:
        log.warning("warming up failed: %s", failure)


class _WarmUp:
    """The warm-ups of one TaskRunner.warm() call, and one line once every one has ended.

    How long they took says whether the compiled kernels were loaded (a fraction of a
    second) or compiled (seconds): what a new worker's first task waits for. The line,
    and any warm-up's failure, waits for announce(): logging may not be set up while
    they run, and a line logged before would go out in no format at all.
    """

    def __init__(
        self, names: list[str], futures: list[concurrent.futures.Future[list[str]]]
    ) -> None:
        self._names = names
        self._began = time.monotonic()
        self._lock = threading.Lock()
        self._pending = len(futures)
        self._seconds: float | None = None
        self._announced = False
        self._failures: list[str] = []
        for future in futures:
            future.add_done_callback(self._done)

    def _done(self, future: concurrent.futures.Future[list[str]]) -> None:
        failures = _warm_failures(future)
        with self._lock:
            self._failures += failures
            self._pending -= 1
            if self._pending == 0:
                self._seconds = time.monotonic() - self._began
            self._log()

    def announce(self) -> None:
        with self._lock:
            self._announced = True
            self._log()

    def _log(self) -> None:
        if not self._announced:
            return
        _log_warm_failures(self._failures)
        self._failures = []
        if self._seconds is not None and self._names:
            log.info("warmed up in %.2f s (%s)", self._seconds, ", ".join(self._names))
            self._names = []  # once


def timed_out(limit: float, killed: bool) -> str:
    """The reason an attempt past its limit is reported failed with."""
    how = "its process was killed" if killed else "its thread cannot be stopped and runs on"
    return f"timed out after {limit:g} s ({how})"


class _Expired(Exception):
    pass


async def _within(future: asyncio.Future[bytes], limit: float) -> bytes:
    """``await future``, or raise :class:`_Expired` after ``limit`` seconds.

    Then the future is cancelled: whatever it ends with later is ignored. Not
    :func:`asyncio.wait_for`: a task's own TimeoutError (a socket's) is its
    failure, not the limit's. A timer is cheaper than :func:`asyncio.wait`.
    """
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        future.cancel()

    timer = asyncio.get_running_loop().call_later(limit, expire)
    try:
        return await future
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if expired and not (task is not None and task.cancelling()):
            raise _Expired from None
        raise
    finally:
        timer.cancel()


# One task of a batch: its type, payload, context and time limit (0: its type's).
BatchItem = tuple[str, bytes, TaskContext, float]


@dataclasses.dataclass
class Outcome:
    """How one task of a batch ended: its result, or the exception it ended with
    (:class:`TaskFailed` or :class:`StorageUnavailable`), and how long it ran."""

    index: int  # in the batch
    result: bytes | Exception
    seconds: float


class _ThreadBatch:
    """Tasks run one after another on one thread, so that a run of short tasks costs
    one hand-over between the event loop and a thread, not one per task.

    The thread and the event loop share the state below under a lock: the thread
    takes the next task and says which one runs (``current``); the loop may
    *abandon* the batch (a task past its time limit, or the worker stopping),
    after which the thread starts nothing more and what it still finishes is
    ignored.
    """

    def __init__(self, items: list[BatchItem]) -> None:
        self.items = items
        self.lock = threading.Lock()
        self.next = 0  # the next task to start; those from here on are unrun
        self.current: tuple[int, float] | None = None  # (index, monotonic start)
        self.outcomes: list[Outcome] = []
        self.abandoned = False

    def run(self) -> None:
        """On the thread: run the tasks in order until done, abandoned or an outage."""
        while True:
            with self.lock:
                over = self.abandoned or self.next == len(self.items)
                if over:
                    self.current = None
                    return
                index = self.next
                self.next += 1
                started = time.monotonic()
                self.current = (index, started)
            task_type, payload, context, _ = self.items[index]
            result: bytes | Exception
            try:
                result = run_task(task_type, payload, context)
            except Exception as error:
                result = _failure(error)
            with self.lock:
                if self.abandoned:  # reported timed out meanwhile: ignored
                    return
                self.current = None
                self.outcomes.append(Outcome(index, result, time.monotonic() - started))
                if isinstance(result, StorageUnavailable):
                    return  # the rest would only meet the outage: left unrun

    def overdue(self, limits: list[float], now: float) -> tuple[int, float] | None:
        """The task running past its limit (index, limit), if any."""
        with self.lock:
            if self.current is None:
                return None
            index, started = self.current
            return (index, limits[index]) if now - started >= limits[index] else None

    def next_deadline(self, limits: list[float], now: float) -> float:
        """The earliest a task of the batch could pass its limit: the one running
        now, or one yet to start (no earlier than now)."""
        with self.lock:
            deadlines = [now + min(limits[self.next :], default=math.inf)]
            if self.current is not None:
                index, started = self.current
                deadlines.append(started + limits[index])
            return min(deadlines)

    def stop(self, abandon: bool) -> list[int]:
        """Start nothing more; the indices of the tasks never started. ``abandon``:
        what the task running now ends with is ignored too."""
        with self.lock:
            self.abandoned = abandon
            unrun = list(range(self.next, len(self.items)))
            self.next = len(self.items)
            return unrun


ProcessPool = concurrent.futures.ProcessPoolExecutor
_Work = tuple[concurrent.futures.Future[Any], Callable[..., Any], tuple[Any, ...]]


class DaemonThreads(concurrent.futures.Executor):
    """Daemon threads, started as needed and kept while idle.

    Not a ThreadPoolExecutor: its threads are joined when the interpreter
    exits, so a task that never returns would keep the worker from exiting,
    and each one it holds is a slot lost. Here a task that finds every thread
    busy starts a new one, so a hung task costs its own thread only.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads done with their work, each about to take the next
        self._closed = False

    def submit(  # type: ignore[override]
        self, fn: Callable[..., Any], /, *args: Any
    ) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot run a task after shutdown")
            if self._idle:
                self._idle -= 1
            else:
                name = f"{self._name}-{len(self._threads)}"
                thread = threading.Thread(target=self._serve, name=name, daemon=True)
                thread.start()
                self._threads.append(thread)
        self._work.put((future, fn, args))
        return future

    def _serve(self) -> None:
        while (work := self._work.get()) is not None:
            future, fn, args = work
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args)
                except BaseException as error:
                    future.set_exception(error)
                else:
                    future.set_result(result)
            del work, future, fn, args
            with self._lock:
                self._idle += 1

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        if cancel_futures:
            with contextlib.suppress(queue.Empty):
                while True:
                    if (work := self._work.get_nowait()) is not None:
                        work[0].cancel()
        for _ in threads:
            self._work.put(None)
        if wait:
            for thread in threads:
                thread.join()


def _children(pool: ProcessPool) -> list[multiprocessing.process.BaseProcess]:
    # The executor keeps its processes in a private dict; there is no public way.
    processes = getattr(pool, "_processes", None) or {}
    return list(processes.values())


class TaskRunner:
    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self._threads = DaemonThreads("fractalq-task")
        # One single-process pool per slot, made on first use; those not
        # running a task are idle.
        self._pools: list[ProcessPool] = []
        self._idle: list[ProcessPool] = []
        self._warmed: list[str] = []  # the CPU-bound types a new process is warmed for
        self._warm_up: _WarmUp | None = None

    def _new_pool(self) -> ProcessPool:
        # A spawned process starts afresh: it loads the --tasks modules this one did,
        # and fixes malloc's mmap threshold as this one did.
        pool = ProcessPool(
            1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_process,
            initargs=(tasks.loaded_modules(),),
        )
        if self._warmed:
            pool.submit(warm_tasks, self._warmed).add_done_callback(
                lambda done: _log_warm_failures(_warm_failures(done))
            )
        self._pools.append(pool)
        return pool

    def _in_process(self, kind: tasks.TaskType) -> bool:
        return kind.cpu_bound and self.concurrency > 1

    def _start_pools(self) -> None:
        while len(self._pools) < self.concurrency:
            self._idle.append(self._new_pool())

    def warm(self, task_types: Iterable[str]) -> None:
        """Warm every process and thread that will run these types, in the background.

        A task that arrives meanwhile simply waits for the imports it needs.
        """
        names = warm_order(task_types)
        in_process = [name for name in names if self._in_process(tasks.get(name))]
        on_threads = [name for name in names if name not in in_process]
        futures: list[concurrent.futures.Future[list[str]]] = []
        if in_process:  # each process warms them in turn, before its first task
            self._start_pools()
            self._warmed = in_process  # and so does each process made later
            futures += [pool.submit(warm_tasks, in_process) for pool in self._pools]
        if on_threads:
            # One thread, the types in turn; tasks meanwhile run on threads of their own.
            futures.append(self._threads.submit(warm_tasks, on_threads))
        self._warm_up = _WarmUp(names, futures)

    def announce_warm_up(self) -> None:
        """Log how long warm() took, now or when it is over."""
        if self._warm_up is not None:
            self._warm_up.announce()

    async def run(
        self, task_type: str, payload: bytes, context: TaskContext, time_limit: float = 0.0
    ) -> bytes:
        """Run one attempt; ``time_limit`` 0 means its type's."""
        try:
            kind = tasks.get(task_type)
        except KeyError as error:
            raise TaskFailed(str(error.args[0])) from None
        limit = tasks.time_limit(kind, time_limit)
        if not self._in_process(kind):
            future = asyncio.get_running_loop().run_in_executor(
                self._threads, run_task, task_type, payload, context
            )
            try:
                return await _within(future, limit)
            except _Expired:
                log.warning("a %s task past its time limit runs on in its thread", task_type)
                raise TaskFailed(timed_out(limit, killed=False)) from None
            except Exception as error:
                raise _failure(error) from None
        self._start_pools()
        pool = self._idle.pop() if self._idle else self._new_pool()
        try:
            future = asyncio.get_running_loop().run_in_executor(
                pool, run_task, task_type, payload, context
            )
            return await _within(future, limit)
        except _Expired:
            pool = self._replace(pool)
            raise TaskFailed(timed_out(limit, killed=True)) from None
        except BrokenProcessPool as error:
            # The child died (out of memory, killed): a new one for the next task.
            pool = self._replace(pool)
            raise TaskFailed(f"worker process died: {error}") from None
        except Exception as error:
            raise _failure(error) from None
        finally:
            self._idle.append(pool)

    def runs_in_process(self, task_type: str) -> bool:
        """Whether a task of this type runs in a child process (else on a thread)."""
        try:
            return self._in_process(tasks.get(task_type))
        except KeyError:
            return False

    async def run_batch(
        self, items: list[BatchItem], stop: asyncio.Event | None = None
    ) -> tuple[list[Outcome], list[int]]:
        """Run thread tasks one after another on one thread (see :class:`_ThreadBatch`).

        Returns the outcomes of the tasks that ran (in order) and the indices of
        those never started: after a task met a storage outage, or once ``stop``
        is set (the running task is let finish). A task past its time limit is
        reported failed, "timed out", and its thread is left to run on in the
        background, as :meth:`run` does.
        """
        limits = []
        for task_type, _, _, requested in items:
            try:
                limits.append(tasks.time_limit(tasks.get(task_type), requested))
            except KeyError:
                limits.append(config.DEFAULT_TIME_LIMIT)  # run_task fails it at once
        batch = _ThreadBatch(items)
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._threads, batch.run)
        waits: list[asyncio.Future[Any]] = [future]
        stopping = None
        if stop is not None:
            stopping = asyncio.ensure_future(stop.wait())
            waits.append(stopping)
        unrun: list[int] = []
        try:
            while not future.done():
                now = time.monotonic()
                if (overdue := batch.overdue(limits, now)) is not None:
                    index, limit = overdue
                    unrun += batch.stop(abandon=True)
                    kind = items[index][0]
                    log.warning("a %s task past its time limit runs on in its thread", kind)
                    outcomes = list(batch.outcomes)
                    outcomes.append(Outcome(index, TaskFailed(timed_out(limit, False)), limit))
                    return outcomes, unrun
                if stopping is not None and stopping.done():
                    unrun += batch.stop(abandon=False)  # the task running now finishes
                    stopping, waits = None, [future]
                    continue
                timeout = min(batch.next_deadline(limits, now) - now, config.MAX_TIME_LIMIT)
                await asyncio.wait(waits, timeout=max(timeout, 0.0), return_when="FIRST_COMPLETED")
            future.result()
            return list(batch.outcomes), unrun + list(range(batch.next, len(items)))
        finally:
            if stopping is not None:
                stopping.cancel()

    def _replace(self, pool: ProcessPool) -> ProcessPool:
        """Kill the pool's process (if it still runs) and make a new pool in its place."""
        for process in _children(pool):
            process.kill()
        pool.shutdown(wait=False, cancel_futures=True)
        self._pools.remove(pool)
        return self._new_pool()

    def shutdown(self, wait: bool) -> None:
        self._threads.shutdown(wait=wait, cancel_futures=True)
        for pool in self._pools:
            if not wait:
                for process in _children(pool):
                    process.terminate()
            pool.shutdown(wait=wait, cancel_futures=True)
