"""The Work stream: a worker's leases and reports as messages of one stream.

Against a real coordinator on 127.0.0.1: requests are answered by id, a report
is not held up by a long poll waiting beside it, a refused request ends the
stream with the status its call would have had (and disturbs nothing else),
and a worker facing a coordinator without the stream (an earlier release's)
falls back on the separate calls and still runs its tasks.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from procs import Coordinator, ProcessGroup, Worker, wait_until

from fractalq import config
from fractalq.proto import fractalq_pb2 as pb
from fractalq.proto import fractalq_pb2_grpc as pb_grpc
from fractalq.states import FINISHED

DEADLINE = 20.0


class WorkStream:
    """One Work stream of a hand-driven worker: send requests, read answers."""

    def __init__(self, stub: pb_grpc.CoordinatorStub) -> None:
        self._requests: queue.SimpleQueue[pb.WorkRequest | None] = queue.SimpleQueue()
        self._call = stub.Work(self._outgoing(), timeout=DEADLINE * 3)

    def _outgoing(self) -> Iterator[pb.WorkRequest]:
        while (request := self._requests.get()) is not None:
            yield request

    def send(self, request: pb.WorkRequest) -> None:
        self._requests.put(request)

    def answer(self) -> pb.WorkResponse:
        response: pb.WorkResponse = next(self._call)
        return response

    def close(self) -> None:
        self._requests.put(None)


def register(stub: pb_grpc.CoordinatorStub, worker_id: str) -> str:
    request = pb.RegisterWorkerRequest(worker_id=worker_id, task_types=["noop"], concurrency=2)
    session: str = stub.RegisterWorker(request, timeout=10).session
    return session


def submit(coordinator: Coordinator, count: int = 1) -> str:
    with coordinator.client() as client:
        job_id: str = client.submit(pb.SubmitJobRequest(task_type="noop", count=count)).job.job_id
        return job_id


def job(coordinator: Coordinator, job_id: str) -> pb.Job:
    with coordinator.client() as client:
        return client.job(job_id)


def finished(coordinator: Coordinator, job_id: str, message: str) -> pb.Job:
    def check() -> pb.Job | None:
        found = job(coordinator, job_id)
        return found if found.state in FINISHED else None

    done: pb.Job = wait_until(check, timeout=DEADLINE, message=message)
    return done


def long_poll(session: str, seconds: float) -> pb.GetTaskRequest:
    """The hand-driven worker's GetTask for one task, waiting up to ``seconds``."""
    ask = pb.GetTaskRequest(worker_id="hand", session=session, max_tasks=1)
    ask.wait_seconds = seconds
    return ask


@contextlib.contextmanager
def hand_driven(coordinator: Coordinator) -> Iterator[tuple[str, WorkStream]]:
    """A worker of the test's own, registered as "hand": its session and Work stream."""
    with grpc.insecure_channel(coordinator.address) as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        session = register(stub, "hand")
        stream = WorkStream(stub)
        try:
            yield session, stream
        finally:
            stream.close()


def test_requests_are_answered_by_id_and_a_report_passes_a_waiting_long_poll(
    cluster: ProcessGroup,
) -> None:
    coordinator = cluster.start_coordinator()
    with hand_driven(coordinator) as (session, stream):
        first = submit(coordinator)
        ask = long_poll(session, 10)
        stream.send(pb.WorkRequest(id=7, get_task=ask))
        answer = stream.answer()
        assert answer.id == 7 and [t.job_id for t in answer.tasks.tasks] == [first]
        [task] = answer.tasks.tasks
        # Nothing is queued now: this long poll waits...
        stream.send(pb.WorkRequest(id=8, get_task=ask))
        ref = pb.TaskRef(job_id=first, index=task.index, attempt=task.attempt)
        report = pb.CompleteTaskRequest(
            worker_id="hand", session=session, results=[pb.TaskResult(task=ref)]
        )
        # ...and the report sent after it is answered first.
        stream.send(pb.WorkRequest(id=9, complete=report))
        answer = stream.answer()
        assert answer.id == 9 and answer.report.accepted == 1
        assert job(coordinator, first).state == pb.SUCCEEDED
        second = submit(coordinator)
        answer = stream.answer()
        assert answer.id == 8 and [t.job_id for t in answer.tasks.tasks] == [second]
        # A release over the stream hands the task back to the queue.
        [task] = answer.tasks.tasks
        back = pb.TaskRef(job_id=second, index=task.index, attempt=task.attempt)
        release = pb.ReleaseTasksRequest(worker_id="hand", session=session, tasks=[back])
        stream.send(pb.WorkRequest(id=10, release=release))
        answer = stream.answer()
        assert answer.id == 10 and answer.report.accepted == 1
        released = job(coordinator, second)
        assert (released.queued, released.leased) == (1, 0)


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (pb.WorkRequest(id=1), grpc.StatusCode.INVALID_ARGUMENT),
        (
            pb.WorkRequest(
                id=1, get_task=pb.GetTaskRequest(worker_id="hand", session="x" * 32, max_tasks=1)
            ),
            grpc.StatusCode.NOT_FOUND,
        ),
    ],
    ids=["no request in it", "not this worker's session"],
)
def test_a_refused_request_ends_the_stream_with_its_calls_status(
    cluster: ProcessGroup, request_: pb.WorkRequest, code: grpc.StatusCode
) -> None:
    coordinator = cluster.start_coordinator()
    cluster.start_worker(concurrency=1)
    with grpc.insecure_channel(coordinator.address) as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        register(stub, "hand")
        stream = WorkStream(stub)
        stream.send(request_)
        with pytest.raises(grpc.RpcError) as refused:
            stream.answer()
        assert refused.value.code() == code
        stream.close()
    # The coordinator and its real worker go on as before.
    job_id = submit(coordinator, count=3)
    done = finished(coordinator, job_id, "the job to finish")
    assert done.state == pb.SUCCEEDED


class WithoutWork:
    """A coordinator of an earlier release, as far as a worker can tell: every call
    forwarded to the real one, except Work, which this server does not know."""

    def __init__(self, upstream: str) -> None:
        self._channel = grpc.insecure_channel(upstream)
        self.server = grpc.server(futures.ThreadPoolExecutor(16))
        self.server.add_generic_rpc_handlers((self,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.unknown: list[str] = []
        self._lock = threading.Lock()

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = details.method
        metadata = tuple(details.invocation_metadata)
        if method.endswith("/Work"):
            with self._lock:
                self.unknown.append(method)
            return None  # UNIMPLEMENTED, as gRPC answers a method it does not serve
        if method.endswith("/Heartbeat"):
            beats = self._channel.stream_stream(method)

            def stream(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
                yield from beats(requests, metadata=metadata)

            return grpc.stream_stream_rpc_method_handler(stream)
        call = self._channel.unary_unary(method)

        def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
            try:
                answer: bytes = call(request, metadata=metadata)
            except grpc.RpcError as error:
                context.abort(error.code(), error.details() or "")
            return answer

        return grpc.unary_unary_rpc_method_handler(unary)

    def close(self) -> None:
        self.server.stop(0)
        self._channel.close()


def test_a_worker_falls_back_on_calls_when_the_coordinator_has_no_work_stream(
    cluster: ProcessGroup,
) -> None:
    coordinator = cluster.start_coordinator()
    older = WithoutWork(coordinator.address)
    try:
        worker = Worker(cluster.tmp, f"127.0.0.1:{older.port}", concurrency=2)
        cluster.processes.append(worker)
        job_id = submit(coordinator, count=20)
        done = finished(coordinator, job_id, "the job to finish through the calls")
        assert done.state == pb.SUCCEEDED and done.succeeded == 20
        assert older.unknown, "the worker never tried the Work stream"
        assert "no Work stream" in worker.log()
        assert worker.alive()
    finally:
        worker.stop()
        older.close()


def test_a_stream_piling_up_requests_is_read_no_further_until_one_is_answered(
    cluster: ProcessGroup,
) -> None:
    coordinator = cluster.start_coordinator()
    with hand_driven(coordinator) as (session, stream):
        piled = config.MAX_WORK_REQUESTS_IN_FLIGHT + 8
        for key in range(1, piled + 1):  # long polls, with nothing queued
            stream.send(pb.WorkRequest(id=key, get_task=long_poll(session, 1.0)))
        empty = pb.ReleaseTasksRequest(worker_id="hand", session=session)
        stream.send(pb.WorkRequest(id=piled + 1, release=empty))
        # The coordinator answers everybody else meanwhile.
        with coordinator.client() as client:
            assert client.stats().workers[0].worker_id == "hand"
        # Read at once, the report would be answered first; held back behind the
        # first long polls, it comes after them.
        first = stream.answer()
        assert first.id <= config.MAX_WORK_REQUESTS_IN_FLIGHT and first.HasField("tasks")
        answered = {first.id}
        while len(answered) < piled + 1:
            answered.add(stream.answer().id)
        assert answered == set(range(1, piled + 2))
