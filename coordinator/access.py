"""Which role may call what at the coordinator's doors: gRPC methods and HTTP paths.

The coordinator's access policy by role (checked by :mod:`.auth`); which *jobs* a
caller may read or change is :mod:`.policy`'s. The roles and the token table
are :mod:`fractalq.security.tokens`'s, shared with the clients.
"""

from __future__ import annotations

from fractalq.security.tokens import Role

SERVICE = "fractalq.v1.Coordinator"
# The standard gRPC health service answers everybody: the kubelet's gRPC probe
# carries no token (see docs/security.md). So does server
# reflection: it tells the services' schema, which proto/fractalq.proto publishes.
OPEN_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection")
# HTTP paths that answer without a token: the kubelet's HTTP probe and
# Prometheus' scraper carry none. /metrics holds counts only, no job ids.
OPEN_PATHS = ("/healthz", "/metrics")
# The dashboard's pages and their static files load without a token, so that
# the page can ask for one; /api/session takes it (coordinator/web/session.py).
PAGE_PATHS = ("/", "/explore", "/api/session")
STATIC_PREFIX = "/static/"


_WORKER_METHODS = frozenset(
    {
        "RegisterWorker",
        "Heartbeat",
        "GetTask",
        "CompleteTask",
        "FailTask",
        "ReleaseTasks",
        "Work",
        "UnregisterWorker",
    }
)
_READER_METHODS = frozenset({"GetJob", "WatchJob", "ListJobs", "GetStats", "ListDeadLetters"})
_CLIENT_METHODS = _READER_METHODS | {"SubmitJob", "CancelJob", "RequeueJob", "PurgeJob"}

# Which roles may call each method of the Coordinator service. A method not
# listed here (a newer client's, say) is refused to every role. Which *jobs*
# a client may read or change is the policy's (coordinator/policy.py).
METHOD_ROLES: dict[str, frozenset[Role]] = {
    **{name: frozenset({Role.WORKER}) for name in _WORKER_METHODS},
    **{name: frozenset({Role.CLIENT, Role.READER, Role.ADMIN}) for name in _READER_METHODS},
    **{name: frozenset({Role.CLIENT, Role.ADMIN}) for name in _CLIENT_METHODS - _READER_METHODS},
}
# The HTTP API's reads (everything under /api/), and its writes (the dashboard's
# submit, cancel, requeue and purge: what a client token may do over gRPC).
HTTP_READ_ROLES = frozenset({Role.CLIENT, Role.READER, Role.ADMIN})
HTTP_WRITE_ROLES = frozenset({Role.CLIENT, Role.ADMIN})


def method_allowed(full_method: str, role: Role) -> bool:
    """May ``role`` call ``/fractalq.v1.Coordinator/Name``?"""
    service, _, name = full_method.lstrip("/").partition("/")
    return service == SERVICE and role in METHOD_ROLES.get(name, frozenset())


def is_open_method(full_method: str) -> bool:
    return full_method.lstrip("/").partition("/")[0] in OPEN_SERVICES


def is_open_path(path: str) -> bool:
    return path in OPEN_PATHS or path in PAGE_PATHS or path.startswith(STATIC_PREFIX)
