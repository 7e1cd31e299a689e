"""A zoom movie on the queue: submit its keyframes, then the video is encoded in storage.

Used by ``fractalq zoom``, ``fractalq demo zoom``, the operator and the
dashboard; the queue knows nothing of movies (see :mod:`fractalq.tasks.zoom`
and :mod:`fractalq.tasks.encode` for what the tasks do).
"""

from __future__ import annotations

import json

from fractalq.client import Client
from fractalq.fractal.zoom import ZoomRequest
from fractalq.proto import fractalq_pb2 as pb
from fractalq.storage import Storage
from fractalq.tasks.encode import CLEANUP, ENCODE
from fractalq.tasks.zoom import KEYFRAME, ORBITS, needs_orbits, zoom_payload


def zoom_job(
    zoom: ZoomRequest,
    priority: int,
    job_id: str = "",
    labels: dict[str, str] | None = None,
    keep_keyframes: bool = False,
) -> pb.SubmitJobRequest:
    """The job of a zoom movie: ``[reference orbits] -> keyframes -> encoding``.

    One keyframe task per level the frames need, deepest first, all with the
    zoom as their one payload (task ``i`` renders ``zoom.levels[i]``); the
    final task encodes the video into storage and its result says where; if the
    job fails or is cancelled, its cleanup job removes what it stored.
    """
    payload = zoom_payload(zoom)
    final = zoom_payload(zoom, keep_keyframes=keep_keyframes)
    job = pb.SubmitJobRequest(
        job_id=job_id,
        task_type=KEYFRAME,
        payload=payload,
        count=len(zoom.levels),
        final=pb.StageTask(task_type=ENCODE, payload=final),
        cleanup=pb.StageTask(task_type=CLEANUP, payload=final),
        priority=priority,
        labels={
            "fractal": zoom.fractal,
            "size": f"{zoom.width}x{zoom.height}",
            "zoom": f"{zoom.frame_count} frames",
            **(labels or {}),
        },
    )
    if needs_orbits(zoom):
        job.first.CopyFrom(pb.StageTask(task_type=ORBITS, payload=payload))
    return job


def submit_zoom(
    client: Client,
    zoom: ZoomRequest,
    priority: int,
    job_id: str = "",
    labels: dict[str, str] | None = None,
    keep_keyframes: bool = False,
) -> pb.SubmitJobResponse:
    """Submit :func:`zoom_job`; ``job_id`` makes the submission idempotent."""
    return client.submit(zoom_job(zoom, priority, job_id, labels, keep_keyframes))


def download_video(storage: Storage, job: pb.Job, path: str) -> int:
    """Copy a finished zoom's video to ``path`` (replaced whole); its size.

    ValueError when the job's result names no video, StorageError or OSError
    when it cannot be copied.
    """
    key, _ = video_of(job)
    return storage.get_file(key, path)


def video_of(job: pb.Job) -> tuple[str, int]:
    """The storage key and size of a finished zoom's video, from the job's result."""
    try:
        result = json.loads(job.result)
        return str(result["key"]), int(result["bytes"])
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"job {job.job_id} has no video in its result") from None
