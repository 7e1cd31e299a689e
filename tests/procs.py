"""Real fractalq processes for tests: a coordinator and workers on 127.0.0.1.

Each runs the installed command (``python -m fractalq ...``) as a child
process; tests wait on conditions with deadlines (:func:`wait_until`), never
on fixed sleeps.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

from fractalq.cli.common import free_port as free_port  # also for the tests and bench
from fractalq.client import Client
from fractalq.endpoint import Endpoint
from fractalq.security.certs import write_bundle

T = TypeVar("T")

DEFAULT_DEADLINE = 30.0


def wait_until(
    condition: Callable[[], T | None], timeout: float = DEFAULT_DEADLINE, message: str = ""
) -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
        except Exception as error:  # a server still starting, for example
            last_error = error
        else:
            if value:
                return value
        time.sleep(0.05)
    detail = f" (last error: {last_error})" if last_error else ""
    raise AssertionError(f"timed out after {timeout:g}s waiting for {message or condition}{detail}")


def fractalq(*args: str) -> list[str]:
    return [sys.executable, "-m", "fractalq", *args]


def run_cli(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(fractalq(*args), capture_output=True, text=True, timeout=timeout, env=env)


# A render that takes a few seconds on one worker (inside the period-3 bulb's
# neighbourhood, 20,000 iterations), long enough to act on while it runs.
SLOW_VIEW = ("--width", "480", "--height", "480", "--max-iter", "20000", "--center-x", "-0.1",
             "--center-y", "0.75", "--view-width", "0.01", "--regions", "24")  # fmt: skip


def start_render(
    address: str, storage: str, out: Path, *options: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """``fractalq render --mandelbrot`` in the background, its output piped as text."""
    command = fractalq("render", "--mandelbrot", *options, "--coordinator", address,
                       "--storage", storage, "--out", str(out))  # fmt: skip
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


# A small zoom movie, a few seconds on two workers: 160x90, 2 s at 10 fps, into the
# seahorse valley to 1e-20 (deep keyframes at the end).
SMALL_ZOOM = ("--center-x", "-0.743643887037158704752191506114774",
              "--center-y", "0.131825904205311970493132056385139", "--to", "1e-20",
              "--width", "160", "--height", "90", "--seconds", "2", "--fps", "10",
              "--max-iter", "12000", "--max-iter-growth", "1.02")  # fmt: skip


def start_zoom(
    address: str, storage: str, out: Path, *options: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """``fractalq zoom`` of :data:`SMALL_ZOOM` (then ``options``) in the background."""
    command = fractalq("zoom", *SMALL_ZOOM, *options, "--coordinator", address,
                       "--storage", storage, "--out", str(out))  # fmt: skip
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


class Process:
    """A child process whose output goes to a log file (shown when a test fails)."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log
        self._log: IO[bytes] = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=self._log, env=env, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signum)

    def kill9(self) -> None:
        self.signal(signal.SIGKILL)
        self.proc.wait(10)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill9()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # children, e.g. a worker's pool
        if self.proc.stdout:
            self.proc.stdout.close()
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class Trust:
    """Certificates (``fractalq certs``) and a token per role, in ``folder``.

    Processes get them as files: the coordinator by flags, workers and
    commands through FRACTALQ_* variables (:meth:`env`), so no token is ever
    in a command line. ``mutual``: the coordinator requires client certificates.
    ``holders``: more tokens, each of a named holder, name -> role (used as the
    role elsewhere: ``env("alice")``); the role tokens have no name.
    """

    ROLES = ("worker", "client", "reader", "admin")

    def __init__(
        self, folder: Path, mutual: bool = False, holders: dict[str, str] | None = None
    ) -> None:
        self.folder = folder
        self.mutual = mutual
        write_bundle(folder)
        self.tokens = {role: secrets.token_urlsafe(24) for role in self.ROLES}
        lines = [f"{role} {token}" for role, token in self.tokens.items()]
        for name, role in (holders or {}).items():
            self.tokens[name] = secrets.token_urlsafe(24)
            lines.append(f"{role} {self.tokens[name]} {name}")
        (folder / "tokens").write_text("\n".join(["# role token [name]", *lines, ""]))
        for role, token in self.tokens.items():
            self.token_file(role).write_text(token + "\n")

    def path(self, name: str) -> str:
        return str(self.folder / name)

    def token_file(self, role: str) -> Path:
        return self.folder / f"{role}.token"

    def coordinator_args(self) -> tuple[str, ...]:
        args = ("--tls-cert", self.path("server.crt"), "--tls-key", self.path("server.key"),
                "--auth-tokens", self.path("tokens"))  # fmt: skip
        return (*args, "--tls-client-ca", self.path("ca.crt")) if self.mutual else args

    def env(self, role: str | None) -> dict[str, str]:
        """The environment of a worker or a command that speaks as ``role``."""
        env = {**os.environ, "FRACTALQ_TLS_CA": self.path("ca.crt")}
        if self.mutual:
            env |= {"FRACTALQ_TLS_CERT": self.path("client.crt"),
                    "FRACTALQ_TLS_KEY": self.path("client.key")}  # fmt: skip
        if role is not None:
            env["FRACTALQ_TOKEN_FILE"] = str(self.token_file(role))
        return env

    def endpoint(self, address: str, role: str | None) -> Endpoint:
        env = self.env(role)
        env.pop("FRACTALQ_TOKEN", None)
        return Endpoint.from_env(address, env)


class Coordinator(Process):
    def __init__(
        self,
        tmp: Path,
        port: int | None = None,
        data: Path | None = None,
        worker_timeout: float = 3.0,
        name: str = "coordinator",
        extra: tuple[str, ...] = (),
        trust: Trust | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.trust = trust
        self.data = data or tmp / "data"
        args = fractalq(
            "coordinator",
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--http-port", "0",
            "--data", str(self.data),
            "--worker-timeout", str(worker_timeout),
            *extra,
            *(trust.coordinator_args() if trust else ()),
        )  # fmt: skip
        super().__init__(args, tmp / f"{name}.log", env={**os.environ, **env} if env else None)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()  # printed once serving
        if not line.startswith("coordinator listening"):
            self.stop()
            raise RuntimeError(f"coordinator did not start: {line!r}\n{self.log()}")
        self.http_port = int(line.split()[-1])
        self.address = f"127.0.0.1:{self.port}"
        # How the tests' own calls reach it: with TLS and tokens, as a client.
        self.endpoint = trust.endpoint(self.address, "client") if trust else Endpoint(self.address)

    def client(self) -> Client:
        return Client(self.endpoint, timeout=10)


class Worker(Process):
    def __init__(
        self,
        tmp: Path,
        address: str,
        concurrency: int = 1,
        storage: str | None = None,
        grace: float | None = None,
        name: str = "worker",
        env: dict[str, str] | None = None,
        trust: Trust | None = None,
        role: str | None = "worker",
        extra_args: tuple[str, ...] = (),
    ) -> None:
        if trust is not None:
            env = {**trust.env(role), **(env or {})}
        elif env is not None:
            env = {**os.environ, **env}
        args = fractalq("worker", "--coordinator", address, "--concurrency", str(concurrency),
                        *extra_args)  # fmt: skip
        if storage:
            args += ["--storage", storage]
        if grace is not None:
            args += ["--grace-period", str(grace)]
        super().__init__(args, tmp / f"{name}-{time.monotonic_ns()}.log", env=env)


class ProcessGroup:
    """The processes one test starts; ``stop()`` ends every one, the newest first."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.processes: list[Process] = []
        self.coordinator: Coordinator | None = None

    def start_coordinator(self, **kwargs: Any) -> Coordinator:
        """A coordinator; the workers started after it connect to it."""
        coordinator = Coordinator(self.tmp, **kwargs)
        self.processes.append(coordinator)
        self.coordinator = coordinator
        return coordinator

    def start_worker(self, **kwargs: Any) -> Worker:
        assert self.coordinator is not None, "start a coordinator first"
        kwargs.setdefault("trust", self.coordinator.trust)
        worker = Worker(self.tmp, self.coordinator.address, **kwargs)
        self.processes.append(worker)
        return worker

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()


class FailingWorker:
    """A worker of the test's own, over gRPC, that fails every task it leases.

    It makes dead letters on demand (a task type that fails for real would
    fail again once requeued): :meth:`fail_until` leases and fails tasks,
    each with ``message``, until a condition holds. It registers, keeps its
    heartbeat stream open meanwhile, and unregisters on :meth:`close`.
    """

    def __init__(
        self, endpoint: Endpoint, task_types: list[str], worker_id: str = "failing"
    ) -> None:
        from fractalq.proto import fractalq_pb2 as pb
        from fractalq.proto import fractalq_pb2_grpc as pb_grpc

        self.pb = pb
        self.worker_id = worker_id
        self.channel = endpoint.channel()
        self.stub = pb_grpc.CoordinatorStub(self.channel)
        request = pb.RegisterWorkerRequest(
            worker_id=worker_id, task_types=task_types, concurrency=8
        )
        self.session = self.stub.RegisterWorker(request, timeout=10).session
        self._stopped = threading.Event()
        self._beats = self.stub.Heartbeat(self._beat())
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _beat(self) -> Iterator[Any]:
        while not self._stopped.is_set():
            yield self.pb.HeartbeatRequest(worker_id=self.worker_id, session=self.session)
            self._stopped.wait(0.3)

    def _read(self) -> None:
        with contextlib.suppress(Exception):  # the stream ends when we close
            for _ in self._beats:
                pass

    def fail_until(
        self, done: Callable[[], object], message: str = "boom", timeout: float = 60
    ) -> None:
        pb = self.pb
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, "timed out failing tasks"
            leased = self.stub.GetTask(
                pb.GetTaskRequest(
                    worker_id=self.worker_id, session=self.session, max_tasks=8, wait_seconds=0.5
                ),
                timeout=10,
            ).tasks
            errors = [
                pb.TaskError(
                    task=pb.TaskRef(job_id=t.job_id, index=t.index, attempt=t.attempt),
                    message=f"{message} (attempt {t.attempt})",
                )
                for t in leased
            ]
            if errors:
                request = pb.FailTaskRequest(
                    worker_id=self.worker_id, session=self.session, errors=errors
                )
                self.stub.FailTask(request, timeout=10)

    def close(self) -> None:
        pb = self.pb
        with contextlib.suppress(Exception):
            self.stub.UnregisterWorker(
                pb.UnregisterWorkerRequest(worker_id=self.worker_id, session=self.session),
                timeout=10,
            )
        self._stopped.set()
        self._beats.cancel()
        self.channel.close()
