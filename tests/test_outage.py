"""Storage outages do not spend attempts (worker/outage.py).

A task that meets a transient storage error keeps its lease and its attempt
while its worker waits for storage, says so in its heartbeats and takes no new
task; errors of the task itself still fail the attempt. Every way the
connection to S3 can break is such an error: refused, reset or closed
mid-request, timed out (botocore's classes, and a real S3 server frozen or
killed while it holds a request). End to end: a real S3 server killed in the
middle of a render, holding the workers' requests, and started again a minute
later.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import os
import re
import ssl
import string
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import botocore.exceptions
import pytest
from boto3.exceptions import RetriesExceededError, S3UploadFailedError
from botocore.exceptions import ClientError
from procs import ProcessGroup, fractalq, run_cli, wait_until
from reference import reference_png
from s3server import SeaweedS3

from fractalq.config import MAX_STORAGE_ERROR_LENGTH
from fractalq.coordinator.broker import Broker
from fractalq.fractal.request import RenderRequest
from fractalq.proto import fractalq_pb2 as pb
from fractalq.storage import StorageError, StorageOptions
from fractalq.storage.s3 import S3Storage
from fractalq.tasks import TaskContext, registry
from fractalq.worker.executor import StorageUnavailable, TaskFailed, TaskRunner
from fractalq.worker.runtime import Worker
from fractalq.worker.settings import WorkerSettings

# ---- without a network -------------------------------------------------------


class Flaky:
    """A task type that raises ``error`` ``times`` times, then succeeds."""

    def __init__(self, error: Exception, times: int) -> None:
        self.error, self.times, self.calls = error, times, 0

    def __call__(self, payload: bytes, context: TaskContext) -> bytes:
        self.calls += 1
        if self.calls <= self.times:
            raise self.error
        return b"stored"


def register(monkeypatch: pytest.MonkeyPatch, name: str, run: Flaky) -> None:
    kind = registry.TaskType(name, run, lambda payload: None, needs_storage=True)
    monkeypatch.setitem(registry._REGISTRY, name, kind)


def test_only_a_transient_storage_error_is_an_outage(monkeypatch: pytest.MonkeyPatch) -> None:
    register(monkeypatch, "t.down", Flaky(StorageError("S3 endpoint unreachable", True), 1))
    register(monkeypatch, "t.denied", Flaky(StorageError("access denied"), 1))
    register(monkeypatch, "t.bug", Flaky(ZeroDivisionError("division by zero"), 1))
    runner = TaskRunner(1)

    async def outcome(name: str) -> Exception:
        try:
            await runner.run(name, b"", TaskContext())
        except Exception as error:
            return error
        raise AssertionError("the task did not fail")

    try:
        down = asyncio.run(outcome("t.down"))
        assert isinstance(down, StorageUnavailable) and "unreachable" in str(down)
        for name in ("t.denied", "t.bug"):
            assert isinstance(asyncio.run(outcome(name)), TaskFailed)
    finally:
        runner.shutdown(wait=True)


def _worker(storage: str | None, name: str, limit: float) -> Worker:
    settings = WorkerSettings(
        "127.0.0.1:1",  # never contacted: only the task loop runs
        storage=storage,
        task_types=(name,),
        storage_outage_limit=limit,
    )
    return Worker(settings)


def test_a_task_runs_again_once_storage_answers_on_the_same_attempt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flaky = Flaky(StorageError("S3 endpoint unreachable", True), 2)
    register(monkeypatch, "t.flaky", flaky)
    worker = _worker(tmp_path.as_uri(), "t.flaky", limit=60)
    task = pb.Task(job_id="j", index=0, task_type="t.flaky", attempt=1)
    seen: list[str] = []

    async def scenario() -> bytes:
        run = asyncio.create_task(worker._run(task, TaskContext(tmp_path.as_uri(), "j", 0, 1)))
        while not run.done():
            seen.append(worker._outage.error)
            await asyncio.sleep(0.01)
        return await run

    try:
        assert asyncio.run(scenario()) == b"stored"
    finally:
        worker._runner.shutdown(wait=True)
    assert flaky.calls == 3
    assert "S3 endpoint unreachable" in seen  # said while it waited (heartbeats carry it)
    assert worker._outage.error == "" and not worker._outage.down


def test_a_task_waits_for_storage_no_longer_than_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    register(monkeypatch, "t.gone", Flaky(StorageError("S3 endpoint unreachable", True), 10**9))
    worker = _worker(None, "t.gone", limit=1.5)  # no storage to probe: storage seems back
    task = pb.Task(job_id="j", index=0, task_type="t.gone", attempt=1)
    began = time.monotonic()
    try:
        with pytest.raises(TaskFailed, match=r"storage unavailable for 1\.5s.*unreachable"):
            asyncio.run(worker._run(task, TaskContext(None, "j", 0, 1)))
    finally:
        worker._runner.shutdown(wait=True)
    assert 1.5 <= time.monotonic() - began < 10


class FailingTransfers:
    """A boto3 client whose managed transfers fail as boto3 reports it."""

    def __init__(self, status: int, code: str) -> None:
        self.status, self.code = status, code

    def upload_file(self, *args: object, **kwargs: object) -> None:
        response = {
            "Error": {"Code": self.code, "Message": "try later"},
            "ResponseMetadata": {"HTTPStatusCode": self.status},
        }
        try:
            raise ClientError(response, "UploadPart")  # type: ignore[arg-type]
        except ClientError as error:
            raise S3UploadFailedError(f"Failed to upload: {error}")  # noqa: B904 - as boto3 does

    def download_file(self, *args: object, **kwargs: object) -> None:
        # boto3 passes the socket error it last met (its stubs say a Boto3Error).
        reset = ConnectionResetError("connection reset by peer")
        raise RetriesExceededError(reset)  # type: ignore[arg-type]


@pytest.mark.parametrize(("status", "code", "transient"),
                         [(503, "SlowDown", True), (500, "InternalError", True),
                          (403, "AccessDenied", False)])  # fmt: skip
def test_managed_transfers_fail_transiently_when_their_cause_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, status: int, code: str, transient: bool
) -> None:
    storage = S3Storage("bucket", options=StorageOptions(attempts=1))
    monkeypatch.setattr(storage, "_get_client", lambda: FailingTransfers(status, code))
    image = tmp_path / "image.png"
    image.write_bytes(b"png")
    with pytest.raises(StorageError, match=code) as upload:
        storage.put_file("jobs/j/image.png", str(image))
    assert upload.value.transient is transient
    with pytest.raises(StorageError, match="broke off") as download:
        storage.get_file("jobs/j/image.png", str(tmp_path / "copy.png"))
    assert download.value.transient
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.png"]


# ---- every way the connection to S3 can fail is an outage -------------------


def _subclasses(kind: type[Exception]) -> list[type[Exception]]:
    found = [kind]
    for sub in kind.__subclasses__():
        found += _subclasses(sub)
    return found


# botocore's classes for "the store is unreachable or the connection broke":
# refused, reset, closed before the answer, timeouts, proxies, TLS cut off, and
# whatever else its HTTP client raised.
CONNECTION_FAILURES = sorted(
    set(_subclasses(botocore.exceptions.ConnectionError))
    | set(_subclasses(botocore.exceptions.HTTPClientError))
    | {botocore.exceptions.IncompleteReadError},
    key=lambda kind: kind.__name__,
)


def _botocore_error(kind: type[Exception], cause: Exception) -> Exception:
    """An instance of ``kind`` as botocore raises it: every field of its message filled."""
    fmt = getattr(kind, "fmt", "")
    fields = {name for _, name, _, _ in string.Formatter().parse(fmt) if name}
    values: dict[str, object] = {name: "x" for name in fields}
    values |= {"error": cause, "endpoint_url": "http://127.0.0.1:9"}
    return kind(**values)


@pytest.mark.parametrize("kind", CONNECTION_FAILURES, ids=lambda kind: kind.__name__)
def test_every_kind_of_broken_connection_to_s3_is_an_outage(kind: type[Exception]) -> None:
    storage = S3Storage("bucket")
    reset = ConnectionResetError(104, "Connection reset by peer")
    error = storage._translate(_botocore_error(kind, reset), "jobs/j/k")  # type: ignore[arg-type]
    assert error.transient, (kind.__name__, str(error))
    assert "\n" not in str(error)


def test_an_untrusted_certificate_is_not_an_outage() -> None:
    verify = ssl.SSLCertVerificationError(1, "certificate verify failed: self-signed certificate")
    error = S3Storage("bucket")._translate(
        botocore.exceptions.SSLError(endpoint_url="https://s3", error=verify), None
    )
    assert not error.transient and "TLS error" in str(error)
    cut = ssl.SSLEOFError(8, "EOF occurred in violation of protocol")
    assert (
        S3Storage("bucket")
        ._translate(botocore.exceptions.SSLError(endpoint_url="https://s3", error=cut), None)
        .transient
    )


class SocketErrors:
    """A boto3 client whose calls fail with a bare socket error (none of botocore's)."""

    def put_object(self, **kwargs: object) -> None:
        raise ConnectionResetError(104, "Connection reset by peer")

    def upload_file(self, *args: object, **kwargs: object) -> None:
        try:
            raise BrokenPipeError(32, "Broken pipe")
        except BrokenPipeError:
            raise S3UploadFailedError("Failed to upload")  # noqa: B904 - as boto3 does


def test_a_socket_error_no_botocore_class_wrapped_is_an_outage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = S3Storage("bucket", options=StorageOptions(attempts=1))
    monkeypatch.setattr(storage, "_get_client", lambda: SocketErrors())
    with pytest.raises(StorageError, match="connection reset by peer") as put:
        storage.put("jobs/j/k", b"x")
    assert put.value.transient
    image = tmp_path / "image.png"
    image.write_bytes(b"png")
    with pytest.raises(StorageError, match="broken pipe") as upload:
        storage.put_file("jobs/j/image.png", str(image))
    assert upload.value.transient


# One try each, so that what the store did is what the caller sees.
ONE_TRY = StorageOptions(attempts=1, s3_max_attempts=1, connect_timeout=2, read_timeout=60)


def _storage_of(
    server: SeaweedS3, monkeypatch: pytest.MonkeyPatch, options: StorageOptions
) -> S3Storage:
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    return S3Storage(server.make_bucket("broken"), options=options)


def test_a_store_killed_mid_request_is_an_outage(
    own_s3: SeaweedS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = _storage_of(own_s3, monkeypatch, ONE_TRY)
    storage.put("jobs/j/before", b"x")  # a connection in the client's pool, as in a worker
    own_s3.pause()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        put = pool.submit(storage.put, "jobs/j/band", b"x" * 100_000)
        wait_until(own_s3.waiting_requests, 30, "the request to reach the frozen store")
        own_s3.crash()  # it dies holding the request: the connection is reset, unanswered
        with pytest.raises(StorageError) as failed:
            put.result(timeout=30)
    assert failed.value.transient, str(failed.value)
    assert own_s3.endpoint in str(failed.value)
    # Down now: refused connections, an outage too.
    with pytest.raises(StorageError, match="cannot reach") as refused:
        storage.get("jobs/j/before")
    assert refused.value.transient
    own_s3.resume()
    assert storage.get("jobs/j/before") == b"x"  # the same client, once it is back


def test_a_store_that_stops_answering_is_an_outage(
    own_s3: SeaweedS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = dataclasses.replace(ONE_TRY, read_timeout=1.0)
    storage = _storage_of(own_s3, monkeypatch, options)
    storage.put("jobs/j/k", b"x")
    own_s3.pause()
    try:
        with pytest.raises(StorageError, match="did not answer within 1s") as timed_out:
            storage.get("jobs/j/k")
        assert timed_out.value.transient
    finally:
        own_s3.unpause()
    assert storage.get("jobs/j/k") == b"x"


def test_the_coordinator_keeps_a_workers_storage_error_as_one_short_line() -> None:
    broker = Broker()
    worker = broker.registry.register("w1", ("noop",), 1, "host", 0.0)
    broker.registry.heartbeat(worker, False, 1.0, "cannot reach S3\nendpoint " + "x" * 1000)
    assert worker.storage_error.startswith("cannot reach S3 endpoint x")
    assert len(worker.storage_error) == MAX_STORAGE_ERROR_LENGTH
    broker.registry.heartbeat(worker, False, 2.0, "")
    assert worker.storage_error == ""


# ---- a real S3 server stopped mid-render ------------------------------------

# 60 s in CI; FRACTALQ_TEST_OUTAGE_SECONDS=300 runs the five minutes.
OUTAGE_SECONDS = float(os.environ.get("FRACTALQ_TEST_OUTAGE_SECONDS", "60"))
# Half the image is the inside of the period-3 bulb, where every pixel runs
# all its iterations: some seconds of rendering on two workers, so the outage
# begins with most bands still to do.
REQUEST = RenderRequest.create(
    width=600, height=400, max_iter=250_000, center_x=-0.1226, center_y=0.7449, view_width=0.3
)
VIEW = ["--width", "600", "--height", "400", "--max-iter", "250000",
        "--center-x", "-0.1226", "--center-y", "0.7449", "--view-width", "0.3"]  # fmt: skip


@pytest.fixture
def own_s3() -> Iterator[SeaweedS3]:
    """A server of this test's own, since the test stops it."""
    with SeaweedS3() as server:
        yield server


def test_a_render_survives_a_storage_outage_without_spending_attempts(
    tmp_path: Path, own_s3: SeaweedS3
) -> None:
    storage = f"s3://{own_s3.make_bucket('outage')}/renders"
    env = {**os.environ, **own_s3.env()}
    group = ProcessGroup(tmp_path)
    render: subprocess.Popen[str] | None = None
    try:
        coordinator = group.start_coordinator()
        # One worker runs bands on a thread, the other in child processes.
        workers = [group.start_worker(storage=storage, env=env, concurrency=n) for n in (1, 2)]
        out = tmp_path / "outage.png"
        with coordinator.client() as client:
            wait_until(lambda: len(client.stats().workers) == 2, 60, "two workers")
            ids = {worker.worker_id for worker in client.stats().workers}
            render = subprocess.Popen(
                fractalq("render", "--coordinator", coordinator.address, "--storage", storage,
                         "--out", str(out), "--regions", "40", *VIEW),
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            wait_until(lambda: client.stats().tasks_succeeded >= 3, 120, "the render under way")
            # The store dies holding requests: connections reset mid-request, the
            # nastiest way to go (a clean stop would answer or close them first).
            own_s3.pause()
            wait_until(own_s3.waiting_requests, 60, "a worker's request in flight")
            own_s3.crash()
            began = time.monotonic()

            def reporting() -> list[str]:
                return [w.storage_error for w in client.stats().workers if w.storage_error]

            errors = wait_until(reporting, OUTAGE_SECONDS, "a worker to report storage down")
            assert any(own_s3.endpoint in error for error in errors), errors
            status = run_cli("status", "--coordinator", coordinator.address)
            assert "storage unavailable (" in status.stdout, status.stdout
            metrics = f"http://127.0.0.1:{coordinator.http_port}/metrics"
            with urllib.request.urlopen(metrics, timeout=10) as response:
                gauge = re.search(
                    rb"^fractalq_workers_storage_unavailable ([0-9.]+)$", response.read(), re.M
                )
            assert gauge is not None and float(gauge[1]) >= 1
            # A worker started meanwhile waits for storage too, rather than exit.
            workers.append(group.start_worker(storage=storage, env=env))
            # The expected image, made meanwhile: the workers are idle anyway.
            expected = reference_png(REQUEST)

            def late_worker_waiting() -> bool:
                late = [w for w in client.stats().workers if w.worker_id not in ids]
                return len(late) == 1 and bool(late[0].storage_error)

            wait_until(late_worker_waiting, OUTAGE_SECONDS, "the late worker waiting")
            assert time.monotonic() - began < OUTAGE_SECONDS, "the outage was over too soon"
            while time.monotonic() - began < OUTAGE_SECONDS:
                stats = client.stats()
                assert (stats.tasks_failed, stats.tasks_dead) == (0, 0)
                assert render.poll() is None, render.communicate()
                time.sleep(0.5)
            succeeded_during = client.stats().tasks_succeeded
            own_s3.resume()
            _, stderr = render.communicate(timeout=240)
            assert render.returncode == 0, stderr
            assert out.read_bytes() == expected
            [job] = client.jobs()
            assert (job.succeeded, job.dead, job.total) == (40, 0, 40)
            assert succeeded_during < 40
            stats = client.stats()
            # No attempt was spent: nothing failed and no worker was lost.
            assert (stats.tasks_failed, stats.tasks_dead) == (0, 0)
            assert ids < {worker.worker_id for worker in stats.workers}
            assert all(worker.failed == 0 for worker in stats.workers)
            wait_until(lambda: not reporting(), 30, "the storage errors cleared")
        logs = "".join(worker.log() for worker in workers)
        assert "storage unavailable, taking no new task" in logs
        assert "storage answers again" in logs
    finally:
        if render is not None and render.poll() is None:
            render.kill()
            render.communicate()
        group.stop()
