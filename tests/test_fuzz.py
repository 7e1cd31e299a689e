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
import math
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from procs import Coordinator, ProcessGroup

from fractalq import config
from fractalq.proto import fractalq_pb2 as pb

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
