"""aiohttp's server log without the tracebacks that clients can cause.

aiohttp logs a request it cannot parse (a bad request line, header, chunk or
content encoding: it has answered 400 already) with a traceback at ERROR, and
so a response it could not write because the client had gone. Both are the
client's doing, and anyone who reaches the port can cause them, so they must
not flood a log: a malformed request is handed to ``refused`` (one line,
escaped, for a rate-limited log such as :class:`~fractalq.coordinator.refusals.Refusals`),
a client gone is a debug line. Anything else is a bug and keeps its traceback.

Two ways in: :class:`ServerLog`, the logger of an ``AppRunner`` we make (the
coordinator's HTTP port), and :class:`ClientErrorFilter`, a filter on the
``aiohttp.server`` logger for servers made elsewhere (kopf's liveness probe
in the operator).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

SERVER_LOGGER = "aiohttp.server"
# What aiohttp raises for a request it cannot parse: the request line, a header,
# the chunked framing, the content encoding or length of the body.
MALFORMED = (HttpProcessingError, RequestPayloadError)

log = logging.getLogger("fractalq.http")


def said(error: BaseException, limit: int = 120) -> str:
    """One short line about a malformed request, control characters escaped
    (aiohttp's message quotes the client's bytes)."""
    text = error.message if isinstance(error, HttpProcessingError) else str(error)
    text = " ".join(str(text).split())[:limit]
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _client_caused(error: BaseException | None, refused: Callable[[str], None]) -> bool:
    """Say a client-caused error the short way; False for anything else."""
    if isinstance(error, MALFORMED):
        refused(f"HTTP: {said(error)}")
        return True
    if isinstance(error, ConnectionError):
        log.debug("a client went away: %s", said(error))
        return True
    return False


class ServerLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server logger (``AppRunner(..., logger=ServerLog(refused))``)."""

    def __init__(self, refused: Callable[[str], None]) -> None:
        super().__init__(logging.getLogger(SERVER_LOGGER), {})
        self.refused = refused

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        error = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        if not _client_caused(error, self.refused):
            self.logger.exception(msg, *args, exc_info=exc_info, **kwargs)


class ClientErrorFilter(logging.Filter):
    """On the ``aiohttp.server`` logger: drops the client-caused records (said the
    short way instead)."""

    def __init__(self, refused: Callable[[str], None]) -> None:
        super().__init__()
        self.refused = refused

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not _client_caused(error, self.refused)
