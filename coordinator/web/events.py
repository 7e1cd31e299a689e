"""The live overview: one snapshot a tick, shared by every watcher, as server-sent events.

A :class:`Ticker` samples the broker once a tick (``config.DASHBOARD_TICK``):
it keeps a bounded history of throughput and queue depth and, while anyone
watches, builds one snapshot (stat cards, workers and what they run, recent
jobs, dead letters) per view watched, serialises it once and wakes every
watcher, each of which writes its view's bytes to its stream. So the server's
work per tick is the same for 1 or 50 browsers of a view; each more costs one
write. A view is everyone's jobs, or one holder's for a client's session
(:mod:`..policy`). A new watcher gets the
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
from fractalq.coordinator.auth import caller_of
from fractalq.coordinator.broker import Broker
from fractalq.coordinator.deadletters import dead_letters
from fractalq.coordinator.jobs import Job, JobState, TaskState
from fractalq.coordinator.web.preview import Previews
from fractalq.proto import fractalq_pb2 as pb

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
        "held": job.dead_letters_held,
        "owner": job.owner,
        "age": round(max(now - job.created_at, 0.0), 1),
        "labels": job.labels,
        "reason": job.reason,
        "previews": previews.count(job.job_id),
    }
    if job.state is JobState.SUCCEEDED and job.result:  # a render's image
        row["url"] = image_url(job.result)
    return row


def dead_row(letter: pb.DeadLetter) -> dict[str, Any]:
    """A row of the dead letters: the task, its attempts and its last error."""
    last = letter.errors[-1].message if letter.errors else letter.reason
    return {
        "id": letter.job_id,
        "index": letter.index,
        "type": letter.task_type,
        "stage": letter.stage,
        "attempts": letter.attempts,
        "errors": len(letter.errors),
        "error": last,
        "owner": letter.owner,
        "reason": letter.reason,
    }


# A view of the overview: whose jobs it shows (None: everyone's, see policy.Caller).
View = str | None


class Ticker:
    """Samples the broker each tick; builds the shared snapshots while someone watches.

    One snapshot a tick per *view* being watched: everyone's jobs (readers,
    admins, no tokens) or one holder's (a client sees its own jobs, and only
    their ids among what the workers run). Watchers of the same view share it.
    """

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
        self.watching: collections.Counter[View] = collections.Counter()
        self.snapshots = 0  # built so far: one a tick per view watched
        self.history: collections.deque[list[float]] = collections.deque(maxlen=history)
        self.latest: dict[View, bytes] = {}
        self._changed = asyncio.Event()
        self.closed = False
        self._last: tuple[float, int] | None = None
        self._rate = 0.0

    @property
    def watchers(self) -> int:
        return sum(self.watching.values())

    def sample(self) -> None:
        """One tick: the history's next point, and a snapshot per view watched."""
        now = self.clock()
        done = self.broker.succeeded
        if self._last is not None and now > self._last[0]:
            self._rate = (done - self._last[1]) / (now - self._last[0])
        self._last = (now, done)
        totals = self.broker.totals()
        depth = totals[TaskState.QUEUED] + totals[TaskState.DELAYED] + totals[TaskState.LEASED]
        point = [round(now, 3), round(self._rate, 2), depth]
        self.history.append(point)
        views = [view for view, count in self.watching.items() if count]
        for view in views:
            self.latest[view] = _sse("snapshot", self.snapshot(now, totals, point, view))
            self.snapshots += 1
        if views:
            self._changed.set()
            self._changed = asyncio.Event()

    def snapshot(
        self, now: float, totals: dict[TaskState, int], point: list[float], view: View = None
    ) -> Any:
        broker = self.broker
        workers = []
        busy = 0
        for worker in broker.workers.values():
            running = sorted({job_id for job_id, _ in worker.leases})
            busy += bool(worker.leases)
            shown = [job_id for job_id in running if view is None or _owner(broker, job_id) == view]
            workers.append(
                {
                    "id": worker.worker_id,
                    "host": worker.hostname,
                    "slots": worker.concurrency,
                    "leased": len(worker.leases),
                    "jobs": shown[:SHOWN_LEASES],
                    "more": max(len(shown) - SHOWN_LEASES, 0),
                    "completed": worker.completed,
                    "failed": worker.failed,
                    "draining": worker.draining,
                    "storage_error": worker.storage_error,
                    "seen": round(max(now - worker.last_seen, 0.0), 1),
                }
            )
        jobs = broker.recent_jobs(config.DASHBOARD_JOBS, owner=view)
        rows = [job_row(job, self.previews, now) for job in jobs]
        running_jobs = sum(1 for job in broker.active_jobs() if job.counts[TaskState.LEASED])
        held = broker.held_jobs(view)
        dead = [dead_row(letter) for letter in dead_letters(held, config.DASHBOARD_JOBS)]
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
                "held": broker.dead_letters,
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

    async def watch(self, view: View = None) -> AsyncGenerator[bytes, None]:
        """What one watcher's stream carries: the history, then each tick's snapshot
        of its ``view``."""
        self.watching[view] += 1
        try:
            if view not in self.latest:
                self.sample()  # the view's first watcher need not wait for a tick
            yield _sse("history", list(self.history))
            sent = self.latest.get(view)
            if sent is not None:
                yield sent
            while not self.closed:
                changed = self._changed
                await changed.wait()
                latest = self.latest.get(view)
                if latest is not None and latest is not sent:
                    sent = latest
                    yield sent
        finally:
            self.watching[view] -= 1
            if not self.watching[view]:
                del self.watching[view]
                # Stale once nobody watches: rebuilt for the next one.
                self.latest.pop(view, None)


def _owner(broker: Broker, job_id: str) -> str | None:
    job = broker.get_job(job_id)
    return job.owner if job is not None else None


def routes(ticker: Ticker) -> web.RouteTableDef:
    table = web.RouteTableDef()

    @table.get("/api/events")
    async def events(request: web.Request) -> web.StreamResponse:
        view = caller_of(request).listing_owner
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # a proxy in front must not hold events back
            }
        )
        stream = ticker.watch(view)
        with contextlib.suppress(ConnectionResetError):  # the browser went away
            await response.prepare(request)
            try:
                async for chunk in stream:
                    await response.write(chunk)
            finally:
                await stream.aclose()
        return response

    return table
