"""Property-based fuzzing of every RPC of a live coordinator (hypothesis).

Random bytes and random messages with boundary values (empty and oversized
strings, control characters, NaN and infinities, the integer limits, deep
nesting of repeated fields) go to all the coordinator's methods, sometimes
under a real worker's id and session so that the checks past authentication
are reached too. Whatever arrives, the coordinator must answer with a
documented status code, keep serving, log no traceback and stay within a
memory bound.
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import random
import re
import socket
import ssl
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kube import Emulator
from procs import Coordinator, Process, ProcessGroup, Trust, fractalq, free_port, wait_until

from fractalq import config
from fractalq.coordinator.access import METHOD_ROLES
from fractalq.proto import fractalq_pb2 as pb
from fractalq.security.tokens import Role

SERVICE = pb.DESCRIPTOR.services_by_name["Coordinator"]
METHODS = list(SERVICE.methods)
CALL_TIMEOUT = 2.0
# The codes a client may get: the documented refusals, and a deadline for the
# calls that wait (long polls, watches, heartbeat streams) when they time out.
DOCUMENTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
WAITING = {"GetTask", "WatchJob", "Heartbeat"}
MEMORY_BOUND_KB = 400 * 1024

FLOATS = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 0.0, 1e308, 5e-324, 30.0, 31.0]),
    st.floats(allow_nan=True, allow_infinity=True),
)
TEXT = st.one_of(
    st.sampled_from(["", "noop", "sleep", "fail", "fractal.band", "w\n2026 forged", "a" * 300]),
    st.text(max_size=40),
    st.text(alphabet="abc.-_:/0129", min_size=1, max_size=140),
)
INTS = {
    FieldDescriptor.TYPE_UINT32: st.one_of(
        st.sampled_from([0, 1, 2, 1000, 1001, 2**32 - 1]), st.integers(0, 2**32 - 1)
    ),
    FieldDescriptor.TYPE_UINT64: st.integers(0, 2**64 - 1),
    FieldDescriptor.TYPE_INT32: st.one_of(
        st.sampled_from([-(2**31), -1_000_001, 0, 1_000_001, 2**31 - 1]),
        st.integers(-(2**31), 2**31 - 1),
    ),
}


def is_map(field: Any) -> bool:
    return field.type == FieldDescriptor.TYPE_MESSAGE and bool(
        field.message_type.GetOptions().map_entry
    )


def field_values(field: Any, depth: int) -> st.SearchStrategy[Any]:
    if is_map(field):
        return st.dictionaries(TEXT, TEXT, max_size=40)
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return messages(field.message_type, depth + 1)
    if field.type == FieldDescriptor.TYPE_STRING:
        return TEXT
    if field.type == FieldDescriptor.TYPE_BYTES:
        return st.one_of(st.binary(max_size=64), st.sampled_from([b"{}", b'{"seconds": 0}', b"["]))
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return FLOATS
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type == FieldDescriptor.TYPE_ENUM:
        return st.sampled_from([value.number for value in field.enum_type.values])
    return INTS[field.type]


def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    """Keyword arguments for a message of ``descriptor``, any subset of its fields set."""
    fields = {}
    for field in descriptor.fields:
        values = field_values(field, depth)
        if field.is_repeated and not is_map(field):
            values = st.lists(values, max_size=3 if depth else 40)
        fields[field.name] = values
    return st.fixed_dictionaries({}, optional=fields)


def build(method: Any, fields: dict[str, Any]) -> bytes:
    kind: type[Message] = getattr(pb, method.input_type.name)
    message = kind()
    fill(message, fields)
    return message.SerializeToString()


def fill(message: Message, fields: dict[str, Any]) -> None:
    for name, value in fields.items():
        field = message.DESCRIPTOR.fields_by_name[name]
        try:
            if is_map(field):
                getattr(message, name).update(value)
            elif field.is_repeated:
                target = getattr(message, name)
                for item in value:
                    if field.type == FieldDescriptor.TYPE_MESSAGE:
                        fill(target.add(), item)
                    else:
                        target.append(item)
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                fill(getattr(message, name), value)
            else:
                setattr(message, name, value)
        except (ValueError, TypeError):
            continue  # a value the field cannot hold (invalid UTF-8, say): leave it out


class Fuzzer:
    """Raw-bytes calls to a live coordinator, with the outcomes counted."""

    def __init__(self, coordinator: Coordinator) -> None:
        limit = config.MAX_MESSAGE_BYTES
        self.channel = grpc.insecure_channel(
            coordinator.address,
            options=[
                ("grpc.max_send_message_length", limit),
                ("grpc.max_receive_message_length", limit),
            ],
        )
        self.outcomes: collections.Counter[tuple[str, str]] = collections.Counter()
        self.details = ""  # of the last refused call
        registered = pb.RegisterWorkerResponse.FromString(
            self.channel.unary_unary(f"/{SERVICE.full_name}/RegisterWorker")(
                pb.RegisterWorkerRequest(
                    worker_id="fuzz-worker", task_types=["noop"]
                ).SerializeToString(),
                timeout=10,
            )
        )
        self.worker = {"worker_id": "fuzz-worker", "session": registered.session}

    def call(self, name: str, body: bytes) -> grpc.StatusCode:
        path = f"/{SERVICE.full_name}/{name}"
        method = SERVICE.methods_by_name[name]
        try:
            if method.client_streaming:
                replies = self.channel.stream_stream(path)(iter([body, body]), timeout=CALL_TIMEOUT)
                for _ in zip(range(2), replies, strict=False):
                    pass
                replies.cancel()
            elif method.server_streaming:
                replies = self.channel.unary_stream(path)(body, timeout=CALL_TIMEOUT)
                for _ in zip(range(2), replies, strict=False):
                    pass
                replies.cancel()
            else:
                self.channel.unary_unary(path)(body, timeout=CALL_TIMEOUT)
            code = grpc.StatusCode.OK
        except grpc.RpcError as error:
            code = error.code()
            details = self.details = error.details() or ""
            assert "<class" not in details and "Traceback" not in details, details
        if code == grpc.StatusCode.CANCELLED and (
            method.client_streaming or method.server_streaming
        ):
            code = grpc.StatusCode.OK  # we ended the stream ourselves
        self.outcomes[(name, code.name)] += 1
        return code


def test_any_request_to_any_rpc_gets_a_documented_answer(cluster: ProcessGroup) -> None:
    coordinator = cluster.start_coordinator()
    fuzzer = Fuzzer(coordinator)

    @settings(
        max_examples=3000,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(data=st.data())
    def one_call(data: st.DataObject) -> None:
        method = data.draw(st.sampled_from(METHODS), label="method")
        if data.draw(st.booleans(), label="raw bytes"):
            body = data.draw(st.binary(max_size=256), label="body")
        else:
            fields = data.draw(messages(method.input_type), label="fields")
            if "worker_id" in fields and data.draw(st.booleans(), label="as the worker"):
                fields.update(fuzzer.worker)
            body = build(method, fields)
        code = fuzzer.call(method.name, body)
        waits = {grpc.StatusCode.DEADLINE_EXCEEDED} if method.name in WAITING else set()
        assert code in DOCUMENTED | waits, (
            f"{method.name} answered {code.name}: {fuzzer.details}\n{coordinator.log()[-3000:]}"
        )
        assert coordinator.alive()

    with fuzzer.channel:
        one_call()
    print("fuzz outcomes:", dict(sorted(fuzzer.outcomes.items())))
    assert sum(fuzzer.outcomes.values()) >= 2000
    assert len({name for name, _ in fuzzer.outcomes}) == len(METHODS)
    assert coordinator.alive()
    assert "Traceback" not in coordinator.log()
    status = Path(f"/proc/{coordinator.pid}/status").read_text().splitlines()
    rss = int(next(line.split()[1] for line in status if line.startswith("VmRSS")))
    assert rss < MEMORY_BOUND_KB, f"the coordinator uses {rss} kB"
    with coordinator.client() as client:
        assert client.stats().requests_invalid > 0


# ---- bytes that are no message at all, to every method on the gRPC port -----

HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"]
REFLECTION = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]
# Corrupt for every message type: a truncated varint, an invalid wire type,
# a length past the end, an unterminated group, an overlong varint.
NOT_MESSAGES = [b"\xff", b"\x08", b"\x07", b"\x0a\x05ab", b"\x0b" * 200,
                b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"]  # fmt: skip
HEALTH_CALLS = 500


def _role_for(service: str, method: str) -> str:
    if service in (HEALTH.full_name, REFLECTION.full_name):
        return "reader"  # any: these answer without a token
    roles = METHOD_ROLES[method]
    return str(
        next(role.value for role in (Role.CLIENT, Role.WORKER, Role.READER) if role in roles)
    )


def _raw_call(channel: grpc.Channel, service: Any, method: Any, body: bytes) -> grpc.RpcError:
    path = f"/{service.full_name}/{method.name}"
    try:
        if method.client_streaming:
            list(channel.stream_stream(path)(iter([body]), timeout=CALL_TIMEOUT))
        elif method.server_streaming:
            list(channel.unary_stream(path)(body, timeout=CALL_TIMEOUT))
        else:
            channel.unary_unary(path)(body, timeout=CALL_TIMEOUT)
    except grpc.RpcError as error:
        return error
    raise AssertionError(f"{method.name} accepted {body!r}")


@pytest.mark.parametrize("secure", [False, True], ids=["open", "tls-and-tokens"])
def test_bytes_that_are_no_message_are_refused_on_every_method_without_a_traceback(
    cluster: ProcessGroup, tmp_path: Path, secure: bool
) -> None:
    trust = Trust(tmp_path / "trust") if secure else None
    coordinator = cluster.start_coordinator(trust=trust)
    channels: dict[str, grpc.Channel] = {}

    def channel(role: str) -> grpc.Channel:
        if role not in channels:
            endpoint = trust.endpoint(coordinator.address, role) if trust else coordinator.endpoint
            channels[role] = endpoint.channel()
        return channels[role]

    calls = 0
    try:
        for service in (SERVICE, HEALTH, REFLECTION):
            for method in service.methods:
                for body in NOT_MESSAGES:
                    error = _raw_call(channel(_role_for(service.full_name, method.name)),
                                      service, method, body)  # fmt: skip
                    calls += 1
                    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (
                        method.name, body, error.code(), error.details())  # fmt: skip
                    details = error.details() or ""
                    assert details.startswith("not a valid "), details
                    assert "<class" not in details and "Error" not in details.split(":")[0]
        # Many malformed health checks, as anyone can send them without a token:
        # answered at once, and one log line at most every few seconds.
        before = len(coordinator.log())
        began = time.monotonic()
        health = HEALTH.methods_by_name["Check"]
        for _ in range(HEALTH_CALLS):
            assert _raw_call(channel("reader"), HEALTH, health, b"\xff").code() == (
                grpc.StatusCode.INVALID_ARGUMENT
            )
        calls += HEALTH_CALLS
        elapsed = time.monotonic() - began
        grown = len(coordinator.log()) - before
        assert grown < 2000, f"{HEALTH_CALLS} malformed health checks added {grown} bytes of log"
        print(f"{HEALTH_CALLS} malformed health checks: {elapsed:.2f} s, {grown} bytes of log")
        with coordinator.client() as client:
            assert client.stats().requests_invalid == calls
        assert coordinator.alive()
        assert "Traceback" not in coordinator.log()
    finally:
        for opened in channels.values():
            opened.close()


# ---- malformed HTTP to the HTTP port -----------------------------------------

HTTP_REQUESTS = 1500
HTTPS_REQUESTS = 600  # a TLS handshake each: fewer, for the suite's time
# The HTTP API's routes, with ids and parameters no valid request has (a tile
# that exists would wait for a worker: none is asked for).
PATHS = ["/", "/healthz", "/metrics", "/api/stats", "/api/workers", "/api/jobs",
         "/api/jobs?limit=x", "/api/jobs?limit=-5&active=maybe", "/api/jobs/nope",
         "/api/jobs/..%2F..", "/api/jobs/%ff%fe", "/api/jobs/a%00b/cancel", "/api/session",
         "/api/render", "/api/tasks", "/api/render/options", "/api/jobs/x/preview?since=a",
         "/api/jobs/x/preview?since=99999999999999999999999", "/api/jobs/x/image.png",
         "/api/events", "/explore", "/api/explore/config", "/api/explore/stats",
         "/api/explore/tiles?tiles=99/0/0", "/api/explore/tiles?tiles=a/b/c&max_iter=-1",
         "/api/explore/tile/1/5/5.png", "/api/explore/tile/0/0/0.png?max_iter=1e999",
         "/static/../fractalq.db", "/static/%2e%2e/x", "/nope", "/%", "/a?%zz=%"]  # fmt: skip
METHODS_HTTP = ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE"]
BODIES = [b"{", b"[]", b"null", b'{"token": 1}', b'{"token": "' + b"x" * 5000 + b'"}',
          b"\xff\xfe\x00", b'{"width": "1e999", "fractal": "\\ud800"}', b'{"a":' * 3000,
          b'{"task": "noop", "count": "-1"}', b'{"fractal": "mandelbrot", "width": 0}']  # fmt: skip
# Broken at the protocol level: the request line, a header, the framing.
BROKEN: list[Callable[[random.Random], bytes]] = [
    lambda r: b"GET /\x00\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
    lambda r: b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
    lambda r: b"G\x01T / HTTP/1.1\r\n\r\n",
    lambda r: b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
    lambda r: b"GET / HTTP/1.1\r\nX: \x01\x02\r\n\r\n",
    lambda r: b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\n\r\n",
    lambda r: b"GET / HTTP/1.1\r\nX: " + b"a" * 10000 + b"\r\n\r\n",
    lambda r: b"POST /api/tasks HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    lambda r: b"POST /api/tasks HTTP/1.1\r\nContent-Length: 1x\r\n\r\n",
    lambda r: b"POST /api/tasks HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc",
    lambda r: (
        b"POST /api/render HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n"
    ),
    lambda r: b"POST /api/render HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    lambda r: bytes(r.randrange(256) for _ in range(r.randrange(1, 300))),
]
HEADERS = ["Content-Type: application/json", "Content-Type: text/plain", "Expect: 100-continue",
           "Cookie: fractalq_session=" + "x" * 300, "Cookie: =;;;", "Authorization: Bearer \x7f",
           "Authorization: Basic Zm9vOmJhcg==", "Authorization: Bearer " + "a" * 2000,
           "Range: bytes=9-1", "If-Modified-Since: yesterday", "Accept-Encoding: br;q=x",
           "Content-Encoding: gzip", "Content-Encoding: deflate", "Connection: upgrade",
           "Upgrade: websocket", "Origin: http://evil.example"]  # fmt: skip


def fuzzed_request(rng: random.Random, token: str | None) -> tuple[bytes, bool]:
    """A request and whether it is broken at the protocol level (then: 400).

    With ``token``, half the others carry it, to reach past the token check.
    """
    if rng.random() < 0.3:
        return rng.choice(BROKEN)(rng), True
    method, path = rng.choice(METHODS_HTTP), rng.choice(PATHS)
    if rng.random() < 0.1:
        path += "".join(chr(rng.randrange(0x21, 0x7F)) for _ in range(rng.randrange(1, 8)))
    headers = ["Host: fuzz", *rng.sample(HEADERS, rng.randrange(0, 4))]
    if token and rng.random() < 0.5:
        headers = [h for h in headers if not h.startswith("Authorization")]
        headers.append(f"Authorization: Bearer {token}")
    body = rng.choice(BODIES) if rng.random() < 0.5 else b""
    if body:
        headers.append(f"Content-Length: {len(body)}")
    head = f"{method} {path} HTTP/1.1\r\n" + "\r\n".join(headers) + "\r\nConnection: close\r\n\r\n"
    return head.encode("latin-1") + body, False


_STATUS_LINE = re.compile(rb"(?:^|\r\n\r\n)HTTP/1\.[01] (\d{3}) ")


def http_status(port: int, request: bytes, tls: ssl.SSLContext | None) -> int | None:
    """The status the server answered ``request`` with (past a 100 Continue); None if
    it closed the connection without one."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        sock = tls.wrap_socket(raw, server_hostname="localhost") if tls else raw
        with contextlib.suppress(OSError):  # it may close before reading it all
            sock.sendall(request)
        received = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(4096):
                received += chunk
                statuses = [int(code) for code in _STATUS_LINE.findall(received)]
                if any(code != 100 for code in statuses):
                    break
    return next((code for code in map(int, _STATUS_LINE.findall(received)) if code != 100), None)


@pytest.mark.parametrize("secure", [False, True], ids=["open", "tls-and-tokens"])
def test_malformed_http_requests_get_a_4xx_and_no_traceback(
    cluster: ProcessGroup, tmp_path: Path, secure: bool
) -> None:
    trust = Trust(tmp_path / "trust") if secure else None
    coordinator = cluster.start_coordinator(trust=trust)
    tls = ssl.create_default_context(cafile=trust.path("ca.crt")) if trust else None
    rng = random.Random(19)
    statuses: collections.Counter[int | None] = collections.Counter()
    count = HTTPS_REQUESTS if trust else HTTP_REQUESTS
    for _ in range(count):
        request, broken = fuzzed_request(rng, trust.tokens["client"] if trust else None)
        status = http_status(coordinator.http_port, request, tls)
        statuses[status] += 1
        if broken:
            assert status in (400, None), (request[:200], status)
        else:
            assert status is not None and status < 500, (request[:200], status)
    print("HTTP statuses:", dict(statuses))
    assert statuses[400] > count / 4
    assert coordinator.alive()
    log = coordinator.log()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
    with urllib.request.urlopen(
        f"{'https' if tls else 'http'}://127.0.0.1:{coordinator.http_port}/healthz",
        context=tls,
        timeout=10,
    ) as ok:
        assert ok.status == 200  # fmt: skip


def test_malformed_http_to_the_operators_liveness_port_logs_no_traceback(
    cluster: ProcessGroup, tmp_path: Path
) -> None:
    """The operator's port (kopf's liveness probe, as the chart runs it) too."""
    emulator = Emulator()
    try:
        coordinator = cluster.start_coordinator()
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("FRACTALQ_")}
        env["KUBECONFIG"] = str(emulator.kubeconfig(tmp_path))
        healthz = f"http://127.0.0.1:{port}/healthz"
        args = fractalq("operator", "--coordinator", coordinator.address,
                        "--storage", (tmp_path / "store").as_uri(), "--scale-enabled", "false",
                        "-A", "--standalone", "--liveness", healthz)  # fmt: skip
        operator = Process(args, tmp_path / "operator.log", env=env)
        cluster.processes.append(operator)
        wait_until(lambda: urllib.request.urlopen(healthz, timeout=2).status == 200, 60, "kopf")
        rng = random.Random(7)
        for _ in range(100):
            assert http_status(port, rng.choice(BROKEN)(rng), None) in (400, None)
        with urllib.request.urlopen(healthz, timeout=10) as ok:
            assert ok.status == 200
        log = operator.log()
        assert "Traceback" not in log and "[ERROR" not in log, log[-3000:]
        assert "refused" in log and "invalid request(s)" in log
    finally:
        emulator.close()
