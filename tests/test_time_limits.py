"""Time limits: an attempt past its limit is stopped, reported failed, and retried.

The limit is the job's (``SubmitJobRequest.time_limit``) or, at 0, its task
type's. A task on a thread cannot be stopped: it is reported failed and its
thread runs on unseen. A task in a child process (CPU-bound types, on a worker
with more than one slot) has its process killed and replaced. Hung tasks here:
a ``sleep`` far longer than its limit (a thread), and a ``fractal.band`` whose
every pixel is inside the set at the largest iteration count (a process, in
numba's compiled code, where nothing but a kill stops it).
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from pathlib import Path

import pytest
from procs import ProcessGroup, run_cli, wait_until

from fractalq import config, tasks
from fractalq.config import QueueLimits
from fractalq.coordinator import validation
from fractalq.coordinator.errors import InvalidRequest
from fractalq.fractal.request import RenderRequest
from fractalq.proto import fractalq_pb2 as pb
from fractalq.states import FINISHED
from fractalq.tasks import registry
from fractalq.tasks.band import band_payload
from fractalq.tasks.builtin import MAX_SLEEP_SECONDS
from fractalq.worker.executor import TaskFailed, TaskRunner, timed_out

HUNG_SLEEP = json.dumps({"seconds": MAX_SLEEP_SECONDS}).encode()
# A band inside the period-3 bulb of the Mandelbrot set (not skipped, as the
# main cardioid is): every pixel runs all of MAX_ITERATIONS, minutes of work.
HUNG_REQUEST = RenderRequest.create(
    "mandelbrot",
    width=8192,
    height=64,
    max_iter=config.MAX_ITERATIONS,
    center_x=-0.122561,
    center_y=0.744862,
    view_width=0.001,
)
HUNG_BAND = band_payload(HUNG_REQUEST, 0, 64)
SMALL_BAND = band_payload(RenderRequest.create("mandelbrot", width=64, height=8), 0, 8)


# ---- the pure parts ----------------------------------------------------------


def test_a_jobs_limit_overrides_its_task_types_and_zero_means_the_types() -> None:
    band = tasks.get("fractal.band")
    assert band.time_limit == config.BAND_TIME_LIMIT
    assert tasks.time_limit(band, 0.0) == config.BAND_TIME_LIMIT
    assert tasks.time_limit(band, 2.5) == 2.5
    assert tasks.get("noop").time_limit == config.DEFAULT_TIME_LIMIT
    # The longest sleep a payload may ask for ends before its type's limit.
    assert tasks.get("sleep").time_limit > MAX_SLEEP_SECONDS
    for name in tasks.names():
        assert 0 < tasks.get(name).time_limit <= config.MAX_TIME_LIMIT


@pytest.mark.parametrize("limit", [-1.0, math.nan, math.inf, config.MAX_TIME_LIMIT + 1])
def test_the_coordinator_refuses_a_limit_that_is_no_number_of_seconds(limit: float) -> None:
    with pytest.raises(InvalidRequest, match="time_limit must be a number of seconds"):
        validation.job_spec(
            task_type="noop", payloads=[], payload=b"", count=1, priority=0, max_attempts=0,
            labels={}, job_id="", limits=QueueLimits(), time_limit=limit,
        )  # fmt: skip


def test_the_coordinator_keeps_a_jobs_limit_and_zero_for_the_types() -> None:
    for limit in (0.0, 0.25, config.MAX_TIME_LIMIT):
        spec = validation.job_spec(
            task_type="noop", payloads=[], payload=b"", count=1, priority=0, max_attempts=0,
            labels={}, job_id="", limits=QueueLimits(), time_limit=limit,
        )  # fmt: skip
        assert spec.time_limit == limit


def test_a_task_type_without_a_sensible_limit_is_refused() -> None:
    for limit in (0.0, -1.0, config.MAX_TIME_LIMIT * 2):
        with pytest.raises(ValueError, match="time_limit"):
            tasks.task_type("bad-limit", time_limit=limit)(lambda payload, context: b"")
    assert "bad-limit" not in tasks.names()


def test_the_reason_says_what_happened_to_the_task() -> None:
    assert timed_out(2.0, killed=True) == "timed out after 2 s (its process was killed)"
    assert timed_out(0.5, killed=False).startswith("timed out after 0.5 s (its thread")


# ---- the runner, without a coordinator -------------------------------------


def test_a_thread_past_its_limit_is_reported_failed_and_the_runner_serves_on() -> None:
    context = tasks.TaskContext(job_id="job")

    async def scenario() -> None:
        runner = TaskRunner(1)
        try:
            for _ in range(2):  # a second hung task too: a hung thread does not take a slot
                started = time.monotonic()
                with pytest.raises(TaskFailed, match=r"^timed out after 0.5 s \(its thread"):
                    await runner.run("sleep", HUNG_SLEEP, context, time_limit=0.5)
                assert 0.5 <= time.monotonic() - started < 5
            # The one slot still runs tasks, at once, with their type's limit.
            started = time.monotonic()
            assert await runner.run("noop", b"", context) == b""
            assert await runner.run("sleep", b'{"seconds": 0.1}', context) == b""
            assert time.monotonic() - started < 5
            # The hung threads do not keep the process from exiting.
            hung = [t for t in threading.enumerate() if t.name.startswith("fractalq-task")]
            assert len(hung) >= 2 and all(thread.daemon for thread in hung)
        finally:
            runner.shutdown(wait=False)

    asyncio.run(scenario())


def _socket_timeout(payload: bytes, context: tasks.TaskContext) -> bytes:
    raise TimeoutError("the server did not answer")


def test_a_tasks_own_timeout_error_is_its_failure_not_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kind = tasks.TaskType("test.socket-timeout", _socket_timeout, lambda payload: None)
    monkeypatch.setitem(registry._REGISTRY, kind.name, kind)

    async def scenario() -> None:
        runner = TaskRunner(1)
        try:
            with pytest.raises(TaskFailed) as failed:
                await runner.run("test.socket-timeout", b"", tasks.TaskContext(), 60.0)
            assert "the server did not answer" in str(failed.value)
            assert "timed out after" not in str(failed.value)
        finally:
            runner.shutdown(wait=False)

    asyncio.run(scenario())


def test_a_process_past_its_limit_is_killed_and_the_others_run_on(tmp_path: Path) -> None:
    context = tasks.TaskContext(storage_url=tmp_path.as_uri(), job_id="job")

    async def scenario() -> None:
        runner = TaskRunner(2)
        try:
            runner.warm(["fractal.band"])
            hung = asyncio.create_task(runner.run("fractal.band", HUNG_BAND, context, 3.0))
            await asyncio.sleep(0.5)  # the hung band has its process
            processes = [p for pool in runner._pools for p in pool._processes.values()]
            assert len(processes) == 2
            # The other slot serves a band meanwhile.
            assert await runner.run("fractal.band", SMALL_BAND, context, 60.0)
            with pytest.raises(
                TaskFailed, match=r"^timed out after 3 s \(its process was killed\)"
            ):
                await hung
            wait_until(lambda: sum(not p.is_alive() for p in processes) == 1, timeout=10)
            # Both slots run bands again: the killed process was replaced.
            results = await asyncio.gather(
                *(runner.run("fractal.band", SMALL_BAND, context, 60.0) for _ in range(2))
            )
            assert all(results)
        finally:
            runner.shutdown(wait=False)

    asyncio.run(scenario())


# ---- end to end: a coordinator and a worker ---------------------------------


def _finished(cluster: ProcessGroup, job_id: str) -> pb.Job | None:
    assert cluster.coordinator is not None
    with cluster.coordinator.client() as client:
        job = client.job(job_id)
    return job if job.state in FINISHED else None


def _submit(cluster: ProcessGroup, **fields: object) -> str:
    assert cluster.coordinator is not None
    with cluster.coordinator.client() as client:
        return client.submit(pb.SubmitJobRequest(**fields)).job.job_id  # type: ignore[arg-type]


def test_hung_tasks_are_stopped_at_their_limit_retried_and_dead_lettered(
    cluster: ProcessGroup, tmp_path: Path
) -> None:
    coordinator = cluster.start_coordinator()
    worker = cluster.start_worker(concurrency=2, storage=(tmp_path / "images").as_uri())
    started = time.monotonic()
    submitted = run_cli(
        "submit", "--coordinator", coordinator.address, "--task", "sleep",
        "--payload", HUNG_SLEEP.decode(), "--max-attempts", "2", "--time-limit", "1",
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    sleeper = submitted.stdout.split()[-1]
    status = run_cli("status", sleeper, "--coordinator", coordinator.address)
    assert "max attempts 2, time limit 1 s" in status.stdout
    band = _submit(
        cluster, task_type="fractal.band", payloads=[HUNG_BAND], max_attempts=2, time_limit=4
    )
    # A sleep past its limit gives its slot back though its thread runs on: the
    # worker serves other tasks while the band still hangs in the other slot.
    quick = _submit(cluster, task_type="noop", count=5)
    assert wait_until(lambda: _finished(cluster, quick)).state == pb.SUCCEEDED
    assert _finished(cluster, band) is None

    slept = wait_until(lambda: _finished(cluster, sleeper), message="the sleep job")
    assert slept.state == pb.FAILED and slept.dead == 1
    assert "dead-lettered after 2 attempt(s)" in slept.reason
    assert "timed out after 1 s (its thread" in slept.reason
    assert time.monotonic() - started >= 2  # two attempts of a second each

    rendered = wait_until(lambda: _finished(cluster, band), timeout=60, message="the band job")
    assert rendered.state == pb.FAILED and rendered.dead == 1
    assert "dead-lettered after 2 attempt(s)" in rendered.reason
    assert "timed out after 4 s (its process was killed)" in rendered.reason
    assert worker.log().count("timed out after") == 4

    # The killed process was replaced: bands render again, on both slots.
    small = _submit(cluster, task_type="fractal.band", payloads=[SMALL_BAND] * 4)
    assert wait_until(lambda: _finished(cluster, small)).state == pb.SUCCEEDED
    assert worker.alive()
