"""``fractalq coordinator`` and ``fractalq worker``: the long-running processes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

from fractalq import config, tasks
from fractalq.cli.common import (
    CommandError,
    add_endpoint_options,
    address,
    endpoint_from,
    integer,
    listen_host,
    real,
    setup_logging,
)
from fractalq.config import CoordinatorConfig, HolderQuota, WorkerConfig

if TYPE_CHECKING:
    from fractalq.security import ServerTLS, TokenTable


def add_parsers(commands: Any) -> None:
    coordinator = commands.add_parser("coordinator", help="run the gRPC coordinator")
    coordinator.add_argument(
        "--host", type=listen_host, default=config.DEFAULT_HOST, help="address to listen on"
    )
    coordinator.add_argument(
        "--port", type=integer(0, 65535), default=config.DEFAULT_PORT, help="gRPC port (0: any)"
    )
    coordinator.add_argument(
        "--http-port",
        type=integer(0, 65535),
        default=config.DEFAULT_HTTP_PORT,
        help="HTTP API port (0: any)",
    )
    coordinator.add_argument("--no-http", action="store_true", help="serve no HTTP API")
    coordinator.add_argument(
        "--data", metavar="DIR", help="folder for the database (default: memory only)"
    )
    coordinator.add_argument(
        "--storage",
        metavar="URL",
        help="the workers' storage, to serve finished images to the dashboard"
        " ($FRACTALQ_STORAGE; default: none, the page says where each image is)",
    )
    coordinator.add_argument(
        "--worker-timeout",
        type=real(0.1, 3600),
        default=config.DEFAULT_WORKER_TIMEOUT,
        metavar="S",
        help="seconds without a heartbeat before a worker is declared dead",
    )
    coordinator.add_argument(
        "--retention",
        type=real(0, config.MAX_RETENTION),
        default=config.DEFAULT_RETENTION,
        metavar="S",
        help="seconds a finished job is kept after it finished (0: forever)",
    )
    coordinator.add_argument(
        "--orphan-sweep",
        type=real(0, config.MAX_RETENTION),
        default=config.ORPHAN_SWEEP_INTERVAL,
        metavar="S",
        help="seconds between sweeps of storage for objects of jobs this coordinator "
        "does not know, older than the retention (0: never)",
    )
    quotas = coordinator.add_argument_group(
        "quotas: what one token holder may have on the queue, with --auth-tokens"
        " (0: no limit; each flag defaults to its variable)"
    )
    for flag, default, text in (
        ("active-jobs", config.QUOTA_ACTIVE_JOBS, "unfinished jobs"),
        ("queued-tasks", config.QUOTA_QUEUED_TASKS, "tasks of its unfinished jobs not done yet"),
        ("job-pixels", config.QUOTA_JOB_PIXELS, "pixels of one render (16384 x 16384)"),
    ):
        variable = "FRACTALQ_QUOTA_" + flag.upper().replace("-", "_")
        quotas.add_argument(
            f"--quota-{flag}",
            type=integer(0),
            # A string default goes through `type` too: a bad variable is a usage error.
            default=os.environ.get(variable, str(default)),
            metavar="N",
            help=f"{text} (${variable}, default %(default)s)",
        )
    security = coordinator.add_argument_group("TLS and tokens (each flag defaults to its variable)")
    security.add_argument(
        "--tls-cert", metavar="FILE", help="serve TLS with this certificate ($FRACTALQ_TLS_CERT)"
    )
    security.add_argument("--tls-key", metavar="FILE", help="its key ($FRACTALQ_TLS_KEY)")
    security.add_argument(
        "--tls-client-ca",
        metavar="FILE",
        help="require gRPC clients to show a certificate this CA signed ($FRACTALQ_TLS_CLIENT_CA)",
    )
    security.add_argument(
        "--auth-tokens",
        metavar="FILE",
        help="lines ROLE TOKEN [NAME] (roles worker, client, reader, admin; NAME: the"
        " holder, who owns the jobs the token submits) ($FRACTALQ_AUTH_TOKENS)",
    )
    coordinator.add_argument("-v", "--verbose", action="store_true")
    coordinator.set_defaults(run=run_coordinator)

    worker = commands.add_parser("worker", help="run a worker")
    worker.add_argument("--coordinator", type=address, required=True, metavar="HOST:PORT")
    worker.add_argument("--storage", metavar="URL", help="file:///path or s3://bucket/prefix")
    worker.add_argument(
        "--concurrency", type=integer(1, 1024), default=config.DEFAULT_CONCURRENCY, metavar="N"
    )
    worker.add_argument(
        "--prefetch",
        type=integer(0, 1024),
        default=config.DEFAULT_PREFETCH,
        metavar="N",
        help="tasks leased ahead of those running, so the next one is at hand",
    )
    worker.add_argument(
        "--grace-period",
        type=real(0, 3600),
        default=config.DEFAULT_GRACE_PERIOD,
        metavar="S",
        help="on SIGTERM, how long running tasks may take before they are handed back",
    )
    worker.add_argument(
        "--storage-outage-limit",
        type=real(1, config.MAX_STORAGE_OUTAGE_LIMIT),
        default=config.STORAGE_OUTAGE_LIMIT,
        metavar="S",
        help="how long a task waits for unreachable storage, keeping its attempt, before it fails",
    )
    worker.add_argument(
        "--task-types", metavar="NAMES", help="comma-separated types to run (default: all)"
    )
    add_endpoint_options(worker)
    worker.add_argument("-v", "--verbose", action="store_true")
    worker.set_defaults(run=run_worker)


def run_coordinator(args: argparse.Namespace) -> int:
    from fractalq.coordinator.lock import StartupError, show_address
    from fractalq.coordinator.server import serve

    if args.data:
        if os.path.exists(args.data) and not os.path.isdir(args.data):
            raise CommandError(f"data folder {args.data} is not a folder")
        try:
            os.makedirs(args.data, exist_ok=True)
        except OSError as error:
            raise CommandError(f"cannot use data folder {args.data}: {error.strerror}") from None
        if not os.access(args.data, os.W_OK):
            raise CommandError(f"data folder {args.data} is not writable")
    tls, tokens = _server_security(args)
    storage = args.storage or os.environ.get("FRACTALQ_STORAGE") or None
    if storage:
        from fractalq.storage import open_storage

        try:
            open_storage(storage)  # a bad URL stops it now; an unreachable store does not
        except ValueError as error:
            raise CommandError(f"--storage {storage}: {error}") from None
    settings = CoordinatorConfig(
        host=args.host,
        port=args.port,
        http_port=None if args.no_http else args.http_port,
        data_dir=args.data,
        worker_timeout=args.worker_timeout,
        retention=args.retention,
        orphan_sweep=args.orphan_sweep,
        tls=tls,
        tokens=tokens,
        quota=HolderQuota(args.quota_active_jobs, args.quota_queued_tasks, args.quota_job_pixels),
        storage=storage,
    )
    setup_logging(args.verbose)

    def started(port: int, http_port: int | None) -> None:
        # One machine-readable line on stdout, for scripts that asked for port 0.
        where = show_address(args.host, port)
        print(f"coordinator listening on {where} http {http_port or '-'}", flush=True)

    try:
        asyncio.run(serve(settings, started))
    except (StartupError, OSError) as error:
        raise CommandError(str(error)) from None
    return 0


def _server_security(args: argparse.Namespace) -> tuple[ServerTLS | None, TokenTable | None]:
    """The coordinator's TLS files and token table, checked; a CommandError in one line."""
    from fractalq.security import ServerTLS, TokenTable

    env = os.environ
    cert = args.tls_cert or env.get("FRACTALQ_TLS_CERT")
    key = args.tls_key or env.get("FRACTALQ_TLS_KEY")
    client_ca = args.tls_client_ca or env.get("FRACTALQ_TLS_CLIENT_CA")
    tokens_file = args.auth_tokens or env.get("FRACTALQ_AUTH_TOKENS")
    try:
        tls = None
        if cert or key or client_ca:
            if not (cert and key):
                raise ValueError("TLS needs both --tls-cert and --tls-key")
            tls = ServerTLS.load(cert, key, client_ca or None)
        tokens = TokenTable.load(tokens_file) if tokens_file else None
    except ValueError as error:
        raise CommandError(str(error)) from None
    return tls, tokens


def run_worker(args: argparse.Namespace) -> int:
    from fractalq.worker.runtime import Worker, WorkerError

    names = (
        tuple(n.strip() for n in args.task_types.split(",") if n.strip())
        if args.task_types
        else None
    )
    try:
        for name in names or ():
            tasks.get(name)
    except KeyError as error:
        raise CommandError(str(error.args[0])) from None
    endpoint = endpoint_from(args)
    settings = WorkerConfig(
        coordinator=args.coordinator,
        storage=args.storage,
        concurrency=args.concurrency,
        prefetch=args.prefetch,
        grace_period=args.grace_period,
        storage_outage_limit=args.storage_outage_limit,
        task_types=names,
        tls=endpoint.tls,
        token=endpoint.token,
    )
    worker = Worker(settings)
    # The task types' imports and compiled kernels load in the background while
    # storage and TLS are checked, so that the first task finds them loaded.
    worker.warm()
    try:
        if args.storage:
            worker.start_in_outage(check_worker_storage(args.storage))
        # A TLS mistake is not transient: say which, once, rather than reconnect
        # forever with gRPC's "handshake failed". (Nothing listening yet: None.)
        if why := endpoint.diagnose():
            raise CommandError(why)
    except BaseException:
        worker.close()
        raise
    # After the checks (a failed one is one line, nothing more); no secret in a log.
    setup_logging(args.verbose, secrets=[endpoint.token])

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(signum, worker.stop)
        await worker.run()

    try:
        asyncio.run(main())
    except WorkerError as error:
        raise CommandError(str(error)) from None
    sys.stdout.flush()
    sys.stderr.flush()
    # Tasks still running on threads past the grace period were handed back;
    # do not wait for them at interpreter exit.
    os._exit(0)


def check_worker_storage(url: str) -> str:
    """Write, read back and delete a probe object, before the worker registers.

    A worker that cannot store its results would take tasks only to fail
    them, attempt after attempt, until renders are dead-lettered: a wrong URL,
    bucket or credentials is one line and exit 1. Storage that is only down
    for now (a transient error) is returned instead: the worker starts as in
    an outage, taking no task until the storage answers.
    """
    from fractalq.storage import StorageError, check_storage, shared_storage

    try:
        # The object the worker's tasks use too (shared_storage): its client is ready.
        check_storage(shared_storage(url))
    except StorageError as error:
        if error.transient:
            return str(error)
        raise CommandError(f"--storage {url}: {error}") from None
    except ValueError as error:
        raise CommandError(f"--storage {url}: {error}") from None
    return ""
