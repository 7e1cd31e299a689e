"""The floor under a no-op job's latency: bare gRPC on 127.0.0.1, nothing of fractalq.

    python bench/grpc_floor.py [--calls 3000]

A server process (grpc.aio, as the coordinator) answers an empty unary call
and echoes an empty message on a bidirectional stream; this process times, one
after another: the unary call from a synchronous client (as ``Client.submit``
makes SubmitJob), the same from an asyncio client, and a message's round trip on
an open stream (as a worker's lease and report travel on its Work stream).
Prints p50 and p99 of each. A no-op job is at least one unary call (the
submission that waits) plus one stream round trip (the lease out, the report
back), so their sum is what no queue written on Python's gRPC can go under
on the machine measured.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import time
from collections.abc import AsyncIterator, Callable

import grpc
from grpc import aio

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


def timed(calls: int, call: Callable[[], object]) -> list[float]:
    for _ in range(200):  # warm
        call()
    seconds = []
    for _ in range(calls):
        began = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - began)
    return seconds


async def timed_async(calls: int, address: str) -> tuple[list[float], list[float]]:
    async with aio.insecure_channel(address) as channel:
        unary = channel.unary_unary(f"/{SERVICE}/Unary")
        for _ in range(200):
            await unary(b"")
        calls_seconds = []
        for _ in range(calls):
            began = time.perf_counter()
            await unary(b"")
            calls_seconds.append(time.perf_counter() - began)
        stream = channel.stream_stream(f"/{SERVICE}/Stream")()
        for _ in range(200):
            await stream.write(b"")
            await stream.read()
        messages = []
        for _ in range(calls):
            began = time.perf_counter()
            await stream.write(b"")
            await stream.read()
            messages.append(time.perf_counter() - began)
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
        with grpc.insecure_channel(address) as channel:
            unary = channel.unary_unary(f"/{SERVICE}/Unary")
            sync_calls = timed(args.calls, lambda: unary(b""))
        async_calls, messages = asyncio.run(timed_async(args.calls, address))
    finally:
        server.kill()
    print(f"unary call, synchronous client:  {quantiles(sync_calls)}")
    print(f"unary call, asyncio client:      {quantiles(async_calls)}")
    print(f"stream message round trip:       {quantiles(messages)}")
    floor = statistics.median(sync_calls) + statistics.median(messages)
    print(f"a no-op job's floor (a call plus a round trip): about {floor * 1000:.2f} ms")


if __name__ == "__main__":
    main()
