"""Rendering an image on the queue: submit its bands, then assemble the PNG.

Used by ``fractalq render`` and ``fractalq demo`` and by the operator; the
queue knows nothing of images, and the fractal maths nothing of queues.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator

from fractalq.client import Client
from fractalq.fractal.png import assemble
from fractalq.fractal.request import RenderRequest, band_rows
from fractalq.proto import fractalq_pb2 as pb
from fractalq.storage import Storage
from fractalq.tasks.assemble import CLEANUP_TYPE as CLEANUP
from fractalq.tasks.assemble import TASK_TYPE as ASSEMBLE
from fractalq.tasks.assemble import assemble_payload
from fractalq.tasks.band import TASK_TYPE, band_key, band_payload
from fractalq.tasks.reference import TASK_TYPE as REFERENCE
from fractalq.tasks.reference import reference_key, reference_payload


def submit_render(
    client: Client,
    request: RenderRequest,
    regions: int,
    priority: int,
    job_id: str = "",
    labels: dict[str, str] | None = None,
    keep_bands: bool = False,
) -> pb.SubmitJobResponse:
    """Queue one task per band; ``job_id`` makes the submission idempotent.

    A deep view's job first computes its reference orbit
    (:mod:`fractalq.tasks.reference`), which every band reads. The job's final
    task assembles the image into storage
    (:mod:`fractalq.tasks.assemble`) and its result says where; if the job
    fails or is cancelled, its cleanup job removes the bands.
    """
    return client.submit(render_job(request, regions, priority, job_id, labels, keep_bands))


def render_job(
    request: RenderRequest,
    regions: int,
    priority: int,
    job_id: str = "",
    labels: dict[str, str] | None = None,
    keep_bands: bool = False,
) -> pb.SubmitJobRequest:
    """The job :func:`submit_render` submits (the dashboard submits it in-process)."""
    rows = band_rows(request, regions)
    payload = assemble_payload(request, regions, keep_bands)
    job = pb.SubmitJobRequest(
        job_id=job_id,
        task_type=TASK_TYPE,
        payloads=[band_payload(request, start, end) for start, end in rows],
        final=pb.StageTask(task_type=ASSEMBLE, payload=payload),
        cleanup=pb.StageTask(task_type=CLEANUP, payload=payload),
        priority=priority,
        labels={
            "fractal": request.fractal,
            "size": f"{request.width}x{request.height}",
            **(labels or {}),
        },
    )
    if request.deep:  # its first task computes the reference orbit every band reads
        job.first.CopyFrom(pb.StageTask(task_type=REFERENCE, payload=reference_payload(request)))
    return job


def band_keys(job_id: str, request: RenderRequest, regions: int) -> list[str]:
    return [band_key(job_id, start, end) for start, end in band_rows(request, regions)]


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
            rows = band_rows(request, regions)
            assemble(_fetch(storage, band_keys(job_id, request, regions)), request.width, rows, out)
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def image_of(job: pb.Job) -> tuple[str, int]:
    """The storage key and size of a finished render's image, from the job's result."""
    try:
        result = json.loads(job.result)
        return str(result["key"]), int(result["bytes"])
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"job {job.job_id} has no image in its result") from None


def download_image(storage: Storage, job: pb.Job, path: str) -> int:
    """Copy a finished render's image to ``path`` (replaced whole); its size.

    ValueError when the job's result names no image, StorageError or OSError
    when it cannot be copied.
    """
    key, _ = image_of(job)
    return storage.get_file(key, path)


def remove_bands(storage: Storage, job_id: str, request: RenderRequest, regions: int) -> None:
    """Remove the bands, and a deep render's reference orbit."""
    extra = [reference_key(job_id)] if request.deep else []
    storage.delete(band_keys(job_id, request, regions) + extra)
