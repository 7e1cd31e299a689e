"""Role tokens on the coordinator's gRPC and HTTP APIs, with real processes.

No token or an unknown one: UNAUTHENTICATED / 401. A known token whose role
may not make the call: PERMISSION_DENIED / 403. Workers make the worker calls,
readers read, clients read, submit and cancel. The health service, /healthz
and /metrics answer everybody. No token ever reaches a log.
"""

from __future__ import annotations

import os
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from procs import Coordinator, ProcessGroup, Trust, run_cli, wait_until

from fractalq.endpoint import Endpoint
from fractalq.proto import fractalq_pb2 as pb
from fractalq.proto import fractalq_pb2_grpc as pb_grpc

WORKER_CALLS = {"RegisterWorker", "Heartbeat", "GetTask", "CompleteTask", "FailTask",
                "ReleaseTasks", "UnregisterWorker"}  # fmt: skip
READS = {"GetJob", "WatchJob", "ListJobs", "GetStats"}
ALLOWED: dict[str | None, set[str]] = {
    None: set(),
    "unknown": set(),
    "worker": WORKER_CALLS,
    "reader": READS,
    "client": READS | {"SubmitJob", "CancelJob"},
}
REFUSALS = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


def _calls(stub: pb_grpc.CoordinatorStub) -> dict[str, Callable[[], Any]]:
    """One harmless call of every method: the answer's code is what matters."""
    t = 10
    return {
        "RegisterWorker": lambda: stub.RegisterWorker(pb.RegisterWorkerRequest(), timeout=t),
        "Heartbeat": lambda: list(stub.Heartbeat(iter([pb.HeartbeatRequest()]), timeout=t)),
        "GetTask": lambda: stub.GetTask(pb.GetTaskRequest(), timeout=t),
        "CompleteTask": lambda: stub.CompleteTask(pb.CompleteTaskRequest(), timeout=t),
        "FailTask": lambda: stub.FailTask(pb.FailTaskRequest(), timeout=t),
        "ReleaseTasks": lambda: stub.ReleaseTasks(pb.ReleaseTasksRequest(), timeout=t),
        "UnregisterWorker": lambda: stub.UnregisterWorker(pb.UnregisterWorkerRequest(), timeout=t),
        "SubmitJob": lambda: stub.SubmitJob(pb.SubmitJobRequest(), timeout=t),
        "GetJob": lambda: stub.GetJob(pb.GetJobRequest(job_id="nope"), timeout=t),
        "WatchJob": lambda: list(stub.WatchJob(pb.WatchJobRequest(job_id="nope"), timeout=t)),
        "ListJobs": lambda: stub.ListJobs(pb.ListJobsRequest(), timeout=t),
        "CancelJob": lambda: stub.CancelJob(pb.CancelJobRequest(job_id="nope"), timeout=t),
        "GetStats": lambda: stub.GetStats(pb.GetStatsRequest(), timeout=t),
    }


def _code(call: Callable[[], Any]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as error:
        code: grpc.StatusCode = error.code()
        return code
    return grpc.StatusCode.OK


def _endpoint(coordinator: Coordinator, trust: Trust, role: str | None) -> Endpoint:
    endpoint = trust.endpoint(coordinator.address, role if role != "unknown" else None)
    if role == "unknown":
        return Endpoint(endpoint.address, endpoint.tls, "not-a-known-token-0123456789")
    return endpoint


@pytest.fixture
def trust(tmp_path: Path) -> Trust:
    return Trust(tmp_path / "trust")


def test_each_role_makes_its_grpc_calls_and_no_other(cluster: ProcessGroup, trust: Trust) -> None:
    coordinator = cluster.start_coordinator(trust=trust)
    for role, allowed in ALLOWED.items():
        with _endpoint(coordinator, trust, role).channel() as channel:
            for method, call in _calls(pb_grpc.CoordinatorStub(channel)).items():
                code = _code(call)
                if method in allowed:
                    assert code not in REFUSALS, (role, method, code)
                elif role in (None, "unknown"):
                    assert code == grpc.StatusCode.UNAUTHENTICATED, (role, method, code)
                else:
                    assert code == grpc.StatusCode.PERMISSION_DENIED, (role, method, code)
    # The health service answers without a token (the kubelet's probe has none).
    with _endpoint(coordinator, trust, None).channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def _get(url: str, context: ssl.SSLContext, token: str | None) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as reply:
            return reply.status, dict(reply.headers)
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers)


def test_http_reads_need_a_reader_or_client_token(cluster: ProcessGroup, trust: Trust) -> None:
    coordinator = cluster.start_coordinator(trust=trust)
    context = ssl.create_default_context(cafile=trust.path("ca.crt"))
    base = f"https://127.0.0.1:{coordinator.http_port}"
    for path in ("/healthz", "/metrics"):  # open: probes and scrapers carry no token
        assert _get(base + path, context, None)[0] == 200
    for path in ("/api/stats", "/api/workers", "/api/jobs", "/api/jobs/nope"):
        status, headers = _get(base + path, context, None)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
        assert _get(base + path, context, "x" * 30)[0] == 401
        assert _get(base + path, context, trust.tokens["worker"])[0] == 403
        for role in ("reader", "client"):
            expected = 404 if path.endswith("nope") else 200
            assert _get(base + path, context, trust.tokens[role])[0] == expected, (path, role)


def test_refused_commands_are_one_line(cluster: ProcessGroup, trust: Trust) -> None:
    coordinator = cluster.start_coordinator(trust=trust)
    submit = ("submit", "--coordinator", coordinator.address, "--task", "noop")
    as_reader = run_cli(*submit, env=trust.env("reader"))
    assert as_reader.returncode == 1
    assert as_reader.stderr.strip() == (
        "fractalq submit: error: the reader token may not make this call"
    )
    anonymous = run_cli("status", "--coordinator", coordinator.address, env=trust.env(None))
    assert anonymous.returncode == 1
    assert anonymous.stderr.strip().splitlines() == [
        "fractalq status: error: a valid token is required (authorization: Bearer TOKEN)"
    ]
    as_client = run_cli(*submit, "--count", "3", env=trust.env("client"))
    assert as_client.returncode == 0, as_client.stderr
    with coordinator.client() as client:
        assert client.stats().queued == 3


def test_a_worker_with_a_reader_token_exits_with_one_line(
    cluster: ProcessGroup, trust: Trust
) -> None:
    coordinator = cluster.start_coordinator(trust=trust)
    worker = cluster.start_worker(role="reader")
    assert worker.wait(30) != 0
    assert "PERMISSION_DENIED" in worker.log() and "Traceback" not in worker.log()
    with coordinator.client() as client:
        assert not client.stats().workers


def test_tokens_work_without_tls_and_never_reach_a_log(tmp_path: Path) -> None:
    trust = Trust(tmp_path / "trust")
    group = ProcessGroup(tmp_path)
    try:
        # Tokens alone (a trusted network, or TLS ended by a proxy in front).
        coordinator = group.start_coordinator(
            extra=("--auth-tokens", trust.path("tokens"), "--verbose")
        )
        plain = {"FRACTALQ_TOKEN_FILE": str(trust.token_file("worker"))}
        worker = group.start_worker(env=plain, extra_args=("--verbose",))
        client_env = {**os.environ, "FRACTALQ_TOKEN": trust.tokens["client"]}
        done = run_cli("submit", "--coordinator", coordinator.address, "--task", "noop",
                       "--count", "5", "--wait", env=client_env)  # fmt: skip
        assert done.returncode == 0, done.stderr
        # Refused calls, with a wrong token and with the right token of the wrong role.
        for token in ("wrong-token-" + trust.tokens["client"][:10], trust.tokens["worker"]):
            refused = run_cli("status", "--coordinator", coordinator.address,
                              env={**os.environ, "FRACTALQ_TOKEN": token})  # fmt: skip
            assert refused.returncode == 1
            assert not any(t in refused.stderr for t in trust.tokens.values())
        with Endpoint(coordinator.address, token=trust.tokens["client"]).channel() as channel:
            stub = pb_grpc.CoordinatorStub(channel)
            wait_until(lambda: stub.GetStats(pb.GetStatsRequest()).tasks_succeeded == 5)
    finally:
        group.stop()
    logs = coordinator.log() + worker.log()
    assert "registered" in logs
    # Refusals are said, rate-limited, naming the call, never the token.
    assert (
        "refused 1 unauthenticated request(s)"
        " (latest: /fractalq.v1.Coordinator/GetStats without a valid token)"
    ) in coordinator.log()
    for token in trust.tokens.values():
        assert token not in logs


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "worker secret-token-0123456789\nroot secret-token-abcdefghij\n",
            "line 2: unknown role (one of worker, client, reader, admin)",
        ),
        ("client short\n", "line 1: a token must have at least 16 characters"),
    ],
)
def test_a_bad_token_file_stops_the_coordinator_with_one_line(
    tmp_path: Path, text: str, message: str
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(text)
    result = run_cli("coordinator", "--port", "0", "--no-http", "--auth-tokens", str(tokens),
                     timeout=30)  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip() == f"fractalq coordinator: error: {tokens}: {message}"
    for secret in ("secret-token", "short"):
        assert secret not in result.stderr
    missing = run_cli("coordinator", "--port", "0", "--auth-tokens", str(tmp_path / "nope"))
    assert missing.returncode == 1 and "cannot read" in missing.stderr
    assert missing.stderr.count("\n") == 1
