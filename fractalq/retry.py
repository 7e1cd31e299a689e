"""Retry delays: the one backoff formula of fractalq, capped exponential with jitter.

Every retry waits by :func:`retry_delay`, each with its own
:class:`~fractalq.config.RetryPolicy` from :mod:`fractalq.config`: a failed task
put back in the queue (the coordinator's broker), a storage call that failed
transiently (:mod:`fractalq.storage.retry`), a worker probing storage during an
outage and a worker reconnecting to the coordinator (:mod:`fractalq.worker.runtime`).

"Equal jitter": half of the capped exponential is always waited, the other half
is a uniform draw. The fixed half guarantees a failing task backs off; the
random half spreads the retries of many tasks that failed together, so a flaky
dependency is not hit by all of them at the same instant again.
"""

from __future__ import annotations

import random

from fractalq.config import RetryPolicy


def backoff_ceiling(policy: RetryPolicy, attempt: int) -> float:
    """The longest wait after failed attempt number ``attempt`` (1-based)."""
    exponent = min(max(attempt - 1, 0), 62)
    return min(policy.max_delay, policy.base_delay * float(2**exponent))


def retry_delay(policy: RetryPolicy, attempt: int, rng: random.Random | None = None) -> float:
    """A delay in ``[ceiling / 2, ceiling]``; ``rng`` makes it reproducible in tests."""
    ceiling = backoff_ceiling(policy, attempt)
    return ceiling / 2 + (rng or random).random() * ceiling / 2
