"""``fractalq coordinator`` and ``fractalq worker``: the long-running processes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

from fractalq import logs, options, tasks
from fractalq.cli import table as t
from fractalq.cli.common import CommandError, command, endpoint_from
from fractalq.config import HolderQuota
from fractalq.coordinator.settings import CoordinatorSettings
from fractalq.worker.settings import WorkerSettings

if TYPE_CHECKING:
    from fractalq.security import ServerTLS, TokenTable


def add_parsers(commands: Any) -> None:
    coordinator = command(commands, "coordinator", run_coordinator, help="run the gRPC coordinator")
    options.add(
        coordinator, t.HOST, t.PORT, t.HTTP_PORT, t.NO_HTTP, t.DATA, t.SERVED_STORAGE,
        t.WORKER_TIMEOUT, t.RETENTION, t.ORPHAN_SWEEP, t.TASK_MODULES,
    )  # fmt: skip
    options.add(coordinator, *t.QUOTAS, title=t.QUOTAS_TITLE)
    options.add(coordinator, *t.SERVER_TLS, title=t.SERVER_TLS_TITLE)
    options.add(coordinator, *t.LOGS, title=t.LOGS_TITLE)

    worker = command(commands, "worker", run_worker, help="run a worker")
    options.add(
        worker, t.COORDINATOR, t.WORKER_STORAGE, t.CONCURRENCY, t.PREFETCH, t.GRACE_PERIOD,
        t.STORAGE_OUTAGE_LIMIT, t.TASK_TYPES, t.TASK_MODULES,
    )  # fmt: skip
    options.add(worker, *t.CLIENT_TLS, title=t.CLIENT_TLS_TITLE)
    options.add(worker, *t.LOGS, title=t.LOGS_TITLE)


def load_task_types(modules: list[str]) -> None:
    """The task types of the entry points and of ``--tasks`` modules; one line if one fails."""
    try:
        tasks.load(modules)
    except tasks.TaskLoadError as error:
        raise CommandError(str(error)) from None


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
    load_task_types(args.tasks)
    storage = args.storage or None
    if storage:
        from fractalq.storage import open_storage

        try:
            open_storage(storage)  # a bad URL stops it now; an unreachable store does not
        except ValueError as error:
            raise CommandError(f"--storage {storage}: {error}") from None
    settings = CoordinatorSettings(
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
    logs.setup(args.log_level, args.log_format)

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

    cert, key, client_ca, tokens_file = (
        args.tls_cert,
        args.tls_key,
        args.tls_client_ca,
        args.auth_tokens,
    )
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

    load_task_types(args.tasks)
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
    settings = WorkerSettings(
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
    logs.setup(args.log_level, args.log_format, secrets=[endpoint.token])

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
