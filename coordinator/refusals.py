"""Refused requests: counted by kind, and said in the log without flooding it.

A misconfigured client shows in the log at once, but a client that sends a
stream of malformed requests or bad tokens cannot flood it: one warning line
at most every ``config.REFUSED_LOG_INTERVAL`` seconds, with the counts since
the last line and the latest example. The counts are also in ``Stats`` (and so
in ``/api/stats`` and ``/metrics``). What is logged must already be safe for a
log line: the callers pass method names, checked messages and escaped client
strings, never a token.
"""

from __future__ import annotations

import collections
import logging
import math
import time
from collections.abc import Callable

from fractalq import config

log = logging.getLogger("fractalq.coordinator")

INVALID = "invalid"  # malformed or out of bounds: INVALID_ARGUMENT
UNAUTHENTICATED = "unauthenticated"  # no token or an unknown one
PERMISSION_DENIED = "permission denied"  # a role that may not, or another holder's job
OVER_QUOTA = "over quota"  # a holder's quota would be exceeded


class Refusals:
    def __init__(
        self,
        interval: float = config.REFUSED_LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger = log,
    ) -> None:
        self.interval = interval
        self.clock = clock
        self.log = logger
        self.counts: collections.Counter[str] = collections.Counter()
        self._since: collections.Counter[str] = collections.Counter()
        self._logged = -math.inf

    def refused(self, kind: str, what: str) -> None:
        self.counts[kind] += 1
        self._since[kind] += 1
        now = self.clock()
        if now - self._logged >= self.interval:
            counts = ", ".join(f"{count} {name}" for name, count in sorted(self._since.items()))
            self.log.warning("refused %s request(s) (latest: %s)", counts, what)
            self._since.clear()
            self._logged = now
