"""Mounting the dashboard: its pages, static files and API on the coordinator's app."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from fractalq.coordinator.auth import caller_of
from fractalq.coordinator.errors import BrokerError
from fractalq.coordinator.jobs import Job
from fractalq.coordinator.policy import check_read
from fractalq.coordinator.service import CoordinatorService
from fractalq.coordinator.web import actions, download, events, preview, session
from fractalq.coordinator.web.errors import http_error
from fractalq.coordinator.web.preview import Previews
from fractalq.coordinator.web.session import Sessions
from fractalq.security.tokens import TokenTable
from fractalq.storage import Storage, open_storage

STATIC = Path(__file__).parent / "static"
TICKER = web.AppKey("fractalq.ticker", events.Ticker)


def add_dashboard(
    app: web.Application,
    service: CoordinatorService,
    tokens: TokenTable | None,
    sessions: Sessions,
) -> None:
    settings = service.settings
    storage: Storage | None = open_storage(settings.storage) if settings.storage else None
    previews = Previews()
    service.broker.listeners.add(previews)
    ticker = events.Ticker(
        service.broker, previews, tls=settings.tls is not None, images=storage is not None
    )
    app[TICKER] = ticker

    def readable(request: web.Request, job_id: str) -> Job:
        """The job if the caller may read it; 404 or 403 (counted) otherwise."""
        caller = caller_of(request)
        try:
            return check_read(caller, service.find_job(job_id))
        except BrokerError as error:
            raise http_error(service, request, error) from None

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    async def ticking(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(ticker.run())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.router.add_get("/", index)
    app.router.add_static("/static/", STATIC)
    for table in (
        session.routes(tokens, sessions, service.refusals, secure=settings.tls is not None),
        events.routes(ticker),
        preview.routes(previews, readable),
        actions.routes(service),
        download.routes(service, storage, readable),
    ):
        app.add_routes(table)

    async def closing(app: web.Application) -> None:
        ticker.close()  # before the server waits for its requests: streams never end

    app.cleanup_ctx.append(ticking)
    app.on_shutdown.append(closing)
