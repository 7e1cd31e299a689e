"""Running one task: on a thread, or in a child process for CPU-bound types.

CPU-bound task types (fractal bands) run in a pool of child processes when the
worker runs more than one task at once, so they use every core instead of
sharing one interpreter lock; everything else runs on threads. Child processes
are spawned, not forked: the parent holds gRPC's threads, which a fork would
copy in an undefined state.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
import traceback
from collections.abc import Iterable
from concurrent.futures.process import BrokenProcessPool

from fractalq import tasks
from fractalq.storage.base import StorageError
from fractalq.tasks import TaskContext

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


def warm_task(task_type: str) -> None:
    """Prepare this process for a task type (see :attr:`TaskType.warm`)."""
    warm = tasks.get(task_type).warm
    if warm is not None:
        warm()


def describe(error: BaseException) -> str:
    text = "".join(traceback.format_exception_only(type(error), error)).strip()
    return text or type(error).__name__


def _log_warm_failure(future: concurrent.futures.Future[None]) -> None:
    # Not fatal: the first task of the type will meet the same error and report it.
    error = None if future.cancelled() else future.exception()
    if error is not None:
        log.warning("warming up failed: %s", describe(error))


class TaskRunner:
    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self._threads = concurrent.futures.ThreadPoolExecutor(
            concurrency, thread_name_prefix="fractalq-task"
        )
        self._processes: concurrent.futures.ProcessPoolExecutor | None = None

    def _executor_for(self, kind: tasks.TaskType) -> concurrent.futures.Executor:
        if not kind.cpu_bound or self.concurrency == 1:
            return self._threads
        if self._processes is None:
            self._processes = concurrent.futures.ProcessPoolExecutor(
                self.concurrency, mp_context=multiprocessing.get_context("spawn")
            )
        return self._processes

    def warm(self, task_types: Iterable[str]) -> None:
        """Warm every process and thread that will run these types, in the background.

        A task that arrives meanwhile simply waits for the imports it needs.
        """
        for name in task_types:
            kind = tasks.get(name)
            if kind.warm is None:
                continue
            executor = self._executor_for(kind)
            copies = self.concurrency if executor is self._processes else 1
            for _ in range(copies):
                executor.submit(warm_task, name).add_done_callback(_log_warm_failure)

    async def run(self, task_type: str, payload: bytes, context: TaskContext) -> bytes:
        try:
            kind = tasks.get(task_type)
        except KeyError as error:
            raise TaskFailed(str(error.args[0])) from None
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._executor_for(kind), run_task, task_type, payload, context
            )
        except BrokenProcessPool as error:
            # A child died (out of memory, killed): start a new pool for the next task.
            self._processes = None
            raise TaskFailed(f"worker process died: {error}") from None
        except Exception as error:
            raise _failure(error) from None

    def shutdown(self, wait: bool) -> None:
        self._threads.shutdown(wait=wait, cancel_futures=True)
        if self._processes is not None:
            if not wait:
                for process in list(getattr(self._processes, "_processes", {}).values()):
                    process.terminate()
            self._processes.shutdown(wait=wait, cancel_futures=True)
