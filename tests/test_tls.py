"""TLS on the coordinator's two ports, with real processes and real certificates.

A plaintext client is refused; a wrong CA, an expired certificate, a name
mismatch, and a missing or foreign client certificate under mutual TLS are each
one line that says which; a render over TLS with tokens is byte-identical.
"""

from __future__ import annotations

import datetime
import json
import os
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest
from procs import Coordinator, ProcessGroup, Trust, run_cli, wait_until
from reference import reference_png

from fractalq.fractal.request import RenderRequest
from fractalq.proto import fractalq_pb2 as pb
from fractalq.proto import fractalq_pb2_grpc as pb_grpc
from fractalq.security.certs import LOCAL_NAMES, issue, make_ca

SMALL = ["--width", "240", "--height", "160", "--max-iter", "200"]


@pytest.fixture
def trust(tmp_path: Path) -> Trust:
    return Trust(tmp_path / "trust")


@pytest.fixture
def mutual(tmp_path: Path) -> Trust:
    return Trust(tmp_path / "mutual", mutual=True)


def _one_line(result_stderr: str) -> str:
    lines = result_stderr.strip().splitlines()
    assert len(lines) == 1, result_stderr
    assert "Traceback" not in result_stderr
    return lines[0]


def _status(coordinator: Coordinator, *args: str) -> tuple[int, str]:
    result = run_cli("status", "--coordinator", coordinator.address, *args, timeout=60)
    return result.returncode, result.stderr


def test_a_plaintext_client_is_refused(cluster: ProcessGroup, trust: Trust) -> None:
    coordinator = cluster.start_coordinator(trust=trust)
    with grpc.insecure_channel(coordinator.address) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            pb_grpc.CoordinatorStub(channel).GetStats(pb.GetStatsRequest(), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    code, stderr = _status(coordinator, "--token-file", str(trust.token_file("client")))
    assert code == 1
    assert "serves TLS: give --tls-ca" in _one_line(stderr)
    # The same client with the CA goes through.
    env = trust.env("client")
    result = run_cli("status", "--coordinator", coordinator.address, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("queue: 0 queued")


def _serve_with(tmp: Path, cert: bytes, key: bytes, trust: Trust) -> Coordinator:
    (tmp / "s.crt").write_bytes(cert)
    (tmp / "s.key").write_bytes(key)
    return Coordinator(tmp, extra=("--tls-cert", str(tmp / "s.crt"), "--tls-key",
                                   str(tmp / "s.key")))  # fmt: skip


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong CA", "the coordinator's certificate at 127.0.0.1:{port} is not signed by the CA"),
        ("expired", "the coordinator's certificate at 127.0.0.1:{port} has expired"),
        ("name mismatch", "the coordinator's certificate is not valid for the name '127.0.0.1'"),
    ],
)
def test_a_bad_server_certificate_is_one_line_that_says_which(
    tmp_path: Path, trust: Trust, case: str, expected: str
) -> None:
    ca = make_ca()
    if case == "wrong CA":  # a certificate from a CA the client was not given
        server = issue(ca, "elsewhere", LOCAL_NAMES)
    elif case == "expired":  # the client's CA, but its days are over
        ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=10)
        server = issue(ca, "old", LOCAL_NAMES, days=2, now=ago)
    else:  # the client's CA, for another name
        server = issue(ca, "other", ["coordinator.example"])
    ca_file = tmp_path / "client-ca.crt"
    ca_file.write_bytes((make_ca() if case == "wrong CA" else ca).cert_pem())
    coordinator = _serve_with(tmp_path, server.cert_pem(), server.key_pem(), trust)
    try:
        code, stderr = _status(coordinator, "--tls-ca", str(ca_file))
        assert code == 1
        line = _one_line(stderr)
        assert line.startswith("fractalq status: error: TLS: ")
        assert expected.format(port=coordinator.port) in line
    finally:
        coordinator.stop()


def test_mutual_tls_refuses_a_client_without_a_certificate(
    cluster: ProcessGroup, mutual: Trust, tmp_path: Path
) -> None:
    coordinator = cluster.start_coordinator(trust=mutual)
    token = ("--token-file", str(mutual.token_file("client")))
    code, stderr = _status(coordinator, "--tls-ca", mutual.path("ca.crt"), *token)
    assert code == 1
    assert "requires a client certificate (--tls-cert and --tls-key)" in _one_line(stderr)

    foreign = Trust(tmp_path / "foreign")  # a client certificate from another CA
    code, stderr = _status(coordinator, "--tls-ca", mutual.path("ca.crt"), *token,
                           "--tls-cert", foreign.path("client.crt"),
                           "--tls-key", foreign.path("client.key"))  # fmt: skip
    assert code == 1
    assert "refused the client certificate" in _one_line(stderr)

    code, stderr = _status(coordinator, "--tls-ca", mutual.path("ca.crt"), *token,
                           "--tls-cert", mutual.path("client.crt"),
                           "--tls-key", mutual.path("client.key"))  # fmt: skip
    assert code == 0, stderr


def test_a_worker_with_a_wrong_ca_exits_with_one_line(
    cluster: ProcessGroup, trust: Trust, tmp_path: Path
) -> None:
    coordinator = cluster.start_coordinator(trust=trust)
    other = Trust(tmp_path / "other")
    env = {**trust.env("worker"), "FRACTALQ_TLS_CA": other.path("ca.crt")}
    worker = cluster.start_worker(env=env)
    assert worker.wait(30) != 0
    assert "is not signed by the CA" in worker.log()
    assert "Traceback" not in worker.log()
    with coordinator.client() as client:
        assert not client.stats().workers


def test_a_render_over_mutual_tls_with_tokens_is_byte_identical(
    cluster: ProcessGroup, mutual: Trust, tmp_path: Path
) -> None:
    coordinator = cluster.start_coordinator(trust=mutual)
    storage = (tmp_path / "store").as_uri()
    for _ in range(2):
        cluster.start_worker(storage=storage)
    with coordinator.client() as client:
        wait_until(lambda: len(client.stats().workers) == 2, message="workers over TLS")
    out = tmp_path / "secure.png"
    result = run_cli("render", "--coordinator", coordinator.address, "--storage", storage,
                     "--out", str(out), *SMALL, "--regions", "6",
                     env=mutual.env("client"), timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    expected = RenderRequest.create("mandelbrot", width=240, height=160, max_iter=200)
    assert out.read_bytes() == reference_png(expected)


def test_the_http_api_serves_tls(cluster: ProcessGroup, trust: Trust) -> None:
    coordinator = cluster.start_coordinator(trust=trust)
    context = ssl.create_default_context(cafile=trust.path("ca.crt"))
    base = f"https://127.0.0.1:{coordinator.http_port}"
    with urllib.request.urlopen(f"{base}/healthz", context=context, timeout=10) as reply:
        assert json.load(reply) == {"status": "ok"}
    with pytest.raises(OSError):  # plaintext HTTP is not served
        urllib.request.urlopen(f"http://127.0.0.1:{coordinator.http_port}/healthz", timeout=10)


def _demo_children() -> dict[str, tuple[list[str], dict[str, str]]]:
    """The demo's coordinator and a worker: command line and environment."""
    found: dict[str, tuple[list[str], dict[str, str]]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().decode().split("\0")
            if "fractalq-demo-" not in " ".join(argv) or "-m" not in argv:
                continue
            pairs = (proc / "environ").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        env = dict(pair.split("=", 1) for pair in pairs if "=" in pair)
        role = argv[argv.index("-m") + 2]
        found.setdefault(role, (argv, env))
    return found if {"coordinator", "worker"} <= found.keys() else {}


def test_the_demo_runs_the_secure_path(tmp_path: Path) -> None:
    out = tmp_path / "demo.png"
    args = ["--width", "900", "--height", "600", "--max-iter", "20000", "--center-x", "-0.1226",
            "--center-y", "0.7449", "--view-width", "0.04", "--workers", "1"]  # fmt: skip
    # The caller's own settings for another coordinator are not the demo's.
    env = {**os.environ, "FRACTALQ_TLS_CA": str(tmp_path / "elsewhere.crt")}
    demo = subprocess.Popen([sys.executable, "-m", "fractalq", "demo", *args, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)  # fmt: skip
    try:
        children = wait_until(_demo_children, 60, "the demo's processes")
    finally:
        _, stderr = demo.communicate(timeout=300)
    assert demo.returncode == 0, stderr
    coordinator, _ = children["coordinator"]
    assert {"--tls-cert", "--tls-key", "--auth-tokens"} <= set(coordinator)
    worker_argv, worker_env = children["worker"]
    assert worker_env["FRACTALQ_TLS_CA"].endswith("ca.crt")
    assert worker_env["FRACTALQ_TLS_CA"] != env["FRACTALQ_TLS_CA"]
    assert worker_env["FRACTALQ_TOKEN_FILE"].endswith("worker.token")
    assert not any("token" in arg and "tokens" not in arg for arg in worker_argv)
    expected = RenderRequest.create("mandelbrot", width=900, height=600, max_iter=20000,
                                    center_x=-0.1226, center_y=0.7449, view_width=0.04)  # fmt: skip
    assert out.read_bytes() == reference_png(expected)


def test_bad_tls_files_stop_the_coordinator_with_one_line(tmp_path: Path, trust: Trust) -> None:
    other = Trust(tmp_path / "other")
    cases = [
        (["--tls-cert", trust.path("server.crt")], "TLS needs both --tls-cert and --tls-key"),
        (["--tls-cert", trust.path("server.crt"), "--tls-key", other.path("server.key")],
         "do not load together"),
        (["--tls-cert", str(tmp_path / "nope.crt"), "--tls-key", trust.path("server.key")],
         "cannot read certificate"),
        (["--tls-cert", trust.path("tokens"), "--tls-key", trust.path("server.key")],
         "is not a PEM file"),
        (["--tls-cert", trust.path("server.crt"), "--tls-key", trust.path("server.key"),
          "--tls-client-ca", trust.path("server.key")], "holds no certificate"),
    ]  # fmt: skip
    for flags, message in cases:
        result = run_cli("coordinator", "--port", "0", "--no-http", *flags, timeout=30)
        assert result.returncode == 1, flags
        assert message in _one_line(result.stderr), flags
