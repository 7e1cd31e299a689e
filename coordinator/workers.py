"""Worker sessions: who is registered, under which secret, and when each was last heard.

A worker registers once per process and gets a session secret; every later
call names its id and presents the secret, compared in constant time. The
registry knows nothing of jobs: the broker takes a lost or leaving worker's
leases back (:meth:`.Broker.worker_lost`, :meth:`.Broker.unregister_worker`).
"""

from __future__ import annotations

import dataclasses
import hmac
import secrets

from fractalq import config
from fractalq.coordinator.errors import AlreadyExists, ResourceExhausted, UnknownWorker


@dataclasses.dataclass(eq=False)
class WorkerRecord:
    """One worker session: what the worker offers, what it holds, what it last said."""

    worker_id: str
    task_types: tuple[str, ...]
    concurrency: int
    hostname: str
    last_seen: float
    session: str = dataclasses.field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    leases: set[tuple[str, int]] = dataclasses.field(default_factory=set)
    draining: bool = False
    # What the worker last said about its storage: "" while it works, one line
    # while it cannot reach it (then it takes no task, see worker/runtime.py).
    storage_error: str = ""
    running: int = 0  # of its leases, those it said it runs (the others are prefetched)
    completed: int = 0
    failed: int = 0
    # Bumped by each heartbeat stream that opens, so that an older stream
    # ending late (after a reconnect) does not lose the worker.
    stream: int = 0


def _same_secret(known: str, given: str) -> bool:
    # Bytes, because compare_digest refuses str with non-ASCII characters.
    return hmac.compare_digest(known.encode(), given.encode("utf-8", "surrogateescape"))


class WorkerRegistry:
    """The live worker sessions, at most ``max_workers`` of them."""

    def __init__(self, max_workers: int, timeout: float) -> None:
        self.max_workers = max_workers
        self.timeout = timeout
        self.workers: dict[str, WorkerRecord] = {}
        self.refused = 0  # calls refused: a taken id, a wrong secret, too many workers

    def register(
        self,
        worker_id: str,
        task_types: tuple[str, ...],
        concurrency: int,
        hostname: str,
        now: float,
        session: str = "",
    ) -> WorkerRecord:
        """Open a session, or resume the live one whose secret ``session`` is.

        An id held by a live session is refused to anyone else, so a second
        process (or a hostile client) cannot take over a worker's name, its
        leases or its place in the queue.
        """
        worker = self.workers.get(worker_id)
        if worker is not None:
            if not session or not _same_secret(worker.session, session):
                self.refused += 1
                raise AlreadyExists(f"worker id {worker_id!r} is held by a live worker")
            # A reconnect of the same process: it keeps its session and leases.
            worker.task_types, worker.concurrency, worker.hostname = (
                task_types,
                concurrency,
                hostname,
            )
            worker.last_seen = now
            return worker
        if len(self.workers) >= self.max_workers:
            self.refused += 1
            raise ResourceExhausted(f"{len(self.workers)} workers are registered, the limit")
        worker = WorkerRecord(worker_id, task_types, concurrency, hostname, now)
        self.workers[worker_id] = worker
        return worker

    def session(self, worker_id: str, session: str, now: float | None = None) -> WorkerRecord:
        """The live session ``worker_id`` if ``session`` is its secret.

        ``now`` also counts as a sign of life. An unknown id and a wrong secret
        get the same answer, so the answer tells nothing about other workers.
        """
        worker = self.workers.get(worker_id)
        if worker is None or not _same_secret(worker.session, session):
            self.refused += 1
            raise UnknownWorker(f"no session for worker {worker_id!r}: register first")
        if now is not None:
            worker.last_seen = now
        return worker

    def is_live(self, worker: WorkerRecord) -> bool:
        return self.workers.get(worker.worker_id) is worker

    def offering(self, task_type: str) -> list[WorkerRecord]:
        """The registered (so live) workers that run ``task_type``."""
        return [worker for worker in self.workers.values() if task_type in worker.task_types]

    def heartbeat(
        self,
        worker: WorkerRecord,
        draining: bool,
        now: float,
        storage_error: str = "",
        running: int = 0,
    ) -> None:
        worker.last_seen = now
        worker.draining = draining
        worker.running = min(running, worker.concurrency)
        # Shown in the worker list: one line of bounded length, whatever was sent.
        worker.storage_error = " ".join(storage_error.split())[: config.MAX_STORAGE_ERROR_LENGTH]

    def silent(self, now: float) -> list[WorkerRecord]:
        """The workers silent for longer than the timeout."""
        return [w for w in self.workers.values() if now - w.last_seen > self.timeout]

    def remove(self, worker: WorkerRecord) -> bool:
        """End ``worker``'s session; False if it was not live (ended already)."""
        if not self.is_live(worker):
            return False
        del self.workers[worker.worker_id]
        return True
