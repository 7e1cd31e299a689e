"""The broker's logic without a network: ordering, leases, retries, persistence."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace
from pathlib import Path

import pytest
from listening import Recorder

from fractalq.config import QueueLimits, RetryPolicy
from fractalq.coordinator import validation
from fractalq.coordinator.broker import Broker, JobSpec
from fractalq.coordinator.errors import (
    AlreadyExists,
    InvalidRequest,
    ResourceExhausted,
    UnknownWorker,
)
from fractalq.coordinator.jobs import Job, JobState, StageSpec, TaskState
from fractalq.coordinator.listeners import Listener
from fractalq.coordinator.service import CoordinatorService
from fractalq.coordinator.settings import CoordinatorSettings
from fractalq.coordinator.store import SqliteJournal
from fractalq.proto import fractalq_pb2 as pb
from fractalq.retry import backoff_ceiling, retry_delay

ALL = ("noop", "sleep", "fail")


def spec(count: int = 1, priority: int = 10, task_type: str = "noop", attempts: int = 3) -> JobSpec:
    return JobSpec(task_type, None, b"", count, priority, attempts, {})


def broker(**kwargs: object) -> Broker:
    b = Broker(rng=random.Random(1), **kwargs)  # type: ignore[arg-type]
    b.registry.register("w1", ALL, 1, "host", 0.0)
    return b


def lease_all(b: Broker, name: str = "w1", now: float = 0.0) -> list[tuple[str, int]]:
    worker = b.workers[name]
    order = []
    while leased := b.lease(worker, 1, now):
        task = leased[0]
        order.append((task.job_id, task.index))
        assert b.complete(worker, task.job_id, task.index, task.attempt, b"", now)
    return order


def test_lower_priority_first_then_submission_order() -> None:
    b = broker()
    b.submit(spec(2, priority=5), 0, "a")
    b.submit(spec(1, priority=1), 0, "b")
    b.submit(spec(2, priority=5), 0, "c")
    b.submit(spec(1, priority=1), 0, "d")
    b.submit(spec(1, priority=-3), 0, "e")
    order = lease_all(b)
    assert order == [("e", 0), ("b", 0), ("d", 0), ("a", 0), ("a", 1), ("c", 0), ("c", 1)]


def test_workers_only_get_their_task_types() -> None:
    b = broker()
    b.registry.register("sleeper", ("sleep",), 1, "host", 0.0)
    b.submit(spec(1, priority=1, task_type="noop"), 0, "n")
    b.submit(spec(1, priority=9, task_type="sleep"), 0, "s")
    [task] = b.lease(b.workers["sleeper"], 5, 0.0)
    assert task.job_id == "s"
    assert b.lease(b.workers["sleeper"], 5, 0.0) == []


def test_lease_batches_and_job_lifecycle() -> None:
    b = broker()
    job, created = b.submit(spec(3), 0, "j")
    assert created and job.state.name == "QUEUED"
    tasks = b.lease(b.workers["w1"], 10, 1.0)
    assert [t.index for t in tasks] == [0, 1, 2] and all(t.attempt == 1 for t in tasks)
    assert job.state.name == "RUNNING" and job.started_at == 1.0
    for t in tasks:
        assert b.complete(b.workers["w1"], "j", t.index, t.attempt, b"r", 2.0)
    assert job.state is JobState.SUCCEEDED and job.finished_at == 2.0


def test_duplicate_and_late_completions_are_ignored() -> None:
    b = broker(worker_timeout=5.0)
    w1 = b.workers["w1"]
    w2 = b.registry.register("w2", ALL, 1, "host", 0.0)
    job, _ = b.submit(spec(2), 0, "j")
    [first] = b.lease(w1, 1, 0.0)
    # w1 goes silent; its lease returns and w2 takes the task (attempt 2).
    b.registry.heartbeat(w2, False, 10.0)
    assert b.expire_workers(10.0) == ["w1"]
    [again] = b.lease(w2, 1, 10.0)
    assert (again.index, again.attempt) == (first.index, 2)
    assert not b.complete(w1, "j", first.index, first.attempt, b"late", 11.0)
    assert b.complete(w2, "j", again.index, again.attempt, b"ok", 11.0)
    assert not b.complete(w2, "j", again.index, again.attempt, b"dup", 11.0)
    assert job.counts[TaskState.SUCCEEDED] == 1 and b.succeeded == 1


def test_a_lost_lease_takes_no_result_even_before_it_is_leased_again() -> None:
    b = broker(worker_timeout=5.0)
    w1 = b.workers["w1"]
    job, _ = b.submit(spec(1), 0, "j")
    [task] = b.lease(w1, 1, 0.0)
    b.expire_workers(10.0)
    assert job.task_state(0) is TaskState.QUEUED
    assert not b.complete(w1, "j", 0, task.attempt, b"ok", 11.0)
    # Registering again under the same id opens a new session, which holds no lease.
    again = b.registry.register("w1", ALL, 1, "host", 11.0)
    assert again.session != w1.session
    assert not b.complete(again, "j", 0, task.attempt, b"ok", 11.0)
    assert job.task_state(0) is TaskState.QUEUED and b.reports_ignored == 2
    [retry] = b.lease(again, 1, 12.0)
    assert retry.attempt == 2
    assert b.complete(again, "j", 0, retry.attempt, b"ok", 12.0)
    assert job.state is JobState.SUCCEEDED


def test_failures_back_off_then_dead_letter() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=8.0)
    b = broker(retry=policy)
    job, _ = b.submit(spec(1, task_type="fail", attempts=3), 0, "j")
    now = 0.0
    for attempt in (1, 2):
        [task] = b.lease(b.workers["w1"], 1, now)
        assert task.attempt == attempt
        assert b.fail(b.workers["w1"], "j", 0, attempt, f"boom {attempt}", now)
        assert job.task_state(0) is TaskState.DELAYED
        due = b.next_due()
        assert due is not None
        assert (
            now + backoff_ceiling(policy, attempt) / 2
            <= due
            <= now + backoff_ceiling(policy, attempt)
        )
        assert b.lease(b.workers["w1"], 1, due - 0.001) == []  # not before the backoff is over
        now = due
    [task] = b.lease(b.workers["w1"], 1, now)
    assert b.fail(b.workers["w1"], "j", 0, 3, "boom 3", now)
    assert job.state is JobState.FAILED
    assert "dead-lettered after 3 attempt(s): boom 3" in job.reason
    assert job.counts[TaskState.DEAD] == 1 and b.dead == 1


def test_a_dead_letter_fails_the_job_and_drops_its_other_tasks() -> None:
    b = broker()
    b.registry.register("w2", ALL, 1, "host", 0.0)
    job, _ = b.submit(spec(5, attempts=1), 0, "j")
    [a] = b.lease(b.workers["w1"], 1, 0.0)
    [other] = b.lease(b.workers["w2"], 1, 0.0)
    assert b.fail(b.workers["w1"], "j", a.index, a.attempt, "bad", 0.0)
    assert job.state is JobState.FAILED
    assert (job.counts[TaskState.CANCELLED], job.counts[TaskState.LEASED]) == (3, 1)
    assert not b.complete(b.workers["w2"], "j", other.index, other.attempt, b"", 0.0)
    assert (job.counts[TaskState.CANCELLED], job.counts[TaskState.LEASED]) == (4, 0)
    assert not b.workers["w2"].leases
    assert b.lease(b.workers["w1"], 5, 0.0) == []


def test_worker_loss_counts_an_attempt_and_can_dead_letter() -> None:
    b = broker(worker_timeout=1.0)
    job, _ = b.submit(spec(1, attempts=2), 0, "j")
    for now in (0.0, 10.0):
        worker = b.registry.register("w9", ALL, 1, "host", now)
        assert b.lease(worker, 1, now)
        b.worker_lost(worker, "stream broke", now)
    assert job.state is JobState.FAILED and "lost" in job.reason


def test_release_hands_back_without_counting_an_attempt() -> None:
    b = broker()
    b.submit(spec(1), 0, "j")
    [task] = b.lease(b.workers["w1"], 1, 0.0)
    someone_else = b.registry.register("someone-else", ALL, 1, "host", 0.0)
    assert not b.release(someone_else, "j", 0, task.attempt, 0.0)
    assert b.release(b.workers["w1"], "j", 0, task.attempt, 0.0)
    [again] = b.lease(b.workers["w1"], 1, 0.0)
    assert again.attempt == 1
    b.unregister_worker(b.workers["w1"], 0.0)
    worker = b.registry.register("w1", ALL, 1, "host", 0.0)
    assert b.lease(worker, 1, 0.0)[0].attempt == 1


def test_draining_workers_get_nothing() -> None:
    b = broker()
    b.submit(spec(1), 0, "j")
    b.registry.heartbeat(b.workers["w1"], True, 0.0)
    assert b.lease(b.workers["w1"], 1, 0.0) == []


def test_cancel_drops_queued_tasks_and_ignores_leased_reports() -> None:
    b = broker()
    job, _ = b.submit(spec(4), 0, "j")
    [task] = b.lease(b.workers["w1"], 1, 0.0)
    b.cancel("j", "no longer needed", 1.0)
    assert job.state is JobState.CANCELLED and job.reason == "no longer needed"
    assert b.lease(b.workers["w1"], 4, 1.0) == []
    # The running task stays visible until its worker reports; the report is discarded.
    assert job.counts[TaskState.LEASED] == 1 and job.counts[TaskState.CANCELLED] == 3
    assert not b.complete(b.workers["w1"], "j", task.index, task.attempt, b"", 2.0)
    assert job.counts[TaskState.LEASED] == 0 and job.counts[TaskState.CANCELLED] == 4
    assert not b.workers["w1"].leases and b.succeeded == 0
    assert b.totals()[TaskState.QUEUED] == 0


def test_a_cancelled_jobs_lease_also_ends_when_its_worker_is_lost() -> None:
    b = broker()
    job, _ = b.submit(spec(2), 0, "j")
    b.lease(b.workers["w1"], 1, 0.0)
    b.cancel("j", "", 1.0)
    assert job.counts[TaskState.LEASED] == 1
    b.worker_lost(b.workers["w1"], "gone", 2.0)
    assert job.counts[TaskState.LEASED] == 0 and job.state is JobState.CANCELLED


def test_idempotent_submission() -> None:
    b = broker()
    job, created = b.submit(spec(2), 0, "same")
    again, created_again = b.submit(spec(2), 5, "same")
    assert created and not created_again and again is job
    with pytest.raises(AlreadyExists):
        b.submit(spec(3), 5, "same")


def test_backoff_is_capped_and_jittered() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=30.0)
    assert [backoff_ceiling(policy, n) for n in (1, 2, 3, 10, 1000)] == [0.5, 1, 2, 30, 30]
    rng = random.Random(7)
    delays = [retry_delay(policy, 3, rng) for _ in range(200)]
    assert all(1.0 <= d <= 2.0 for d in delays) and len(set(delays)) > 100


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"task_type": "nope"}, "unknown task type 'nope'"),
        ({"count": 0}, "at least one task"),
        ({"count": 2_000_000}, "more than the limit"),
        ({"payload": b'{"seconds": "x"}', "task_type": "sleep"}, '"seconds" must be a number'),
        ({"payload": b"not json", "task_type": "sleep"}, "not JSON"),
        ({"max_attempts": 1000}, "max_attempts must be between"),
        ({"priority": 10**9}, "priority must be between"),
        ({"job_id": "../etc"}, "job_id must be"),
        ({"payloads": [b"", b""], "count": 3}, "count is 3 but 2 payloads"),
    ],
)
def test_validation_names_the_problem(fields: dict[str, object], message: str) -> None:
    request: dict[str, object] = dict(
        task_type="noop", payloads=[], payload=b"", count=1, priority=0,
        max_attempts=0, labels={}, job_id="", limits=QueueLimits(),
    )  # fmt: skip
    request.update(fields)
    with pytest.raises(InvalidRequest, match=message):
        validation.job_spec(**request)  # type: ignore[arg-type]


def test_journal_restores_jobs_after_a_restart(tmp_path: Path) -> None:
    journal = SqliteJournal(str(tmp_path))
    b = Broker(journal=journal)
    b.registry.register("w1", ALL, 1, "host", 0.0)
    distinct = JobSpec("noop", [b"a", b"b", b"c"], b"", 3, 1, 3, {"k": "v"})
    b.submit(distinct, 0, "distinct")
    b.submit(spec(4, priority=2), 0, "shared")
    b.submit(spec(1, priority=3, task_type="fail", attempts=1), 0, "doomed")
    first = b.lease(b.workers["w1"], 2, 1.0)
    assert [(t.job_id, t.index) for t in first] == [("distinct", 0), ("distinct", 1)]
    assert b.complete(b.workers["w1"], "distinct", 0, 1, b"result-0", 2.0)  # finished
    # ("distinct", 1) stays leased: a restart must queue it again.
    journal.write(journal.take())
    journal.close()

    journal = SqliteJournal(str(tmp_path))
    restored = Broker(journal=journal)
    restored.restore(journal.load(100), 2.0)
    restored.registry.register("w1", ALL, 1, "host", 0.0)
    job = restored.jobs["distinct"]
    assert job.labels == {"k": "v"} and job.state is JobState.RUNNING
    assert job.task_state(0) is TaskState.SUCCEEDED
    order = [
        (t.job_id, t.index, t.payload) for t in restored.lease(restored.workers["w1"], 10, 3.0)
    ]
    assert order[:2] == [("distinct", 1, b"b"), ("distinct", 2, b"c")]
    assert [o[0] for o in order[2:]] == ["shared"] * 4 + ["doomed"]
    assert journal.results(job)[0] == b"result-0"
    journal.close()


def test_retention_forgets_old_finished_jobs_in_memory_and_in_the_database(
    tmp_path: Path,
) -> None:
    journal = SqliteJournal(str(tmp_path))
    b = Broker(journal=journal)
    b.registry.register("w1", ALL, 1, "host", 0.0)
    b.submit(spec(1), 0.0, "done")
    b.submit(spec(1, priority=20), 0.0, "waiting")  # old, but not finished
    b.submit(spec(2, priority=15), 0.0, "cancelled")
    [task] = b.lease(b.workers["w1"], 1, 1.0)
    assert task.job_id == "done"
    assert b.complete(b.workers["w1"], "done", task.index, task.attempt, b"", 1.0)
    [running] = b.lease(b.workers["w1"], 1, 1.0)
    assert running.job_id == "cancelled"
    b.cancel("cancelled", "stop", 1.0)  # its leased task still runs
    b.submit(spec(1), 5.0, "recent")
    [task] = b.lease(b.workers["w1"], 1, 5.0)
    assert b.complete(b.workers["w1"], "recent", task.index, task.attempt, b"", 5.0)

    assert b.forget_finished(before=3.0) == 1
    journal.write(journal.take())
    assert set(b.jobs) == {"waiting", "cancelled", "recent"}
    assert {job.job_id for job in journal.load(100)} == {"waiting", "cancelled", "recent"}
    assert journal.load_job("done") is None

    # Once the cancelled job's last task reports, it goes too.
    b.complete(b.workers["w1"], "cancelled", running.index, running.attempt, b"", 6.0)
    assert b.forget_finished(before=4.0) == 1
    journal.write(journal.take())
    assert {job.job_id for job in journal.load(100)} == {"waiting", "recent"}
    journal.close()


def test_a_watch_sends_the_final_state_even_if_the_job_finishes_while_a_message_is_out() -> None:
    # WatchJob yields a snapshot; the job may finish before the stream resumes.
    # The stream must then go on to send the finished state, not just end.
    async def watch() -> list[pb.Job]:
        b = broker()
        service = CoordinatorService(b, CoordinatorSettings())
        b.submit(spec(2), 0.0, "j")
        [first] = b.lease(b.workers["w1"], 1, 0.0)
        assert b.complete(b.workers["w1"], "j", first.index, first.attempt, b"", 0.0)
        [last] = b.lease(b.workers["w1"], 1, 0.0)
        stream = service.WatchJob(pb.WatchJobRequest(job_id="j"), None)  # the context is unused
        seen = [await anext(stream)]  # RUNNING, 1 of 2 done: "being sent" now
        assert b.complete(b.workers["w1"], "j", last.index, last.attempt, b"", 0.0)
        seen += [message async for message in stream]
        return seen

    seen = asyncio.run(watch())
    assert seen[0].state == pb.RUNNING
    assert seen[-1].state == pb.SUCCEEDED and seen[-1].succeeded == 2


def test_a_live_worker_id_is_refused_to_anyone_but_its_session() -> None:
    b = broker()
    w1 = b.workers["w1"]
    b.submit(spec(2), 0, "j")
    [task] = b.lease(w1, 1, 0.0)
    with pytest.raises(AlreadyExists, match="held by a live worker"):
        b.registry.register("w1", ("noop",), 1, "evil", 1.0)
    with pytest.raises(AlreadyExists):
        b.registry.register("w1", ("noop",), 1, "evil", 1.0, session="guess")
    assert b.requests_refused == 2
    # The same process reconnecting presents its secret: same session, leases kept.
    again = b.registry.register("w1", ALL, 2, "host", 2.0, session=w1.session)
    assert again is w1 and again.concurrency == 2 and w1.leases == {("j", task.index)}
    assert b.complete(w1, "j", task.index, task.attempt, b"", 3.0)


def test_a_session_is_checked_by_its_secret() -> None:
    b = broker()
    w1 = b.workers["w1"]
    assert b.registry.session("w1", w1.session, 5.0) is w1 and w1.last_seen == 5.0
    wrong = [("w1", ""), ("w1", "x" * len(w1.session)), ("w1", "é\udc80"), ("nobody", w1.session)]
    for worker_id, secret in wrong:
        with pytest.raises(UnknownWorker, match="register first"):
            b.registry.session(worker_id, secret)
    assert b.requests_refused == 4
    b.unregister_worker(w1, 0.0)
    with pytest.raises(UnknownWorker):
        b.registry.session("w1", w1.session)


def test_reports_from_a_session_that_does_not_hold_the_lease_change_nothing() -> None:
    b = broker()
    honest = b.workers["w1"]
    forger = b.registry.register("forger", ALL, 1, "host", 0.0)
    job, _ = b.submit(spec(3), 0, "j")
    [task] = b.lease(honest, 1, 0.0)
    # Queued tasks, the leased one, any attempt number: nothing is taken.
    for index in range(3):
        for attempt in range(4):
            assert not b.complete(forger, "j", index, attempt, b"forged", 1.0)
            assert not b.fail(forger, "j", index, attempt, "sabotage", 1.0)
            assert not b.release(forger, "j", index, attempt, 0.0)
    assert job.counts[TaskState.SUCCEEDED] == 0 and job.counts[TaskState.LEASED] == 1
    assert job.attempts[task.index] == 1 and b.failed == 0
    assert b.reports_ignored == 36
    assert b.complete(honest, "j", task.index, task.attempt, b"ok", 2.0)


def test_limits_on_what_the_broker_holds() -> None:
    limits = QueueLimits(max_workers=2, max_active_jobs=2, max_queued_bytes=10)
    b = broker(limits=limits)
    b.registry.register("w2", ALL, 1, "host", 0.0)
    with pytest.raises(ResourceExhausted, match="workers"):
        b.registry.register("w3", ALL, 1, "host", 0.0)
    b.submit(JobSpec("noop", [b"12345", b"678"], b"", 2, 1, 3, {}), 0, "a")
    with pytest.raises(ResourceExhausted, match="bytes of payloads"):
        b.submit(JobSpec("noop", None, b"123", 1, 1, 3, {}), 0, "b")
    b.submit(spec(1), 0, "c")
    with pytest.raises(ResourceExhausted, match="unfinished jobs"):
        b.submit(spec(1), 0, "d")
    b.cancel("a", "", 1.0)
    assert b.queued_bytes == 0 and b.active == 1
    b.submit(JobSpec("noop", None, b"1234567890", 1, 1, 3, {}), 0, "e")


def test_an_oversized_result_fails_the_attempt() -> None:
    b = broker(limits=QueueLimits(max_result_bytes=4))
    w1 = b.workers["w1"]
    job, _ = b.submit(spec(1, attempts=1), 0, "j")
    [task] = b.lease(w1, 1, 0.0)
    assert b.complete(w1, "j", 0, task.attempt, b"12345", 1.0)
    assert job.state is JobState.FAILED and "more than the limit of 4" in job.reason


def state(job: Job) -> JobState:
    return job.state  # read afresh: mypy would narrow ``job.state`` across calls


def staged(count: int = 2, attempts: int = 3) -> JobSpec:
    return JobSpec(
        "noop", None, b"", count, 10, attempts, {},
        first=StageSpec("sleep", b'{"seconds": 0}'), final=StageSpec("fail", b"{}"),
    )  # fmt: skip


def test_a_job_runs_its_first_task_then_its_parallel_tasks_then_its_final_task() -> None:
    b = broker()
    w1 = b.workers["w1"]
    only_noop = b.registry.register("noop-only", ("noop",), 4, "host", 0.0)
    job, _ = b.submit(staged(), 0, "j")
    assert state(job) is JobState.QUEUED and b.totals()[TaskState.QUEUED] == 1
    assert b.lease(only_noop, 4, 0.0) == []  # the parallel tasks wait for the first one
    [first] = b.lease(w1, 4, 0.0)
    assert (first.index, first.task_type, first.payload) == (2, "sleep", b'{"seconds": 0}')
    assert state(job) is JobState.PREPARING and b.lease(only_noop, 4, 0.0) == []
    assert b.complete(w1, "j", first.index, first.attempt, b"orbit", 1.0)
    assert state(job) is JobState.RUNNING
    parallel = b.lease(only_noop, 4, 1.0)
    assert [(t.index, t.task_type) for t in parallel] == [(0, "noop"), (1, "noop")]
    assert b.lease(w1, 4, 1.0) == []  # the final task waits for them
    assert b.complete(only_noop, "j", 0, 1, b"", 2.0)
    assert b.complete(only_noop, "j", 1, 1, b"", 2.0)
    assert state(job) is JobState.FINISHING and b.totals()[TaskState.QUEUED] == 1
    [final] = b.lease(w1, 4, 2.0)
    assert (final.index, final.task_type) == (3, "fail")
    assert b.complete(w1, "j", final.index, final.attempt, b'{"url": "x"}', 3.0)
    assert state(job) is JobState.SUCCEEDED and job.final is not None
    assert job.final.result == b'{"url": "x"}'
    assert job.counts[TaskState.SUCCEEDED] == 2 and b.totals()[TaskState.QUEUED] == 0


def test_a_final_task_that_keeps_failing_fails_the_job_with_its_name() -> None:
    b = broker()
    w1 = b.workers["w1"]
    job, _ = b.submit(replace(staged(1, attempts=2), first=None), 0, "j")
    [task] = b.lease(w1, 1, 0.0)
    assert b.complete(w1, "j", task.index, task.attempt, b"", 0.0)
    [final] = b.lease(w1, 1, 0.0)
    b.release(w1, "j", final.index, final.attempt, 0.0)  # handed back: not an attempt
    for attempt in (1, 2):
        [final] = b.lease(w1, 1, 100.0 * attempt)
        assert final.attempt == attempt and final.index == 1
        assert b.fail(w1, "j", final.index, final.attempt, "disk full", 100.0 * attempt)
    assert job.state is JobState.FAILED
    assert job.reason == "the final task (fail) dead-lettered after 2 attempt(s): disk full"


def test_cancelling_a_staged_job_cancels_its_waiting_tasks_and_a_lost_worker_requeues() -> None:
    b = broker()
    w1 = b.workers["w1"]
    job, _ = b.submit(staged(), 0, "j")
    [first] = b.lease(w1, 1, 0.0)
    b.worker_lost(w1, "gone", 1.0)  # the first task goes back, the attempt counted
    w2 = b.registry.register("w2", ALL, 1, "host", 1.0)
    [again] = b.lease(w2, 1, 1.0)
    assert (again.index, again.attempt) == (first.index, 2)
    b.cancel("j", "stop", 2.0)
    assert job.final is not None and job.final.state is TaskState.CANCELLED
    assert job.counts[TaskState.CANCELLED] == 2 and not job.settled()
    assert not b.complete(w2, "j", again.index, again.attempt, b"", 3.0)
    assert job.settled() and job.state is JobState.CANCELLED


def test_a_staged_job_resumes_its_stage_after_a_restart(tmp_path: Path) -> None:
    journal = SqliteJournal(str(tmp_path))
    b = Broker(journal=journal)
    w1 = b.registry.register("w1", ALL, 1, "host", 0.0)
    b.submit(replace(staged(2), time_limit=60.0), 0, "j")
    [first] = b.lease(w1, 1, 0.0)
    assert first.time_limit == 0.0  # a stage task keeps its type's limit
    assert b.complete(w1, "j", first.index, first.attempt, b"orbit", 1.0)
    [band] = b.lease(w1, 1, 1.0)
    assert band.time_limit == 60.0  # the job's limit is its parallel tasks'
    assert b.complete(w1, "j", band.index, band.attempt, b"", 1.0)
    b.lease(w1, 1, 1.0)  # band 1 leased when the coordinator dies
    journal.write(journal.take())
    journal.close()

    journal = SqliteJournal(str(tmp_path))
    restored = Broker(journal=journal)
    restored.restore(journal.load(100), 2.0)
    job = restored.jobs["j"]
    assert state(job) is JobState.RUNNING and job.time_limit == 60.0
    assert job.first is not None and job.first.state is TaskState.SUCCEEDED
    worker = restored.registry.register("w1", ALL, 1, "host", 2.0)
    [band] = restored.lease(worker, 4, 2.0)
    assert (band.index, band.task_type) == (1, "noop")
    assert restored.complete(worker, "j", band.index, band.attempt, b"", 2.0)
    [final] = restored.lease(worker, 4, 2.0)
    assert restored.complete(worker, "j", final.index, final.attempt, b"image", 3.0)
    assert state(job) is JobState.SUCCEEDED
    journal.write(journal.take())
    journal.close()

    journal = SqliteJournal(str(tmp_path))
    [again] = journal.load(100)
    assert again.final is not None and again.final.result == b"image"
    assert again.state is JobState.SUCCEEDED and again.counts[TaskState.SUCCEEDED] == 2
    journal.close()


def test_a_job_of_one_task_and_no_final_task_has_that_tasks_result(tmp_path: Path) -> None:
    # A small render is one band that stores the image itself: its result, naming the
    # image, is the job's, after a restart too. A job of more tasks has none.
    journal = SqliteJournal(str(tmp_path))
    b = Broker(journal=journal)
    w1 = b.registry.register("w1", ALL, 1, "host", 0.0)
    lone, _ = b.submit(spec(1), 0.0, "lone")
    pair, _ = b.submit(spec(2), 0.0, "pair")
    for task in b.lease(w1, 3, 1.0):
        assert b.complete(w1, task.job_id, task.index, task.attempt, b"r%d" % task.index, 1.0)
    assert lone.state is JobState.SUCCEEDED and lone.result == b"r0"
    assert pair.state is JobState.SUCCEEDED and pair.result == b""
    journal.write(journal.take())
    journal.close()

    journal = SqliteJournal(str(tmp_path))
    again = {job.job_id: job for job in journal.load(100)}
    assert again["lone"].result == b"r0" and again["pair"].result == b""
    journal.close()


def with_cleanup(count: int = 2, attempts: int = 1) -> JobSpec:
    return JobSpec(
        "noop", None, b"", count, 10, attempts, {}, cleanup=StageSpec("sleep", b'{"seconds": 0}')
    )


def test_a_cancelled_job_is_cleaned_up_once_its_running_tasks_have_reported() -> None:
    b = broker()
    w1 = b.workers["w1"]
    job, _ = b.submit(with_cleanup(), 0, "j")
    [task] = b.lease(w1, 1, 0.0)
    b.cancel("j", "enough", 1.0)
    assert "j.cleanup" not in b.jobs  # a band may still be written: not yet
    assert not b.complete(w1, "j", task.index, task.attempt, b"", 2.0)
    cleanup = b.jobs["j.cleanup"]
    assert job.cleanup_job == "j.cleanup" and cleanup.labels == {"cleanup-of": "j"}
    [run] = b.lease(w1, 1, 3.0)
    assert (run.job_id, run.task_type, run.payload) == ("j.cleanup", "sleep", b'{"seconds": 0}')


def test_a_failed_job_is_cleaned_up_once_purged_and_a_succeeded_one_is_not() -> None:
    b = broker()
    w1 = b.workers["w1"]
    b.submit(with_cleanup(1), 0, "ok")
    b.submit(with_cleanup(1), 0, "bad")
    [ok, bad] = b.lease(w1, 2, 0.0)
    assert b.complete(w1, ok.job_id, ok.index, ok.attempt, b"", 1.0)
    assert b.fail(w1, bad.job_id, bad.index, bad.attempt, "boom", 1.0)
    # Held with its dead letter: a requeue would need what the cleanup removes.
    assert set(b.jobs) == {"ok", "bad"}
    b.purge("bad", 2.0)
    assert set(b.jobs) == {"ok", "bad", "bad.cleanup"}


def test_a_cleanup_decided_before_a_crash_is_submitted_after_the_restart(tmp_path: Path) -> None:
    journal = SqliteJournal(str(tmp_path))
    b = Broker(journal=journal)
    b.submit(with_cleanup(), 0, "j")
    b.cancel("j", "stop", 1.0)
    journal.write(journal.take())
    journal.close()

    journal = SqliteJournal(str(tmp_path))
    # As if the process died after the cancel was written and before the cleanup job was.
    [loaded] = [job for job in journal.load(100) if job.job_id == "j"]
    assert loaded.cleanup_job == "j.cleanup" and loaded.cleanup is not None
    loaded.cleanup_job = ""
    restored = Broker(journal=journal)
    restored.restore([loaded], 5.0)
    assert restored.jobs["j.cleanup"].created_at == 5.0
    journal.close()


def test_the_coordinators_job_states_are_the_protos_and_share_its_final_ones() -> None:
    from fractalq.states import FINISHED

    for name, number in pb.JobState.items():
        if number:
            state = JobState(number)
            assert state.name == name
            assert state.finished == (number in FINISHED)


def test_a_heartbeat_says_how_many_of_its_leases_a_worker_runs() -> None:
    broker = Broker()
    worker = broker.registry.register("w1", ("noop",), 2, "host", 0.0)
    broker.registry.heartbeat(worker, False, 1.0, running=2)
    assert worker.running == 2
    broker.registry.heartbeat(
        worker, False, 2.0, running=4_000_000_000
    )  # never more than its slots
    assert worker.running == 2
    broker.registry.heartbeat(worker, False, 3.0)
    assert worker.running == 0


def test_queue_waits_and_runtimes_reach_the_listeners() -> None:
    """A lease's wait runs from when its task was last made ready: the job's
    submission, its stage's release, its retry falling due, its hand-back."""
    b = broker(retry=RetryPolicy(base_delay=1.0, max_delay=1.0))
    recorder = Recorder()
    b.listeners.add(recorder)
    waits, runs = recorder.waits, recorder.runs
    worker = b.workers["w1"]
    b.submit(replace(spec(2), final=StageSpec("sleep", b"")), 100.0, "j")
    first, second = b.lease(worker, 2, 103.0)
    assert waits == [("noop", 3.0), ("noop", 3.0)]
    assert b.fail(worker, "j", first.index, first.attempt, "boom", 104.0, seconds=0.5)
    assert b.release(worker, "j", second.index, second.attempt, 105.0)
    assert b.promote_due(106.0) == 1  # the retry is due (its backoff: 0.5-1 s)
    waits.clear()
    leased = {task.index: task for task in b.lease(worker, 2, 109.0)}
    assert sorted(waits) == [("noop", 3.0), ("noop", 4.0)]  # since 106 and since 105
    for task in leased.values():
        assert b.complete(worker, "j", task.index, task.attempt, b"", 110.0, seconds=0.25)
    waits.clear()
    [final] = b.lease(worker, 1, 112.5)  # the final stage was released at 110
    assert waits == [("sleep", 2.5)]
    assert b.complete(worker, "j", final.index, final.attempt, b"", 113.0)  # no seconds said
    assert runs == [
        ("noop", "failed", 0.5),
        ("noop", "succeeded", 0.25),
        ("noop", "succeeded", 0.25),
        ("sleep", "succeeded", 0.0),
    ]


def test_every_listener_hears_each_event_in_order_and_a_failing_one_changes_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    b = broker()
    heard: list[str] = []

    class Failing(Listener):
        def job_changed(self, job: Job) -> None:
            heard.append("failing")
            raise RuntimeError("a bug in a listener")

    class Counting(Listener):
        def job_changed(self, job: Job) -> None:
            heard.append(f"counting {job.state.name}")

    b.listeners.add(Failing())
    b.listeners.add(Counting())
    b.submit(spec(1), 100.0, "j")
    (lease,) = b.lease(b.workers["w1"], 1, 101.0)
    assert b.complete(b.workers["w1"], "j", lease.index, lease.attempt, b"done", 102.0)
    assert b.jobs["j"].state is JobState.SUCCEEDED  # the failing listener undid nothing
    assert heard[-2:] == ["failing", "counting SUCCEEDED"]
    assert "a listener of job_changed failed" in caplog.text
