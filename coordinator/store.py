"""Persistence: the broker's journal in SQLite, committed in groups.

Why SQLite: it is in the standard library, one file in ``--data``, transactional,
and in WAL mode a writer never blocks readers. ``synchronous=NORMAL`` in WAL
mode loses nothing when the *process* is killed (``kill -9``): a committed
transaction is in the WAL file before ``commit()`` returns; only a power cut can
take back the last transactions, which a Kubernetes pod restart is not.

What is written: a job row when a job is submitted (with one task row per task
only when payloads differ), and a task row only when a task's state changes
(succeeded, failed, dead-lettered, requeued after a lost lease). Leases are
not written: after a restart every task that was leased is queued again, and
workers' late reports for them are still taken (see :mod:`.broker`).

Writes are collected in memory and committed together by :class:`GroupCommit`
on a thread, at most every few milliseconds, so a burst of ten thousand
completions is a handful of transactions; an RPC that promises durability
(SubmitJob, CompleteTask) waits for the commit that holds its change.

Retention: finished jobs older than the coordinator's ``--retention`` are
deleted with their task rows, in the same group commit as the broker forgets
them (:meth:`Broker.forget_finished`); jobs the broker still needs (unfinished,
or with leases out) are passed in and kept.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import sqlite3
from collections.abc import Callable

from fractalq.coordinator.jobs import Job, JobState, TaskState

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY,
    job_id TEXT NOT NULL UNIQUE,
    task_type TEXT NOT NULL,
    priority INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    total INTEGER NOT NULL,
    shared_payload BLOB,
    labels TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    state INTEGER NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    started_at REAL NOT NULL DEFAULT 0,
    finished_at REAL NOT NULL DEFAULT 0,
    counts TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state);
CREATE INDEX IF NOT EXISTS jobs_by_finish ON jobs (finished_at);
CREATE TABLE IF NOT EXISTS tasks (
    job_seq INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    payload BLOB,
    state INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    result BLOB,
    error TEXT,
    PRIMARY KEY (job_seq, idx)
) WITHOUT ROWID;
"""

_FINISHED = tuple(int(state) for state in JobState if state.finished)
_JobRow = tuple[int, str, str, int, int, int, bytes | None, str, str, int, str, float, float, float]
_TaskRow = tuple[int, int, int, int, bytes | None, str | None]
_JobUpdate = tuple[int, str, float, float, str | None, int]
# A jobs row as read back: the job row's columns, then its stored counts.
_LoadedRow = tuple[
    int, str, str, int, int, int, bytes | None, str, str, int, str, float, float, float, str | None
]


class Batch:
    """Changes recorded since the last commit, in the order they must be written."""

    def __init__(self) -> None:
        self.new_jobs: list[tuple[_JobRow, list[bytes] | None]] = []
        self.job_updates: dict[int, _JobUpdate] = {}
        self.task_updates: dict[tuple[int, int], _TaskRow] = {}
        # Retention: finished jobs that finished before this, but those kept.
        self.forget: tuple[float, list[int]] | None = None

    def __bool__(self) -> bool:
        return bool(self.new_jobs or self.job_updates or self.task_updates or self.forget)


class SqliteJournal:
    """The broker's :class:`~.broker.Journal`, backed by ``<data>/fractalq.db``."""

    def __init__(self, data_dir: str) -> None:
        os.makedirs(data_dir, exist_ok=True)
        self.path = os.path.join(data_dir, "fractalq.db")
        # Used by one thread at a time: the loader, then the committer.
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        # Lookups of old jobs read on the event loop, beside the committer.
        self._reader = sqlite3.connect(self.path, check_same_thread=False)
        self._batch = Batch()
        self.on_change: Callable[[], None] = lambda: None

    def close(self) -> None:
        self._reader.close()
        self._db.close()

    # ---- recording (called by the broker, on the event loop) -------------

    def job_added(self, job: Job) -> None:
        row: _JobRow = (
            job.seq,
            job.job_id,
            job.task_type,
            job.priority,
            job.max_attempts,
            job.total,
            None if job.payloads is not None else job.shared_payload,
            json.dumps(job.labels),
            job.fingerprint,
            int(job.state),
            job.reason,
            job.created_at,
            job.started_at,
            job.finished_at,
        )
        self._batch.new_jobs.append((row, job.payloads))
        self.on_change()

    def job_changed(self, job: Job) -> None:
        counts = None
        if job.state.finished:
            counts = json.dumps({int(state): count for state, count in job.counts.items()})
        self._batch.job_updates[job.seq] = (
            int(job.state),
            job.reason,
            job.started_at,
            job.finished_at,
            counts,
            job.seq,
        )
        self.on_change()

    def task_changed(
        self, job: Job, index: int, result: bytes | None = None, error: str | None = None
    ) -> None:
        self._batch.task_updates[(job.seq, index)] = (
            job.seq,
            index,
            job.states[index],
            job.attempts[index],
            result,
            error,
        )
        self.on_change()

    def forget_finished(self, before: float, keep: list[int]) -> None:
        self._batch.forget = (before, keep)
        self.on_change()

    def take(self) -> Batch:
        batch, self._batch = self._batch, Batch()
        return batch

    # ---- writing (on the committer's thread) ------------------------------

    def write(self, batch: Batch) -> None:
        db = self._db
        db.execute("BEGIN")
        try:
            for row, payloads in batch.new_jobs:
                db.execute(
                    "INSERT INTO jobs (seq, job_id, task_type, priority, max_attempts, total,"
                    " shared_payload, labels, fingerprint, state, reason, created_at, started_at,"
                    " finished_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    row,
                )
                if payloads is not None:
                    seq = row[0]
                    db.executemany(
                        "INSERT INTO tasks (job_seq, idx, payload, state) VALUES (?,?,?,0)",
                        ((seq, index, payload) for index, payload in enumerate(payloads)),
                    )
            db.executemany(
                "UPDATE jobs SET state=?, reason=?, started_at=?, finished_at=?,"
                " counts=COALESCE(?, counts) WHERE seq=?",
                batch.job_updates.values(),
            )
            db.executemany(
                "INSERT INTO tasks (job_seq, idx, state, attempts, result, error)"
                " VALUES (?,?,?,?,?,?) ON CONFLICT (job_seq, idx) DO UPDATE SET"
                " state=excluded.state, attempts=excluded.attempts,"
                " result=excluded.result, error=excluded.error",
                batch.task_updates.values(),
            )
            if batch.forget is not None:
                self._forget(*batch.forget)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _forget(self, before: float, keep: list[int]) -> None:
        db = self._db
        db.execute("CREATE TEMP TABLE IF NOT EXISTS kept (seq INTEGER PRIMARY KEY)")
        db.execute("DELETE FROM kept")
        db.executemany("INSERT OR IGNORE INTO kept VALUES (?)", ((seq,) for seq in keep))
        marks = ",".join("?" * len(_FINISHED))
        chosen = (
            f"SELECT seq FROM jobs WHERE state IN ({marks}) AND finished_at < ?"
            " AND seq NOT IN (SELECT seq FROM kept)"
        )
        db.execute(f"DELETE FROM tasks WHERE job_seq IN ({chosen})", (*_FINISHED, before))
        db.execute(f"DELETE FROM jobs WHERE seq IN ({chosen})", (*_FINISHED, before))

    # ---- reading ----------------------------------------------------------

    def load(self, finished_limit: int) -> list[Job]:
        """Every unfinished job, and the latest ``finished_limit`` finished ones."""
        columns = (
            "seq, job_id, task_type, priority, max_attempts, total, shared_payload, labels,"
            " fingerprint, state, reason, created_at, started_at, finished_at, counts"
        )
        marks = ",".join("?" * len(_FINISHED))
        rows = self._db.execute(
            f"SELECT {columns} FROM jobs WHERE state NOT IN ({marks})", _FINISHED
        ).fetchall()
        rows += self._db.execute(
            f"SELECT {columns} FROM jobs WHERE state IN ({marks}) ORDER BY seq DESC LIMIT ?",
            (*_FINISHED, finished_limit),
        ).fetchall()
        return [self._job(row) for row in rows]

    def load_job(self, job_id: str) -> Job | None:
        row = self._reader.execute(
            "SELECT seq, job_id, task_type, priority, max_attempts, total, shared_payload,"
            " labels, fingerprint, state, reason, created_at, started_at, finished_at, counts"
            " FROM jobs WHERE job_id=?",
            (job_id,),
        ).fetchone()
        return None if row is None else self._job(row)

    def results(self, job: Job) -> list[bytes]:
        rows = self._reader.execute(
            "SELECT result FROM tasks WHERE job_seq=? ORDER BY idx", (job.seq,)
        ).fetchall()
        return [row[0] or b"" for row in rows]

    def _job(self, row: _LoadedRow) -> Job:
        (seq, job_id, task_type, priority, max_attempts, total, shared, labels, fingerprint,
         state, reason, created_at, started_at, finished_at, counts) = row  # fmt: skip
        job_state = JobState(state)
        finished = job_state.finished
        if finished:  # counts only: a finished job keeps no per-task data in memory
            states = attempts = bytearray(1)
        else:
            states, attempts = bytearray(total), bytearray(total)
        payloads: list[bytes] | None = None if shared is not None or finished else [b""] * total
        task_rows = (
            ()
            if finished
            else self._db.execute(
                "SELECT idx, payload, state, attempts FROM tasks WHERE job_seq=?", (seq,)
            )
        )
        for idx, payload, task_state, task_attempts in task_rows:
            if task_state in (TaskState.SUCCEEDED, TaskState.DEAD, TaskState.CANCELLED):
                states[idx] = task_state
            attempts[idx] = task_attempts
            if payloads is not None:
                payloads[idx] = payload or b""
        job = Job(
            job_id=job_id,
            seq=seq,
            task_type=task_type,
            priority=priority,
            max_attempts=max_attempts,
            total=total,
            fingerprint=fingerprint,
            created_at=created_at,
            payloads=payloads,
            shared_payload=shared or b"",
            labels=json.loads(labels),
            state=job_state,
            reason=reason,
            started_at=started_at,
            finished_at=finished_at,
            states=states,
            attempts=attempts,
        )
        if finished:
            job.drop_payloads()
            stored = json.loads(counts) if counts else {}
            job.counts = {s: int(stored.get(str(int(s)), 0)) for s in TaskState}
        return job


class GroupCommit:
    """Commits the journal's batches on a thread, at most every ``interval`` seconds."""

    def __init__(self, journal: SqliteJournal, interval: float) -> None:
        self._journal = journal
        self._interval = interval
        self._wake = asyncio.Event()
        self._waiters: list[asyncio.Future[None]] = []
        self._executor = concurrent.futures.ThreadPoolExecutor(1, "fractalq-commit")
        self._closed = False
        journal.on_change = self._wake.set

    async def durable(self) -> None:
        """Return once everything recorded so far is committed."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        self._wake.set()
        await future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            await asyncio.sleep(self._interval)  # let a burst gather
            self._wake.clear()
            batch, waiters = self._journal.take(), self._waiters
            self._waiters = []
            try:
                if batch:
                    await loop.run_in_executor(self._executor, self._journal.write, batch)
            except Exception as error:
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(error)
                raise
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def flush(self) -> None:
        """Write what is pending now (at shutdown)."""
        batch = self._journal.take()
        if batch:
            await asyncio.get_running_loop().run_in_executor(
                self._executor, self._journal.write, batch
            )

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self._journal.close()
