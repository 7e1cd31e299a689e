"""The live overview: one snapshot a tick, shared by every watcher, as server-sent events.

A :class:`Ticker` samples the broker once a tick (``config.DASHBOARD_TICK``):
it keeps a bounded history of throughput and queue depth and, while anyone
watches, builds one snapshot (stat cards, workers and what they run, recent
jobs, dead letters), serialises it once and wakes every watcher, each of which
writes the same bytes to its stream. So the server's work per tick is the same
for 1 or 50 browsers; each more costs one write. A new watcher gets the
history and the latest snapshot at once. Nothing is polled by the page.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

from aiohttp import web

from fractalq import config
from fractalq.coordinator.broker import Broker
from fractalq.coordinator.jobs import Job, JobState, TaskState
from fractalq.coordinator.web.preview import Previews

STATE_NAMES = {state: state.name.lower() for state in JobState}
# How many of a worker's leased jobs the worker panel names.
SHOWN_LEASES = 3


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def image_url(result: bytes) -> str:
    """Where a render's image is, from its assembly's result; "" if it names none."""
    try:
        url = json.loads(result).get("url", "")
    except (ValueError, AttributeError, RecursionError):
        return ""
    return url if isinstance(url, str) else ""


def job_row(job: Job, previews: Previews, now: float) -> dict[str, Any]:
    """A row of the jobs table."""
    counts = job.counts
    row: dict[str, Any] = {
        "id": job.job_id,
        "type": job.task_type,
        "state": STATE_NAMES[job.state],
        "priority": job.priority,
        "total": job.total,
        "succeeded": counts[TaskState.SUCCEEDED],
        "leased": counts[TaskState.LEASED],
        "queued": counts[TaskState.QUEUED] + counts[TaskState.DELAYED] + counts[TaskState.WAITING],
        "dead": counts[TaskState.DEAD],
        "age": round(max(now - job.created_at, 0.0), 1),
        "labels": job.labels,
        "reason": job.reason,
        "previews": previews.count(job.job_id),
    }
    if job.final is not None and job.state is JobState.SUCCEEDED:  # a render's image
        row["url"] = image_url(job.final.result)
    return row


class Ticker:
    """Samples the broker each tick; builds the shared snapshot while someone watches."""

    def __init__(
        self,
        broker: Broker,
        previews: Previews,
        tls: bool,
        images: bool,
        clock: Callable[[], float] = time.time,
        history: int = config.DASHBOARD_HISTORY,
    ) -> None:
        self.broker = broker
        self.previews = previews
        self.tls = tls
        self.images = images
        self.clock = clock
        self.watchers = 0
        self.snapshots = 0  # built so far: one a tick while anyone watches
        self.history: collections.deque[list[float]] = collections.deque(maxlen=history)
        self.latest: bytes | None = None
        self._changed = asyncio.Event()
        self.closed = False
        self._last: tuple[float, int] | None = None
        self._rate = 0.0

    def sample(self) -> None:
        """One tick: the history's next point, and the snapshot if anyone watches."""
        now = self.clock()
        done = self.broker.succeeded
        if self._last is not None and now > self._last[0]:
            self._rate = (done - self._last[1]) / (now - self._last[0])
        self._last = (now, done)
        totals = self.broker.totals()
        depth = totals[TaskState.QUEUED] + totals[TaskState.DELAYED] + totals[TaskState.LEASED]
        point = [round(now, 3), round(self._rate, 2), depth]
        self.history.append(point)
        if self.watchers:
            self.latest = _sse("snapshot", self.snapshot(now, totals, point))
            self.snapshots += 1
            self._changed.set()
            self._changed = asyncio.Event()

    def snapshot(self, now: float, totals: dict[TaskState, int], point: list[float]) -> Any:
        broker = self.broker
        workers = []
        busy = 0
        for worker in broker.workers.values():
            running = sorted({job_id for job_id, _ in worker.leases})
            busy += bool(worker.leases)
            workers.append(
                {
                    "id": worker.worker_id,
                    "host": worker.hostname,
                    "slots": worker.concurrency,
                    "leased": len(worker.leases),
                    "jobs": running[:SHOWN_LEASES],
                    "more": max(len(running) - SHOWN_LEASES, 0),
                    "completed": worker.completed,
                    "failed": worker.failed,
                    "draining": worker.draining,
                    "storage_error": worker.storage_error,
                    "seen": round(max(now - worker.last_seen, 0.0), 1),
                }
            )
        jobs = broker.recent_jobs(config.DASHBOARD_JOBS)
        rows = [job_row(job, self.previews, now) for job in jobs]
        running_jobs = sum(1 for job in broker.active_jobs() if job.counts[TaskState.LEASED])
        dead = [
            {"id": job.job_id, "reason": job.reason, "dead": job.counts[TaskState.DEAD]}
            for job in jobs
            if job.counts[TaskState.DEAD] or (job.state is JobState.FAILED and job.reason)
        ]
        return {
            "time": now,
            "tls": self.tls,
            "images": self.images,
            "point": point,
            "stats": {
                "queued": totals[TaskState.QUEUED] + totals[TaskState.DELAYED],
                "leased": totals[TaskState.LEASED],
                "running": running_jobs,
                "jobs_active": broker.active,
                "workers": len(workers),
                "busy": busy,
                "idle": len(workers) - busy,
                "succeeded": broker.succeeded,
                "failed": broker.failed,
                "dead": broker.dead,
                "rate": point[1],
            },
            "workers": workers,
            "jobs": rows,
            "dead_letters": dead,
        }

    def close(self) -> None:
        """End every watcher's stream (the server is stopping: it must not wait for them)."""
        self.closed = True
        self._changed.set()

    async def run(self, interval: float = config.DASHBOARD_TICK) -> None:
        while True:
            self.sample()
            await asyncio.sleep(interval)

    async def watch(self) -> AsyncGenerator[bytes, None]:
        """What one watcher's stream carries: the history, then each tick's snapshot."""
        self.watchers += 1
        try:
            if self.latest is None:
                self.sample()  # the first watcher need not wait for a tick
            yield _sse("history", list(self.history))
            sent = self.latest
            if sent is not None:
                yield sent
            while not self.closed:
                changed = self._changed
                await changed.wait()
                if self.latest is not None and self.latest is not sent:
                    sent = self.latest
                    yield sent
        finally:
            self.watchers -= 1
            if not self.watchers:
                self.latest = None  # stale once nobody watches: rebuilt for the next one


def routes(ticker: Ticker) -> web.RouteTableDef:
    table = web.RouteTableDef()

    @table.get("/api/events")
    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # a proxy in front must not hold events back
            }
        )
        stream = ticker.watch()
        with contextlib.suppress(ConnectionResetError):  # the browser went away
            await response.prepare(request)
            try:
                async for chunk in stream:
                    await response.write(chunk)
            finally:
                await stream.aclose()
        return response

    return table
