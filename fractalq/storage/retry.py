"""Retrying storage calls on transient failures.

Backends translate their native errors into :class:`StorageError` and mark the
ones worth retrying as ``transient`` (dropped connections, timeouts, 5xx,
throttling that outlasted botocore's own retries, odd I/O errors); a missing
bucket, wrong credentials or a missing object fail at once, because waiting
cannot fix them and a user should hear about them immediately.

The delays are the project's one backoff policy (capped exponential with equal
jitter, :mod:`fractalq.retry`), fed with the storage settings.
Retrying whole operations is safe because every storage operation is
idempotent: a put writes the same bytes under the same key, a delete of a
missing key is fine.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from fractalq.config import RetryPolicy
from fractalq.retry import retry_delay
from fractalq.storage.base import StorageError, StorageOptions

T = TypeVar("T")

log = logging.getLogger(__name__)


def call_with_retry(
    operation: Callable[[], T],
    options: StorageOptions,
    *,
    what: str = "storage operation",
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``operation``, retrying transient :class:`StorageError` s.

    At most ``options.attempts`` attempts; between them a capped exponential
    backoff. The last error is raised (noting the number of attempts if there
    was more than one); any other exception propagates untouched.
    """
    policy = RetryPolicy(base_delay=options.retry_base_delay, max_delay=options.retry_max_delay)
    attempt = 1
    while True:
        try:
            return operation()
        except StorageError as error:
            if not error.transient:
                raise
            if attempt >= options.attempts:
                if attempt == 1:
                    raise
                raise type(error)(
                    f"{error.message} (gave up after {attempt} attempts)", error.transient
                ) from error
            delay = retry_delay(policy, attempt)
            log.warning(
                "%s failed (attempt %d of %d), retrying in %.2fs: %s",
                what,
                attempt,
                options.attempts,
                delay,
                error,
            )
            sleep(delay)
            attempt += 1
