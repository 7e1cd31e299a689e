"""The floor under a no-op job's latency: bare gRPC on 127.0.0.1, nothing of fractalq.

    python bench/grpc_floor.py [--calls 3000]

A server process (grpc.aio, as the coordinator) answers an empty unary call
and echoes an empty message on a bidirectional stream; this process times, one
after another: the unary call from a synchronous client (as ``Client.submit``
makes SubmitJob), the same from an asyncio client, and a message's round trip on
an open stream (as a worker's lease and report travel on its Work stream).
Prints p50 and p99 of each, and the CPU time (user + system, all threads) the
server and the client spent per exchange: on a machine of two cores a job's
processes share them, so CPU is latency too. A no-op job is at least one unary call (the
submission that waits) plus one stream round trip (the lease out, the report
back), so their sum is what no queue written on Python's gRPC can go under
on the machine measured.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import time
from collections.abc import AsyncIterator, Callable

import grpc
from grpc import aio
from proc_usage import cpu_seconds

SERVICE = "floor.Echo"


def serve(port: multiprocessing.Queue[int]) -> None:
    async def main() -> None:
        server = aio.server()

        async def unary(request: bytes, context: aio.ServicerContext[bytes, bytes]) -> bytes:
            return b""

        async def stream(
            requests: AsyncIterator[bytes], context: aio.ServicerContext[bytes, bytes]
        ) -> AsyncIterator[bytes]:
            async for _ in requests:
                yield b""

        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.stream_stream_rpc_method_handler(stream),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        port.put(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


def quantiles(seconds: list[float]) -> str:
    ordered = sorted(seconds)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {statistics.median(ordered) * 1000:.3f} ms, p99 {p99 * 1000:.3f} ms"


class Usage:
    """CPU time per exchange of the server and this process, over one timed loop."""

    def __init__(self, server: int) -> None:
        self.server = server
        self.per_exchange: dict[str, tuple[float, float]] = {}

    def start(self) -> None:
        self._began = cpu_seconds(self.server), cpu_seconds(os.getpid())

    def stop(self, name: str, exchanges: int) -> None:
        server, client = cpu_seconds(self.server), cpu_seconds(os.getpid())
        self.per_exchange[name] = (
            (server - self._began[0]) / exchanges,
            (client - self._began[1]) / exchanges,
        )


def timed(calls: int, call: Callable[[], object], usage: Usage) -> list[float]:
    for _ in range(200):  # warm
        call()
    seconds = []
    usage.start()
    for _ in range(calls):
        began = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - began)
    usage.stop("sync", calls)
    return seconds


async def timed_async(calls: int, address: str, usage: Usage) -> tuple[list[float], list[float]]:
    async with aio.insecure_channel(address) as channel:
        unary = channel.unary_unary(f"/{SERVICE}/Unary")
        for _ in range(200):
            await unary(b"")
        calls_seconds = []
        usage.start()
        for _ in range(calls):
            began = time.perf_counter()
            await unary(b"")
            calls_seconds.append(time.perf_counter() - began)
        usage.stop("async", calls)
        stream = channel.stream_stream(f"/{SERVICE}/Stream")()
        for _ in range(200):
            await stream.write(b"")
            await stream.read()
        messages = []
        usage.start()
        for _ in range(calls):
            began = time.perf_counter()
            await stream.write(b"")
            await stream.read()
            messages.append(time.perf_counter() - began)
        usage.stop("stream", calls)
        await stream.done_writing()
        return calls_seconds, messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()
    ports: multiprocessing.Queue[int] = multiprocessing.Queue()
    server = multiprocessing.Process(target=serve, args=(ports,), daemon=True)
    server.start()
    try:
        address = f"127.0.0.1:{ports.get(timeout=30)}"
        assert server.pid is not None
        usage = Usage(server.pid)
        with grpc.insecure_channel(address) as channel:
            unary = channel.unary_unary(f"/{SERVICE}/Unary")
            sync_calls = timed(args.calls, lambda: unary(b""), usage)
        async_calls, messages = asyncio.run(timed_async(args.calls, address, usage))
    finally:
        server.kill()
    rows = (
        ("unary call, synchronous client: ", sync_calls, "sync"),
        ("unary call, asyncio client:     ", async_calls, "async"),
        ("stream message round trip:      ", messages, "stream"),
    )
    for label, seconds, name in rows:
        server_cpu, client_cpu = usage.per_exchange[name]
        print(
            f"{label} {quantiles(seconds)}; CPU server {server_cpu * 1e6:.0f} us,"
            f" client {client_cpu * 1e6:.0f} us"
        )
    floor = statistics.median(sync_calls) + statistics.median(messages)
    print(f"a no-op job's floor (a call plus a round trip): about {floor * 1000:.2f} ms")


if __name__ == "__main__":
    main()
