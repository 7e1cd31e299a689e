"""The queue's promises against careless or hostile clients, on a real coordinator.

Each test is a way a client once could corrupt the queue: completing tasks it
never leased, taking over a live worker's id, registering oversized or
control-character fields, sending NaN, piling up payloads. Each now gets a
clear status code, changes nothing, and leaves the honest work to finish.
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from procs import SLOW_VIEW, Coordinator, ProcessGroup, Trust, run_cli, start_render, wait_until
from prometheus_client.parser import text_string_to_metric_families

from fractalq import config
from fractalq.proto import fractalq_pb2 as pb
from fractalq.proto import fractalq_pb2_grpc as pb_grpc
from fractalq.tasks.band import TASK_TYPE as BAND
from fractalq.worker.runtime import Worker
from fractalq.worker.settings import WorkerSettings


@pytest.fixture
def coordinator(cluster: ProcessGroup) -> Coordinator:
    return cluster.start_coordinator()


@pytest.fixture
def stub(coordinator: Coordinator) -> Iterator[pb_grpc.CoordinatorStub]:
    limit = config.MAX_MESSAGE_BYTES
    options = [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]
    with grpc.insecure_channel(coordinator.address, options=options) as channel:
        yield pb_grpc.CoordinatorStub(channel)


def refused(call: object, code: grpc.StatusCode, *needles: str) -> str:
    """Run ``call`` (a no-argument callable) and check it is refused with ``code``."""
    with pytest.raises(grpc.RpcError) as caught:
        call()  # type: ignore[operator]
    assert caught.value.code() == code, caught.value.details()
    details: str = caught.value.details()
    for needle in needles:
        assert needle in details, details
    assert "<class" not in details and "Traceback" not in details
    return details


def job_of(coordinator: Coordinator, job_id: str) -> pb.Job:
    with coordinator.client() as client:
        return client.job(job_id)


def stats_of(coordinator: Coordinator) -> pb.Stats:
    with coordinator.client() as client:
        return client.stats()


def results(job_id: str, attempts: range, indices: range) -> list[pb.TaskResult]:
    return [
        pb.TaskResult(task=pb.TaskRef(job_id=job_id, index=i, attempt=a), result=b"forged")
        for i in indices
        for a in attempts
    ]


def test_reports_from_a_worker_that_never_registered_change_nothing(
    cluster: ProcessGroup, coordinator: Coordinator, stub: pb_grpc.CoordinatorStub
) -> None:
    job_id = stub.SubmitJob(pb.SubmitJobRequest(task_type="noop", count=3)).job.job_id
    forged = results(job_id, range(3), range(3))
    for session in ("", "a-guessed-session"):
        refused(
            lambda s=session: stub.CompleteTask(
                pb.CompleteTaskRequest(worker_id="forger", session=s, results=forged)
            ),
            grpc.StatusCode.NOT_FOUND,
            "register first",
        )
    # A registered session that holds no lease gets its reports ignored.
    session = stub.RegisterWorker(
        pb.RegisterWorkerRequest(worker_id="forger", task_types=["noop"])
    ).session
    answer = stub.CompleteTask(
        pb.CompleteTaskRequest(worker_id="forger", session=session, results=forged)
    )
    assert (answer.accepted, answer.ignored) == (0, 9)
    errors = [pb.TaskError(task=r.task, message="sabotage") for r in forged]
    answer = stub.FailTask(pb.FailTaskRequest(worker_id="forger", session=session, errors=errors))
    assert (answer.accepted, answer.ignored) == (0, 9)
    job = job_of(coordinator, job_id)
    assert (job.state, job.succeeded, job.queued) == (pb.QUEUED, 0, 3)
    stats = stats_of(coordinator)
    assert stats.requests_refused == 2 and stats.reports_ignored == 18
    stub.UnregisterWorker(pb.UnregisterWorkerRequest(worker_id="forger", session=session))

    cluster.start_worker()
    wait_until(lambda: job_of(coordinator, job_id).state == pb.SUCCEEDED, message="the job")
    with coordinator.client() as client:
        assert b"forged" not in client.job(job_id, include_results=True).results


def test_forged_band_reports_do_not_finish_a_render(
    cluster: ProcessGroup, coordinator: Coordinator, stub: pb_grpc.CoordinatorStub, tmp_path: Path
) -> None:
    storage = (tmp_path / "storage").as_uri()
    cluster.start_worker(storage=storage)
    out = tmp_path / "image.png"
    render = start_render(coordinator.address, storage, out, *SLOW_VIEW)
    try:
        with coordinator.client() as client:
            [job] = wait_until(lambda: client.jobs(active_only=True), message="the render's job")
        session = stub.RegisterWorker(
            pb.RegisterWorkerRequest(worker_id="forger", task_types=[BAND])
        ).session
        answer = stub.CompleteTask(
            pb.CompleteTaskRequest(
                worker_id="forger",
                session=session,
                results=results(job.job_id, range(4), range(24)),
            )
        )
        assert answer.accepted == 0
        assert job_of(coordinator, job.job_id).succeeded < 24
        _, stderr = render.communicate(timeout=240)
    finally:
        render.kill()
    assert render.returncode == 0, stderr
    assert out.stat().st_size > 0


def test_with_tokens_a_reader_cannot_cancel_a_render_nor_a_client_sabotage_it(
    cluster: ProcessGroup, tmp_path: Path
) -> None:
    trust = Trust(tmp_path / "trust")
    coordinator = cluster.start_coordinator(trust=trust)
    storage = (tmp_path / "storage").as_uri()
    cluster.start_worker(storage=storage)
    out = tmp_path / "image.png"
    render = start_render(coordinator.address, storage, out, *SLOW_VIEW, env=trust.env("client"))
    try:
        with coordinator.client() as client:
            [job] = wait_until(lambda: client.jobs(active_only=True), message="the render's job")
        for role in ("reader", "worker", None):
            with trust.endpoint(coordinator.address, role).channel() as channel:
                stub = pb_grpc.CoordinatorStub(channel)
                cancel = pb.CancelJobRequest(job_id=job.job_id, reason="mine now")
                code = (
                    grpc.StatusCode.UNAUTHENTICATED
                    if role is None
                    else grpc.StatusCode.PERMISSION_DENIED
                )
                refused(lambda s=stub, c=cancel: s.CancelJob(c), code)
                if role != "worker":  # a client or reader cannot pose as a worker
                    register = pb.RegisterWorkerRequest(worker_id="saboteur", task_types=[BAND])
                    refused(lambda s=stub, r=register: s.RegisterWorker(r), code)
        with trust.endpoint(coordinator.address, "client").channel() as channel:
            stub = pb_grpc.CoordinatorStub(channel)
            register = pb.RegisterWorkerRequest(worker_id="saboteur", task_types=[BAND])
            refused(lambda: stub.RegisterWorker(register), grpc.StatusCode.PERMISSION_DENIED)
        _, stderr = render.communicate(timeout=240)
    finally:
        render.kill()
    assert render.returncode == 0, stderr
    assert "saboteur" not in {worker.worker_id for worker in stats_of(coordinator).workers}


def test_a_live_workers_id_cannot_be_unregistered_or_taken_over(
    cluster: ProcessGroup, coordinator: Coordinator, stub: pb_grpc.CoordinatorStub
) -> None:
    cluster.start_worker()
    [worker] = wait_until(lambda: stats_of(coordinator).workers, message="the worker")
    refused(
        lambda: stub.UnregisterWorker(pb.UnregisterWorkerRequest(worker_id=worker.worker_id)),
        grpc.StatusCode.NOT_FOUND,
    )
    refused(
        lambda: stub.RegisterWorker(
            pb.RegisterWorkerRequest(worker_id=worker.worker_id, task_types=["noop"])
        ),
        grpc.StatusCode.ALREADY_EXISTS,
        "held by a live worker",
    )
    [still] = stats_of(coordinator).workers
    assert still.task_types == worker.task_types
    job_id = stub.SubmitJob(pb.SubmitJobRequest(task_type="sleep", count=4)).job.job_id
    wait_until(lambda: job_of(coordinator, job_id).state == pb.SUCCEEDED, 20, "the job")


def test_a_worker_whose_id_is_taken_registers_under_a_new_one(
    coordinator: Coordinator, stub: pb_grpc.CoordinatorStub
) -> None:
    # As when the answer to its registration was lost: a session it never
    # learned holds its id.
    stub.RegisterWorker(pb.RegisterWorkerRequest(worker_id="taken", task_types=["noop"]))
    worker = Worker(WorkerSettings(coordinator=coordinator.address), worker_id="taken")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(worker.run(),))
    thread.start()
    try:
        job_id = stub.SubmitJob(pb.SubmitJobRequest(task_type="noop", count=3)).job.job_id
        wait_until(lambda: job_of(coordinator, job_id).state == pb.SUCCEEDED, message="the job")
        assert worker.worker_id != "taken"
        assert {"taken", worker.worker_id} <= {w.worker_id for w in stats_of(coordinator).workers}
    finally:
        loop.call_soon_threadsafe(worker.stop)
        thread.join(30)
        loop.close()
    assert not thread.is_alive()


@pytest.mark.parametrize(
    ("fields", "code", "needle"),
    [
        ({"hostname": "h" * 20_000_000}, grpc.StatusCode.INVALID_ARGUMENT, "hostname"),
        ({"hostname": "evil\nhost"}, grpc.StatusCode.INVALID_ARGUMENT, "hostname"),
        ({"worker_id": "w\n2026 INFO forged line"}, grpc.StatusCode.INVALID_ARGUMENT, "worker_id"),
        ({"worker_id": "w" * 129}, grpc.StatusCode.INVALID_ARGUMENT, "worker_id"),
        ({"task_types": ["nope"]}, grpc.StatusCode.INVALID_ARGUMENT, "unknown task type"),
        ({"task_types": []}, grpc.StatusCode.INVALID_ARGUMENT, "task_types"),
        ({"task_types": ["noop"] * 33}, grpc.StatusCode.INVALID_ARGUMENT, "task_types"),
        ({"concurrency": 10**6}, grpc.StatusCode.INVALID_ARGUMENT, "concurrency"),
    ],
)
def test_registration_fields_are_bounded_and_well_formed(
    coordinator: Coordinator,
    stub: pb_grpc.CoordinatorStub,
    fields: dict[str, object],
    code: grpc.StatusCode,
    needle: str,
) -> None:
    request: dict[str, object] = {"worker_id": "w", "task_types": ["noop"], "hostname": "h"}
    request.update(fields)
    refused(lambda: stub.RegisterWorker(pb.RegisterWorkerRequest(**request)), code, needle)  # type: ignore[arg-type]
    assert not stats_of(coordinator).workers
    status = run_cli("status", "--coordinator", coordinator.address)
    assert status.returncode == 0 and "workers: 0" in status.stdout
    log = coordinator.log()
    assert not any(line.startswith("2026 INFO forged") for line in log.splitlines())
    assert "Traceback" not in log


@pytest.mark.parametrize("wait", [float("nan"), float("inf"), -1.0])
def test_a_long_poll_must_be_finite(
    coordinator: Coordinator, stub: pb_grpc.CoordinatorStub, wait: float
) -> None:
    session = stub.RegisterWorker(pb.RegisterWorkerRequest(worker_id="w", task_types=["noop"]))
    request = pb.GetTaskRequest(
        worker_id="w", session=session.session, max_tasks=1, wait_seconds=wait
    )
    refused(lambda: stub.GetTask(request), grpc.StatusCode.INVALID_ARGUMENT, "wait_seconds")


def test_payloads_are_bounded_per_job(
    coordinator: Coordinator, stub: pb_grpc.CoordinatorStub
) -> None:
    megabyte = json.dumps({"seconds": 0, "pad": "x" * (1000 * 1000)}).encode()
    for _ in range(5):
        # 60 MB is more than any message may carry; 30 MB more than a job may hold.
        refused(
            lambda: stub.SubmitJob(
                pb.SubmitJobRequest(task_type="sleep", payloads=[megabyte] * 60)
            ),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )
        refused(
            lambda: stub.SubmitJob(
                pb.SubmitJobRequest(task_type="sleep", payloads=[megabyte] * 30)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "more than the limit",
        )
    assert not stats_of(coordinator).jobs_active
    rss = int(
        next(
            line.split()[1]
            for line in Path(f"/proc/{coordinator.pid}/status").read_text().splitlines()
            if line.startswith("VmRSS")
        )
    )
    assert rss < 400 * 1024, f"coordinator uses {rss} kB"


def test_malformed_requests_are_logged_once_in_a_while_without_tracebacks(
    coordinator: Coordinator, stub: pb_grpc.CoordinatorStub
) -> None:
    for _ in range(200):
        refused(
            lambda: stub.GetJob(pb.GetJobRequest(job_id="../../etc/passwd")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "job_id",
        )
    with grpc.insecure_channel(coordinator.address) as channel:
        raw = channel.unary_unary("/fractalq.v1.Coordinator/SubmitJob")
        details = refused(lambda: raw(b"\xff\xff\xff\xff"), grpc.StatusCode.INVALID_ARGUMENT)
        assert "SubmitJobRequest" in details
    assert stats_of(coordinator).requests_invalid == 201
    url = f"http://127.0.0.1:{coordinator.http_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        samples = {
            (sample.name, sample.labels.get("reason")): sample.value
            for family in text_string_to_metric_families(response.read().decode())
            for sample in family.samples
        }
    assert samples[("fractalq_requests_refused_total", "invalid")] == 201
    log = coordinator.log()
    assert 1 <= log.count(" invalid request(s) (latest: GetJob: job_id must be") <= 3
    assert "Traceback" not in log
