"""How many tasks a worker holds at once: its slots, and tasks prefetched for them.

A worker leases at least ``concurrency + prefetch`` tasks, so that the next task
is at hand when one ends. For tasks that run for a while that is all it holds:
a prefetched task is not started until a slot is free, and no other worker can
take it meanwhile, so holding more would only keep work from idle workers.

Short tasks are another matter: their cost is the queue's own (a GetTask, a
report, a commit), so they are leased in batches. While every task that ended
since the last lease was short (under ``SHORT_TASK_SECONDS``), at least as
many as the base (or half the window), and the last GetTask was filled (the queue
holds more), the window doubles, up to
``MAX_PREFETCH_BATCH`` tasks beyond the base: a run of ten thousand no-op tasks
goes out a few hundred per call. A task that runs longer, or a GetTask that comes
back with less than it asked for (the queue ran dry), brings the window back to
its base at once, so a slow task is never hoarded by more than one batch.
"""

from __future__ import annotations

from fractalq import config


class LeaseWindow:
    def __init__(self, concurrency: int, prefetch: int) -> None:
        self.base = concurrency + prefetch
        self.extra = 0
        self._short = 0  # tasks that ended short since the last lease
        self._long = False  # and whether one ran long

    @property
    def size(self) -> int:
        """The most tasks to hold now."""
        return self.base + self.extra

    @property
    def refill(self) -> int:
        """The least free room worth a GetTask while the slots have work waiting."""
        return max(1, self.size // 2)

    @property
    def batching(self) -> bool:
        """Whether tasks are short enough to run a few in a row on one thread."""
        return self.extra > 0

    def ran(self, seconds: float) -> None:
        """A task ended after ``seconds``."""
        if seconds > config.SHORT_TASK_SECONDS:
            self.extra = 0
            self._long = True
        else:
            self._short += 1

    def leased(self, got: int, asked: int) -> None:
        """A GetTask asked for ``asked`` tasks and got ``got``."""
        if got < asked or self._long:
            self.extra = 0
        elif self._short >= max(self.base, self.size // 2):
            self.extra = min(max(2 * self.extra, self.base), config.MAX_PREFETCH_BATCH)
        self._short = 0
        self._long = False
