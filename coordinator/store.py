"""Persistence: the broker's journal in SQLite, committed in groups.

Why SQLite: it is in the standard library, one file in ``--data``, transactional,
and in WAL mode a writer never blocks readers. ``synchronous=NORMAL`` in WAL
mode loses nothing when the *process* is killed (``kill -9``): a committed
transaction is in the WAL file before ``commit()`` returns; only a power cut can
take back the last transactions, which a Kubernetes pod restart is not.

What is written: a job row when a job is submitted (with one task row per task
only when payloads differ) and again when its state changes, and a task row
only when a task's state changes (succeeded, failed, dead-lettered, requeued
after a lost lease). Leases are
not written: after a restart every task that was leased is queued again, and
workers' late reports for them are still taken (see :mod:`.broker`).

Writes are collected in memory and committed together by :class:`GroupCommit`
at most every few milliseconds, so a burst of ten thousand completions is a
handful of transactions; an RPC that promises durability (SubmitJob,
CompleteTask) waits for the commit that holds its change. A large batch is
written on the committer's thread; a small one (a quiet queue's: a job, its
task's report) on the event loop, which costs less than the hand-over. The
write-ahead log is checkpointed by a connection of its own on that thread,
every few hundred commits, never inside a commit.

Dead letters: a failed job that holds its dead letters is written like an
unfinished one (``dead_letters_held``) and loaded whole, payloads and task
states, so that it can be requeued after a restart; each task row keeps the
errors of its failed attempts (``errors``, JSON).

Retention: finished jobs older than the coordinator's ``--retention`` are
deleted with their task rows, in the same group commit as the broker forgets
them (:meth:`Broker.forget_finished`); jobs the broker still needs (unfinished,
or with leases out) are passed in and kept.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import os
import sqlite3
from collections.abc import Callable
from typing import Any

from fractalq.coordinator.jobs import (
    TERMINAL_TASK_STATES,
    AttemptError,
    Job,
    JobState,
    StageSpec,
    StageTask,
    TaskState,
)

log = logging.getLogger(__name__)


def _same(value: Any) -> object:
    return value


@dataclasses.dataclass(frozen=True)
class Column:
    """A column of the jobs table: its declaration and how a :class:`Job` maps to it.

    By default the value is the job's attribute of the same name, both ways. A
    column added to :data:`JOB_COLUMNS` is added to an existing database when
    it is opened (``ALTER TABLE``), so it needs a default or must allow NULL.
    """

    name: str
    decl: str
    # The value written for a job; None: the job's attribute of the same name.
    save: Callable[[Job], object] | None = None
    # The job's attribute from the stored value; None: the column is not a Job
    # field and :meth:`SqliteJournal._job` reads it itself.
    load: Callable[[Any], object] | None = _same
    # Written again whenever the job changes; a None value keeps the stored one.
    updated: bool = False

    def value(self, job: Job) -> object:
        return getattr(job, self.name) if self.save is None else self.save(job)


def _counts(job: Job) -> str | None:
    # Only a finished job's counts: an unfinished job's come from its task rows.
    if not job.state.finished:
        return None
    return json.dumps({int(state): count for state, count in job.counts.items()})


def _stage(task: StageTask | StageSpec | None, field: str) -> object:
    return None if task is None else getattr(task, field)


def _shared_payload(job: Job) -> bytes | None:
    # NULL when the tasks have payloads of their own (in their task rows).
    return None if job.payloads is not None else job.shared_payload


# The jobs table, in one place: its schema, INSERT, UPDATE and SELECT are made from it.
JOB_COLUMNS = (
    Column("seq", "INTEGER PRIMARY KEY"),
    Column("job_id", "TEXT NOT NULL UNIQUE"),
    Column("task_type", "TEXT NOT NULL"),
    Column("priority", "INTEGER NOT NULL"),
    Column("max_attempts", "INTEGER NOT NULL"),
    Column("total", "INTEGER NOT NULL"),
    Column("shared_payload", "BLOB", save=_shared_payload, load=None),
    Column("labels", "TEXT NOT NULL", save=lambda job: json.dumps(job.labels), load=json.loads),
    Column("fingerprint", "TEXT NOT NULL"),
    Column(
        "state", "INTEGER NOT NULL", save=lambda job: int(job.state), load=JobState, updated=True
    ),
    Column("reason", "TEXT NOT NULL DEFAULT ''", updated=True),
    Column("created_at", "REAL NOT NULL"),
    Column("started_at", "REAL NOT NULL DEFAULT 0", updated=True),
    Column("finished_at", "REAL NOT NULL DEFAULT 0", updated=True),
    Column("counts", "TEXT", save=_counts, load=None, updated=True),
    # A job's first and final tasks (NULL when it has none); their states and
    # results are task rows at the indices just past the parallel tasks'.
    Column("first_type", "TEXT", save=lambda job: _stage(job.first, "task_type"), load=None),
    Column("first_payload", "BLOB", save=lambda job: _stage(job.first, "payload"), load=None),
    Column("final_type", "TEXT", save=lambda job: _stage(job.final, "task_type"), load=None),
    Column("final_payload", "BLOB", save=lambda job: _stage(job.final, "payload"), load=None),
    Column("time_limit", "REAL NOT NULL DEFAULT 0"),
    # The task that cleans up after the job if it fails, and the job that runs it.
    Column("cleanup_type", "TEXT", save=lambda job: _stage(job.cleanup, "task_type"), load=None),
    Column("cleanup_payload", "BLOB", save=lambda job: _stage(job.cleanup, "payload"), load=None),
    Column("cleanup_job", "TEXT NOT NULL DEFAULT ''", updated=True),
    # Who submitted it (the token's holder), and whether it holds dead letters.
    Column("owner", "TEXT NOT NULL DEFAULT ''"),
    Column(
        "dead_letters_held",
        "INTEGER NOT NULL DEFAULT 0",
        save=lambda job: int(job.dead_letters_held),
        load=bool,
        updated=True,
    ),
)
# Columns of the tasks table added since its first version (added when a
# database written by an older version is opened).
TASK_COLUMNS_ADDED = (("errors", "TEXT"),)
_NAMES = ", ".join(column.name for column in JOB_COLUMNS)
_UPDATED = tuple(column for column in JOB_COLUMNS if column.updated)
INSERT_JOB = f"INSERT INTO jobs ({_NAMES}) VALUES ({','.join('?' * len(JOB_COLUMNS))})"
UPDATE_JOB = (
    "UPDATE jobs SET "
    + ", ".join(f"{column.name}=COALESCE(?, {column.name})" for column in _UPDATED)
    + " WHERE seq=?"
)
SELECT_JOBS = f"SELECT {_NAMES} FROM jobs"
_DECLARATIONS = ",\n    ".join(f"{column.name} {column.decl}" for column in JOB_COLUMNS)

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS jobs (
    {_DECLARATIONS}
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
    errors TEXT,
    PRIMARY KEY (job_seq, idx)
) WITHOUT ROWID;
"""

# A batch of at least this many changes means the queue is busy: the next
# commit waits out the interval to gather a larger one.
BUSY_BATCH = 8
# A batch smaller than BUSY_BATCH, of at most this many bytes of payloads and
# results, is written on the event loop (a few tens of microseconds): a quiet
# queue's commit costs no hand-over to the committer's thread and back.
INLINE_BATCH_BYTES = 64 * 1024
# The write-ahead log is checkpointed (on the committer's thread, by a connection
# of its own, never in a commit's way) once this many commits have gone into it.
CHECKPOINT_COMMITS = 500
_FINISHED = tuple(int(state) for state in JobState if state.finished)
_TaskRow = tuple[int, int, int, int, bytes | None, str | None, str | None]
# Jobs loaded whole: unfinished, or failed and holding dead letters.
_LIVE = f"(state NOT IN ({','.join('?' * len(_FINISHED))}) OR dead_letters_held)"


def _errors_json(errors: list[AttemptError] | None) -> str | None:
    if not errors:
        return None
    return json.dumps([[e.attempt, e.at, e.worker, e.message] for e in errors])


def _errors_loaded(text: str | None) -> list[AttemptError]:
    if not text:
        return []
    try:
        return [AttemptError(int(a), float(t), str(w), str(m)) for a, t, w, m in json.loads(text)]
    except (ValueError, TypeError):  # not ours to fail a restart over
        return []


class Batch:
    """Changes recorded since the last commit, in the order they must be written."""

    def __init__(self) -> None:
        # Rows in the order of JOB_COLUMNS; updates in the order of UPDATE_JOB.
        self.new_jobs: list[tuple[tuple[object, ...], list[bytes] | None]] = []
        self.job_updates: dict[int, tuple[object, ...]] = {}
        self.task_updates: dict[tuple[int, int], _TaskRow] = {}
        # Retention: finished jobs that finished before this, but those kept.
        self.forget: tuple[float, list[int]] | None = None

    def __bool__(self) -> bool:
        return bool(self.new_jobs or self.job_updates or self.task_updates or self.forget)

    def __len__(self) -> int:
        return len(self.new_jobs) + len(self.job_updates) + len(self.task_updates)

    def small(self) -> bool:
        """Whether writing it takes only a moment (see INLINE_BATCH_BYTES)."""
        if len(self) >= BUSY_BATCH or self.forget is not None:
            return False
        size = sum(sum(map(len, payloads)) for _, payloads in self.new_jobs if payloads)
        size += sum(len(row[4]) for row in self.task_updates.values() if row[4])
        return size <= INLINE_BATCH_BYTES


class SqliteJournal:
    """The broker's :class:`~.broker.Journal`, backed by ``<data>/fractalq.db``."""

    def __init__(self, data_dir: str) -> None:
        os.makedirs(data_dir, exist_ok=True)
        self.path = os.path.join(data_dir, "fractalq.db")
        # Used by one thread at a time: the loader, then the committer (on the
        # event loop or on its thread, one commit after the other).
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        # Checkpoints are not a commit's business: see checkpoint().
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._db.executescript(SCHEMA)
        self._add_new_columns()
        # Lookups of old jobs read on the event loop, beside the committer.
        self._reader = sqlite3.connect(self.path, check_same_thread=False)
        self._checkpointer = sqlite3.connect(self.path, check_same_thread=False)
        self._batch = Batch()
        self.on_change: Callable[[], None] = lambda: None

    def _add_new_columns(self) -> None:
        """A database written by an older version gets the columns added since."""
        known = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        for column in JOB_COLUMNS:
            if column.name not in known:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {column.name} {column.decl}")
        known = {row[1] for row in self._db.execute("PRAGMA table_info(tasks)")}
        for name, decl in TASK_COLUMNS_ADDED:
            if name not in known:
                self._db.execute(f"ALTER TABLE tasks ADD COLUMN {name} {decl}")

    def close(self) -> None:
        self._reader.close()
        self._checkpointer.close()
        self._db.close()  # the last connection: it checkpoints the log into the database

    def checkpoint(self) -> None:
        """Copy the write-ahead log into the database, beside commits (PASSIVE: it
        never blocks a writer; the next commit after a complete one reuses the log)."""
        self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")

    # ---- recording (called by the broker, on the event loop) -------------

    def job_added(self, job: Job) -> None:
        row = tuple(column.value(job) for column in JOB_COLUMNS)
        self._batch.new_jobs.append((row, job.payloads))
        self.on_change()

    def job_changed(self, job: Job) -> None:
        values = tuple(column.value(job) for column in _UPDATED)
        self._batch.job_updates[job.seq] = (*values, job.seq)
        self.on_change()

    def task_changed(
        self, job: Job, index: int, result: bytes | None = None, error: str | None = None
    ) -> None:
        self._batch.task_updates[(job.seq, index)] = (
            job.seq,
            index,
            int(job.state_of(index)),
            job.attempts_of(index),
            result,
            error,
            _errors_json(job.errors.get(index)),
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
                db.execute(INSERT_JOB, row)
                if payloads is not None:
                    seq = row[0]  # JOB_COLUMNS begins with seq
                    db.executemany(
                        "INSERT INTO tasks (job_seq, idx, payload, state) VALUES (?,?,?,0)",
                        ((seq, index, payload) for index, payload in enumerate(payloads)),
                    )
            db.executemany(UPDATE_JOB, batch.job_updates.values())
            db.executemany(
                "INSERT INTO tasks (job_seq, idx, state, attempts, result, error, errors)"
                " VALUES (?,?,?,?,?,?,?) ON CONFLICT (job_seq, idx) DO UPDATE SET"
                " state=excluded.state, attempts=excluded.attempts,"
                " result=excluded.result, error=excluded.error, errors=excluded.errors",
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
        """Every unfinished job and every one holding dead letters, whole, and the
        latest ``finished_limit`` other finished ones."""
        rows = self._db.execute(f"{SELECT_JOBS} WHERE {_LIVE}", _FINISHED).fetchall()
        rows += self._db.execute(
            f"{SELECT_JOBS} WHERE NOT {_LIVE} ORDER BY seq DESC LIMIT ?",
            (*_FINISHED, finished_limit),
        ).fetchall()
        return [self._job(row, self._db) for row in rows]

    def load_job(self, job_id: str) -> Job | None:
        row = self._reader.execute(f"{SELECT_JOBS} WHERE job_id=?", (job_id,)).fetchone()
        return None if row is None else self._job(row, self._reader)

    def job_ids_created_before(self, before: float) -> list[str]:
        rows = self._reader.execute("SELECT job_id FROM jobs WHERE created_at<?", (before,))
        return [row[0] for row in rows]

    def results(self, job: Job) -> list[bytes]:
        rows = self._reader.execute(
            "SELECT result FROM tasks WHERE job_seq=? AND idx<? ORDER BY idx", (job.seq, job.total)
        ).fetchall()
        return [row[0] or b"" for row in rows]

    def _job(self, row: tuple[Any, ...], db: sqlite3.Connection) -> Job:
        stored = {column.name: value for column, value in zip(JOB_COLUMNS, row, strict=True)}
        fields = {c.name: c.load(stored[c.name]) for c in JOB_COLUMNS if c.load is not None}
        seq, total, shared = stored["seq"], stored["total"], stored["shared_payload"]
        held = bool(stored["dead_letters_held"])
        # A finished job keeps no per-task data in memory (counts only), unless it
        # holds dead letters: then all of it, to run again on a requeue.
        whole = not JobState(stored["state"]).finished or held
        if whole:
            # What a failed job dropped (queued, leased: lost with the process) is cancelled.
            waiting = TaskState.CANCELLED if held else TaskState.QUEUED
            states, attempts = bytearray([waiting]) * total, bytearray(total)
        else:
            states = attempts = bytearray(1)
        payloads: list[bytes] | None = None if shared is not None or not whole else [b""] * total
        errors: dict[int, list[AttemptError]] = {}
        task_rows = (
            db.execute(
                "SELECT idx, payload, state, attempts, errors FROM tasks WHERE job_seq=?", (seq,)
            )
            if whole
            else ()
        )
        for idx, payload, task_state, task_attempts, task_errors in task_rows:
            if task_errors and (found := _errors_loaded(task_errors)):
                errors[idx] = found
            if idx >= total:
                continue  # a stage task's: below
            if task_state in TERMINAL_TASK_STATES:
                states[idx] = task_state
            attempts[idx] = task_attempts
            if payloads is not None:
                payloads[idx] = payload or b""
        job = Job(
            **fields,  # type: ignore[arg-type]
            payloads=payloads,
            shared_payload=shared or b"",
            states=states,
            attempts=attempts,
        )
        for name in ("first", "final"):
            if stored[f"{name}_type"] is not None:
                task = StageTask(stored[f"{name}_type"], stored[f"{name}_payload"] or b"")
                if held:
                    task.state = TaskState.CANCELLED
                setattr(job, name, task)
        if stored["cleanup_type"] is not None:
            job.cleanup = StageSpec(stored["cleanup_type"], stored["cleanup_payload"] or b"")
        stage_rows = db.execute(
            "SELECT idx, state, attempts, result FROM tasks WHERE job_seq=? AND idx>=?",
            (seq, total),
        )
        for idx, task_state, task_attempts, result in stage_rows:
            if (loaded := job.stage_task(idx)) is not None:
                loaded.attempts = task_attempts
                if task_state in TERMINAL_TASK_STATES:
                    loaded.state = TaskState(task_state)
                    loaded.result = result or b""
        if job.lone:
            lone = db.execute(
                "SELECT result FROM tasks WHERE job_seq=? AND idx=0 AND state=?",
                (seq, int(TaskState.SUCCEEDED)),
            ).fetchone()
            job.lone_result = (lone[0] or b"") if lone is not None else b""
        if held:
            # Only the dead tasks' errors are kept by a held job.
            job.errors = {i: e for i, e in errors.items() if job.state_of(i) is TaskState.DEAD}
        elif whole:
            job.errors = errors
            job.resume()
        else:
            job.drop_payloads()
            counts = json.loads(stored["counts"]) if stored["counts"] else {}
            job.counts = {s: int(counts.get(str(int(s)), 0)) for s in TaskState}
        return job


class GroupCommit:
    """Commits the journal's batches on a thread, at most every ``interval`` seconds."""

    def __init__(self, journal: SqliteJournal, interval: float) -> None:
        self._journal = journal
        self._interval = interval
        self._wake = asyncio.Event()
        self._waited = asyncio.Event()  # someone waits for the next commit
        self._waiters: list[asyncio.Future[None]] = []
        self._executor = concurrent.futures.ThreadPoolExecutor(1, "fractalq-commit")
        self._closed = False
        self._commits = 0  # since the last checkpoint
        self._checkpoint: asyncio.Future[None] | None = None
        journal.on_change = self._wake.set

    async def durable(self) -> None:
        """Return once everything recorded so far is committed."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        self._wake.set()
        self._waited.set()
        await future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        last, busy = -self._interval, False
        while True:
            await self._wake.wait()
            # Under load (the last batch was large) commits are at most one per
            # interval, so that a burst gathers into one transaction. On a quiet
            # queue a change someone waits for is written at once, rather than
            # after a pause that every RPC waiting for durability would pay; one
            # nobody waits for (a job leased, a submission whose client waits for
            # its end) waits up to an interval, so that it joins the commit of
            # what follows it (that task's report) instead of costing one of its own.
            if busy:
                await asyncio.sleep(max(last + self._interval - loop.time(), 0.0))
            elif not self._waiters:
                self._waited.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._interval):
                        await self._waited.wait()
            self._wake.clear()
            batch, waiters = self._journal.take(), self._waiters
            self._waiters = []
            busy = len(batch) >= BUSY_BATCH
            try:
                if batch and batch.small():
                    self._journal.write(batch)
                elif batch:
                    await loop.run_in_executor(self._executor, self._journal.write, batch)
            except Exception as error:
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(error)
                raise
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
            last = loop.time()
            if batch:
                self._commits += 1
            if self._commits >= CHECKPOINT_COMMITS and (
                self._checkpoint is None or self._checkpoint.done()
            ):
                self._commits = 0
                self._checkpoint = loop.run_in_executor(self._executor, self._checkpointed)

    def _checkpointed(self) -> None:
        try:
            self._journal.checkpoint()
        except sqlite3.Error as error:  # the log only grows until the next one
            log.warning("checkpoint of the journal failed: %s", error)

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
