"""A finished image, downloaded from the coordinator's HTTP port.

The coordinator serves a render's PNG at ``/api/jobs/<id>/image.png`` when it
reads the workers' storage (``coordinator --storage``, as the chart runs it),
so a client needs no storage credentials of its own: it shows its token (a
bearer header, never part of the URL) and trusts the same CA as for gRPC. The
image is streamed to a temporary file beside ``path`` and renamed over it
once whole, as a download from storage is.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import ssl
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from fractalq import config
from fractalq.endpoint import Endpoint
from fractalq.security.tls import split_address

CHUNK = 1024 * 1024
TIMEOUT = 60.0


class DownloadError(Exception):
    """The image could not be downloaded; the message says why, in one line."""


def http_url(endpoint: Endpoint) -> str:
    """The coordinator's HTTP port as a client of ``endpoint`` guesses it: the same
    host, the default HTTP port, HTTPS when gRPC is over TLS."""
    host, _ = split_address(endpoint.address)
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    scheme = "https" if endpoint.tls is not None else "http"
    return f"{scheme}://{host}:{config.DEFAULT_HTTP_PORT}"


def check_url(url: str) -> str:
    """``url`` if it is an http(s) URL of a host; else a ValueError."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http:// or https:// URL")
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r}: the coordinator's URL takes no query")
    return url.rstrip("/")


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect would take the token to wherever it points: refused (an HTTPError)."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def download_image(
    base_url: str, endpoint: Endpoint, job_id: str, path: str, resource: str = "image.png"
) -> int:
    """Download job ``job_id``'s image (``resource`` ``video``: a zoom's video) to
    ``path`` (replaced whole); its size in bytes."""
    url = f"{check_url(base_url)}/api/jobs/{urllib.parse.quote(job_id, safe='')}/{resource}"
    request = urllib.request.Request(url, headers=dict(_headers(endpoint)))
    handlers: list[urllib.request.BaseHandler] = [_NoRedirects()]
    if url.startswith("https:"):
        context = endpoint.tls.ssl_context() if endpoint.tls else ssl.create_default_context()
        handlers.append(urllib.request.HTTPSHandler(context=context))
    opener = urllib.request.build_opener(*handlers)
    target = Path(path)
    fd, temp = tempfile.mkstemp(prefix=".fractalq-", dir=target.parent.resolve())
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with opener.open(request, timeout=TIMEOUT) as answer:
                    shutil.copyfileobj(answer, out, CHUNK)
            except urllib.error.HTTPError as error:
                raise DownloadError(f"{url}: HTTP {error.code}: {_said(error)}") from None
            except (urllib.error.URLError, OSError) as error:
                reason = getattr(error, "reason", error)
                raise DownloadError(f"cannot download {url}: {reason}") from None
            size = out.tell()
        os.chmod(temp, 0o644)
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    return size


def _headers(endpoint: Endpoint) -> list[tuple[str, str]]:
    # The token as the gRPC calls carry it: "authorization: Bearer TOKEN".
    return [(key.title(), value) for key, value in endpoint.metadata]


def _said(error: urllib.error.HTTPError) -> str:
    """The first line of the coordinator's answer (it says why in one), printable."""
    try:
        text = error.read(500).decode("utf-8", "replace")
    except OSError:
        text = ""
    line = text.strip().splitlines()[0] if text.strip() else str(error.reason)
    return "".join(c for c in line if c.isprintable())[:200]
