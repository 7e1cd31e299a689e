"""Task types of the user's own: a package's ``fractalq.tasks`` entry point, or ``--tasks``.

The example package (``examples/fractalq-hello``) is built and installed by pip
into a folder of this test run, and real coordinators and workers find it on
their ``PYTHONPATH``: its entry point, as any installed package's; or its
module, named by ``--tasks``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from procs import Coordinator, ProcessGroup, run_cli, wait_until

from fractalq import tasks
from fractalq.proto import fractalq_pb2 as pb
from fractalq.states import FINISHED

EXAMPLE = Path(__file__).parent.parent / "examples" / "fractalq-hello"
PRIMES_BELOW_100000 = 9592


@pytest.fixture(scope="module")
def hello_installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the example package as pip installs it (with its entry point)."""
    source = tmp_path_factory.mktemp("source") / "fractalq-hello"
    # Built from a copy: pip builds in the source folder and leaves files there.
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    target = tmp_path_factory.mktemp("site")
    # The venv's own setuptools when it has one (no download); else pip fetches one.
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", *isolation,
         "--target", str(target), str(source)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return target


@pytest.fixture(scope="module")
def hello_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the example's module alone: no package metadata, no entry point."""
    folder = tmp_path_factory.mktemp("modules")
    shutil.copytree(EXAMPLE / "fractalq_hello", folder / "fractalq_hello")
    return folder


def on_path(folder: Path) -> dict[str, str]:
    return {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))
    }


def run(coordinator: Coordinator, task: str, payloads: list[bytes]) -> pb.Job:
    with coordinator.client() as client:
        job_id = client.submit(pb.SubmitJobRequest(task_type=task, payloads=payloads)).job.job_id

        def done() -> pb.Job | None:
            job = client.job(job_id, include_results=True)
            return job if job.state in FINISHED else None

        return wait_until(done, 60, f"the {task} job")


def check_hello_types(coordinator: Coordinator) -> None:
    greeted = run(coordinator, "hello.greet", [b'{"name": "Ada"}', b'{"name": "Grace"}'])
    assert greeted.state == pb.SUCCEEDED, greeted.reason
    assert [json.loads(result) for result in greeted.results] == [
        {"greeting": "hello, Ada", "task": 0},
        {"greeting": "hello, Grace", "task": 1},
    ]
    # CPU-bound, on a worker of two slots: in a child process the worker spawned.
    counted = run(coordinator, "hello.primes", [b'{"below": 100000}', b'{"below": 10}'])
    assert counted.state == pb.SUCCEEDED, counted.reason
    assert [json.loads(result)["primes"] for result in counted.results] == [PRIMES_BELOW_100000, 4]
    # The coordinator checks payloads with the package's own check, before queueing.
    refused = run_cli("submit", "--coordinator", coordinator.address, "--task", "hello.primes",
                      "--payload", '{"below": 1}')  # fmt: skip
    assert refused.returncode == 1
    assert '"below" must be a whole number from 2' in refused.stderr


def test_a_package_registers_task_types_through_its_entry_point(
    cluster: ProcessGroup, hello_installed: Path
) -> None:
    env = on_path(hello_installed)
    coordinator = cluster.start_coordinator(env=env)
    worker = cluster.start_worker(concurrency=2, env=env)
    check_hello_types(coordinator)
    with coordinator.client() as client:
        [registered] = client.stats().workers
    assert {"hello.greet", "hello.primes", "noop"} <= set(registered.task_types)
    assert worker.alive()


def test_tasks_names_a_module_for_the_coordinator_and_the_worker(
    cluster: ProcessGroup, hello_module: Path
) -> None:
    env = on_path(hello_module)  # not installed: only --tasks finds it
    coordinator = cluster.start_coordinator(env=env, extra=("--tasks", "fractalq_hello"))
    cluster.start_worker(concurrency=2, env=env, extra_args=("--tasks", "fractalq_hello"))
    check_hello_types(coordinator)


def test_a_worker_whose_types_the_coordinator_lacks_is_refused_in_one_line(
    cluster: ProcessGroup, hello_module: Path
) -> None:
    cluster.start_coordinator()
    env = on_path(hello_module)
    worker = cluster.start_worker(env=env, extra_args=("--tasks", "fractalq_hello"))
    assert worker.wait(30) == 1
    said = worker.log().strip().splitlines()[-1]
    assert "unknown task type 'hello.greet'" in said, said
    assert "the coordinator needs the task types its workers run" in said


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module", "ModuleNotFoundError: No module named 'no_such_module'"),
        ("fractalq_hello:nothing", "AttributeError"),
    ],
)
def test_a_module_that_cannot_load_is_one_line(spec: str, message: str, hello_module: Path) -> None:
    for command in ("coordinator", "worker"):
        args = ["--port", "0"] if command == "coordinator" else ["--coordinator", "127.0.0.1:1"]
        result = subprocess.run(
            [sys.executable, "-m", "fractalq", command, *args, "--tasks", spec],
            capture_output=True, text=True, timeout=60, env={**os.environ, **on_path(hello_module)},
        )  # fmt: skip
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and f"task types of --tasks {spec}" in lines[0], result.stderr
        assert message in lines[0]


def test_fractalqs_own_types_come_from_its_entry_point() -> None:
    [entry] = [
        entry
        for entry in importlib.metadata.entry_points(group=tasks.ENTRY_POINT_GROUP)
        if entry.dist is not None and entry.dist.name == "fractalq"
    ]
    assert entry.value == "fractalq.tasks.fractal"
    assert {"fractal.band", "fractal.assemble", "fractal.tile", "storage.sweep"} <= set(
        tasks.names()
    )


COLD = """
from fractalq.tasks import task_type


def _warm() -> None:
    raise RuntimeError("the cold start broke")


@task_type("cold.start", warm=_warm)
def cold(payload: bytes, context: object) -> bytes:
    return payload
"""


def test_a_failed_warm_up_is_one_line_in_the_workers_log_format(
    cluster: ProcessGroup, tmp_path: Path
) -> None:
    (tmp_path / "fractalq_cold.py").write_text(COLD)
    env = on_path(tmp_path) | {"FRACTALQ_LOG_FORMAT": "json"}
    coordinator = cluster.start_coordinator(env=env, extra=("--tasks", "fractalq_cold"))
    worker = cluster.start_worker(env=env, extra_args=("--tasks", "fractalq_cold"))
    # Not fatal: the worker runs the type's tasks (the first would meet the same error).
    assert run(coordinator, "cold.start", [b"x"]).state == pb.SUCCEEDED
    wait_until(lambda: "warming up failed" in worker.log(), 30, "the warm-up's failure")
    lines = [json.loads(line) for line in worker.log().splitlines()]  # said as JSON, each
    [failed] = [line for line in lines if "warming up failed" in line["message"]]
    assert failed["level"] == "WARNING" and "the cold start broke" in failed["message"]
    assert worker.alive()
