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
import multiprocessing
import traceback
from concurrent.futures.process import BrokenProcessPool

from fractalq import tasks
from fractalq.tasks import TaskContext


class TaskFailed(Exception):
    """The task raised; the message is what the coordinator records."""


def run_task(task_type: str, payload: bytes, context: TaskContext) -> bytes:
    """Look the type up and run it; the same in a thread or a child process."""
    return tasks.get(task_type).run(payload, context)


def describe(error: BaseException) -> str:
    text = "".join(traceback.format_exception_only(type(error), error)).strip()
    return text or type(error).__name__


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
            raise TaskFailed(describe(error)) from None

    def shutdown(self, wait: bool) -> None:
        self._threads.shutdown(wait=wait, cancel_futures=True)
        if self._processes is not None:
            if not wait:
                for process in list(getattr(self._processes, "_processes", {}).values()):
                    process.terminate()
            self._processes.shutdown(wait=wait, cancel_futures=True)
