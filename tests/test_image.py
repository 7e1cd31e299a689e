"""The images of deploy/Dockerfile, built and run as the chart runs them.

buildah builds them (deploy/build_image.py) and podman runs each container the way
the chart's pods run: as uid 10001, on a read-only root filesystem with a tmpfs at
/tmp, with every capability dropped and no new privileges, TLS and role tokens on
(their files mounted read-only where the chart mounts them), storage on a real S3
server (tests/s3server.py). The containers share the host's network and meet on
127.0.0.1.

``FRACTALQ_TEST_IMAGE`` names an image deploy/build_image.py built (``.ci/run``
builds one, the operator's image beside it); without it the module builds its own
(minutes the first time, less with an earlier build's layers). Without buildah and
podman the module is skipped, except under ``CI=true``.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import pytest
from procs import Process, Trust, free_port, wait_until
from reference import reference_png
from s3server import SeaweedS3

from fractalq.client import Client
from fractalq.fractal.request import RenderRequest
from fractalq.proto import fractalq_pb2 as pb

REPO = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO / "deploy" / "build_image.py"
# The worker's image: under this many bytes. It was 693 MB before the multi-stage
# build (444 MB after); PyAV's FFmpeg libraries, which the workers need to encode
# zoom movies, add 104 MB (552 MB).
WORKER_IMAGE_LIMIT = 575_000_000
# A new worker's first band, with the kernels from the image's cache: within this
# many seconds of its registering (compiling them takes 5-10 s).
FIRST_BAND_SECONDS = 1.0

# How the chart runs every container (values.yaml: podSecurityContext and
# containerSecurityContext, the emptyDir at /tmp).
CHART_UID = "10001"
LOCKED_DOWN = (
    "--read-only",
    "--read-only-tmpfs=false",
    "--user", f"{CHART_UID}:{CHART_UID}",
    "--cap-drop", "ALL",
    "--security-opt", "no-new-privileges",
    "--network", "host",
)  # fmt: skip
TMPFS = ("--tmpfs", "/tmp")
# Where the chart mounts the TLS and token files.
TLS = "/etc/fractalq/tls"
TOKEN = "/etc/fractalq/token/token"
TOKENS = "/etc/fractalq/auth/tokens"

pytestmark = pytest.mark.timeout(1200)  # the first test may build the images


def _build_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_image", BUILD_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)


@dataclass(frozen=True)
class Images:
    fractalq: str
    operator: str


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Images]:
    missing = [tool for tool in ("buildah", "podman") if shutil.which(tool) is None]
    if missing:
        # CI installs them (.ci/run), so there a missing tool is a failure.
        fail_or_skip = pytest.fail if os.environ.get("CI") else pytest.skip
        fail_or_skip(f"no {' or '.join(missing)} (apt install buildah podman runc)")
    with pytest.MonkeyPatch.context() as patch:
        if not os.environ.get("CONTAINERS_CONF"):
            conf = _build_script().containers_conf(tmp_path_factory.mktemp("containers"))
            if conf is not None:
                patch.setenv("CONTAINERS_CONF", str(conf))
        name = os.environ.get("FRACTALQ_TEST_IMAGE", "")
        if not name:
            name = "localhost/fractalq:test"
            built = subprocess.run(
                [sys.executable, str(BUILD_SCRIPT), "--tag", "test"], timeout=1100
            )
            assert built.returncode == 0, "deploy/build_image.py failed (its output is above)"
        repository, _, tag = name.rpartition(":")
        found = Images(name, f"{repository}-operator:{tag}")
        for image in (found.fractalq, found.operator):
            assert podman("image", "exists", image).returncode == 0, f"no image {image}"
        yield found


# ---- running containers ------------------------------------------------------------


class Secrets:
    """The chart's Secrets as files: certificates and tokens, by role, readable by uid 10001."""

    def __init__(self, folder: Path) -> None:
        self.trust = Trust(folder / "trust")
        self.folder = folder / "mounted"
        self.folder.mkdir()

    def _file(self, name: str, source: Path) -> Path:
        path = self.folder / name
        shutil.copyfile(source, path)
        path.chmod(0o444)  # as the chart's 0440 with fsGroup: only the pod reads them
        return path

    def coordinator(self) -> dict[str, str]:
        trust = self.trust.folder
        return {
            str(self._file("tls.crt", trust / "server.crt")): f"{TLS}/tls.crt",
            str(self._file("tls.key", trust / "server.key")): f"{TLS}/tls.key",
            str(self._file("tokens", trust / "tokens")): TOKENS,
        }

    def client(self, role: str) -> dict[str, str]:
        return {
            str(self._file("ca.crt", self.trust.folder / "ca.crt")): f"{TLS}/ca.crt",
            str(self._file(f"{role}.token", self.trust.token_file(role))): TOKEN,
        }


# The client side's settings, as the chart gives them to workers and the operator.
CLIENT_ENV = {"FRACTALQ_TLS_CA": f"{TLS}/ca.crt", "FRACTALQ_TOKEN_FILE": TOKEN}
# The storage's endpoint and credentials (the chart's from a Secret).
S3_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


class Containers:
    """The containers one test starts; ``remove()`` stops and removes every one."""

    def __init__(self, folder: Path, s3: SeaweedS3) -> None:
        self.folder = folder
        self.prefix = f"fractalq-test-{secrets.token_hex(4)}"
        self.names: list[str] = []
        self.processes: list[Process] = []
        # Values travel in podman's environment, named in its arguments (`-e NAME`):
        # the S3 secret never appears in a command line.
        self.env = {**os.environ, **s3.env(), **CLIENT_ENV}

    def command(
        self,
        image: str,
        role: str,
        args: tuple[str, ...],
        mounts: dict[str, str],
        env: tuple[str, ...] = (),
        tmp: tuple[str, ...] = TMPFS,
        entrypoint: str | None = None,
        writable: dict[str, str] | None = None,
    ) -> list[str]:
        """``podman run`` of ``image``; ``mounts`` and ``writable``: host path -> path inside."""
        name = f"{self.prefix}-{role}"
        self.names.append(name)
        volumes = [f"--volume={source}:{target}:ro" for source, target in mounts.items()]
        volumes += [f"--volume={source}:{target}" for source, target in (writable or {}).items()]
        return [
            "podman", "run", "--rm", "--name", name, *LOCKED_DOWN, *tmp, *volumes,
            *(f"--env={variable}" for variable in env),
            *(["--entrypoint", entrypoint] if entrypoint else []),
            image, *args,
        ]  # fmt: skip

    def start(self, image: str, role: str, *args: str, **options: object) -> Process:
        command = self.command(image, role, args, **options)  # type: ignore[arg-type]
        process = Process(command, self.folder / f"{role}.log", env=self.env)
        self.processes.append(process)
        return process

    def run(
        self, image: str, role: str, *args: str, timeout: float = 120, **options: object
    ) -> subprocess.CompletedProcess[str]:
        command = self.command(image, role, args, **options)  # type: ignore[arg-type]
        return subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, env=self.env
        )

    def remove(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        if self.names:
            podman("rm", "--force", "--ignore", "--time", "0", *self.names)


@pytest.fixture
def containers(tmp_path: Path, s3_server: SeaweedS3) -> Iterator[Containers]:
    started = Containers(tmp_path, s3_server)
    try:
        yield started
    finally:
        started.remove()


class Deployment:
    """A coordinator container with TLS and tokens, and its storage, as the chart has them."""

    def __init__(self, images: Images, containers: Containers, s3: SeaweedS3, folder: Path) -> None:
        self.images = images
        self.containers = containers
        self.secrets = Secrets(folder)
        self.storage = f"s3://{s3.make_bucket('image')}/images"
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.coordinator = containers.start(
            images.fractalq,
            "coordinator",
            "coordinator",
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--http-port", "0",
            "--data", "/tmp/data",
            "--tls-cert", f"{TLS}/tls.crt",
            "--tls-key", f"{TLS}/tls.key",
            "--auth-tokens", TOKENS,
            mounts=self.secrets.coordinator(),
        )  # fmt: skip
        assert self.coordinator.proc.stdout is not None
        line = self.coordinator.proc.stdout.readline().decode()  # printed once serving
        assert line.startswith("coordinator listening"), f"{line!r}\n{self.coordinator.log()}"
        self.client = Client(self.secrets.trust.endpoint(self.address, "client"), timeout=10)

    def worker(
        self, name: str, *args: str, extra_env: tuple[str, ...] = (), **options: object
    ) -> Process:
        return self.containers.start(
            self.images.fractalq,
            name,
            "worker",
            "--coordinator", self.address,
            "--storage", self.storage,
            *args,
            mounts=self.secrets.client("worker"),
            env=(*CLIENT_ENV, *S3_ENV, *extra_env),
            **options,
        )  # fmt: skip

    def render(self, out: Path, *options: str) -> Process:
        out.mkdir(mode=0o777)
        out.chmod(0o777)  # written by uid 10001
        return self.containers.start(
            self.images.fractalq,
            "render",
            "render", *options,
            "--coordinator", self.address,
            "--storage", self.storage,
            "--out", "/out/image.png",
            mounts=self.secrets.client("client"),
            writable={str(out): "/out"},
            env=(*CLIENT_ENV, *S3_ENV),
        )  # fmt: skip

    def queued_job(self) -> pb.Job:
        return wait_until(lambda: next(iter(self.client.jobs()), None), message="the render's job")

    def close(self) -> None:
        self.client.close()


@pytest.fixture
def deployment(
    images: Images, containers: Containers, s3_server: SeaweedS3, tmp_path: Path
) -> Iterator[Deployment]:
    deployed = Deployment(images, containers, s3_server, tmp_path)
    try:
        yield deployed
    finally:
        deployed.close()


def logged_at(process: Process, *parts: str, timeout: float = 60) -> float:
    """When ``process`` logged its first line holding every one of ``parts`` (Unix time)."""

    def found() -> float | None:
        for line in process.log().splitlines():
            if all(part in line for part in parts):
                stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
                return stamp.replace(tzinfo=UTC).timestamp()
        return None

    return wait_until(found, timeout=timeout, message=f"a line with {parts} in {process.log_path}")


def finished_png(render: Process, out: Path, timeout: float = 180) -> bytes:
    code = render.wait(timeout)
    assert code == 0, f"render exited {code}:\n{render.log()}"
    return (out / "image.png").read_bytes()


# ---- the tests ------------------------------------------------------------------------


def test_coordinator_workers_and_render_give_the_venvs_bytes(
    deployment: Deployment, tmp_path: Path
) -> None:
    """A render waits in the queue; a worker joins (the kernels come from the image's
    cache: its first band starts within a second of its registering, where compiling
    them takes 5-10 s), then a second one with two processes; the image is the one this
    venv renders, byte for byte."""
    request = RenderRequest.create("mandelbrot", width=320, height=200, max_iter=256)
    out = tmp_path / "out"
    render = deployment.render(
        out, "--mandelbrot", "--width", "320", "--height", "200", "--max-iter", "256",
        "--regions", "8",
    )  # fmt: skip
    job = deployment.queued_job()
    assert job.state == pb.QUEUED and job.total == 8

    first = deployment.worker("worker-1", "--concurrency", "1")
    wait_until(lambda: deployment.client.stats().workers, message="the first worker")
    registered = logged_at(first, "INFO fractalq.worker: worker ", " registered at ")
    warmed = logged_at(first, "INFO fractalq.worker.executor: warmed up in ")
    # A band leased at registration starts once the kernels are loaded.
    assert warmed - registered < FIRST_BAND_SECONDS, first.log()
    wait_until(lambda: deployment.client.stats().workers[0].completed, message="its first band")

    deployment.worker("worker-2", "--concurrency", "2")
    assert finished_png(render, out) == reference_png(request)
    workers = wait_until(
        lambda: found if len(found := deployment.client.stats().workers) == 2 else None,
        message="the second worker",
    )
    assert sum(w.completed for w in workers) >= 8  # the bands, and the assembly


def test_a_worker_on_another_cpu_compiles_into_its_tmp_and_renders_the_same_bytes(
    deployment: Deployment, tmp_path: Path
) -> None:
    """The image's kernels are for the CPU that built it: a worker told it runs on
    another (NUMBA_CPU_NAME) finds none of its own, compiles them into its writable
    /tmp and renders the same bytes."""
    request = RenderRequest.create("julia", width=200, height=120, max_iter=200)
    tmp = tmp_path / "worker-tmp"
    tmp.mkdir(mode=0o777)
    tmp.chmod(0o777)
    deployment.containers.env["NUMBA_CPU_NAME"] = "generic"
    deployment.worker(
        "worker-generic", extra_env=("NUMBA_CPU_NAME",), tmp=(), writable={str(tmp): "/tmp"}
    )
    out = tmp_path / "out"
    render = deployment.render(
        out, "--julia", "--width", "200", "--height", "120", "--max-iter", "200"
    )
    assert finished_png(render, out) == reference_png(request)

    shipped = deployment.containers.run(
        deployment.images.fractalq, "list", "/opt/fractalq/kernels", "-name", "*.nbc",
        entrypoint="find", mounts={},
    ).stdout.split()  # fmt: skip
    cached = list((tmp / "numba").rglob("*.nbc"))
    assert shipped and len(cached) > len(shipped)


def test_the_image_cache_serves_every_kernel(images: Images, containers: Containers) -> None:
    run = containers.run(
        images.fractalq, "kernels", "-m", "fractalq.fractal.kernel_cache", "--require-cached",
        entrypoint="python", mounts={},
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert " 0 compiled" in run.stdout


def test_what_each_image_holds(images: Images, containers: Containers) -> None:
    probe = (
        "import importlib.util as u; "
        "print(' '.join(m for m in ('pip', 'setuptools', 'kopf', 'kubernetes', 'numba', "
        "'boto3') if u.find_spec(m)))"
    )
    held = {}
    for role, image in (("fractalq", images.fractalq), ("operator", images.operator)):
        run = containers.run(image, f"probe-{role}", "-c", probe, entrypoint="python", mounts={})
        assert run.returncode == 0, run.stderr
        held[role] = run.stdout.split()
    assert held["fractalq"] == ["numba", "boto3"]
    assert held["operator"] == ["kopf", "kubernetes", "numba", "boto3"]

    refused = containers.run(images.fractalq, "operator", "operator", mounts={})
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines() == [
        "fractalq operator: error: needs the operator extra (kopf and the Kubernetes "
        "client): pip install 'fractalq[operator]', or run the fractalq-operator image"
    ]
    handlers = containers.run(
        images.operator, "handlers", "-c", "import fractalq.operator.handlers",
        entrypoint="python", mounts={},
    )  # fmt: skip
    assert handlers.returncode == 0, handlers.stderr


def test_the_worker_image_is_under_its_size_goal(images: Images) -> None:
    size = int(podman("image", "inspect", "--format", "{{.Size}}", images.fractalq).stdout)
    assert size < WORKER_IMAGE_LIMIT, f"{images.fractalq} is {size / 1e6:.0f} MB"
