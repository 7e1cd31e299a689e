"""A small synchronous client of the coordinator, for commands and the operator.

It turns gRPC failures into :class:`ClientError` with one readable line: an
unreachable address, a refused request (with the coordinator's reason), or a
job that does not exist. Callers tell the kinds apart by class (``except
NotFound``), never by comparing status codes: :func:`client_error` is the one
mapping from gRPC's codes to these classes.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType

import grpc

from fractalq import config
from fractalq.endpoint import Endpoint
from fractalq.proto import fractalq_pb2 as pb
from fractalq.proto import fractalq_pb2_grpc as pb_grpc
from fractalq.retry import retry_delay

_STREAM_LOST = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED}
_ADDRESS = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9._-]+):(\d{1,5})$")


class ClientError(Exception):
    """A failed call, described in one line; the subclass says what kind.

    ``code`` is gRPC's status code, kept for logs and tests; decisions use the
    class.
    """

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class NotFound(ClientError):
    """No such job (or a job the coordinator has forgotten)."""


class AlreadyExists(ClientError):
    """The id is taken by something else (a job id with another request)."""


class InvalidRequest(ClientError):
    """The coordinator refused the request as malformed or not possible now."""


class Unauthenticated(ClientError):
    """No token, or a token the coordinator does not know."""


class PermissionDenied(ClientError):
    """A known token whose role may not make this call."""


class ResourceExhausted(ClientError):
    """A limit was reached (a message too large, a queue full)."""


class Unavailable(ClientError):
    """The coordinator cannot be reached (down, wrong address, TLS refused)."""


class DeadlineExceeded(Unavailable):
    """No answer in time; for a watch with a timeout, the job has not ended yet."""


_ERRORS: dict[grpc.StatusCode, type[ClientError]] = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.FAILED_PRECONDITION: InvalidRequest,
    grpc.StatusCode.OUT_OF_RANGE: InvalidRequest,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}


def client_error(code: grpc.StatusCode, message: str) -> ClientError:
    """The :class:`ClientError` subclass for ``code`` (other codes: the base class)."""
    return _ERRORS.get(code, ClientError)(message, code)


def check_address(address: str) -> str:
    """``HOST:PORT`` or a ValueError that says what is wrong."""
    match = _ADDRESS.match(address)
    if not match or not 0 < int(match.group(2)) < 65536:
        raise ValueError(f"coordinator address {address!r} is not HOST:PORT")
    return address


class Client:
    def __init__(self, endpoint: Endpoint | str, timeout: float = 30.0) -> None:
        """``endpoint``: where and how (TLS, token); a bare ``HOST:PORT`` is plaintext, no token."""
        if isinstance(endpoint, str):
            endpoint = Endpoint(endpoint)
        self.endpoint = endpoint
        self.address = check_address(endpoint.address)
        self.timeout = timeout
        self._channel = endpoint.channel()
        self._stub = pb_grpc.CoordinatorStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def _error(self, error: grpc.RpcError) -> ClientError:
        code: grpc.StatusCode = error.code()
        details: str = error.details() or code.name
        # gRPC does not say why a TLS handshake failed; one handshake of our own does.
        if code == grpc.StatusCode.UNAVAILABLE and (why := self.endpoint.diagnose()):
            return client_error(code, why)
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            details = f"cannot reach the coordinator at {self.address}: {details}"
        return client_error(code, details)

    def submit(self, request: pb.SubmitJobRequest) -> pb.SubmitJobResponse:
        try:
            response: pb.SubmitJobResponse = self._stub.SubmitJob(request, timeout=self.timeout)
        except grpc.RpcError as error:
            raise self._error(error) from None
        return response

    def job(self, job_id: str, include_results: bool = False) -> pb.Job:
        try:
            request = pb.GetJobRequest(job_id=job_id, include_results=include_results)
            job: pb.Job = self._stub.GetJob(request, timeout=self.timeout)
        except grpc.RpcError as error:
            raise self._error(error) from None
        return job

    def watch(self, job_id: str, timeout: float | None = None) -> Iterator[pb.Job]:
        """The job now and after each change, until it finishes (or ``timeout``)."""
        try:
            yield from self._stub.WatchJob(pb.WatchJobRequest(job_id=job_id), timeout=timeout)
        except grpc.RpcError as error:
            raise self._error(error) from None

    def follow(
        self, job_id: str, reconnect_timeout: float, on_lost: Callable[[str], None] | None = None
    ) -> Iterator[pb.Job]:
        """Like :meth:`watch`, but rides out a lost connection or a coordinator restart.

        When the stream breaks (Unavailable), it reconnects with backoff and
        resumes following; after ``reconnect_timeout`` seconds without getting
        through it gives up with the last error. ``on_lost`` hears each loss.
        """
        lost_since: float | None = None
        attempt = 0
        while True:
            try:
                for job in self.watch(job_id):
                    lost_since, attempt = None, 0
                    yield job
                return
            except ClientError as error:
                # A restarting coordinator ends streams as UNAVAILABLE, or as
                # UNKNOWN ("Stream removed") or CANCELLED when it goes down mid-send.
                if not isinstance(error, Unavailable) and error.code not in _STREAM_LOST:
                    raise
                now = time.monotonic()
                lost_since = now if lost_since is None else lost_since
                if now - lost_since >= reconnect_timeout:
                    raise
                if on_lost is not None:
                    on_lost(str(error))
                attempt += 1
                pause = retry_delay(config.RECONNECT_BACKOFF, attempt)
                time.sleep(min(pause, max(lost_since + reconnect_timeout - now, 0.0)))

    def cancel(self, job_id: str, reason: str = "") -> pb.Job:
        try:
            request = pb.CancelJobRequest(job_id=job_id, reason=reason)
            job: pb.Job = self._stub.CancelJob(request, timeout=self.timeout)
        except grpc.RpcError as error:
            raise self._error(error) from None
        return job

    def jobs(self, active_only: bool = False, limit: int = 0) -> list[pb.Job]:
        try:
            request = pb.ListJobsRequest(active_only=active_only, limit=limit)
            response: pb.ListJobsResponse = self._stub.ListJobs(request, timeout=self.timeout)
        except grpc.RpcError as error:
            raise self._error(error) from None
        return list(response.jobs)

    def dead_letters(self, job_id: str = "", limit: int = 0) -> list[pb.DeadLetter]:
        """The dead letters the token may read (of ``job_id``, or every job's), latest first."""
        try:
            request = pb.ListDeadLettersRequest(job_id=job_id, limit=limit)
            response: pb.ListDeadLettersResponse = self._stub.ListDeadLetters(
                request, timeout=self.timeout
            )
        except grpc.RpcError as error:
            raise self._error(error) from None
        return list(response.dead_letters)

    def requeue(self, job_id: str, tasks: Sequence[int] = ()) -> pb.Job:
        """Put a failed job's dead tasks (all, or ``tasks``) back on the queue."""
        try:
            request = pb.RequeueJobRequest(job_id=job_id, tasks=list(tasks))
            job: pb.Job = self._stub.RequeueJob(request, timeout=self.timeout)
        except grpc.RpcError as error:
            raise self._error(error) from None
        return job

    def purge(self, job_id: str) -> pb.PurgeJobResponse:
        """Drop a failed job's dead letters (its cleanup, if any, runs)."""
        try:
            request = pb.PurgeJobRequest(job_id=job_id)
            response: pb.PurgeJobResponse = self._stub.PurgeJob(request, timeout=self.timeout)
        except grpc.RpcError as error:
            raise self._error(error) from None
        return response

    def stats(self) -> pb.Stats:
        try:
            stats: pb.Stats = self._stub.GetStats(pb.GetStatsRequest(), timeout=self.timeout)
        except grpc.RpcError as error:
            raise self._error(error) from None
        return stats
