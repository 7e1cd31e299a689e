"""The worker's settings: one frozen record of what it was started with.

``fractalq worker`` builds it from its options (:mod:`fractalq.cli.serve`);
tests build it directly. Defaults and limits come from :mod:`fractalq.config`.
"""

from __future__ import annotations

import dataclasses

from fractalq import config
from fractalq.endpoint import Endpoint
from fractalq.security import ClientTLS


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
    """What a worker runs with: the command line's options (or the defaults)."""

    coordinator: str
    storage: str | None = None
    concurrency: int = config.DEFAULT_CONCURRENCY
    prefetch: int = config.DEFAULT_PREFETCH
    grace_period: float = config.DEFAULT_GRACE_PERIOD
    storage_outage_limit: float = config.STORAGE_OUTAGE_LIMIT
    task_types: tuple[str, ...] | None = None  # None: every registered type
    tls: ClientTLS | None = None  # None: a plaintext channel
    token: str | None = dataclasses.field(default=None, repr=False)  # the worker role's

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.coordinator, self.tls, self.token)
