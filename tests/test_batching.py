"""One round trip for a job, and the queue's promises with leases and reports in batches.

Real coordinators and workers on 127.0.0.1; a worker of the test's own (over
gRPC) where the test must hold a batch at a precise moment.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from procs import FailingWorker, ProcessGroup, run_cli, wait_until
from reference import reference_png

from fractalq import config, tasks
from fractalq.fractal.request import RenderRequest
from fractalq.proto import fractalq_pb2 as pb
from fractalq.worker.executor import StorageUnavailable, TaskFailed, TaskRunner
from fractalq.worker.window import LeaseWindow


def test_submit_with_a_wait_answers_with_the_ended_job_and_its_results(
    cluster: ProcessGroup,
) -> None:
    coordinator = cluster.start_coordinator()
    cluster.start_worker(concurrency=2)
    with coordinator.client() as client:
        answer = client.submit(
            pb.SubmitJobRequest(task_type="noop", count=5, wait_seconds=30, include_results=True)
        )
        assert answer.created and answer.job.state == pb.SUCCEEDED
        assert answer.job.succeeded == 5 and list(answer.job.results) == [b""] * 5
        # A failed job ends too, with its reason, in the same one call.
        failed = client.submit(
            pb.SubmitJobRequest(
                task_type="fail",
                count=1,
                max_attempts=1,
                payload=b'{"message": "no"}',
                wait_seconds=30,
            )
        ).job
        assert failed.state == pb.FAILED and "no (attempt 1)" in failed.reason
        # A wait that runs out answers with the job as it stands; the job runs on.
        sleeping = client.submit(
            pb.SubmitJobRequest(
                task_type="sleep", count=1, payload=b'{"seconds": 3}', wait_seconds=0.3
            )
        ).job
        assert sleeping.state in (pb.QUEUED, pb.RUNNING)
        # The same job submitted again (its id) waits for the same job's end.
        again = pb.SubmitJobRequest(
            job_id=sleeping.job_id,
            task_type="sleep",
            count=1,
            payload=b'{"seconds": 3}',
            wait_seconds=30,
        )
        repeated = client.submit(again)
        assert not repeated.created and repeated.job.state == pb.SUCCEEDED
        # The client's run(): the whole job in one call when it is short.
        ran = client.run(pb.SubmitJobRequest(task_type="noop", count=3), include_results=True)
        assert ran.state == pb.SUCCEEDED and len(ran.results) == 3
        with pytest.raises(Exception, match="wait_seconds must be a finite number"):
            client.submit(pb.SubmitJobRequest(task_type="noop", count=1, wait_seconds=float("nan")))


def test_submit_wait_on_the_command_line_is_one_call_then_a_watch(
    cluster: ProcessGroup,
) -> None:
    coordinator = cluster.start_coordinator()
    cluster.start_worker(concurrency=2)
    quick = run_cli("submit", "--coordinator", coordinator.address, "--task", "noop",
                    "--count", "4", "--wait")  # fmt: skip
    assert quick.returncode == 0, quick.stderr
    assert quick.stdout.splitlines()[-1].endswith("SUCCEEDED: 4/4 tasks")
    # Longer than the submission waits: followed to its end all the same.
    payload = json.dumps({"seconds": config.SUBMIT_WAIT + 1})
    slow = run_cli("submit", "--coordinator", coordinator.address, "--task", "sleep",
                   "--payload", payload, "--wait")  # fmt: skip
    assert slow.returncode == 0, slow.stderr
    assert slow.stdout.splitlines()[-1].endswith("SUCCEEDED: 1/1 tasks")
    failed = run_cli("submit", "--coordinator", coordinator.address, "--task", "fail",
                     "--max-attempts", "1", "--wait")  # fmt: skip
    assert failed.returncode == 1 and "FAILED" in failed.stderr


class BatchWorker(FailingWorker):
    """A worker of the test's own (its heartbeat stream held open) that leases batches."""

    def lease(self, count: int) -> list[pb.Task]:
        request = pb.GetTaskRequest(
            worker_id=self.worker_id, session=self.session, max_tasks=count, wait_seconds=5
        )
        return list(self.stub.GetTask(request, timeout=10).tasks)


def test_a_batched_report_is_durable_once_acknowledged(cluster: ProcessGroup) -> None:
    coordinator = cluster.start_coordinator(worker_timeout=30.0)
    with coordinator.client() as client:
        job_id = client.submit(pb.SubmitJobRequest(task_type="noop", count=60)).job.job_id
    worker = BatchWorker(coordinator.endpoint, ["noop"], "batcher")
    try:
        leased = worker.lease(50)
        assert len(leased) == 50  # one GetTask, one batch
        results = [
            pb.TaskResult(
                task=pb.TaskRef(job_id=t.job_id, index=t.index, attempt=t.attempt), result=b"ok"
            )
            for t in leased
        ]
        answer = worker.stub.CompleteTask(
            pb.CompleteTaskRequest(
                worker_id=worker.worker_id, session=worker.session, results=results
            ),
            timeout=10,
        )
        assert answer.accepted == 50
        coordinator.kill9()  # at once: nothing else was asked of it since the answer
    finally:
        worker.close()
    restarted = cluster.start_coordinator(port=coordinator.port, data=coordinator.data)
    with restarted.client() as client:
        after = client.job(job_id, include_results=True)
    assert (after.succeeded, after.queued, after.leased) == (50, 10, 0)
    assert sorted(i for i, r in enumerate(after.results) if r == b"ok") == sorted(
        t.index for t in leased
    )


def test_a_report_can_bring_the_next_tasks_in_its_answer(cluster: ProcessGroup) -> None:
    coordinator = cluster.start_coordinator()
    with coordinator.client() as client:
        client.submit(pb.SubmitJobRequest(task_type="noop", count=5))
    worker = BatchWorker(coordinator.endpoint, ["noop"], "batcher")
    try:
        first = worker.lease(2)
        refs = [pb.TaskRef(job_id=t.job_id, index=t.index, attempt=t.attempt) for t in first]
        answer = worker.stub.CompleteTask(
            pb.CompleteTaskRequest(
                worker_id=worker.worker_id,
                session=worker.session,
                results=[pb.TaskResult(task=ref) for ref in refs],
                max_tasks=10,
            ),
            timeout=10,
        )
        assert answer.accepted == 2 and [t.index for t in answer.tasks] == [2, 3, 4]
        with coordinator.client() as client:
            stats = client.stats()
        # Leased to this session, like any lease: a report of another session is ignored.
        assert stats.leased == 3 and [w.leased for w in stats.workers] == [3]
    finally:
        worker.close()


def test_a_worker_killed_with_a_prefetched_batch_loses_every_lease_at_once(
    cluster: ProcessGroup,
) -> None:
    coordinator = cluster.start_coordinator(worker_timeout=60.0)
    victim = cluster.start_worker(concurrency=1, extra_args=("--prefetch", "20"))
    with coordinator.client() as client:
        job_id = client.submit(
            pb.SubmitJobRequest(task_type="sleep", count=30, payload=b'{"seconds": 5}')
        ).job.job_id
        wait_until(lambda: client.job(job_id).leased == 21, message="one running, 20 prefetched")
        victim.kill9()
        # Its heartbeat stream broke: all 21 are back now, not after the 60 s timeout.
        wait_until(lambda: client.job(job_id).leased == 0, timeout=5, message="leases back")
        back = client.job(job_id)
        assert back.queued == 30 and back.succeeded == 0
        # Every one of them runs again elsewhere.
        cluster.start_worker(concurrency=1)
        wait_until(lambda: client.job(job_id).leased == 2, message="another worker's leases")


def shape(window: LeaseWindow) -> tuple[int, bool]:
    return window.size, window.batching


def test_the_lease_window_grows_for_short_tasks_only() -> None:
    window = LeaseWindow(concurrency=2, prefetch=1)
    assert shape(window) == (3, False)
    window.leased(3, 3)  # nothing has run yet: no reason to grow
    assert window.size == 3
    for _ in range(3):
        window.ran(0.0001)
    window.leased(3, 3)
    assert shape(window) == (6, True)
    for _ in range(3):
        window.ran(0.0001)
    window.leased(3, 3)
    assert window.size == 9
    # One short task is no evidence: the window waits for a window's worth.
    window.ran(0.0001)
    window.leased(6, 6)
    assert window.size == 9
    # A long task, or a queue that ran dry, brings it back to the base at once.
    window.ran(config.SHORT_TASK_SECONDS * 10)
    assert shape(window) == (3, False)
    for _ in range(3):
        window.ran(0.0001)
    window.leased(3, 3)  # the lease after a long task: not yet
    assert window.size == 3
    for _ in range(3):
        window.ran(0.0001)
    window.leased(3, 3)
    assert window.size == 6
    window.leased(1, 3)
    assert window.size == 3
    grown = LeaseWindow(1, 1)
    for _ in range(20):
        for _ in range(grown.size):
            grown.ran(0.0)
        grown.leased(grown.size, grown.size)
    assert grown.size == 2 + config.MAX_PREFETCH_BATCH


def _storage_down(payload: bytes, context: tasks.TaskContext) -> bytes:
    from fractalq.storage.base import StorageError

    raise StorageError("storage down", transient=True)


def test_a_batch_runs_in_order_on_one_thread_and_stops_where_it_must(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    context = tasks.TaskContext(job_id="job")

    async def scenario() -> None:
        runner = TaskRunner(1)
        try:
            noop = ("noop", b"", context, 0.0)
            outcomes, unrun = await runner.run_batch([noop, ("fail", b"", context, 0.0), noop])
            assert unrun == [] and [o.index for o in outcomes] == [0, 1, 2]
            assert outcomes[0].result == b"" and isinstance(outcomes[1].result, TaskFailed)
            # Past its limit: reported timed out at once, the rest left unrun.
            began = time.monotonic()
            outcomes, unrun = await runner.run_batch(
                [("noop", b"", context, 0.0), ("sleep", b'{"seconds": 30}', context, 0.3),
                 ("noop", b"", context, 0.0)]
            )  # fmt: skip
            assert time.monotonic() - began < 10 and unrun == [2]
            assert "timed out after 0.3 s" in str(outcomes[-1].result)
            # Stopping: the running task finishes, the others are never started.
            stop = asyncio.Event()
            batch = [("sleep", b'{"seconds": 0.3}', context, 0.0)] * 3
            running = asyncio.ensure_future(runner.run_batch(batch, stop))
            await asyncio.sleep(0.1)
            stop.set()
            outcomes, unrun = await running
            assert [o.index for o in outcomes] == [0] and unrun == [1, 2]
        finally:
            runner.shutdown(wait=False)

    asyncio.run(scenario())
    registry = {**tasks.registry._REGISTRY}
    monkeypatch.setattr(tasks.registry, "_REGISTRY", registry)
    tasks.task_type("test.storage-down")(_storage_down)

    async def outage() -> None:
        runner = TaskRunner(1)
        try:
            items = [("noop", b"", context, 0.0), ("test.storage-down", b"", context, 0.0),
                     ("noop", b"", context, 0.0)]  # fmt: skip
            outcomes, unrun = await runner.run_batch(items)
            assert isinstance(outcomes[-1].result, StorageUnavailable) and unrun == [2]
        finally:
            runner.shutdown(wait=False)

    asyncio.run(outage())


def test_a_small_render_gets_fewer_bands_and_the_same_bytes(
    cluster: ProcessGroup, tmp_path: Path
) -> None:
    storage = (tmp_path / "store").as_uri()
    coordinator = cluster.start_coordinator()
    for _ in range(2):
        cluster.start_worker(storage=storage)
    out = tmp_path / "small.png"
    result = run_cli("render", "--mandelbrot", "--width", "300", "--height", "200",
                     "--coordinator", coordinator.address, "--storage", storage,
                     "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    # 300x200 at max-iter 256 is far below a band's worth of work: one band, not 8.
    assert result.stdout.splitlines()[0].startswith("submitted 1 bands as job ")
    assert out.read_bytes() == reference_png(
        RenderRequest.create("mandelbrot", width=300, height=200)
    )
