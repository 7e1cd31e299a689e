"""Rendering an image on the queue: submit its bands, then assemble the PNG.

Used by ``fractalq render`` and ``fractalq demo`` and by the operator; the
queue knows nothing of images, and the fractal maths nothing of queues.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

from fractalq.client import Client
from fractalq.fractal.png import assemble
from fractalq.fractal.request import RenderRequest, split_rows
from fractalq.proto import fractalq_pb2 as pb
from fractalq.storage import Storage
from fractalq.tasks.band import TASK_TYPE, band_key, band_payload


def submit_render(
    client: Client,
    request: RenderRequest,
    regions: int,
    priority: int,
    job_id: str = "",
    labels: dict[str, str] | None = None,
) -> pb.SubmitJobResponse:
    """Queue one task per band; ``job_id`` makes the submission idempotent."""
    rows = split_rows(request.height, regions)
    return client.submit(
        pb.SubmitJobRequest(
            job_id=job_id,
            task_type=TASK_TYPE,
            payloads=[band_payload(request, start, end) for start, end in rows],
            priority=priority,
            labels={
                "fractal": request.fractal,
                "size": f"{request.width}x{request.height}",
                **(labels or {}),
            },
        )
    )


def band_keys(job_id: str, request: RenderRequest, regions: int) -> list[str]:
    return [band_key(job_id, start, end) for start, end in split_rows(request.height, regions)]


def _fetch(storage: Storage, keys: list[str]) -> Iterator[bytes]:
    for key in keys:
        yield storage.get(key)  # one band in memory at a time


def write_png(
    storage: Storage, job_id: str, request: RenderRequest, regions: int, path: str
) -> None:
    """Assemble the stored bands into ``path``, atomically (temp file, then rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(prefix=".fractalq-", suffix=".png", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            rows = split_rows(request.height, regions)
            assemble(_fetch(storage, band_keys(job_id, request, regions)), request.width, rows, out)
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def remove_bands(storage: Storage, job_id: str, request: RenderRequest, regions: int) -> None:
    storage.delete(band_keys(job_id, request, regions))
