"""The coordinator's settings: one frozen record of what it was started with.

``fractalq coordinator`` builds it from its options (:mod:`fractalq.cli.serve`);
tests build it directly. Defaults and limits come from :mod:`fractalq.config`.
"""

from __future__ import annotations

import dataclasses

from fractalq import config
from fractalq.security import ServerTLS, TokenTable


@dataclasses.dataclass(frozen=True)
class CoordinatorSettings:
    """What a coordinator runs with: the command line's options (or the defaults)."""

    host: str = config.DEFAULT_HOST
    port: int = config.DEFAULT_PORT
    http_port: int | None = config.DEFAULT_HTTP_PORT
    data_dir: str | None = None  # None: in memory only, nothing survives a restart
    worker_timeout: float = config.DEFAULT_WORKER_TIMEOUT
    retention: float = config.DEFAULT_RETENTION
    orphan_sweep: float = config.ORPHAN_SWEEP_INTERVAL
    limits: config.QueueLimits = dataclasses.field(default_factory=config.QueueLimits)
    retry: config.RetryPolicy = dataclasses.field(default_factory=config.RetryPolicy)
    tls: ServerTLS | None = None  # None: plaintext gRPC and HTTP
    tokens: TokenTable | None = None  # None: every call is allowed
    quota: config.HolderQuota = dataclasses.field(
        default_factory=config.HolderQuota
    )  # with tokens only
    # Where workers store images, for the dashboard's downloads; None: not served.
    storage: str | None = None

    @property
    def heartbeat_interval(self) -> float:
        return self.worker_timeout / config.HEARTBEATS_PER_TIMEOUT
