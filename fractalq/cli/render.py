"""``fractalq render`` and ``fractalq demo``: make an image on the queue."""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fractalq import config, options
from fractalq.cli import table as t
from fractalq.cli.common import CommandError, command, endpoint_from, free_port
from fractalq.cli.progress import Progress
from fractalq.client import Client, ClientError
from fractalq.endpoint import ENV_TLS_CA, ENV_TOKEN_FILE, Endpoint
from fractalq.fractal.request import RenderRequest, split_rows
from fractalq.images import download_counts, download_image, submit_render
from fractalq.proto import fractalq_pb2 as pb
from fractalq.security.tls import ClientTLS
from fractalq.states import FINISHED
from fractalq.storage import Storage, StorageError, check_storage, open_storage


def add_render_options(parser: argparse.ArgumentParser) -> None:
    options.add(parser, t.FRACTAL, *t.RENDER, t.PRIORITY, t.KEEP_BANDS, title=t.RENDER_TITLE)


def add_parsers(commands: Any) -> None:
    render = command(
        commands, "render", run_render, help="render an image with a running coordinator"
    )
    add_render_options(render)
    options.add(render, t.COORDINATOR, t.STORAGE.but(required=True), t.OUT, t.RECONNECT_TIMEOUT)
    options.add(render, *t.CLIENT_TLS, title=t.CLIENT_TLS_TITLE)

    demo = command(
        commands, "demo", run_demo, help="render with local processes, nothing to start first"
    )
    add_render_options(demo)
    options.add(demo, t.WORKERS, t.DEMO_OUT)


def request_from(args: argparse.Namespace) -> tuple[RenderRequest, int | None]:
    """The validated request and band count, or a one-line CommandError."""
    try:
        request = RenderRequest.create(
            args.fractal,
            width=args.width,
            height=args.height,
            max_iter=args.max_iter,
            center_x=args.center_x,
            center_y=args.center_y,
            view_width=args.view_width,
            c_re=args.c_re,
            c_im=args.c_im,
            palette=args.palette,
            colour_scale=args.colour_scale,
        )
        if args.regions is not None:
            split_rows(request.height, args.regions)
    except ValueError as error:
        raise CommandError(str(error)) from None
    return request, args.regions


def check_output(path: str, option: str = "--out") -> str:
    """Fail now, not after the render, if ``path`` cannot be written."""
    target = Path(path)
    if target.is_dir():
        raise CommandError(f"{option} {path} is a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".fractalq-", dir=target.parent.resolve())
    except OSError as error:
        raise CommandError(f"cannot write {option} {path}: {error.strerror}") from None
    os.close(fd)
    os.unlink(probe)
    return path


def open_checked_storage(url: str) -> Storage:
    try:
        storage = open_storage(url)
        check_storage(storage)
    except (ValueError, StorageError) as error:
        raise CommandError(str(error)) from None
    return storage


def render_image(
    client: Client,
    storage: Storage,
    request: RenderRequest,
    regions: int | None,
    priority: int,
    out: str,
    keep_bands: bool,
    began: float | None = None,
    reconnect_timeout: float = config.RENDER_RECONNECT_TIMEOUT,
    counts_out: str | None = None,
) -> None:
    """Submit, show progress, download the image to ``out`` (and its smooth counts to
    ``counts_out``, when given); a failed job is a CommandError.

    A deep view's job first computes its reference orbit; its final task
    assembles the image in storage; this only follows the
    job and then copies the image out. The closing summary splits the time
    since ``began`` (default: now, a ``time.monotonic()`` value) into the wait
    for the first band to start (queue and, for the demo, process start-up),
    the bands, the assembly and the download.
    """
    began = time.monotonic() if began is None else began
    first_band = assembling = reference = None
    lost = functools.partial(_say_lost, client.address, reconnect_timeout)
    submitting = time.monotonic()
    try:
        # The coordinator answers once the job has ended if it does so within
        # SUBMIT_WAIT: a small render is one round trip. (A coordinator lost
        # during that wait ends the render, as one lost at submission always did;
        # one lost later is ridden out.)
        job = submit_render(
            client, request, regions, priority, keep_bands=keep_bands, counts=bool(counts_out),
            wait=config.SUBMIT_WAIT,
        ).job  # fmt: skip
        # First line: the id, so that a caller can fetch the image later whatever happens.
        print(f"submitted {job.total} bands as job {job.job_id}", flush=True)
        progress = Progress(job.total, "bands")
        if job.state not in FINISHED:
            job_id = job.job_id
            for job in client.follow(job_id, reconnect_timeout, lost):
                if first_band is None and (job.leased or job.succeeded):
                    first_band = time.monotonic()
                if reference is None and job.first.state == pb.TASK_SUCCEEDED:
                    reference = time.monotonic()  # a deep view's reference orbit
                if assembling is None and job.state in (pb.FINISHING, pb.SUCCEEDED):
                    assembling = time.monotonic()
                finished = job.state in FINISHED
                progress.update(job.succeeded, job.leased, final=finished)
        else:
            progress.update(job.succeeded, job.leased, final=True)
            # Ended within the submission: the coordinator's own times say when
            # the first task started (the assembly is counted with the bands).
            first_band = submitting + max(job.started_at - job.created_at, 0.0)
    except ClientError as error:
        raise CommandError(str(error)) from None
    if job.state != pb.SUCCEEDED:
        state = pb.JobState.Name(job.state)
        raise CommandError(f"render job {job.job_id} {state}: {job.reason}")
    assembled = time.monotonic()
    try:
        download_image(storage, job, out)
    except (StorageError, ValueError, OSError) as error:
        raise CommandError(f"downloading the image to {out}: {error}") from None
    if counts_out:
        try:
            download_counts(storage, job, counts_out)
        except (StorageError, ValueError, OSError) as error:
            raise CommandError(f"downloading the counts to {counts_out}: {error}") from None
    done = time.monotonic()
    first_band = assembled if first_band is None else first_band
    orbit = "" if reference is None else f"reference orbit after {reference - began:.2f}s, "
    if assembling is None:  # not followed stage by stage
        stages = f"bands and assembly {assembled - first_band:.2f}s"
    else:
        stages = f"bands {assembling - first_band:.2f}s, assembly {assembled - assembling:.2f}s"
    print(
        f"{request.width}x{request.height} {request.fractal} in {done - began:.2f}s"
        f" ({orbit}first band after {first_band - began:.2f}s, {stages},"
        f" download {done - assembled:.2f}s)",
        file=sys.stderr,
    )


def _say_lost(address: str, timeout: float, why: str) -> None:
    print(f"lost the coordinator at {address} ({why}); reconnecting for up to {timeout:g}s",
          file=sys.stderr)  # fmt: skip


def run_render(args: argparse.Namespace) -> int:
    request, regions = request_from(args)
    out = check_output(args.out)
    counts_out = args.counts_out and check_output(args.counts_out, "--counts-out")
    storage = open_checked_storage(args.storage)
    with Client(endpoint_from(args)) as client:
        render_image(
            client, storage, request, regions, args.priority, out, args.keep_bands,
            reconnect_timeout=args.reconnect_timeout, counts_out=counts_out,
        )  # fmt: skip
    print(out)
    return 0


def _start(
    args: list[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with open(log, "ab") as stream:
        return subprocess.Popen(
            [sys.executable, "-m", "fractalq", *args],
            stdout=subprocess.PIPE,
            stderr=stream,
            stdin=subprocess.DEVNULL,
            env=env,
        )


def _secure_path(folder: Path, address: str) -> tuple[list[str], dict[str, str], Endpoint]:
    """Certificates and tokens for the demo, as the chart sets them up by default.

    Returns the coordinator's flags, the workers' environment (the worker token
    travels as a file named in FRACTALQ_TOKEN_FILE, never in a command line) and
    the endpoint the demo itself uses, with the client token.
    """
    from fractalq.security.certs import write_bundle, write_file

    folder.mkdir(mode=0o700)
    write_bundle(folder)
    tokens = {role: secrets.token_urlsafe(32) for role in ("worker", "client")}
    table = "".join(f"{role} {token}\n" for role, token in tokens.items())
    write_file(folder / "tokens", table.encode(), private=True, force=False)
    write_file(folder / "worker.token", tokens["worker"].encode(), private=True, force=False)
    coordinator = ["--tls-cert", str(folder / "server.crt"), "--tls-key",
                   str(folder / "server.key"), "--auth-tokens", str(folder / "tokens")]  # fmt: skip
    env = own_environment() | {
        ENV_TLS_CA: str(folder / "ca.crt"),
        ENV_TOKEN_FILE: str(folder / "worker.token"),
    }
    endpoint = Endpoint(address, ClientTLS(str(folder / "ca.crt")), tokens["client"])
    return coordinator, env, endpoint


def own_environment() -> dict[str, str]:
    """The environment without the caller's FRACTALQ_* settings: those are for
    another coordinator (its address, data folder, TLS files, token), not the demo's."""
    return {k: v for k, v in os.environ.items() if not k.startswith("FRACTALQ_")}


def _last_line(log: Path) -> str:
    lines = log.read_text(errors="replace").strip().splitlines()
    return lines[-1] if lines else "no output"


@contextlib.contextmanager
def local_cluster(workers: int) -> Iterator[tuple[Endpoint, Storage]]:
    """A coordinator and ``workers`` workers as local processes, with a storage folder,
    all in a temporary directory that goes with them: the demo's cluster.

    It runs the secure path, as the chart does (TLS, a token per role). Yields
    the client's endpoint and the storage; stops every process on the way out.
    """
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="fractalq-demo-") as folder:
        tmp = Path(folder)
        storage_dir = tmp / "storage"
        storage_dir.mkdir()
        try:
            # The port is chosen here so that the workers start with the
            # coordinator (their start-up overlaps its own) instead of after it.
            port = free_port()
            endpoint = f"127.0.0.1:{port}"
            # The secure path, as the chart runs it: TLS, and a token per role.
            secure_flags, worker_env, secure = _secure_path(tmp / "trust", endpoint)
            storage_url = storage_dir.as_uri()
            # The demo's one holder may render any image it is asked for: no pixel quota.
            coordinator = _start(
                ["coordinator", "--host", "127.0.0.1", "--port", str(port), "--no-http",
                 "--storage", storage_url, "--quota-job-pixels", "0", *secure_flags],
                tmp / "coordinator.log",
                own_environment(),
            )  # fmt: skip
            processes.append(coordinator)
            for n in range(workers):
                processes.append(
                    _start(
                        ["worker", "--coordinator", endpoint, "--storage", storage_url],
                        tmp / f"worker-{n}.log",
                        worker_env,
                    )
                )
            assert coordinator.stdout is not None
            line = coordinator.stdout.readline().decode()
            if not line.startswith("coordinator listening"):
                raise CommandError(
                    f"the coordinator did not start: {_last_line(tmp / 'coordinator.log')}"
                )
            yield secure, open_checked_storage(storage_url)
        finally:
            for process in reversed(processes):
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
            for process in processes:
                try:
                    process.wait(config.DEFAULT_GRACE_PERIOD)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                if process.stdout:
                    process.stdout.close()


def run_demo(args: argparse.Namespace) -> int:
    began = time.monotonic()
    request, regions = request_from(args)
    out = check_output(args.out or f"{request.fractal}.png")
    counts_out = args.counts_out and check_output(args.counts_out, "--counts-out")
    with local_cluster(args.workers) as (endpoint, storage), Client(endpoint) as client:
        render_image(
            client, storage, request, regions, args.priority, out, False, began,
            counts_out=counts_out,
        )  # fmt: skip
    print(out)
    return 0
