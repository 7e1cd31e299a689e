"""A worker's requests about tasks: leases and reports, over one Work stream.

GetTask, CompleteTask and FailTask go to the coordinator as
messages of one bidirectional ``Work`` stream per session (see
``coordinator/workstream.py``): each request carries an id and is answered by
the response with that id, in whatever order answers are ready, so a long poll
waiting for tasks never holds up a report. A message costs a fraction of a
call on both sides.

When the stream breaks, every request waiting for its answer raises the
stream's error (an :class:`grpc.aio.AioRpcError`, as the call would have), so
the worker reconnects or stops on it exactly as it would on a failed call.

:class:`UnaryCalls` makes the same requests as separate calls, for a
coordinator of an earlier release that has no Work stream.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Protocol

import grpc

from fractalq.proto import fractalq_pb2 as pb
from fractalq.proto import fractalq_pb2_grpc as pb_grpc

Metadata = tuple[tuple[str, str], ...]


class TaskCalls(Protocol):
    async def get_task(self, request: pb.GetTaskRequest, seconds: float) -> pb.GetTaskResponse: ...
    async def complete(
        self, request: pb.CompleteTaskRequest, seconds: float
    ) -> pb.ReportResponse: ...
    async def fail(self, request: pb.FailTaskRequest, seconds: float) -> pb.ReportResponse: ...
    def close(self) -> None: ...


class StreamEnded(Exception):
    """The coordinator ended the Work stream without an error status."""


class StreamCalls:
    """Requests over one Work stream, answered by id. Create it inside the event loop."""

    def __init__(self, stub: pb_grpc.CoordinatorStub, metadata: Metadata | None) -> None:
        self._call = stub.Work(metadata=metadata)
        self._waiting: dict[int, asyncio.Future[pb.WorkResponse]] = {}
        self._ids = itertools.count(1)
        self._writing = asyncio.Lock()  # gRPC takes one write at a time
        self._error: BaseException | None = None
        self._reader = asyncio.create_task(self._read())

    async def get_task(self, request: pb.GetTaskRequest, seconds: float) -> pb.GetTaskResponse:
        return (await self._ask(pb.WorkRequest(get_task=request), seconds)).tasks

    async def complete(self, request: pb.CompleteTaskRequest, seconds: float) -> pb.ReportResponse:
        return (await self._ask(pb.WorkRequest(complete=request), seconds)).report

    async def fail(self, request: pb.FailTaskRequest, seconds: float) -> pb.ReportResponse:
        return (await self._ask(pb.WorkRequest(fail=request), seconds)).report

    def close(self) -> None:
        self._call.cancel()
        self._reader.cancel()

    async def _ask(self, request: pb.WorkRequest, seconds: float) -> pb.WorkResponse:
        if self._error is not None:
            raise self._error
        request.id = key = next(self._ids)
        answer: asyncio.Future[pb.WorkResponse] = asyncio.get_running_loop().create_future()
        self._waiting[key] = answer
        try:
            async with self._writing:
                await self._call.write(request)
            async with asyncio.timeout(seconds):
                return await answer
        except grpc.aio.UsageError:  # written after the stream ended: its own error
            await asyncio.wait([self._reader], timeout=seconds)
            raise self._error or StreamEnded("the Work stream has ended") from None
        finally:
            self._waiting.pop(key, None)

    async def _read(self) -> None:
        error: BaseException = StreamEnded("the coordinator ended the Work stream")
        try:
            while (message := await self._call.read()) is not grpc.aio.EOF:
                assert isinstance(message, pb.WorkResponse)
                answer = self._waiting.get(message.id)
                if answer is not None and not answer.done():
                    answer.set_result(message)
        except grpc.aio.AioRpcError as failed:
            error = failed
        except asyncio.CancelledError:
            error = StreamEnded("the Work stream was closed")
            raise
        finally:
            self._error = error
            for answer in self._waiting.values():
                if not answer.done():
                    answer.set_exception(error)


class UnaryCalls:
    """The same requests as calls of their own (a coordinator without Work)."""

    def __init__(self, stub: pb_grpc.CoordinatorStub, metadata: Metadata | None) -> None:
        self._stub = stub
        self._metadata = metadata

    async def get_task(self, request: pb.GetTaskRequest, seconds: float) -> pb.GetTaskResponse:
        response: pb.GetTaskResponse = await self._stub.GetTask(
            request, timeout=seconds, metadata=self._metadata
        )
        return response

    async def complete(self, request: pb.CompleteTaskRequest, seconds: float) -> pb.ReportResponse:
        response: pb.ReportResponse = await self._stub.CompleteTask(
            request, timeout=seconds, metadata=self._metadata
        )
        return response

    async def fail(self, request: pb.FailTaskRequest, seconds: float) -> pb.ReportResponse:
        response: pb.ReportResponse = await self._stub.FailTask(
            request, timeout=seconds, metadata=self._metadata
        )
        return response

    def close(self) -> None:
        pass
