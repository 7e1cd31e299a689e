"""Browser sessions: a role token entered once becomes an opaque session cookie.

An ``EventSource`` and an ``<img>`` cannot send an ``Authorization`` header,
and a token must never be in a URL. So the page POSTs the token once to
``/api/session``; the coordinator looks it up (in constant time, like every
token) and answers with a random session id in a cookie (HttpOnly,
SameSite=Strict, Secure under TLS, bounded lifetime). The token itself is kept
nowhere: the table holds only the SHA-256 digests of session ids, each with
the role and holder its token had and when it expires: a session may do what
its token may, to the jobs its token may (:mod:`..policy`). SameSite=Strict keeps other sites
from making the browser send the cookie, so a form elsewhere cannot submit or
cancel in a user's name.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable

from aiohttp import web

from fractalq import config
from fractalq.coordinator.access import HTTP_READ_ROLES
from fractalq.coordinator.refusals import PERMISSION_DENIED, UNAUTHENTICATED, Refusals
from fractalq.security.tokens import Identity, Role, TokenTable

WRONG_TOKEN = "that token is not valid"
NOT_FOR_BROWSERS = "a worker token cannot open the dashboard: use a reader, client or admin token"


def _digest(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode("utf-8", "surrogateescape")).digest()


class Sessions:
    """Live sessions by the digest of their id: identity and expiry, the oldest first."""

    def __init__(
        self,
        lifetime: float = config.SESSION_LIFETIME,
        limit: int = config.MAX_SESSIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lifetime = lifetime
        self.limit = limit
        self.clock = clock
        self._live: OrderedDict[bytes, tuple[Identity, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._live)

    def create(self, identity: Identity) -> str:
        """A new session of ``identity``; its id, the cookie's value (256 random bits)."""
        session_id = secrets.token_urlsafe(32)
        self._live[_digest(session_id)] = (identity, self.clock() + self.lifetime)
        while len(self._live) > self.limit:
            self._live.popitem(last=False)
        return session_id

    def identity(self, session_id: str | None) -> Identity | None:
        """Who a live session is; None for an unknown or expired one.

        The lookup is by the id's digest, so how long it takes depends on the
        digest, which tells a guesser nothing about any live id.
        """
        if not session_id or len(session_id) > 256:
            return None
        key = _digest(session_id)
        found = self._live.get(key)
        if found is None:
            return None
        identity, expires = found
        if self.clock() >= expires:
            del self._live[key]
            return None
        return identity

    def role(self, session_id: str | None) -> Role | None:
        identity = self.identity(session_id)
        return identity.role if identity is not None else None

    def end(self, session_id: str | None) -> None:
        if session_id:
            self._live.pop(_digest(session_id), None)


def routes(
    tokens: TokenTable | None, sessions: Sessions, refusals: Refusals, secure: bool
) -> web.RouteTableDef:
    """``/api/session``: GET says who the browser is, POST logs in, DELETE logs out."""
    table = web.RouteTableDef()

    def current(request: web.Request) -> dict[str, str | None]:
        if tokens is None:  # no tokens: everybody may do everything
            return {"role": Role.ADMIN.value, "holder": None}
        identity = sessions.identity(request.cookies.get(config.SESSION_COOKIE))
        if identity is None:
            return {"role": None, "holder": None}
        return {"role": identity.role.value, "holder": identity.holder}

    @table.get("/api/session")
    async def whoami(request: web.Request) -> web.Response:
        return web.json_response({"auth": tokens is not None, **current(request)})

    @table.post("/api/session")
    async def login(request: web.Request) -> web.Response:
        if tokens is None:
            return web.json_response({"auth": False, "role": Role.ADMIN.value, "holder": None})
        try:
            body = await request.json()
            token = body.get("token") if isinstance(body, dict) else None
        except (ValueError, UnicodeDecodeError, RecursionError):
            token = None
        presented = token.strip() if isinstance(token, str) else ""
        identity = tokens.identify(presented) if presented else None
        if identity is None:
            refusals.refused(UNAUTHENTICATED, "POST /api/session with a wrong token")
            return web.json_response({"error": WRONG_TOKEN}, status=401)
        role = identity.role
        if role not in HTTP_READ_ROLES:
            refusals.refused(PERMISSION_DENIED, f"POST /api/session with a {role.value} token")
            return web.json_response({"error": NOT_FOR_BROWSERS}, status=403)
        response = web.json_response({"auth": True, "role": role.value, "holder": identity.holder})
        response.set_cookie(
            config.SESSION_COOKIE,
            sessions.create(identity),
            max_age=int(sessions.lifetime),
            path="/",
            httponly=True,
            secure=secure,
            samesite="Strict",
        )
        return response

    @table.delete("/api/session")
    async def logout(request: web.Request) -> web.Response:
        sessions.end(request.cookies.get(config.SESSION_COOKIE))
        response = web.json_response({"auth": tokens is not None, "role": None, "holder": None})
        response.del_cookie(config.SESSION_COOKIE, path="/")
        return response

    return table
