"""Rendering an image on the queue: submit its bands, then assemble the PNG.

Used by ``fractalq render`` and ``fractalq demo`` and by the operator; the
queue knows nothing of images, and the fractal maths nothing of queues.
"""

from __future__ import annotations

import json

from fractalq.client import Client
from fractalq.fractal.request import RenderRequest, band_plan, is_small
from fractalq.proto import fractalq_pb2 as pb
from fractalq.storage import Storage
from fractalq.tasks.assemble import CLEANUP_TYPE as CLEANUP
from fractalq.tasks.assemble import TASK_TYPE as ASSEMBLE
from fractalq.tasks.assemble import assemble_payload
from fractalq.tasks.band import TASK_TYPE, band_payload
from fractalq.tasks.reference import TASK_TYPE as REFERENCE
from fractalq.tasks.reference import needs_first_task, reference_payload


def submit_render(
    client: Client,
    request: RenderRequest,
    regions: int | None,
    priority: int,
    job_id: str = "",
    labels: dict[str, str] | None = None,
    keep_bands: bool = False,
    counts: bool = False,
    wait: float = 0.0,
) -> pb.SubmitJobResponse:
    """Queue one task per band; ``job_id`` makes the submission idempotent; ``wait``:
    seconds the coordinator may wait for the job's end before it answers.

    A deep view's job first computes its reference orbit
    (:mod:`fractalq.tasks.reference`), which every band reads. The job's final
    task assembles the image into storage
    (:mod:`fractalq.tasks.assemble`; a small image of one band is stored by its
    band task, and the job has no final task) and its result says where; if the job
    fails or is cancelled, its cleanup job removes the bands. With ``counts``
    the image's smooth counts are assembled too (:func:`download_counts`).
    """
    job = render_job(request, regions, priority, job_id, labels, keep_bands, counts)
    job.wait_seconds = wait
    return client.submit(job)


def render_job(
    request: RenderRequest,
    regions: int | None,
    priority: int,
    job_id: str = "",
    labels: dict[str, str] | None = None,
    keep_bands: bool = False,
    counts: bool = False,
) -> pb.SubmitJobRequest:
    """The job :func:`submit_render` submits (the dashboard submits it in-process)."""
    plan = band_plan(request, regions)
    mirror = plan.mirror is not None
    # A small image in one band is made by that band's task: no assembly task to wait
    # for, and the job's result is that task's (a job of one task and no final one).
    image = len(plan.tasks) == 1 and not keep_bands and is_small(request)
    payload = assemble_payload(request, regions, keep_bands, counts)
    job = pb.SubmitJobRequest(
        job_id=job_id,
        task_type=TASK_TYPE,
        payloads=[
            band_payload(request, start, end, counts, mirror, image) for start, end in plan.tasks
        ],
        final=None if image else pb.StageTask(task_type=ASSEMBLE, payload=payload),
        cleanup=pb.StageTask(task_type=CLEANUP, payload=payload),
        priority=priority,
        labels={
            "fractal": request.fractal,
            "size": f"{request.width}x{request.height}",
            **(labels or {}),
        },
    )
    if needs_first_task(request):  # the reference orbit, the colour range: what bands share
        job.first.CopyFrom(pb.StageTask(task_type=REFERENCE, payload=reference_payload(request)))
    return job


def image_of(job: pb.Job) -> tuple[str, int]:
    """The storage key and size of a finished render's image, from the job's result."""
    try:
        result = json.loads(job.result)
        return str(result["key"]), int(result["bytes"])
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"job {job.job_id} has no image in its result") from None


def counts_of(job: pb.Job) -> tuple[str, int]:
    """The storage key and size of a finished render's counts, from the job's result."""
    try:
        counts = json.loads(job.result)["counts"]
        return str(counts["key"]), int(counts["bytes"])
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"job {job.job_id} has no counts in its result") from None


def download_image(storage: Storage, job: pb.Job, path: str) -> int:
    """Copy a finished render's image to ``path`` (replaced whole); its size.

    ValueError when the job's result names no image, StorageError or OSError
    when it cannot be copied.
    """
    key, _ = image_of(job)
    return storage.get_file(key, path)


def download_counts(storage: Storage, job: pb.Job, path: str) -> int:
    """Copy a finished render's counts (``.npy``) to ``path``; as :func:`download_image`."""
    key, _ = counts_of(job)
    return storage.get_file(key, path)
