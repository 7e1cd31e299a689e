"""The queue's promises, with a real coordinator and real workers on 127.0.0.1."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from procs import Coordinator, ProcessGroup, run_cli, wait_until
from prometheus_client.parser import text_string_to_metric_families

from fractalq.client import ClientError
from fractalq.fractal.request import RenderRequest
from fractalq.images import submit_render
from fractalq.proto import fractalq_pb2 as pb
from fractalq.proto import fractalq_pb2_grpc as pb_grpc
from fractalq.states import FINISHED
from fractalq.tasks.assemble import assemble_payload
from fractalq.tasks.band import band_payload


def submit(coordinator: Coordinator, task: str = "noop", count: int = 1, **fields: Any) -> pb.Job:
    payload = fields.pop("payload", None)
    request = pb.SubmitJobRequest(task_type=task, count=count, **fields)
    if payload is not None:
        request.payload = json.dumps(payload).encode()
    with coordinator.client() as client:
        return client.submit(request).job


def job(coordinator: Coordinator, job_id: str) -> pb.Job:
    with coordinator.client() as client:
        return client.job(job_id)


def finished(coordinator: Coordinator, job_id: str) -> Callable[[], pb.Job | None]:
    def check() -> pb.Job | None:
        found = job(coordinator, job_id)
        return found if found.state in FINISHED else None

    return check


def stub(coordinator: Coordinator) -> tuple[grpc.Channel, pb_grpc.CoordinatorStub]:
    channel = grpc.insecure_channel(coordinator.address)
    return channel, pb_grpc.CoordinatorStub(channel)


def test_priority_then_submission_order(cluster: ProcessGroup) -> None:
    coordinator = cluster.start_coordinator()
    # Tasks longer than a short one (config.SHORT_TASK_SECONDS), so that the worker
    # leases at most two at a time: two jobs' first tasks never share one lease, whose
    # jobs would share one started_at and leave their order unseen.
    ids = [
        submit(coordinator, "sleep", count=2, priority=priority, payload={"seconds": 0.02}).job_id
        for priority in (5, 1, 5, 1, 0)
    ]
    cluster.start_worker(concurrency=1)
    for job_id in ids:
        wait_until(finished(coordinator, job_id), message=f"job {job_id}")
    started = {job_id: job(coordinator, job_id).started_at for job_id in ids}
    assert len(set(started.values())) == len(ids), started
    expected = [ids[4], ids[1], ids[3], ids[0], ids[2]]
    assert sorted(ids, key=started.__getitem__) == expected


def test_a_silent_worker_loses_its_lease_and_its_late_report_is_ignored(
    cluster: ProcessGroup,
) -> None:
    coordinator = cluster.start_coordinator(worker_timeout=1.0)
    channel, coordinator_stub = stub(coordinator)
    with channel:
        # A worker that registers and takes a task, but never heartbeats.
        session = coordinator_stub.RegisterWorker(
            pb.RegisterWorkerRequest(worker_id="silent", task_types=["noop"], concurrency=1)
        ).session
        job_id = submit(coordinator, count=1).job_id
        [task] = coordinator_stub.GetTask(
            pb.GetTaskRequest(worker_id="silent", session=session, max_tasks=1, wait_seconds=5)
        ).tasks
        assert job(coordinator, job_id).leased == 1
        cluster.start_worker()
        done = wait_until(finished(coordinator, job_id), message="the task to be taken back")
        assert done.state == pb.SUCCEEDED and done.succeeded == 1
        ref = pb.TaskRef(job_id=job_id, index=task.index, attempt=task.attempt)
        # The silent worker's session ended with its lease: its report is refused.
        with pytest.raises(grpc.RpcError) as refused:
            coordinator_stub.CompleteTask(
                pb.CompleteTaskRequest(
                    worker_id="silent", session=session, results=[pb.TaskResult(task=ref)]
                )
            )
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        assert job(coordinator, job_id).succeeded == 1


def test_killing_a_worker_mid_task_loses_nothing(cluster: ProcessGroup) -> None:
    coordinator = cluster.start_coordinator(worker_timeout=30.0)
    victim = cluster.start_worker(concurrency=2)
    job_id = submit(coordinator, "sleep", count=6, payload={"seconds": 0.5}).job_id
    wait_until(lambda: job(coordinator, job_id).leased >= 2, message="the victim to hold tasks")
    victim.kill9()
    # Its heartbeat stream broke: the tasks are back at once, not after 30 s.
    wait_until(lambda: job(coordinator, job_id).leased == 0, timeout=5, message="leases back")
    cluster.start_worker(concurrency=2)
    done = wait_until(finished(coordinator, job_id), message="the job to finish")
    assert done.state == pb.SUCCEEDED and done.succeeded == 6


def test_coordinator_kill_and_restart_loses_nothing(cluster: ProcessGroup) -> None:
    coordinator = cluster.start_coordinator()
    cluster.start_worker(concurrency=2)
    job_id = submit(coordinator, "sleep", count=30, payload={"seconds": 0.1}).job_id

    def progressed() -> pb.Job | None:
        found = job(coordinator, job_id)
        return found if found.succeeded >= 6 else None

    before = wait_until(progressed, message="some progress")
    waiting = submit(coordinator, "noop", count=3, priority=50).job_id
    coordinator.kill9()

    restarted = cluster.start_coordinator(port=coordinator.port, data=coordinator.data)
    after = job(restarted, job_id)
    assert after.total == 30 and after.succeeded >= before.succeeded
    assert job(restarted, waiting).total == 3
    # The worker reconnects by itself and finishes both jobs.
    done = wait_until(finished(restarted, job_id), message="the job to finish after restart")
    assert done.state == pb.SUCCEEDED and done.succeeded == 30
    assert wait_until(finished(restarted, waiting)).state == pb.SUCCEEDED


def test_sigterm_drains_running_tasks_then_exits(cluster: ProcessGroup) -> None:
    coordinator = cluster.start_coordinator()
    worker = cluster.start_worker(concurrency=2, grace=20)
    job_id = submit(coordinator, "sleep", count=6, payload={"seconds": 3.0}).job_id
    # Two running, one prefetched (the default --prefetch 1), as the worker says.
    with coordinator.client() as client:
        wait_until(
            lambda: (
                job(coordinator, job_id).leased == 3
                and [w.running for w in client.stats().workers] == [2]
            ),
            message="three leased tasks, two of them running",
        )
    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0
    drained = job(coordinator, job_id)
    # The two running tasks were finished and reported; the prefetched one was
    # handed back without running; nothing else was taken.
    assert (drained.succeeded, drained.leased, drained.queued) == (2, 0, 4)
    assert drained.dead == 0


def test_sigterm_hands_back_what_outlives_the_grace_period(cluster: ProcessGroup) -> None:
    coordinator = cluster.start_coordinator()
    worker = cluster.start_worker(concurrency=1, grace=0.5)
    job_id = submit(coordinator, "sleep", count=1, payload={"seconds": 2.0}, max_attempts=1).job_id
    wait_until(lambda: job(coordinator, job_id).leased == 1, message="a running task")
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0
    handed_back = job(coordinator, job_id)
    assert (handed_back.leased, handed_back.queued) == (0, 1)
    # Handed back is not a failed attempt: with max_attempts=1 it still runs.
    cluster.start_worker()
    assert wait_until(finished(coordinator, job_id)).state == pb.SUCCEEDED


def test_failing_tasks_are_dead_lettered_and_fail_the_job(cluster: ProcessGroup) -> None:
    coordinator = cluster.start_coordinator()
    cluster.start_worker()
    result = run_cli(
        "submit", "--coordinator", coordinator.address, "--task", "fail",
        "--payload", '{"message": "the disk is on fire"}', "--max-attempts", "2", "--wait",
    )  # fmt: skip
    assert result.returncode == 1
    job_id = result.stdout.splitlines()[0].split()[-1]
    failed = job(coordinator, job_id)
    assert failed.state == pb.FAILED and failed.dead == 1
    assert "dead-lettered after 2 attempt(s)" in failed.reason
    assert "the disk is on fire" in failed.reason
    assert "the disk is on fire" in result.stderr and "Traceback" not in result.stderr


def test_submit_wait_succeeds_and_status_reports(cluster: ProcessGroup) -> None:
    coordinator = cluster.start_coordinator()
    cluster.start_worker(concurrency=4)
    result = run_cli(
        "submit", "--coordinator", coordinator.address, "--task", "sleep",
        "--payload", '{"seconds": 0.05}', "--count", "20", "--wait",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.splitlines()[0].split()[-1]
    assert job(coordinator, job_id).succeeded == 20
    waited = run_cli("wait", job_id, "--coordinator", coordinator.address)
    assert waited.returncode == 0 and "SUCCEEDED" in waited.stdout
    status = run_cli("status", job_id, "--coordinator", coordinator.address)
    assert "SUCCEEDED" in status.stdout and "20 succeeded" in status.stdout
    queue = run_cli("status", "--coordinator", coordinator.address)
    assert "workers: 1" in queue.stdout


def test_wait_times_out_with_its_own_exit_code(cluster: ProcessGroup) -> None:
    coordinator = cluster.start_coordinator()
    job_id = submit(coordinator, "noop").job_id  # no worker: it never runs
    result = run_cli("wait", job_id, "--coordinator", coordinator.address, "--timeout", "0.5")
    assert result.returncode == 3 and "still QUEUED" in result.stderr
    # 0 does not wait: it says how the job stands, whatever time is left for a first answer.
    for timeout in ("0", "0.000001"):
        now = run_cli("wait", job_id, "--coordinator", coordinator.address, "--timeout", timeout)
        assert now.returncode == 3, now.stderr
        assert f"job {job_id} still QUEUED" in now.stderr and "0/1 tasks done" in now.stderr
        assert "cannot reach" not in now.stderr
    finished = submit(coordinator, "noop").job_id
    with coordinator.client() as client:
        client.cancel(finished, "not wanted")
    ended = run_cli("wait", finished, "--coordinator", coordinator.address, "--timeout", "0")
    assert ended.returncode == 1 and "CANCELLED: not wanted" in ended.stderr


def test_finished_jobs_are_forgotten_after_the_retention(cluster: ProcessGroup) -> None:
    coordinator = cluster.start_coordinator(extra=("--retention", "1"))
    waiting = submit(coordinator, "sleep", payload={"seconds": 1}).job_id  # no worker for it
    done = submit(coordinator, "noop").job_id
    with coordinator.client() as client:
        client.cancel(done, "finished, one way or another")

        def forgotten() -> bool:
            try:
                client.job(done)
            except ClientError as error:
                return bool(error.code == grpc.StatusCode.NOT_FOUND)
            return False

        assert wait_until(forgotten, 10, "the finished job to be forgotten")
        assert client.job(waiting).state == pb.QUEUED  # old, but unfinished: kept
    coordinator.stop()
    restarted = cluster.start_coordinator(port=coordinator.port, data=coordinator.data)
    with restarted.client() as client:  # gone from the database too
        with pytest.raises(ClientError, match="no job"):
            client.job(done)
        assert client.job(waiting).state == pb.QUEUED


def test_cancel_drops_queued_tasks(cluster: ProcessGroup) -> None:
    coordinator = cluster.start_coordinator()
    cluster.start_worker(concurrency=1)
    job_id = submit(coordinator, "sleep", count=10, payload={"seconds": 0.5}).job_id
    wait_until(lambda: job(coordinator, job_id).leased >= 1, message="a running task")
    with coordinator.client() as client:
        cancelled = client.cancel(job_id, "changed my mind")
    assert cancelled.state == pb.CANCELLED and cancelled.reason == "changed my mind"
    other = submit(coordinator, "noop", count=2).job_id
    assert wait_until(finished(coordinator, other)).state == pb.SUCCEEDED
    after = job(coordinator, job_id)
    assert after.state == pb.CANCELLED and after.succeeded <= 1
    with coordinator.client() as client:
        assert client.stats().queued == 0


OFF_AXIS = RenderRequest.create("mandelbrot", width=64, height=40, center_y="0.25")
ON_AXIS = RenderRequest.create("mandelbrot", width=64, height=40)
LARGE = RenderRequest.create("mandelbrot", width=3000, height=2000)
MIRRORED_OFF_AXIS = pb.StageTask(  # an assembly of mirrored bands for a view that has none
    task_type="fractal.assemble",
    payload=assemble_payload(OFF_AXIS, 2).replace(b'"bands"', b'"mirror": true, "bands"'),
)
BAD_BANDS = [
    (band_payload(OFF_AXIS, 0, 20, mirror=True), "does not mirror onto itself"),
    (band_payload(ON_AXIS, 0, 21, mirror=True), "reach below the middle row"),
    (band_payload(ON_AXIS, 0, 10, mirror=True, image=True), "are not the whole image"),
    (band_payload(OFF_AXIS, 0, 20, image=True), "are not the whole image"),
    (band_payload(LARGE, 0, 1000, mirror=True, image=True), "too large to be made by one band"),
    (band_payload(ON_AXIS, 0, 20).replace(b'"rows"', b'"mirror": 1, "rows"'), "true or false"),
]


def test_bad_requests_get_clear_errors_and_disturb_nothing(cluster: ProcessGroup) -> None:
    coordinator = cluster.start_coordinator()
    keep = submit(coordinator, "noop", count=3).job_id
    channel, coordinator_stub = stub(coordinator)
    bad = [
        (pb.SubmitJobRequest(task_type="nope", count=1), "unknown task type"),
        (pb.SubmitJobRequest(task_type="noop", count=0), "at least one task"),
        (pb.SubmitJobRequest(task_type="noop", count=10**7), "more than the limit"),
        (pb.SubmitJobRequest(task_type="sleep", count=1, payload=b"{oops"), "not JSON"),
        (pb.SubmitJobRequest(task_type="noop", count=1, job_id="a b"), "job_id must be"),
        *(  # a band that claims a mirror or the whole image it does not have
            (pb.SubmitJobRequest(task_type="fractal.band", payloads=[payload]), message)
            for payload, message in BAD_BANDS
        ),
        (pb.SubmitJobRequest(task_type="noop", count=1, final=MIRRORED_OFF_AXIS), "mirror onto"),
    ]
    with channel:
        for request, message in bad:
            with pytest.raises(grpc.RpcError) as caught:
                coordinator_stub.SubmitJob(request)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in caught.value.details()
        with pytest.raises(grpc.RpcError) as caught:
            coordinator_stub.GetTask(pb.GetTaskRequest(worker_id="nobody", max_tasks=1))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as caught:
            coordinator_stub.GetJob(pb.GetJobRequest(job_id="missing"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        same = pb.SubmitJobRequest(task_type="noop", count=2, job_id="fixed")
        assert coordinator_stub.SubmitJob(same).created
        assert not coordinator_stub.SubmitJob(same).created
        with pytest.raises(grpc.RpcError) as caught:
            coordinator_stub.SubmitJob(
                pb.SubmitJobRequest(task_type="noop", count=3, job_id="fixed")
            )
        assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    cluster.start_worker()
    assert wait_until(finished(coordinator, keep)).state == pb.SUCCEEDED
    assert coordinator.alive()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["submit", "--task", "noop", "--coordinator", "nonsense"], "is not HOST:PORT"),
        (
            ["submit", "--task", "noop", "--coordinator", "127.0.0.1:1"],
            "cannot reach the coordinator",
        ),
        (
            ["submit", "--task", "noop", "--coordinator", "127.0.0.1:1", "--count", "-2"],
            "below the minimum",
        ),
        (
            ["submit", "--task", "sleep", "--coordinator", "127.0.0.1:1", "--payload", "{x"],
            "not JSON",
        ),
        (["worker", "--coordinator", "127.0.0.1:1", "--task-types", "nope"], "unknown task type"),
        (["coordinator", "--port", "99999"], "above the maximum"),
    ],
)
def test_command_line_errors_are_one_line(args: list[str], message: str) -> None:
    result = run_cli(*args, timeout=60)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_http_api(cluster: ProcessGroup) -> None:
    coordinator = cluster.start_coordinator()
    cluster.start_worker()
    job_id = submit(coordinator, "noop", count=2, priority=3).job_id
    wait_until(finished(coordinator, job_id))

    def get(path: str) -> Any:
        url = f"http://127.0.0.1:{coordinator.http_port}{path}"
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.load(response)

    assert get("/healthz") == {"status": "ok"}
    assert get("/api/stats")["tasksSucceeded"] == "2"
    assert len(get("/api/workers")["workers"]) == 1
    [listed] = get("/api/jobs")["jobs"]
    assert listed["jobId"] == job_id and listed["state"] == "SUCCEEDED"


def test_prometheus_metrics(cluster: ProcessGroup) -> None:
    coordinator = cluster.start_coordinator()
    cluster.start_worker(concurrency=2)
    done = submit(coordinator, "noop", count=5).job_id
    wait_until(finished(coordinator, done))
    submit(coordinator, "fail", max_attempts=1, payload={"message": "no"})
    submit(coordinator, "sleep", count=3, priority=9, payload={"seconds": 30})
    submit(coordinator, "sleep", count=2, priority=10, payload={"seconds": 30})  # waits

    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        url = f"http://127.0.0.1:{coordinator.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.headers["Content-Type"].startswith("text/plain")
            text = response.read().decode()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def settled() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        found = scrape()
        # Two sleeps running and one prefetched (--prefetch 1), all leased.
        leased = found[("fractalq_tasks", (("state", "leased"),))] == 3
        return found if leased and found[("fractalq_tasks_dead_total", ())] == 1 else None

    metrics = wait_until(settled, message="three sleeps leased and one task dead")
    assert metrics[("fractalq_tasks", (("state", "queued"),))] == 2
    assert metrics[("fractalq_tasks", (("state", "delayed"),))] == 0
    assert metrics[("fractalq_jobs_active", ())] == 2
    assert metrics[("fractalq_tasks_succeeded_total", ())] == 5
    assert metrics[("fractalq_tasks_failed_total", ())] == 1
    assert metrics[("fractalq_workers", (("draining", "false"),))] == 1
    assert metrics[("fractalq_worker_slots", ())] == 2


def test_metrics_time_tasks_by_type_and_show_the_process(cluster: ProcessGroup) -> None:
    """Runtime (as the worker measured it) and queue wait (ready to leased) per task
    type, as Prometheus histograms; and the process's own figures beside them."""
    coordinator = cluster.start_coordinator()
    noops = submit(coordinator, "noop", count=5).job_id
    sleeps = submit(coordinator, "sleep", count=2, payload={"seconds": 0.3}).job_id
    queued = time.monotonic()
    time.sleep(0.5)  # the tasks wait this long in the queue at least: nobody serves it
    cluster.start_worker(concurrency=2)
    for job_id in (noops, sleeps):
        wait_until(finished(coordinator, job_id))
    waited_at_most = time.monotonic() - queued
    submit(coordinator, "fail", max_attempts=1)
    url = f"http://127.0.0.1:{coordinator.http_port}/metrics"

    Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

    def scrape() -> Samples | None:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        samples: Samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }
        return samples if samples.get(("fractalq_tasks_dead_total", ())) == 1 else None

    found = wait_until(scrape, message="the failing task dead-lettered")

    def runtime(kind: str, outcome: str, what: str, le: str = "") -> float:
        labels = {"task_type": kind, "outcome": outcome} | ({"le": le} if le else {})
        return found[(f"fractalq_task_runtime_seconds_{what}", tuple(sorted(labels.items())))]

    def wait(kind: str, what: str, le: str = "") -> float:
        labels = {"task_type": kind} | ({"le": le} if le else {})
        return found[(f"fractalq_task_queue_wait_seconds_{what}", tuple(sorted(labels.items())))]

    assert runtime("noop", "succeeded", "count") == 5
    assert runtime("noop", "succeeded", "sum") < 5 * 0.25
    assert runtime("sleep", "succeeded", "count") == 2
    assert runtime("sleep", "succeeded", "bucket", "0.25") == 0  # each slept 0.3 s
    assert 0.6 <= runtime("sleep", "succeeded", "sum") < 2 * 5
    assert runtime("fail", "failed", "count") == 1
    succeeded_fail = (("outcome", "succeeded"), ("task_type", "fail"))
    assert ("fractalq_task_runtime_seconds_count", succeeded_fail) not in found
    assert wait("noop", "count") == 5 and wait("sleep", "count") == 2
    assert wait("noop", "bucket", "0.5") == 0  # all waited past the half second
    assert 5 * 0.5 <= wait("noop", "sum") <= 5 * waited_at_most
    assert wait("fail", "count") == 1
    assert found[("process_resident_memory_bytes", ())] > 0
    assert found[("process_cpu_seconds_total", ())] > 0
    assert any(name == "python_info" for name, _ in found)


def test_a_job_with_a_first_and_a_final_task_runs_them_on_real_workers(
    cluster: ProcessGroup,
) -> None:
    coordinator = cluster.start_coordinator()
    staged = submit(
        coordinator, "noop", count=4,
        first=pb.StageTask(task_type="sleep", payload=b'{"seconds": 0.2}'),
        final=pb.StageTask(task_type="noop"),
    )  # fmt: skip
    assert staged.first.state == pb.TASK_QUEUED and staged.final.state == pb.TASK_WAITING
    cluster.start_worker(concurrency=2)
    done = wait_until(finished(coordinator, staged.job_id), message="the staged job")
    assert done.state == pb.SUCCEEDED and done.succeeded == 4
    assert (done.first.state, done.final.state) == (pb.TASK_SUCCEEDED, pb.TASK_SUCCEEDED)
    channel, coordinator_stub = stub(coordinator)
    with channel, pytest.raises(grpc.RpcError) as caught:
        coordinator_stub.SubmitJob(
            pb.SubmitJobRequest(task_type="noop", count=1, final=pb.StageTask(task_type="nope"))
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "final: unknown task type 'nope'" in caught.value.details()


def test_listings_leave_out_job_results_so_that_they_stay_small(
    cluster: ProcessGroup, tmp_path: Path
) -> None:
    coordinator = cluster.start_coordinator()
    cluster.start_worker(storage=(tmp_path / "store").as_uri())
    request = RenderRequest.create("mandelbrot", width=64, height=32, max_iter=50)
    with coordinator.client() as client:
        job_id = submit_render(client, request, 2, 10).job.job_id
        wait_until(finished(coordinator, job_id), message="the render")
        assert b"image.png" in client.job(job_id).result  # GetJob carries the result
        [listed] = client.jobs()
        assert listed.job_id == job_id and listed.result == b""
