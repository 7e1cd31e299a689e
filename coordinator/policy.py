"""Who may read and change which job: one policy for the gRPC and the HTTP API.

Both transports find out who calls (:class:`Caller`: the role and holder of
the token, or of the browser session made from one) and ask here:

* without tokens (:data:`ANYONE`) everybody may do everything, as before
  ownership existed, and nothing is owned;
* a **client** reads, watches, lists, cancels, requeues and purges its own
  jobs (those its holder submitted), and has a quota;
* a **reader** watches the whole queue: it reads every job and every dead
  letter, as Flower shows every task, and changes none;
* an **admin** is a client of every job, without a quota;
* a **worker** makes the worker calls only (the role check, before this).

A job submitted by the coordinator itself (the orphan sweep) belongs to no
holder: an admin's to act on. A cleanup job belongs to its job's holder.
Refusals are :class:`~.broker.PermissionDenied` (PERMISSION_DENIED, HTTP 403).
"""

from __future__ import annotations

import dataclasses

from fractalq.config import HolderQuota
from fractalq.coordinator.errors import PermissionDenied
from fractalq.coordinator.jobs import Job
from fractalq.security.tokens import Identity, Role


@dataclasses.dataclass(frozen=True)
class Caller:
    """Who makes a request: a role and a holder; role None when tokens are off."""

    role: Role | None
    holder: str = ""

    @classmethod
    def of(cls, identity: Identity) -> Caller:
        return cls(identity.role, identity.holder)

    @property
    def sees_all(self) -> bool:
        """Does it read (and list) every holder's jobs?"""
        return self.role in (None, Role.READER, Role.ADMIN)

    @property
    def changes_all(self) -> bool:
        return self.role in (None, Role.ADMIN)

    @property
    def owner(self) -> str:
        """The owner of the jobs it submits."""
        return self.holder

    @property
    def listing_owner(self) -> str | None:
        """Whose jobs a listing shows it: None for everyone's."""
        return None if self.sees_all else self.holder


ANYONE = Caller(None)  # tokens are off


def may_read(caller: Caller, job: Job) -> bool:
    return caller.sees_all or job.owner == caller.holder


def may_change(caller: Caller, job: Job) -> bool:
    return caller.changes_all or (caller.role is Role.CLIENT and job.owner == caller.holder)


def check_read(caller: Caller, job: Job) -> Job:
    if not may_read(caller, job):
        raise PermissionDenied(f"job {job.job_id!r} is another holder's: {_OWN_ONLY}")
    return job


def check_change(caller: Caller, job: Job) -> Job:
    if not may_change(caller, job):
        raise PermissionDenied(f"job {job.job_id!r} is another holder's: {_OWN_ONLY}")
    return job


def quota_for(caller: Caller, quota: HolderQuota) -> HolderQuota | None:
    """The quota a caller's submissions count against; None: unbounded (no
    tokens, or an admin)."""
    return None if caller.changes_all else quota


_OWN_ONLY = "a client token reads and changes the jobs of its own holder only"
