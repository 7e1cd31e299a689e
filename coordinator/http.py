"""The coordinator's HTTP API: health and JSON views for people and dashboards.

The JSON is the proto messages' canonical JSON mapping, so the HTTP API and
the gRPC API describe the same things with the same names. ``/metrics`` is the
same figures in Prometheus' text format (:mod:`.metrics`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fractalq.coordinator import validation
from fractalq.coordinator.auth import caller_of, http_middleware
from fractalq.coordinator.errors import BrokerError
from fractalq.coordinator.metrics import TaskTimings, registry
from fractalq.coordinator.refusals import INVALID, Refusals
from fractalq.coordinator.service import CoordinatorService, job_message
from fractalq.coordinator.web.app import add_dashboard
from fractalq.coordinator.web.errors import http_error, readable
from fractalq.coordinator.web.explore import add_routes as add_explorer
from fractalq.coordinator.web.session import Sessions
from fractalq.proto import fractalq_pb2 as pb
from fractalq.security.tokens import TokenTable
from fractalq.weblog import MALFORMED, said


def malformed_bodies(refusals: Refusals) -> Any:
    """aiohttp middleware: a body that cannot be read (bad chunks, bad gzip) is a 400,
    counted with the other malformed requests, not a 500 with a traceback."""

    @web.middleware
    async def refuse(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except MALFORMED as error:
            refusals.refused(INVALID, f"HTTP {request.method[:10]!a}: {said(error)}")
            raise web.HTTPBadRequest(text="the request's body cannot be read\n") from None

    return refuse


def _whole(request: web.Request, name: str) -> int:
    """A whole number from the query (0 when absent); 400 when it is not one."""
    text = request.query.get(name, "0")
    if not text.isdigit() or len(text) > 9:
        raise web.HTTPBadRequest(text=f"{name} must be a whole number\n")
    return int(text)


def _json(message: Message) -> web.Response:
    return web.json_response(
        json_format.MessageToDict(message, always_print_fields_with_no_presence=True)
    )


def make_app(service: CoordinatorService, tokens: TokenTable | None = None) -> web.Application:
    """The routes; with ``tokens``, everything but /healthz, /metrics and the
    dashboard's pages needs one (a bearer token, or a browser's session cookie)."""
    routes = web.RouteTableDef()
    metrics = registry(service.stats, TaskTimings().attach(service.broker))

    @routes.get("/metrics")
    async def prometheus(request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(metrics))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    @routes.get("/healthz")
    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    @routes.get("/api/stats")
    async def stats(request: web.Request) -> web.Response:
        return _json(service.stats())

    @routes.get("/api/workers")
    async def workers(request: web.Request) -> web.Response:
        data = json_format.MessageToDict(service.stats(), always_print_fields_with_no_presence=True)
        return web.json_response({"workers": data.get("workers", [])})

    @routes.get("/api/jobs")
    async def jobs(request: web.Request) -> web.Response:
        active = request.query.get("active", "") in ("1", "true", "yes")
        limit = validation.list_limit(_whole(request, "limit"))
        owner = caller_of(request).listing_owner
        body: list[dict[str, Any]] = [
            json_format.MessageToDict(
                job_message(job, with_result=False), always_print_fields_with_no_presence=True
            )
            for job in service.broker.recent_jobs(max(limit, 0), active, owner)
        ]
        return web.json_response({"jobs": body})

    @routes.get("/api/jobs/{job_id}")
    async def job(request: web.Request) -> web.Response:
        found = service.broker.get_job(request.match_info["job_id"])
        if found is None:
            raise web.HTTPNotFound(text="no such job")
        return _json(job_message(readable(service, request, caller_of(request), found)))

    @routes.get("/api/dead")
    async def dead(request: web.Request) -> web.Response:
        """The dead letters (``?job=ID`` for one job's, ``limit=N``), as ListDeadLetters."""
        listing = pb.ListDeadLettersRequest(
            job_id=request.query.get("job", ""), limit=_whole(request, "limit")
        )
        try:
            found = service.list_dead_letters(listing, caller_of(request))
        except BrokerError as error:
            raise http_error(service, request, error) from None
        return _json(found)

    sessions = Sessions()
    middlewares = [
        malformed_bodies(service.refusals),
        http_middleware(tokens, service.refusals, sessions),
    ]
    app = web.Application(middlewares=middlewares)
    app.add_routes(routes)
    add_dashboard(app, service, tokens, sessions)  # /, /static/, /api/session, events, ...
    add_explorer(app, service)  # /explore, /api/explore/...
    return app
