"""A worker's Work stream: its GetTask and report requests as messages of one stream.

A unary call costs several times what a message on an open stream does (a
call's setup, its headers, its own completion on both sides): on a no-op job,
whose cost is all queue, the worker's two calls (the long poll answered, the
report) were most of the time between a submission and its answer. The Work
stream carries the same requests, each with an id, and answers each with the
response its call would have had, tagged with that id.

Each request is served by its own asyncio task, started in the order the
requests arrive (so reports apply in the order sent): a long poll waits for
tasks and a report for its commit without holding up the requests behind it,
and the answers go out as they are ready. At most ``MAX_WORK_REQUESTS_IN_FLIGHT``
are served at once; past that the stream is not read until one is answered. A
refused request ends the stream with the refusal (:attr:`WorkStream.refusal`),
as the call would have been refused; the worker reconnects or stops on it as it
would on the call's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from fractalq import config
from fractalq.coordinator.errors import BrokerError, InvalidRequest
from fractalq.coordinator.rpc import Malformed
from fractalq.proto import fractalq_pb2 as pb


class WorkServer(Protocol):
    """What serves a Work stream's requests (the coordinator's service)."""

    async def get_task(self, request: pb.GetTaskRequest) -> pb.GetTaskResponse: ...
    async def complete_tasks(self, request: pb.CompleteTaskRequest) -> pb.ReportResponse: ...
    async def fail_tasks(self, request: pb.FailTaskRequest) -> pb.ReportResponse: ...
    async def release_tasks(self, request: pb.ReleaseTasksRequest) -> pb.ReportResponse: ...


class WorkStream:
    """The answers to one Work stream's requests, in the order they are ready.

    Iterate over it for the responses; once it ends, :attr:`refusal` holds the
    error that ended it, if a request was refused, and :attr:`failure` an
    exception a request's handling raised (a bug, not the client's doing).
    """

    def __init__(self, server: WorkServer, requests: AsyncIterator[pb.WorkRequest | Malformed]):
        self._server = server
        self._requests = requests
        self._answers: asyncio.Queue[pb.WorkResponse | None] = asyncio.Queue()
        self._serving: set[asyncio.Task[None]] = set()
        self.refusal: BrokerError | None = None
        self.failure: Exception | None = None

    async def __aiter__(self) -> AsyncIterator[pb.WorkResponse]:
        reader = asyncio.create_task(self._read())
        try:
            while (answer := await self._answers.get()) is not None:
                yield answer
        finally:
            reader.cancel()
            for task in list(self._serving):
                task.cancel()  # the worker went: a long poll's leases return with it

    async def _read(self) -> None:
        try:
            async for request in self._requests:
                if isinstance(request, Malformed):
                    self._end(InvalidRequest(str(request)))
                    return
                if len(self._serving) >= config.MAX_WORK_REQUESTS_IN_FLIGHT:
                    # Read no more until one is answered: HTTP/2's flow control
                    # then holds the worker's further requests back.
                    await asyncio.wait(list(self._serving), return_when=asyncio.FIRST_COMPLETED)
                serve = asyncio.create_task(self._serve(request))
                self._serving.add(serve)
                serve.add_done_callback(self._serving.discard)
            # The worker sent its last request: answer those under way, then end.
            while self._serving:
                await asyncio.wait(list(self._serving))
            self._answers.put_nowait(None)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the stream broke: nobody is left to answer
            self.failure = error
            self._answers.put_nowait(None)

    async def _serve(self, request: pb.WorkRequest) -> None:
        try:
            answer = await self._answer(request)
        except BrokerError as error:
            self._end(error)
            return
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self.failure = error
            self._answers.put_nowait(None)
            return
        self._answers.put_nowait(answer)

    async def _answer(self, request: pb.WorkRequest) -> pb.WorkResponse:
        kind = request.WhichOneof("request")
        server = self._server
        if kind == "get_task":
            return pb.WorkResponse(id=request.id, tasks=await server.get_task(request.get_task))
        reports: dict[str | None, Callable[..., Awaitable[pb.ReportResponse]]] = {
            "complete": server.complete_tasks,
            "fail": server.fail_tasks,
            "release": server.release_tasks,
        }
        handle = reports.get(kind)
        if handle is None:
            raise InvalidRequest(
                "a Work request must hold one of get_task, complete, fail, release"
            )
        return pb.WorkResponse(id=request.id, report=await handle(getattr(request, str(kind))))

    def _end(self, error: BrokerError) -> None:
        if self.refusal is None:
            self.refusal = error
        self._answers.put_nowait(None)
