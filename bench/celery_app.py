"""The Celery side of the queue benchmark: a noop task on a Redis broker.

Results are ignored (Celery then stores nothing per task, which favours it);
each task counts itself in Redis so the benchmark knows when all are done.
"""

from __future__ import annotations

import os

import redis
from celery import Celery

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6399/0")
app = Celery("bench", broker=URL)
app.conf.update(task_ignore_result=True, worker_hijack_root_logger=False)
_counter = redis.Redis.from_url(URL)


@app.task(name="noop")
def noop() -> None:
    _counter.incr("bench:done")
