"""The Celery side of the queue benchmark: a no-op task, Redis as broker and result backend.

As a new user would set it up: ``delay()`` then ``get()``, results stored in Redis.
"""

from __future__ import annotations

import os

from celery import Celery

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6399/0")
app = Celery("bench", broker=URL, backend=URL)
app.conf.update(worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)


@app.task(name="noop")
def noop() -> None:
    return None
