"""Wiring: load the journal, build the broker, serve gRPC and HTTP, run the timers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sqlite3
import time
from collections.abc import Callable

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2

from fractalq import config, tasks
from fractalq.coordinator.auth import TokenInterceptor
from fractalq.coordinator.broker import Broker
from fractalq.coordinator.housekeeping import can_sweep, queue_sweep
from fractalq.coordinator.http import make_app
from fractalq.coordinator.lock import DataFolderLock, StartupError, check_listen, show_address
from fractalq.coordinator.reflection import add_reflection
from fractalq.coordinator.refusals import INVALID
from fractalq.coordinator.service import CoordinatorService, add_health, add_to_server
from fractalq.coordinator.settings import CoordinatorSettings
from fractalq.coordinator.store import GroupCommit, SqliteJournal
from fractalq.weblog import ServerLog

log = logging.getLogger("fractalq.coordinator")


async def _timers(service: CoordinatorService, settings: CoordinatorSettings) -> None:
    """Declare silent workers dead, wake retries whose backoff is over, apply
    retention, queue the orphan sweep."""
    interval, retention = settings.heartbeat_interval / 2, settings.retention
    sweep = min(config.RETENTION_SWEEP, retention / 2)
    orphans = settings.orphan_sweep if retention else 0.0
    swept = orphans_swept = time.time()
    while True:
        await asyncio.sleep(min(interval, sweep) if retention else interval)
        now = time.time()
        for worker_id in service.broker.expire_workers(now):
            log.warning("worker %s lost: no heartbeat", worker_id)
        service.broker.promote_due(now)
        if retention and now - swept >= sweep:
            swept = now
            if forgotten := service.broker.forget_finished(now - retention, now):
                log.info("forgot %d job(s) finished over %gs ago", forgotten, retention)
        if orphans and now - orphans_swept >= orphans and can_sweep(service.broker):
            orphans_swept = now
            if job_id := queue_sweep(service, now, retention, orphans):
                log.info("queued %s: objects of unknown jobs older than %gs", job_id, retention)


async def serve(
    settings: CoordinatorSettings,
    started: Callable[[int, int | None], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run until ``stop`` is set (or SIGTERM/SIGINT); ``started`` gets the bound ports.

    Whatever stops it from starting (the data folder in use or unusable, a
    port taken, a bad host, a database that cannot be opened) is a
    :class:`StartupError` of one line, raised before anything is written.
    """
    lock = DataFolderLock(settings.data_dir) if settings.data_dir else None
    try:
        check_listen(settings.host, settings.port, "gRPC")
        if settings.http_port is not None:
            if settings.http_port == settings.port != 0:
                where = show_address(settings.host, settings.http_port)
                raise StartupError(f"cannot listen on {where} (HTTP): it is the gRPC port")
            check_listen(settings.host, settings.http_port, "HTTP")
        await _serve(settings, started, stop)
    finally:
        if lock is not None:
            lock.release()


async def _serve(
    settings: CoordinatorSettings,
    started: Callable[[int, int | None], None] | None,
    stop: asyncio.Event | None,
) -> None:
    journal, broker = _restore(settings)
    commit = GroupCommit(journal, config.COMMIT_INTERVAL) if journal else None
    service = CoordinatorService(broker, settings, journal, commit)
    server, health_servicer, port = await _start_grpc(service, settings)
    try:
        runner, http_port = await _start_http(service, settings)
    except StartupError:
        await server.stop(None)
        raise

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    background = [asyncio.create_task(_timers(service, settings))]
    if commit is not None:
        background.append(asyncio.create_task(commit.run()))
    _log_start(settings, port, http_port)
    if started is not None:
        started(port, http_port)
    try:
        stop_wait = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stop_wait, *background], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stop_wait:
                task.result()  # a crashed committer must not go unnoticed
    finally:
        stop_wait.cancel()
        service.stopping = True
        await health_servicer.enter_graceful_shutdown()
        await server.stop(grace=1.0)
        if runner is not None:
            await runner.cleanup()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        if commit is not None:
            await commit.flush()
            commit.close()
        log.info("coordinator stopped")


def _restore(settings: CoordinatorSettings) -> tuple[SqliteJournal | None, Broker]:
    """The journal (when there is a data folder) and a broker holding what it recorded."""
    try:
        journal = SqliteJournal(settings.data_dir) if settings.data_dir else None
    except sqlite3.Error as error:
        raise StartupError(f"cannot open the database in {settings.data_dir}: {error}") from None
    broker = Broker(
        journal=journal,
        worker_timeout=settings.worker_timeout,
        limits=settings.limits,
        retry=settings.retry,
    )
    if journal is not None:
        try:
            jobs = journal.load(config.FINISHED_JOBS_IN_MEMORY)
        except sqlite3.Error as error:
            journal.close()
            raise StartupError(f"cannot read the database {journal.path}: {error}") from None
        broker.restore(jobs, time.time())
        active = sum(1 for job in jobs if not job.state.finished)
        log.info("restored %d job(s), %d unfinished, from %s", len(jobs), active, journal.path)
    return journal, broker


GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", config.MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", config.MAX_MESSAGE_BYTES),
    # gRPC sets SO_REUSEPORT by default: a second coordinator on this port
    # would start and take half of the connections.
    ("grpc.so_reuseport", 0),
    # Clients' keepalive pings (fractalq.endpoint) come at most this often.
    ("grpc.http2.min_ping_interval_without_data_ms", int(config.KEEPALIVE_MIN_INTERVAL * 1000)),
]


async def _start_grpc(
    service: CoordinatorService, settings: CoordinatorSettings
) -> tuple[grpc.aio.Server, health.aio.HealthServicer, int]:
    """The gRPC server, serving: the coordinator, health and reflection services."""
    # Tokens are checked before any servicer runs (the health service stays open).
    interceptors = [TokenInterceptor(settings.tokens, service.refusals)] if settings.tokens else []
    server = grpc.aio.server(options=GRPC_OPTIONS, interceptors=interceptors)
    add_to_server(service, server)
    health_servicer = health.aio.HealthServicer()
    add_health(service, health_servicer, server)
    add_reflection(server, service.refusals)
    listen = show_address(settings.host, settings.port)
    try:
        if settings.tls is not None:
            port = server.add_secure_port(listen, settings.tls.grpc_credentials())
        else:
            port = server.add_insecure_port(listen)
    except RuntimeError:  # "Failed to bind": taken since check_listen looked
        port = 0
    if port == 0:
        raise StartupError(f"cannot listen on {listen} (gRPC): the port is already in use")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set("fractalq.v1.Coordinator", health_pb2.HealthCheckResponse.SERVING)
    return server, health_servicer, port


async def _start_http(
    service: CoordinatorService, settings: CoordinatorSettings
) -> tuple[web.AppRunner | None, int | None]:
    """The dashboard, the HTTP API, /healthz and /metrics, serving (none without a port)."""
    if settings.http_port is None:
        return None, None
    runner = web.AppRunner(
        make_app(service, settings.tokens),
        access_log=None,
        # No tracebacks for malformed requests: counted with the other refusals.
        logger=ServerLog(lambda what: service.refusals.refused(INVALID, what)),
    )
    await runner.setup()
    try:
        tls = settings.tls.http_context() if settings.tls else None
        await web.TCPSite(runner, settings.host, settings.http_port, ssl_context=tls).start()
    except OSError as error:  # taken since check_listen looked
        await runner.cleanup()
        where = show_address(settings.host, settings.http_port)
        reason = os.strerror(error.errno) if error.errno else str(error)
        raise StartupError(f"cannot listen on {where} (HTTP): {reason}") from None
    return runner, int(runner.addresses[0][1])


def _log_start(settings: CoordinatorSettings, port: int, http_port: int | None) -> None:
    if settings.tls is None:
        tls = "no TLS"
    else:
        tls = "TLS" + (", client certificates required" if settings.tls.client_ca_file else "")
    log.info(
        "coordinator listening on %s:%d (http %s; %s; %s)",
        settings.host,
        port,
        http_port or "-",
        tls,
        f"{len(settings.tokens)} token(s)" if settings.tokens else "no tokens",
    )
    log.info("task types: %s", ", ".join(tasks.names()))
