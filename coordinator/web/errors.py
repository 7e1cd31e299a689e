"""The HTTP API's refusals: a broker's refusal as an HTTP status, counted as gRPC counts it.

The same :class:`~..broker.BrokerError` that the gRPC service turns into a
status code (:func:`..service.refusal_kind` says which are counted) becomes
the matching HTTP status here: malformed 400, another holder's job 403, an
unknown job 404, a job in the wrong state or an id taken 409, over a limit or
a quota 429.
"""

from __future__ import annotations

from aiohttp import web

from fractalq.coordinator.errors import (
    AlreadyExists,
    BrokerError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from fractalq.coordinator.jobs import Job
from fractalq.coordinator.policy import Caller, check_change, check_read
from fractalq.coordinator.service import CoordinatorService, refusal_kind
from fractalq.coordinator.validation import loggable

_STATUSES: tuple[tuple[type[BrokerError], int], ...] = (
    (InvalidRequest, 400),
    (PermissionDenied, 403),
    (NotFound, 404),
    (AlreadyExists, 409),
    (ResourceExhausted, 429),
)


def status_of(error: BrokerError) -> int:
    """The HTTP status for a refusal (409 for a job whose state does not allow it)."""
    return next((status for kind, status in _STATUSES if isinstance(error, kind)), 409)


def count(service: CoordinatorService, request: web.Request, error: BrokerError) -> None:
    """Count (and log, rate-limited) a refusal the way the gRPC service does."""
    kind = refusal_kind(error)
    if kind is not None:
        path = request.path[:100]
        service.refusals.refused(kind, f"{request.method[:10]} {path!a}: {loggable(str(error))}")


def http_error(
    service: CoordinatorService, request: web.Request, error: BrokerError
) -> web.HTTPException:
    count(service, request, error)
    return _CLASSES[status_of(error)](text=f"{error}\n")


_CLASSES: dict[int, type[web.HTTPException]] = {
    400: web.HTTPBadRequest,
    403: web.HTTPForbidden,
    404: web.HTTPNotFound,
    409: web.HTTPConflict,
    429: web.HTTPTooManyRequests,
}


def readable(service: CoordinatorService, request: web.Request, caller: Caller, job: Job) -> Job:
    """``job`` if ``caller`` may read it; else 403 (counted)."""
    try:
        return check_read(caller, job)
    except BrokerError as error:
        raise http_error(service, request, error) from None


def changeable(service: CoordinatorService, request: web.Request, caller: Caller, job: Job) -> Job:
    """``job`` if ``caller`` may change it; else 403 (counted)."""
    try:
        return check_change(caller, job)
    except BrokerError as error:
        raise http_error(service, request, error) from None
