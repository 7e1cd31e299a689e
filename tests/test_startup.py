"""Start-up and the command line: what is in the way is one line, never a traceback.

Real processes on 127.0.0.1: a second coordinator on a served port or a data
folder in use, bad hosts, taken ports, unusable folders, numbers that are not
finite, payloads nested too deeply, a worker whose storage cannot be written.
"""

from __future__ import annotations

import subprocess

import pytest
from procs import ProcessGroup, run_cli

from fractalq.client import ClientError
from fractalq.proto import fractalq_pb2 as pb

DEEP = "[" * 30_000 + "]" * 30_000


def one_line_error(run: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The run failed with exactly one line on stderr that contains every needle."""
    assert run.returncode != 0, run
    assert "Traceback" not in run.stderr, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ---- numbers that are not finite -------------------------------------------


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (("coordinator", "--worker-timeout", "nan"), "--worker-timeout"),
        (("coordinator", "--retention", "nan"), "--retention"),
        (("coordinator", "--retention", "inf"), "--retention"),
        (("worker", "--coordinator", "127.0.0.1:1", "--grace-period", "nan"), "--grace-period"),
        (("wait", "some-job", "--coordinator", "127.0.0.1:1", "--timeout", "nan"), "--timeout"),
        (("wait", "some-job", "--coordinator", "127.0.0.1:1", "--timeout", "inf"), "--timeout"),
    ],
)
def test_a_flag_that_is_not_a_finite_number_is_refused(args: tuple[str, ...], flag: str) -> None:
    one_line_error(run_cli(*args), flag, "not a finite number")


@pytest.mark.parametrize("flag", ["--center-x", "--center-y", "--view-width", "--c-re", "--c-im"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_render_refuses_a_coordinate_that_is_not_finite(flag: str, value: str) -> None:
    run = run_cli(
        "render",
        "--julia",
        f"{flag}={value}",
        "--coordinator", "127.0.0.1:1",
        "--storage", "file:///nonexistent",
        "--out", "out.png",
    )  # fmt: skip
    one_line_error(run, flag[2:].replace("-", "_"), "finite")


# ---- payloads nested too deeply ---------------------------------------------


def test_submit_of_a_payload_nested_too_deeply_is_one_line() -> None:
    run = run_cli("submit", "--coordinator", "127.0.0.1:1", "--task", "noop", "--payload", DEEP)
    one_line_error(run, "--payload", "nested too deeply")


@pytest.mark.parametrize("task", ["noop", "sleep", "fail", "fractal.band"])
def test_the_coordinator_refuses_a_payload_nested_too_deeply(
    cluster: ProcessGroup, task: str
) -> None:
    coordinator = cluster.start_coordinator()
    with coordinator.client() as client:
        with pytest.raises(ClientError, match="nested too deeply"):
            client.submit(pb.SubmitJobRequest(task_type=task, count=1, payload=DEEP.encode()))
        assert client.stats().jobs_active == 0
    assert "Traceback" not in coordinator.log()
