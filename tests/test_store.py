"""The journal's jobs table: one list of columns makes its schema and statements."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from fractalq.coordinator import store
from fractalq.coordinator.broker import Broker, JobSpec
from fractalq.coordinator.jobs import JobState
from fractalq.coordinator.store import JOB_COLUMNS, SqliteJournal


def test_every_statement_names_every_column_of_the_list() -> None:
    names = [column.name for column in JOB_COLUMNS]
    assert names[0] == "seq"  # the journal reads a new row's seq from its first value
    for statement in (store.SCHEMA, store.INSERT_JOB, store.SELECT_JOBS):
        assert all(name in statement for name in names)
    assert store.INSERT_JOB.count("?") == len(names)
    updated = [column.name for column in JOB_COLUMNS if column.updated]
    assert store.UPDATE_JOB.count("?") == len(updated) + 1  # and the seq


def test_a_database_without_a_newer_column_gets_it_when_opened(tmp_path: Path) -> None:
    # A jobs table as an older version wrote it: without the last column.
    old = sqlite3.connect(tmp_path / "fractalq.db")
    declarations = ", ".join(f"{c.name} {c.decl}" for c in JOB_COLUMNS[:-1])
    old.execute(f"CREATE TABLE jobs ({declarations})")
    old.commit()
    old.close()

    journal = SqliteJournal(str(tmp_path))
    broker = Broker(journal=journal)
    broker.submit(JobSpec("noop", None, b"x", 2, 1, 3, {"k": "v"}), 0.0, "job")
    broker.cancel("job", "stop", 1.0)
    journal.write(journal.take())
    journal.close()

    [job] = SqliteJournal(str(tmp_path)).load(10)
    assert (job.job_id, job.state, job.reason, job.labels) == (
        "job",
        JobState.CANCELLED,
        "stop",
        {"k": "v"},
    )
    assert job.total == 2 and job.finished_at == 1.0
