"""The coordinator's one error hierarchy: what the broker and the service refuse.

Each is a :class:`BrokerError` whose message is meant for the client; the
transports map the class to a status (gRPC in :mod:`.service`, HTTP in
:mod:`.web.errors`), so a refusal reads the same on every door.
"""

from __future__ import annotations


class BrokerError(Exception):
    """A request the broker refuses; the message is meant for the client."""


class InvalidRequest(BrokerError):
    pass


class NotFound(BrokerError):
    pass


class AlreadyExists(BrokerError):
    pass


class UnknownWorker(NotFound):
    """No live session with this worker id and secret."""


class ResourceExhausted(BrokerError):
    """A limit on what the coordinator holds at once (workers, jobs, bytes) is reached."""


class OverQuota(ResourceExhausted):
    """A holder's quota (:class:`~fractalq.config.HolderQuota`) would be exceeded."""


class WrongState(BrokerError):
    """The job is not in a state that allows this (FAILED_PRECONDITION)."""


class PermissionDenied(BrokerError):
    """The caller may not do this to this job (another holder's, see :mod:`.policy`)."""
