"""Real fractalq processes for tests: a coordinator and workers on 127.0.0.1.

Each runs the installed command (``python -m fractalq ...``) as a child
process; tests wait on conditions with deadlines (:func:`wait_until`), never
on fixed sleeps.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

from fractalq.client import Client

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fractalq(*args: str) -> list[str]:
    return [sys.executable, "-m", "fractalq", *args]


def run_cli(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(fractalq(*args), capture_output=True, text=True, timeout=timeout, env=env)


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


class Coordinator(Process):
    def __init__(
        self,
        tmp: Path,
        port: int | None = None,
        data: Path | None = None,
        worker_timeout: float = 3.0,
        name: str = "coordinator",
        extra: tuple[str, ...] = (),
    ) -> None:
        self.port = port or free_port()
        self.data = data or tmp / "data"
        args = fractalq(
            "coordinator",
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--http-port", "0",
            "--data", str(self.data),
            "--worker-timeout", str(worker_timeout),
            *extra,
        )  # fmt: skip
        super().__init__(args, tmp / f"{name}.log")
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()  # printed once serving
        if not line.startswith("coordinator listening"):
            self.stop()
            raise RuntimeError(f"coordinator did not start: {line!r}\n{self.log()}")
        self.http_port = int(line.split()[-1])
        self.address = f"127.0.0.1:{self.port}"

    def client(self) -> Client:
        return Client(self.address, timeout=10)


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
    ) -> None:
        args = fractalq("worker", "--coordinator", address, "--concurrency", str(concurrency))
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
        worker = Worker(self.tmp, self.coordinator.address, **kwargs)
        self.processes.append(worker)
        return worker

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
