"""Tiles through the queue: cache first, then batched jobs whose results come back in memory.

:meth:`TileRenderer.tiles` answers each tile with a future of its PNG bytes:

* a cached tile at once; a tile some job already renders shares that job's
  future (two browsers on the same view cost one render);
* the others wait ``config.TILE_BATCH_WINDOW`` for more, then go to the queue
  as one *transient* job (:class:`~fractalq.coordinator.broker.JobSpec`: never
  written to the database, forgotten once done) of ``fractal.tile`` tasks at
  ``config.EXPLORE_PRIORITY``, ahead of batch renders. A task holds a few
  tiles, as many as spread the batch over about eight tasks per worker slot,
  so the workers share a screen's tiles and one task's overhead is shared by
  several tiles;
* a task's result (its tiles' PNGs) reaches :meth:`TileRenderer.task_result` through the
  broker's ``task_result`` event (:mod:`..listeners`) as the worker reports it, with no polling
  and no storage round trip: the tiles go into the cache and their futures
  are resolved. A job that fails or is cancelled fails its unfinished tiles.

Bounds: at most ``max_jobs`` tile jobs and ``max_tiles`` tiles in flight for
all browsers together; past them :class:`Busy` (the browser retries), so a
client cannot flood the queue. A job older than ``timeout`` is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Callable

from fractalq import config
from fractalq.coordinator.broker import Broker, JobSpec
from fractalq.coordinator.errors import BrokerError
from fractalq.coordinator.jobs import Job, JobState
from fractalq.coordinator.listeners import Listener
from fractalq.coordinator.web.tilecache import TileCache
from fractalq.fractal.request import RenderRequest
from fractalq.tasks.tile import TASK_TYPE, split_result, tile_payload

log = logging.getLogger("fractalq.coordinator.explore")

JOB_PREFIX = "tiles-"
# A batch is cut into about this many tasks per worker slot (whole tiles, at
# most tiles_per_task each): small enough that the slots finish together.
TASKS_PER_SLOT = 8
LABELS = {"fractalq.dev/explorer": "tiles"}
# One tile's future, and the tiles of each task of a job.
Entry = tuple[bytes, "asyncio.Future[bytes]"]


@dataclasses.dataclass
class TileStats:
    """Counters for /api/explore/stats and the explorer's benchmark (times in microseconds)."""

    tiles: int = 0  # asked for
    cached: int = 0  # of those, answered from the cache or an earlier request's job
    rendered: int = 0  # came back from workers
    render_us: int = 0  # the workers' time in the kernel and palette
    encode_us: int = 0  # the workers' time in the PNG encoder
    render_cpu_us: int = 0  # the same two in CPU time (less on a busy machine)
    encode_cpu_us: int = 0
    jobs: int = 0  # submitted
    job_us: int = 0  # submit to last result, summed over succeeded jobs
    failed: int = 0  # tiles answered with an error
    busy: int = 0  # requests refused (bounds, no worker)
    abandoned: int = 0  # jobs cancelled because nobody waited for their tiles any more


class Busy(Exception):
    """The explorer may not queue more now (its bounds, or no worker); retry later."""


class TileFailed(Exception):
    """A tile's job failed or was cancelled; the message says why."""


def _retrieved(future: asyncio.Future[bytes]) -> None:
    if not future.cancelled():
        future.exception()  # a failure nobody awaits any more is not an error to log


class TileRenderer(Listener):
    def __init__(
        self,
        broker: Broker,
        cache: TileCache | None = None,
        clock: Callable[[], float] = time.time,
        *,
        window: float = config.TILE_BATCH_WINDOW,
        max_jobs: int = config.MAX_TILE_JOBS,
        max_tiles: int = config.MAX_TILES_IN_FLIGHT,
        tiles_per_task: int = config.TILES_PER_TASK,
        timeout: float = config.TILE_TIMEOUT,
        submit: Callable[[JobSpec, str, float], object] | None = None,
    ) -> None:
        self.broker = broker
        # How a tile job is queued: the service's door for the coordinator's own jobs
        # (CoordinatorService.submit_internal); the broker itself when there is none.
        self._submit = submit or (lambda spec, job_id, now: broker.submit(spec, now, job_id))
        self.cache = cache if cache is not None else TileCache()
        self.clock = clock
        self.window = window
        self.max_jobs = max_jobs
        self.max_tiles = max_tiles
        self.tiles_per_task = tiles_per_task
        self.timeout = timeout
        self.stats = TileStats()
        self._waiting: dict[bytes, asyncio.Future[bytes]] = {}  # pending or in a job
        # Requests still waiting for each unfinished tile (see release()).
        self._interest: dict[asyncio.Future[bytes], int] = {}
        self._job_of: dict[asyncio.Future[bytes], str] = {}
        self._pending: list[tuple[bytes, RenderRequest]] = []
        self._flush_at: asyncio.TimerHandle | None = None
        # Job id -> (submitted, by clock and by perf_counter; its tasks' tiles).
        self._jobs: dict[str, tuple[float, float, list[list[Entry]]]] = {}
        broker.listeners.add(self)

    @property
    def jobs_in_flight(self) -> int:
        return len(self._jobs) + (1 if self._pending else 0)

    def _has_worker(self) -> bool:
        return any(not worker.draining for worker in self.broker.registry.offering(TASK_TYPE))

    def _slots(self) -> int:
        return sum(worker.concurrency for worker in self.broker.registry.offering(TASK_TYPE))

    def tiles(self, requests: list[RenderRequest]) -> list[asyncio.Future[bytes]]:
        """A future of PNG bytes per request, in order; Busy when they cannot be queued now."""
        self.expire()
        loop = asyncio.get_running_loop()
        keys = [request.to_json() for request in requests]
        new = {key for key in keys if key not in self._waiting and key not in self.cache}
        if new:
            if len(self._jobs) >= self.max_jobs or len(self._waiting) + len(new) > self.max_tiles:
                self.stats.busy += 1
                raise Busy("the explorer has as many tiles on the queue as it may; retry")
            if not self._has_worker():
                self.stats.busy += 1
                raise Busy(f"no worker serves {TASK_TYPE} tasks")
        self.stats.tiles += len(keys)
        self.stats.cached += len(keys) - len(new)
        futures = []
        for key, request in zip(keys, requests, strict=True):
            future = self._waiting.get(key)
            if future is None:
                future = loop.create_future()
                future.add_done_callback(_retrieved)
                cached = self.cache.get(key)
                if cached is not None:
                    future.set_result(cached)
                else:
                    self._waiting[key] = future
                    self._pending.append((key, request))
            futures.append(future)
        for future in set(futures):
            if not future.done():
                self._interest[future] = self._interest.get(future, 0) + 1
        if self._pending and self._flush_at is None:
            self._flush_at = loop.call_later(self.window, self._flush)
        return futures

    def _flush(self) -> None:
        self._flush_at = None
        batch, self._pending = self._pending, []
        if not batch:
            return
        slots = max(self._slots(), 1)
        per_task = min(max(-(-len(batch) // (TASKS_PER_SLOT * slots)), 1), self.tiles_per_task)
        groups = [batch[start : start + per_task] for start in range(0, len(batch), per_task)]
        spec = JobSpec(
            task_type=TASK_TYPE,
            payloads=[tile_payload([request for _, request in group]) for group in groups],
            payload=b"",
            count=0,
            priority=config.EXPLORE_PRIORITY,
            max_attempts=config.DEFAULT_MAX_ATTEMPTS,
            labels=dict(LABELS),
            transient=True,
        )
        tasks = [[(key, self._waiting[key]) for key, _ in group] for group in groups]
        job_id = JOB_PREFIX + uuid.uuid4().hex[:16]
        for entries in tasks:
            for _, future in entries:
                self._job_of[future] = job_id
        self._jobs[job_id] = (self.clock(), time.perf_counter(), tasks)
        self.stats.jobs += 1
        try:
            self._submit(spec, job_id, self.clock())
        except BrokerError as error:
            self._fail(job_id, f"the queue refused the tiles: {error}")

    def task_result(self, job: Job, index: int, result: bytes) -> None:
        found = self._jobs.get(job.job_id)
        if found is None or not 0 <= index < len(found[2]):
            return
        entries = found[2][index]
        try:
            tiles = split_result(result)
            if len(tiles) != len(entries):
                raise ValueError(f"{len(tiles)} tiles came back for {len(entries)}")
        except ValueError as error:  # a worker of another version: fail, do not cache
            log.warning("tile job %s task %d: %s", job.job_id, index, error)
            self._fail_entries(entries, f"a worker sent a bad tile result: {error}")
            return
        for (key, future), tile in zip(entries, tiles, strict=True):
            self.cache.put(key, tile.png)
            self.stats.rendered += 1
            self.stats.render_us += tile.render_us
            self.stats.encode_us += tile.encode_us
            self.stats.render_cpu_us += tile.render_cpu_us
            self.stats.encode_cpu_us += tile.encode_cpu_us
            if self._waiting.get(key) is future:
                del self._waiting[key]
            self._forget(future)
            if not future.done():
                future.set_result(tile.png)

    def job_changed(self, job: Job) -> None:
        if job.job_id not in self._jobs or not job.state.finished:
            return
        if job.state is JobState.SUCCEEDED:
            _, started, _ = self._jobs.pop(job.job_id)
            self.stats.job_us += round((time.perf_counter() - started) * 1e6)
        else:
            self._fail(job.job_id, job.reason or "the tile job ended")

    def _fail(self, job_id: str, reason: str) -> None:
        _, _, tasks = self._jobs.pop(job_id)
        for entries in tasks:
            self._fail_entries(entries, reason)

    def _fail_entries(self, entries: list[Entry], reason: str) -> None:
        for key, future in entries:
            if self._waiting.get(key) is future:
                del self._waiting[key]
            self._forget(future)
            if not future.done():
                future.set_exception(TileFailed(reason))
                self.stats.failed += 1

    def _forget(self, future: asyncio.Future[bytes]) -> None:
        self._interest.pop(future, None)
        self._job_of.pop(future, None)

    def release(self, futures: list[asyncio.Future[bytes]]) -> None:
        """A request no longer waits for these (answered, or its browser went away).

        A tile nobody waits for any more leaves the batch it waits in; a job
        none of whose unfinished tiles anyone waits for is cancelled (its
        queued tasks are dropped), so a browser zooming on does not leave
        the queue rendering the levels it passed.
        """
        jobs = set()
        for future in set(futures):
            count = self._interest.get(future)
            if count is None:
                continue
            if count > 1:
                self._interest[future] = count - 1
                continue
            del self._interest[future]
            if future in self._job_of:
                jobs.add(self._job_of[future])
            else:  # still in the batch window
                self._pending = [
                    (k, r) for k, r in self._pending if self._waiting.get(k) is not future
                ]
                self._waiting = {k: f for k, f in self._waiting.items() if f is not future}
                future.cancel()
        for job_id in jobs:
            found = self._jobs.get(job_id)
            if found is not None and not any(
                future in self._interest for entries in found[2] for _, future in entries
            ):
                self.stats.abandoned += 1
                with contextlib.suppress(BrokerError):
                    self.broker.cancel(
                        job_id, "nobody waits for these tiles any more", self.clock()
                    )

    def expire(self) -> None:
        """Cancel tile jobs older than the timeout (no worker took them, say)."""
        oldest = self.clock() - self.timeout
        reason = f"tiles not rendered within {self.timeout:g} s"
        for job_id, (submitted, _, _) in list(self._jobs.items()):
            if submitted < oldest:
                with contextlib.suppress(BrokerError):
                    self.broker.cancel(job_id, reason, self.clock())
                if job_id in self._jobs:  # the broker no longer knew it
                    self._fail(job_id, reason)
