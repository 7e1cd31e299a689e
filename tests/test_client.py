"""The client's domain errors: one mapping from gRPC codes, used by class."""

from __future__ import annotations

import grpc
import pytest
from procs import ProcessGroup, free_port, run_cli

from fractalq.client import (
    AlreadyExists,
    Client,
    ClientError,
    DeadlineExceeded,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    client_error,
)
from fractalq.proto import fractalq_pb2 as pb

Code = grpc.StatusCode


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (Code.NOT_FOUND, NotFound),
        (Code.ALREADY_EXISTS, AlreadyExists),
        (Code.INVALID_ARGUMENT, InvalidRequest),
        (Code.FAILED_PRECONDITION, InvalidRequest),
        (Code.OUT_OF_RANGE, InvalidRequest),
        (Code.UNAUTHENTICATED, Unauthenticated),
        (Code.PERMISSION_DENIED, PermissionDenied),
        (Code.RESOURCE_EXHAUSTED, ResourceExhausted),
        (Code.UNAVAILABLE, Unavailable),
        (Code.DEADLINE_EXCEEDED, DeadlineExceeded),
    ],
)
def test_each_code_maps_to_its_class(code: grpc.StatusCode, kind: type[ClientError]) -> None:
    error = client_error(code, "what happened")
    assert type(error) is kind
    assert isinstance(error, ClientError)
    assert str(error) == "what happened"
    assert error.code == code


@pytest.mark.parametrize(
    "code", [Code.UNKNOWN, Code.INTERNAL, Code.CANCELLED, Code.ABORTED, Code.UNIMPLEMENTED]
)
def test_other_codes_are_a_plain_client_error(code: grpc.StatusCode) -> None:
    assert type(client_error(code, "x")) is ClientError


def test_a_deadline_is_a_kind_of_unavailable() -> None:
    # Callers that retry an unreachable coordinator retry a slow one too.
    assert issubclass(DeadlineExceeded, Unavailable)


def test_a_live_coordinator_answers_with_domain_errors(cluster: ProcessGroup) -> None:
    coordinator = cluster.start_coordinator()
    with coordinator.client() as client:
        with pytest.raises(NotFound, match="no-such-job"):
            client.job("no-such-job")
        with pytest.raises(NotFound):
            client.cancel("no-such-job")
        with pytest.raises(InvalidRequest):
            client.submit(pb.SubmitJobRequest(task_type="no-such-type", count=1))
        job = client.submit(pb.SubmitJobRequest(task_type="sleep", count=1)).job
        with pytest.raises(DeadlineExceeded):
            list(client.watch(job.job_id, timeout=0.5))


def test_an_unreachable_coordinator_is_unavailable() -> None:
    address = f"127.0.0.1:{free_port()}"
    with Client(address, timeout=2) as client, pytest.raises(Unavailable) as caught:
        client.stats()
    assert f"cannot reach the coordinator at {address}" in str(caught.value)


def test_wait_with_a_timeout_says_the_job_is_still_running(cluster: ProcessGroup) -> None:
    coordinator = cluster.start_coordinator()
    with coordinator.client() as client:
        job = client.submit(pb.SubmitJobRequest(task_type="sleep", count=1)).job
    run = run_cli("wait", job.job_id, "--coordinator", coordinator.address, "--timeout", "0.5")
    assert run.returncode == 3, run
    assert f"job {job.job_id} still QUEUED after 0.5s" in run.stderr
