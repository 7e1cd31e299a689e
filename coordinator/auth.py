"""Token checks at the coordinator's two doors: a gRPC interceptor, an aiohttp middleware.

Both answer the same way: no token or an unknown one is UNAUTHENTICATED (HTTP
401 with ``WWW-Authenticate: Bearer``), a known token of a role that may not
make this call is PERMISSION_DENIED (403). The standard gRPC health service,
``/healthz`` and ``/metrics`` answer without a token. Tokens are never logged
and never sent back; refusals are counted and logged at most every few
seconds (:mod:`.refusals`).

Which jobs a caller may read or change is decided past these doors, by
:mod:`.policy`: the HTTP middleware leaves the :class:`~.policy.Caller` in the
request (:func:`caller_of`), the gRPC service finds it from the call's token.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from aiohttp import web

from fractalq import config
from fractalq.coordinator.access import (
    HTTP_READ_ROLES,
    HTTP_WRITE_ROLES,
    is_open_method,
    is_open_path,
    method_allowed,
)
from fractalq.coordinator.policy import ANYONE, Caller
from fractalq.coordinator.refusals import PERMISSION_DENIED, UNAUTHENTICATED, Refusals
from fractalq.coordinator.web.session import Sessions
from fractalq.security.tokens import TokenTable, bearer

NEEDS_TOKEN = "a valid token is required (authorization: Bearer TOKEN)"
CALLER = web.RequestKey("fractalq.caller", Caller)


def caller_of(request: web.Request) -> Caller:
    """Who makes an HTTP request, as :func:`http_middleware` found out."""
    if CALLER not in request:  # a route the middleware let through unchecked: no data for it
        raise web.HTTPUnauthorized(text=NEEDS_TOKEN + "\n")
    return request[CALLER]


def _denied(role: str) -> str:
    return f"the {role} token may not make this call"


def _refusing(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, details: str) -> Any:
    """A handler of the same shape as ``handler`` that ends the call with ``code``."""

    # The status is set, not raised with context.abort(): gRPC would keep the
    # exception, and with it the (unread, possibly large) request, in a
    # reference cycle until the cyclic collector runs.
    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        context.set_code(code)
        context.set_details(details)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)


class TokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Checks ``authorization: Bearer TOKEN`` on every call but the health service's."""

    def __init__(self, tokens: TokenTable, refusals: Refusals) -> None:
        self.tokens = tokens
        self.refusals = refusals

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = details.method
        handler = await continuation(details)
        if handler is None or is_open_method(method):
            return handler  # unknown methods stay UNIMPLEMENTED
        header = None
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                header = value if isinstance(value, str) else None
                break
        role = self.tokens.role(bearer(header))
        # `method` is one the server registered (handler is not None): safe to log.
        if role is None:
            self.refusals.refused(UNAUTHENTICATED, f"{method} without a valid token")
            return _refusing(handler, grpc.StatusCode.UNAUTHENTICATED, NEEDS_TOKEN)
        if not method_allowed(method, role):
            self.refusals.refused(PERMISSION_DENIED, f"{method} with a {role.value} token")
            return _refusing(handler, grpc.StatusCode.PERMISSION_DENIED, _denied(role.value))
        return handler


def http_middleware(
    tokens: TokenTable | None, refusals: Refusals, sessions: Sessions | None = None
) -> Any:
    """aiohttp middleware: reads need a reader, client or admin token, writes a
    client or admin token; the caller is left in the request (:func:`caller_of`).

    The token comes in an ``Authorization: Bearer`` header or, from a browser,
    as the session cookie that ``/api/session`` gave it for a token
    (:mod:`.web.session`), with that token's role and holder. Without
    ``tokens`` everybody may do everything.
    """

    @web.middleware
    async def check_token(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if tokens is None:
            request[CALLER] = ANYONE
            return await handler(request)
        if is_open_path(request.path):
            return await handler(request)
        header = request.headers.get("Authorization")
        if header is None and sessions is not None:
            identity = sessions.identity(request.cookies.get(config.SESSION_COOKIE))
        else:
            identity = tokens.identify(bearer(header))
        role = identity.role if identity is not None else None
        # The path comes from the client: escaped and cut before it reaches the log.
        method = request.method if request.method.isalpha() and len(request.method) <= 10 else "?"
        where = f"{method} {request.path[:100]!a}"
        if role is None:
            refusals.refused(UNAUTHENTICATED, f"{where} without a valid token")
            raise web.HTTPUnauthorized(
                text=NEEDS_TOKEN + "\n",
                headers={"WWW-Authenticate": 'Bearer realm="fractalq"'},
            )
        reading = request.method in ("GET", "HEAD")
        if role not in (HTTP_READ_ROLES if reading else HTTP_WRITE_ROLES):
            refusals.refused(PERMISSION_DENIED, f"{where} with a {role.value} token")
            raise web.HTTPForbidden(text=_denied(role.value) + "\n")
        assert identity is not None
        request[CALLER] = Caller.of(identity)
        return await handler(request)

    return check_token
