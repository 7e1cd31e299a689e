"""Start-up and the command line: what is in the way is one line, never a traceback.

Real processes on 127.0.0.1: a second coordinator on a served port or a data
folder in use, bad hosts, taken ports, unusable folders, numbers that are not
finite, payloads nested too deeply, a worker whose storage cannot be written.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
from procs import Process, ProcessGroup, fractalq, free_port, run_cli
from s3server import SeaweedS3

from fractalq.client import Client, ClientError
from fractalq.proto import fractalq_pb2 as pb
from fractalq.storage import LocalStorage, StorageError, check_storage

DEEP = "[" * 30_000 + "]" * 30_000


def one_line_error(run: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The run failed with exactly one line on stderr that contains every needle."""
    assert run.returncode != 0, run
    assert "Traceback" not in run.stderr, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ---- numbers that are not finite -------------------------------------------


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (("coordinator", "--worker-timeout", "nan"), "--worker-timeout"),
        (("coordinator", "--retention", "nan"), "--retention"),
        (("coordinator", "--retention", "inf"), "--retention"),
        (("worker", "--coordinator", "127.0.0.1:1", "--grace-period", "nan"), "--grace-period"),
        (("wait", "some-job", "--coordinator", "127.0.0.1:1", "--timeout", "nan"), "--timeout"),
        (("wait", "some-job", "--coordinator", "127.0.0.1:1", "--timeout", "inf"), "--timeout"),
    ],
)
def test_a_flag_that_is_not_a_finite_number_is_refused(args: tuple[str, ...], flag: str) -> None:
    one_line_error(run_cli(*args), flag, "not a finite number")


@pytest.mark.parametrize("flag", ["--center-x", "--center-y", "--view-width", "--c-re", "--c-im"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_render_refuses_a_coordinate_that_is_not_finite(flag: str, value: str) -> None:
    run = run_cli(
        "render",
        "--julia",
        f"{flag}={value}",
        "--coordinator", "127.0.0.1:1",
        "--storage", "file:///nonexistent",
        "--out", "out.png",
    )  # fmt: skip
    # The view is a decimal number of any length, the Julia constant a float:
    # either way the message names the field and the value refused.
    one_line_error(run, flag[2:].replace("-", "_"), "(got ", value)


# ---- payloads nested too deeply ---------------------------------------------


def test_submit_of_a_payload_nested_too_deeply_is_one_line() -> None:
    run = run_cli("submit", "--coordinator", "127.0.0.1:1", "--task", "noop", "--payload", DEEP)
    one_line_error(run, "--payload", "nested too deeply")


@pytest.mark.parametrize("task", ["noop", "sleep", "fail", "fractal.band"])
def test_the_coordinator_refuses_a_payload_nested_too_deeply(
    cluster: ProcessGroup, task: str
) -> None:
    coordinator = cluster.start_coordinator()
    with coordinator.client() as client:
        with pytest.raises(ClientError, match="nested too deeply"):
            client.submit(pb.SubmitJobRequest(task_type=task, count=1, payload=DEEP.encode()))
        assert client.stats().jobs_active == 0
    assert "Traceback" not in coordinator.log()


# ---- one coordinator per port and per data folder ---------------------------


def snapshot(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file of ``folder`` with its size, modification time and bytes."""
    return {
        str(path.relative_to(folder)): (
            path.stat().st_size,
            path.stat().st_mtime_ns,
            path.read_bytes(),
        )
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_a_second_coordinator_on_a_served_port_exits_and_the_first_serves_every_submit(
    cluster: ProcessGroup, tmp_path: Path
) -> None:
    first = cluster.start_coordinator()
    run = run_cli(
        "coordinator",
        "--host", "127.0.0.1",
        "--port", str(first.port),
        "--no-http",
        "--data", str(tmp_path / "other"),
        timeout=20,
    )  # fmt: skip
    one_line_error(run, f"127.0.0.1:{first.port}", "gRPC", "already in use")
    with first.client() as client:
        ids = {
            client.submit(pb.SubmitJobRequest(task_type="noop", count=1)).job.job_id
            for _ in range(20)
        }
        assert {job.job_id for job in client.jobs()} == ids
    assert first.alive()


def test_a_second_coordinator_on_a_data_folder_in_use_exits_and_writes_nothing(
    cluster: ProcessGroup,
) -> None:
    first = cluster.start_coordinator()
    with first.client() as client:
        client.submit(pb.SubmitJobRequest(task_type="noop", count=3))
    before = snapshot(first.data)
    run = run_cli(
        "coordinator",
        "--host", "127.0.0.1",
        "--port", str(free_port()),
        "--no-http",
        "--data", str(first.data),
        timeout=20,
    )  # fmt: skip
    one_line_error(run, str(first.data), "in use", f"pid {first.pid}")
    assert snapshot(first.data) == before
    with first.client() as client:
        assert client.stats().queued == 3


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_the_data_folder_is_free_again_once_its_coordinator_ended(
    cluster: ProcessGroup, how: str
) -> None:
    first = cluster.start_coordinator()
    with first.client() as client:
        client.submit(pb.SubmitJobRequest(task_type="noop", count=2))
    if how == "SIGKILL":
        first.kill9()  # no clean-up ran: the kernel dropped the lock with the process
    first.stop()
    second = cluster.start_coordinator(data=first.data, name="second")
    with second.client() as client:
        assert client.stats().queued == 2


# ---- every start-up failure is one line --------------------------------------


def coordinator(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("coordinator", *args, timeout=20)


@pytest.mark.parametrize(
    ("host", "needle"),
    [
        ("not-a-host!!", "not-a-host!!:0 (gRPC): unknown host"),
        ("host.invalid", "host.invalid:0 (gRPC): unknown host"),
        ("", "is not a host name"),
        ("a\nforged log line", "'a\\nforged log line' is not a host name"),
        ("x" * 300, "is not a host name"),
    ],
)
def test_a_bad_host_is_one_line(host: str, needle: str) -> None:
    run = coordinator("--host", host, "--port", "0", "--no-http")
    one_line_error(run, needle)


def test_a_taken_grpc_port_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = coordinator("--host", "127.0.0.1", "--port", str(port), "--no-http")
    one_line_error(run, f"127.0.0.1:{port}", "gRPC", "already in use")


def test_a_taken_http_port_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = coordinator(
            "--host", "127.0.0.1", "--port", "0", "--http-port", str(port),
            "--data", str(tmp_path / "data"),
        )  # fmt: skip
    one_line_error(run, f"127.0.0.1:{port}", "HTTP", "already in use")
    assert not (tmp_path / "data" / "fractalq.db").exists()


def test_the_same_port_for_grpc_and_http_is_one_line(tmp_path: Path) -> None:
    port = str(free_port())
    run = coordinator(
        "--host", "127.0.0.1", "--port", port, "--http-port", port,
        "--data", str(tmp_path / "data"),
    )  # fmt: skip
    one_line_error(run, f"127.0.0.1:{port} (HTTP)", "it is the gRPC port")
    assert not (tmp_path / "data" / "fractalq.db").exists()


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        ("file", "is not a folder"),
        ("under-a-file", "Not a directory"),
        ("database-is-a-folder", "cannot open the database"),
        ("database-is-garbage", "not a database"),
    ],
)
def test_an_unusable_data_folder_is_one_line(tmp_path: Path, make: str, needle: str) -> None:
    data = tmp_path / "data"
    if make == "file":
        data.write_text("")
    elif make == "under-a-file":
        (tmp_path / "file").write_text("")
        data = tmp_path / "file" / "data"
    elif make == "database-is-a-folder":
        (data / "fractalq.db").mkdir(parents=True)
    else:
        data.mkdir()
        (data / "fractalq.db").write_bytes(bytes(range(256)) * 64)
    run = coordinator("--host", "127.0.0.1", "--port", "0", "--no-http", "--data", str(data))
    one_line_error(run, str(data), needle)


def test_the_default_bind_address_is_the_loopback(tmp_path: Path) -> None:
    process = Process(fractalq("coordinator", "--port", "0", "--no-http"), tmp_path / "c.log")
    try:
        assert process.proc.stdout is not None
        line = process.proc.stdout.readline().decode()
        assert line.startswith("coordinator listening on 127.0.0.1:"), line
    finally:
        process.stop()


# ---- a worker checks its storage before it registers -------------------------


def test_a_worker_whose_storage_cannot_be_written_exits_and_never_registers(
    cluster: ProcessGroup, tmp_path: Path
) -> None:
    coordinator = cluster.start_coordinator()
    blocker = tmp_path / "afile"
    blocker.write_text("a file where the storage folder should be")
    url = (blocker / "storage").as_uri()
    run = run_cli("worker", "--coordinator", coordinator.address, "--storage", url, timeout=30)
    one_line_error(run, "--storage", str(blocker / "storage"), "not writable")
    with coordinator.client() as client:
        assert len(client.stats().workers) == 0


def test_a_worker_with_a_bad_storage_url_exits_with_one_line(cluster: ProcessGroup) -> None:
    coordinator = cluster.start_coordinator()
    run = run_cli("worker", "--coordinator", coordinator.address, "--storage", "ftp://x/y")
    one_line_error(run, "storage URL must be")
    with coordinator.client() as client:
        assert len(client.stats().workers) == 0


@pytest.mark.parametrize("problem", ["missing bucket", "wrong secret"])
def test_a_worker_whose_bucket_cannot_be_used_exits_and_never_registers(
    cluster: ProcessGroup, s3_server: SeaweedS3, problem: str
) -> None:
    coordinator = cluster.start_coordinator()
    if problem == "missing bucket":
        bucket, env = "no-such-bucket-here", s3_server.env()
    else:
        bucket, env = s3_server.make_bucket(), s3_server.env(AWS_SECRET_ACCESS_KEY="wrong")
    url = f"s3://{bucket}/renders"
    run = run_cli(
        "worker", "--coordinator", coordinator.address, "--storage", url,
        env={**os.environ, **env}, timeout=60,
    )  # fmt: skip
    one_line_error(run, "--storage", bucket)
    with coordinator.client() as client:
        assert len(client.stats().workers) == 0


class Forgetful(LocalStorage):
    """A folder that takes writes but gives back other bytes (a broken mount, say)."""

    def get(self, key: str) -> bytes:
        return b"not what was written"


class ReadOnly(LocalStorage):
    """A folder that passes the cheap check but refuses objects (read-only credentials)."""

    def put(self, key: str, data: bytes) -> None:
        raise StorageError(f"access denied writing {key!r}")


def test_the_storage_check_writes_reads_back_and_deletes_a_probe(tmp_path: Path) -> None:
    check_storage(LocalStorage(tmp_path / "ok"))
    assert list((tmp_path / "ok").iterdir()) == []  # the probe is gone again
    with pytest.raises(StorageError, match="other bytes than were written"):
        check_storage(Forgetful(tmp_path / "forgetful"))
    assert list((tmp_path / "forgetful").iterdir()) == []
    with pytest.raises(StorageError, match="access denied"):
        check_storage(ReadOnly(tmp_path / "read-only"))


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
def test_an_ipv6_address_is_printed_so_that_a_client_can_use_it(tmp_path: Path) -> None:
    args = fractalq("coordinator", "--host", "::1", "--port", "0", "--no-http")
    process = Process(args, tmp_path / "c.log")
    try:
        assert process.proc.stdout is not None
        line = process.proc.stdout.readline().decode()
        assert line.startswith("coordinator listening on [::1]:"), line
        with Client(line.split()[3], timeout=10) as client:
            assert client.stats().jobs_active == 0
    finally:
        process.stop()


@pytest.mark.parametrize("variable", ["FRACTALQ_SCALE_INTERVAL", "FRACTALQ_SCALE_DOWN_WINDOW"])
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_the_operator_refuses_a_setting_that_is_not_finite(variable: str, value: str) -> None:
    env = {**os.environ, variable: value}
    run = run_cli("operator", "--storage", "s3://bucket", env=env, timeout=30)
    one_line_error(run, variable, "not a finite number")
