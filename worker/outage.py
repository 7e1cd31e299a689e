"""Riding out a storage outage without spending attempts.

A task whose storage calls still fail transiently after the storage layer's
own retries (:mod:`fractalq.storage.retry`, a few seconds) ends in
:class:`~.executor.StorageUnavailable`. That is not the task's fault, so its
worker neither reports it failed nor hands it back: it keeps the lease (the
heartbeats go on), waits here until storage answers again and then runs the
task again on the same attempt. Running a task twice is harmless: what it
stores goes under keys that are pure functions of the job.

While storage is down the worker takes no new task, logs the outage once when
it begins and once when it ends, and its heartbeats carry the error, so the
coordinator's worker list (``fractalq status``) shows it. One probe loop per
worker finds out when storage is back, rather than every waiting task running
again (a band would be rendered again each time): a round trip through
:func:`~fractalq.storage.check_storage`, one try per probe, spaced by the
project's backoff formula (``STORAGE_PROBE_*`` in :mod:`fractalq.config`).
A probe that gets an answer, even a refusal, ends the wait: the tasks then run
again and a refusal fails them as it would have without an outage.

Each waiting task has its own bound: after ``storage_outage_limit`` seconds of
waiting it runs one last time and fails for good if storage is still down, and
then the attempt counts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from fractalq import config
from fractalq.retry import retry_delay
from fractalq.storage import Storage, StorageError, StorageOptions, check_storage, open_storage

log = logging.getLogger("fractalq.worker")

PROBE_BACKOFF = config.RetryPolicy(config.STORAGE_PROBE_BASE_DELAY, config.STORAGE_PROBE_MAX_DELAY)


def one_line(text: str) -> str:
    return " ".join(text.split())[: config.MAX_STORAGE_ERROR_LENGTH]


class StorageOutage:
    """Whether the worker's storage is down, and the probe that ends it.

    ``changed`` is called when the outage begins or ends (the worker sends a
    heartbeat at once). Without a storage URL (a task that found storage of
    its own down), a probe is just the backoff's wait.
    """

    def __init__(self, storage_url: str | None, changed: Callable[[], None]) -> None:
        self.storage_url = storage_url
        self.error = ""  # one line while storage is down, "" otherwise
        self._changed = changed
        self._up = asyncio.Event()
        self._up.set()
        self._probe: asyncio.Task[None] | None = None
        self._began = 0.0
        self._storage: Storage | None = None  # opened by the first probe

    @property
    def down(self) -> bool:
        return bool(self.error)

    def report(self, error: str) -> None:
        """A task met a transient storage error: storage is down until a probe answers."""
        began = not self.error
        self.error = one_line(error) or "storage unavailable"
        self._up.clear()
        if began:
            self._began = asyncio.get_running_loop().time()
            log.warning("storage unavailable, taking no new task until it answers: %s", self.error)
            self._changed()
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self._probe_until_up())

    async def wait_up(self) -> None:
        await self._up.wait()

    def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()

    async def _probe_until_up(self) -> None:
        attempt = 0
        while True:
            attempt += 1
            await asyncio.sleep(retry_delay(PROBE_BACKOFF, attempt))
            try:
                await asyncio.to_thread(self._check)
            except StorageError as error:
                if error.transient:
                    self.error = one_line(str(error))
                    continue
            except Exception as error:  # a probe must not die unseen: say so, keep probing
                log.warning("storage probe failed: %s", error)
                continue
            break
        seconds = asyncio.get_running_loop().time() - self._began
        log.warning("storage answers again after %.0fs; running tasks again", seconds)
        self.error = ""
        self._up.set()
        self._changed()

    def _check(self) -> None:
        if self.storage_url is None:
            return
        if self._storage is None:
            # One try per probe: the backoff between probes is ours.
            options = StorageOptions(attempts=1, s3_max_attempts=1)
            self._storage = open_storage(self.storage_url, options=options)
        check_storage(self._storage)
