"""Dead letters, ownership and quotas in the broker and the policy, without a network.

A dead-lettered task's job is held with its payloads and each attempt's error
(bounded) until it is requeued (its dead tasks back on the queue, attempts
reset, the job running again from its stage) or purged (then its cleanup
runs); both survive a restart. A holder's quota refuses a job over it, naming
the limit; the policy lets a client read and change only its own jobs.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest

from fractalq import config
from fractalq.config import HolderQuota
from fractalq.coordinator.broker import Broker, JobSpec
from fractalq.coordinator.deadletters import dead_letters
from fractalq.coordinator.errors import InvalidRequest, OverQuota, PermissionDenied, WrongState
from fractalq.coordinator.jobs import Job, JobState, StageSpec, TaskState
from fractalq.coordinator.policy import ANYONE, Caller, check_change, check_read, quota_for
from fractalq.coordinator.store import SqliteJournal
from fractalq.coordinator.workers import WorkerRecord
from fractalq.security.tokens import Role

ALL = ("noop", "sleep", "fail")


def spec(count: int = 3, attempts: int = 2, **stages: StageSpec) -> JobSpec:
    payloads = [b'{"n": %d}' % n for n in range(count)]
    return JobSpec("noop", payloads, b"", count, 10, attempts, {}, **stages)  # type: ignore[arg-type]


def staged(count: int = 3, attempts: int = 2) -> JobSpec:
    return spec(
        count,
        attempts,
        first=StageSpec("sleep", b'{"seconds": 0}'),
        final=StageSpec("fail", b"{}"),
        cleanup=StageSpec("noop", b"{}"),
    )


def broker(journal: SqliteJournal | None = None) -> tuple[Broker, WorkerRecord]:
    b = Broker(journal=journal, rng=random.Random(1))
    return b, b.registry.register("w1", ALL, 8, "host", 0.0)


def state(job: Job) -> JobState:
    return job.state  # read afresh: mypy would narrow ``job.state`` across calls


def fail_until_dead(b: Broker, worker: WorkerRecord, job: Job, index: int, now: float) -> float:
    """Lease and fail task ``index`` (its stage running) until it is dead-lettered."""
    while job.state_of(index) is not TaskState.DEAD:
        now += 100.0  # past any backoff
        if job.state_of(index) is not TaskState.LEASED:
            for other in b.lease(worker, 64, now):  # the others go back unrun
                if other.index != index:
                    b.release(worker, other.job_id, other.index, other.attempt, now)
        attempt = job.attempts_of(index)
        assert b.fail(worker, job.job_id, index, attempt, f"boom {attempt}", now)
    return now


# ---- attempt errors -----------------------------------------------------------


def test_each_attempts_error_is_kept_with_its_worker_and_time() -> None:
    b, w1 = broker()
    job, _ = b.submit(spec(1, attempts=3), 0.0, "j")
    fail_until_dead(b, w1, job, 0, 0.0)
    assert state(job) is JobState.FAILED and job.dead_letters_held
    [letter] = dead_letters([job], 10)
    assert (letter.job_id, letter.index, letter.task_type, letter.attempts) == ("j", 0, "noop", 3)
    assert [(e.attempt, e.worker_id, e.message) for e in letter.errors] == [
        (1, "w1", "boom 1"), (2, "w1", "boom 2"), (3, "w1", "boom 3")]  # fmt: skip
    assert [e.at for e in letter.errors] == [100.0, 200.0, 300.0]
    assert letter.failed_at == 300.0 and "boom 3" in letter.reason
    assert letter.payload_bytes == len(b'{"n": 0}')
    assert b.dead_letters == 1 and list(b.held) == ["j"]


def test_attempt_errors_are_bounded_per_task_in_length_and_in_all(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    b, w1 = broker()
    job, _ = b.submit(spec(1, attempts=15), 0.0, "long")
    now = 0.0
    for attempt in range(1, 16):
        now += 100.0
        [task] = b.lease(w1, 1, now)
        b.fail(w1, "long", 0, task.attempt, f"{attempt}:" + "x" * 5000, now)
    kept = job.errors[0]
    assert len(kept) == config.MAX_ATTEMPT_ERRORS
    assert [e.attempt for e in kept] == list(range(6, 16))  # the latest
    assert all(len(e.message) == config.MAX_ATTEMPT_ERROR_LENGTH for e in kept)
    # In all: once the bound is reached a task keeps its latest error only, or none.
    monkeypatch.setattr(config, "MAX_ERRORS_IN_MEMORY", b.errors_kept + 3)
    many, _ = b.submit(spec(6, attempts=5), now, "many")
    for _ in range(3):
        now += 100.0
        for task in b.lease(w1, 8, now):
            b.fail(w1, "many", task.index, task.attempt, f"again {task.attempt}", now)
    assert b.errors_kept == config.MAX_ERRORS_IN_MEMORY
    assert b.errors_kept == sum(len(e) for j in b.jobs.values() for e in j.errors.values())
    assert sorted(len(e) for e in many.errors.values()) == [1, 1, 1]
    assert all(e[0].message == "again 3" for e in many.errors.values())


def test_a_task_that_succeeds_in_the_end_keeps_no_errors() -> None:
    b, w1 = broker()
    job, _ = b.submit(spec(1, attempts=3), 0.0, "j")
    [task] = b.lease(w1, 1, 0.0)
    b.fail(w1, "j", 0, task.attempt, "once", 0.0)
    assert b.errors_kept == 1
    [task] = b.lease(w1, 1, 100.0)
    assert b.complete(w1, "j", 0, task.attempt, b"", 100.0)
    assert job.errors == {} and b.errors_kept == 0 and state(job) is JobState.SUCCEEDED


# ---- requeue ----------------------------------------------------------------


def test_a_requeued_job_runs_again_from_its_stage_and_keeps_what_succeeded() -> None:
    b, w1 = broker()
    job, _ = b.submit(staged(3), 0.0, "j")
    [first] = b.lease(w1, 1, 0.0)
    assert b.complete(w1, "j", first.index, first.attempt, b"orbit", 0.0)
    [band0, band1, _band2] = b.lease(w1, 3, 1.0)
    assert b.complete(w1, "j", band0.index, band0.attempt, b"", 1.0)
    b.release(w1, "j", band1.index, band1.attempt, 1.0)  # back in the queue when it fails
    fail_until_dead(b, w1, job, 2, 1.0)
    assert state(job) is JobState.FAILED and job.dead_tasks() == [2]
    assert "j.cleanup" not in b.jobs  # held: the bands it would remove are still wanted
    assert b.queued_bytes == job.payload_bytes() > 0  # its payloads are kept, and counted

    again, count = b.requeue("j", [], 1000.0)
    assert again is job and count == 1 and state(job) is JobState.RUNNING
    assert not job.dead_letters_held and job.reason == "" and job.finished_at == 0.0
    assert job.attempts_of(2) == 0 and job.state_of(2) is TaskState.QUEUED
    assert job.state_of(0) is TaskState.SUCCEEDED and job.state_of(1) is TaskState.QUEUED
    assert job.final is not None and job.final.state is TaskState.WAITING
    assert b.dead_letters == 0 and not b.held and b.requeued == 1 and b.active == 1
    leased = b.lease(w1, 8, 1000.0)
    assert sorted((t.index, t.attempt) for t in leased) == [(1, 1), (2, 1)]
    for task in leased:
        assert b.complete(w1, "j", task.index, task.attempt, b"", 1001.0)
    assert state(job) is JobState.FINISHING
    [final] = b.lease(w1, 1, 1002.0)
    assert b.complete(w1, "j", final.index, final.attempt, b"image", 1003.0)
    assert state(job) is JobState.SUCCEEDED and job.final.result == b"image"
    assert "j.cleanup" not in b.jobs and b.queued_bytes == 0 and b.errors_kept == 0


@pytest.mark.parametrize("stage", ["first", "final"])
def test_a_dead_stage_task_is_requeued_into_its_stage(stage: str) -> None:
    b, w1 = broker()
    job, _ = b.submit(staged(2), 0.0, "j")
    if stage == "final":
        [first] = b.lease(w1, 1, 0.0)
        b.complete(w1, "j", first.index, first.attempt, b"", 0.0)
        for task in b.lease(w1, 2, 0.0):
            b.complete(w1, "j", task.index, task.attempt, b"", 0.0)
    index = job.total if stage == "first" else job.final_index
    fail_until_dead(b, w1, job, index, 0.0)
    [letter] = dead_letters([job], 10)
    assert letter.stage == stage and letter.index == index
    b.requeue("j", [index], 1000.0)
    expected = JobState.PREPARING if stage == "first" else JobState.FINISHING
    assert state(job) is expected
    [task] = b.lease(w1, 8, 1000.0)
    assert (task.index, task.attempt) == (index, 1)


def test_a_task_still_running_when_its_job_failed_reports_into_the_requeued_job() -> None:
    b, w1 = broker()
    job, _ = b.submit(spec(2, attempts=1), 0.0, "j")
    [slow, doomed] = b.lease(w1, 2, 0.0)
    assert b.fail(w1, "j", doomed.index, doomed.attempt, "boom", 1.0)
    assert state(job) is JobState.FAILED and job.state_of(slow.index) is TaskState.LEASED
    b.requeue("j", [], 2.0)
    assert b.complete(w1, "j", slow.index, slow.attempt, b"", 3.0)  # its lease is live again
    [retry] = b.lease(w1, 2, 3.0)
    assert (retry.index, retry.attempt) == (doomed.index, 1)
    assert b.complete(w1, "j", retry.index, retry.attempt, b"", 4.0)
    assert state(job) is JobState.SUCCEEDED


def test_what_cannot_be_requeued_is_refused_and_changes_nothing() -> None:
    b, w1 = broker()
    b.submit(spec(1), 0.0, "running")
    with pytest.raises(WrongState, match="is QUEUED: it holds no dead letters"):
        b.requeue("running", [], 0.0)
    job, _ = b.submit(spec(2, attempts=1), 0.0, "j")
    fail_until_dead(b, w1, job, 0, 0.0)
    with pytest.raises(InvalidRequest, match="task 1 of job 'j' is not dead-lettered"):
        b.requeue("j", [1], 0.0)
    assert job.dead_letters_held and state(job) is JobState.FAILED
    b.purge("j", 1.0)
    with pytest.raises(WrongState, match="holds no dead letters any more"):
        b.requeue("j", [], 2.0)


# ---- purge and retention ------------------------------------------------------


def test_a_purge_drops_the_dead_letters_and_runs_the_cleanup() -> None:
    b, w1 = broker()
    job, _ = b.submit(staged(2, attempts=1), 0.0, "j")
    fail_until_dead(b, w1, job, job.total, 0.0)
    assert b.queued_bytes > 0 and b.errors_kept == 1
    purged, count = b.purge("j", 5.0)
    assert purged is job and count == 1 and b.purged == 1
    assert not job.dead_letters_held and state(job) is JobState.FAILED
    cleanup = b.jobs["j.cleanup"]
    assert b.queued_bytes == cleanup.payload_bytes()  # the job's are gone; its cleanup's queued
    assert b.errors_kept == 0 and b.dead_letters == 0
    assert dead_letters([job], 10) == []
    assert job.cleanup_job == "j.cleanup" and cleanup.created_at == 5.0
    with pytest.raises(WrongState):
        b.purge("j", 6.0)


def test_the_retention_purges_a_held_job_before_it_forgets_it() -> None:
    b, w1 = broker()
    job, _ = b.submit(staged(1, attempts=1), 0.0, "j")
    fail_until_dead(b, w1, job, job.total, 0.0)
    assert b.forget_finished(before=50.0, now=60.0) == 0  # failed at 100: not yet
    assert b.forget_finished(before=200.0, now=210.0) == 1
    assert "j" not in b.jobs and not b.held and b.purged == 1
    assert b.jobs["j.cleanup"].created_at == 210.0


# ---- a restart ----------------------------------------------------------------


def _restart(tmp_path: Path, b: Broker, journal: SqliteJournal) -> tuple[Broker, SqliteJournal]:
    journal.write(journal.take())
    journal.close()
    journal = SqliteJournal(str(tmp_path))
    restored = Broker(journal=journal, rng=random.Random(2))
    restored.restore(journal.load(100), 5000.0)
    return restored, journal


def test_dead_letters_and_a_requeue_survive_a_restart(tmp_path: Path) -> None:
    journal = SqliteJournal(str(tmp_path))
    b, w1 = broker(journal)
    job, _ = b.submit(replace(staged(3), job_id="j"), 0.0, "j", owner="alice")
    [first] = b.lease(w1, 1, 0.0)
    b.complete(w1, "j", first.index, first.attempt, b"orbit", 0.0)
    [band0, *_] = b.lease(w1, 3, 1.0)
    b.complete(w1, "j", band0.index, band0.attempt, b"", 1.0)
    fail_until_dead(b, w1, job, 1, 1.0)

    b, journal = _restart(tmp_path, b, journal)
    held = b.jobs["j"]
    assert held.dead_letters_held and state(held) is JobState.FAILED and held.owner == "alice"
    assert held.state_of(0) is TaskState.SUCCEEDED and held.state_of(1) is TaskState.DEAD
    assert held.state_of(2) is TaskState.CANCELLED and b.dead_letters == 1
    assert [e.message for e in held.errors[1]] == ["boom 1", "boom 2"]
    assert b.queued_bytes == held.payload_bytes() > 0
    assert "j.cleanup" not in b.jobs  # still held after the restart: no cleanup yet

    b.requeue("j", [1], 6000.0)
    b, journal = _restart(tmp_path, b, journal)
    job = b.jobs["j"]
    assert state(job) is JobState.RUNNING and not job.dead_letters_held
    assert job.attempts_of(1) == 0 and job.payload(1) == b'{"n": 1}'
    w1 = b.registry.register("w1", ALL, 8, "host", 6000.0)
    leased = b.lease(w1, 8, 6000.0)
    assert sorted(t.index for t in leased) == [1, 2]
    for task in leased:
        b.complete(w1, "j", task.index, task.attempt, b"", 6001.0)
    [final] = b.lease(w1, 8, 6002.0)
    b.complete(w1, "j", final.index, final.attempt, b"image", 6003.0)
    assert state(job) is JobState.SUCCEEDED
    journal.close()


def test_a_purge_survives_a_restart(tmp_path: Path) -> None:
    journal = SqliteJournal(str(tmp_path))
    b, w1 = broker(journal)
    job, _ = b.submit(spec(1, attempts=1), 0.0, "j")
    fail_until_dead(b, w1, job, 0, 0.0)
    b.purge("j", 1.0)
    b, journal = _restart(tmp_path, b, journal)
    assert not b.jobs["j"].dead_letters_held and not b.held and b.queued_bytes == 0
    journal.close()


# ---- quotas -------------------------------------------------------------------


def test_a_holders_quota_refuses_a_job_over_it_naming_the_limit() -> None:
    b, w1 = broker()
    quota = HolderQuota(active_jobs=2, queued_tasks=5, job_pixels=1000)
    b.submit(spec(2), 0.0, "a1", owner="alice", quota=quota)
    with pytest.raises(
        OverQuota, match=r"holder 'alice' has 2 tasks to run; 4 more .*--quota-queued-tasks 5"
    ):
        b.submit(spec(4), 0.0, "a2", owner="alice", quota=quota)
    b.submit(spec(3), 0.0, "a2", owner="alice", quota=quota)
    with pytest.raises(OverQuota, match=r"2 unfinished jobs, its quota \(--quota-active-jobs 2\)"):
        b.submit(spec(1), 0.0, "a3", owner="alice", quota=quota)
    with pytest.raises(
        OverQuota, match=r"1001 pixels .* at most 1000 pixels a job \(--quota-job-pixels\)"
    ):
        b.submit(replace(spec(1), pixels=1001), 0.0, "b1", owner="bob", quota=quota)
    assert set(b.jobs) == {"a1", "a2"}  # nothing of the refused ones
    b.submit(spec(1), 0.0, "b1", owner="bob", quota=quota)  # another holder's own quota
    b.submit(spec(9), 0.0, "x", owner="ops")  # no quota (an admin's)
    # Done tasks leave room; an ended job frees its place.
    for task in b.lease(w1, 2, 0.0):
        if task.job_id == "a1":
            b.complete(w1, "a1", task.index, task.attempt, b"", 1.0)
    assert b.owned_by("alice") == 1
    b.submit(spec(1), 1.0, "a3", owner="alice", quota=quota)


def test_a_requeue_counts_against_the_owners_quota() -> None:
    b, w1 = broker()
    quota = HolderQuota(active_jobs=1, queued_tasks=0, job_pixels=0)
    job, _ = b.submit(spec(1, attempts=1), 0.0, "a1", owner="alice", quota=quota)
    fail_until_dead(b, w1, job, 0, 0.0)
    b.submit(spec(1), 0.0, "a2", owner="alice", quota=quota)
    with pytest.raises(OverQuota, match="--quota-active-jobs 1"):
        b.requeue("a1", [], 1.0, quota)
    assert job.dead_letters_held
    b.requeue("a1", [], 1.0)  # an admin's requeue: no quota


def test_a_job_id_of_another_holder_is_not_theirs_to_resubmit() -> None:
    b, _ = broker()
    b.submit(spec(1), 0.0, "j", owner="alice")
    with pytest.raises(Exception, match="another holder's"):
        b.submit(spec(1), 0.0, "j", owner="bob")
    assert b.submit(spec(1), 0.0, "j", owner="alice")[1] is False  # idempotent for alice


def test_the_render_payloads_pixels_are_counted_for_the_quota() -> None:
    from fractalq.coordinator import validation
    from fractalq.fractal.request import RenderRequest
    from fractalq.images import render_job

    request = render_job(RenderRequest.create("mandelbrot", width=300, height=200), 4, 10)
    checked = validation.job_spec(
        task_type=request.task_type,
        payloads=list(request.payloads),
        payload=request.payload,
        count=request.count,
        priority=request.priority,
        max_attempts=0,
        labels={},
        job_id="",
        limits=config.QueueLimits(),
    )
    assert checked.pixels == 300 * 200


# ---- the policy ---------------------------------------------------------------


def test_a_client_reads_and_changes_its_own_jobs_a_reader_reads_all_an_admin_changes_all() -> None:
    alice, bob = Caller(Role.CLIENT, "alice"), Caller(Role.CLIENT, "bob")
    reader, admin = Caller(Role.READER, "watch"), Caller(Role.ADMIN, "ops")
    job = Job("j", 1, "noop", 10, 3, 1, "", 0.0, owner="alice")
    for caller in (alice, reader, admin, ANYONE):
        assert check_read(caller, job) is job
    for caller in (alice, admin, ANYONE):
        assert check_change(caller, job) is job
    for caller, check in ((bob, check_read), (bob, check_change), (reader, check_change)):
        with pytest.raises(PermissionDenied, match="job 'j' is another holder's"):
            check(caller, job)
    coordinators = Job("sweep", 2, "noop", 10, 3, 1, "", 0.0)  # the coordinator's own
    with pytest.raises(PermissionDenied):
        check_change(alice, coordinators)
    assert check_change(admin, coordinators) is coordinators
    assert alice.listing_owner == "alice" and reader.listing_owner is None
    quota = HolderQuota()
    assert quota_for(alice, quota) is quota
    assert quota_for(admin, quota) is None and quota_for(ANYONE, quota) is None
