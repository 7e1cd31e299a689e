"""``fractal.assemble`` and ``fractal.cleanup``: the final and the cleanup task of a render.

Payload: ``{"request": <RenderRequest JSON>, "regions": N, "keep_bands": bool}``.
It runs once every band of the job is stored: it stitches them into the PNG
(one band in memory at a time, :func:`fractalq.images.write_png`) in a
temporary file, stores that under :func:`image_key` (S3: a multipart upload),
then removes the bands unless asked to keep them. The key is a pure function
of the job, so a retried assembly rewrites the same object with the same
bytes. The task's result, which becomes the job's, is JSON: ``{"key", "url",
"bytes"}``; clients (``render``, ``fetch``, the operator) read the image from
there and never assemble themselves.

``fractal.cleanup`` (same payload) runs as a job of its own when a render
fails or is cancelled, once none of its bands is being written any more: it
removes the bands and any image, so a render that did not finish leaves
nothing behind in storage.
"""

from __future__ import annotations

import json
import os
import tempfile

from fractalq import config
from fractalq.fractal.request import RenderRequest, split_rows
from fractalq.storage import shared_storage
from fractalq.tasks.registry import InvalidPayload, TaskContext, task_type

TASK_TYPE = "fractal.assemble"
CLEANUP_TYPE = "fractal.cleanup"


def image_key(job_id: str) -> str:
    return f"jobs/{job_id}/image.png"


def assemble_payload(request: RenderRequest, regions: int, keep_bands: bool = False) -> bytes:
    return json.dumps(
        {"request": json.loads(request.to_json()), "regions": regions, "keep_bands": keep_bands},
        sort_keys=True,
    ).encode()


def parse_payload(payload: bytes) -> tuple[RenderRequest, int, bool]:
    try:
        data = json.loads(payload)
        request = RenderRequest.from_json(json.dumps(data["request"]))
        regions, keep = data["regions"], data.get("keep_bands", False)
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise InvalidPayload(f"not an assembly payload: {error}") from None
    if not isinstance(regions, int) or not isinstance(keep, bool):
        raise InvalidPayload("regions must be a whole number and keep_bands true or false")
    try:
        split_rows(request.height, regions)
    except ValueError as error:
        raise InvalidPayload(str(error)) from None
    return request, regions, keep


def _check(payload: bytes) -> None:
    parse_payload(payload)


@task_type(TASK_TYPE, check=_check, needs_storage=True)
def assemble_image(payload: bytes, context: TaskContext) -> bytes:
    # Imported here: fractalq.images imports this package's band module.
    from fractalq.images import remove_bands, write_png

    if not context.storage_url:
        raise RuntimeError("this worker has no --storage to read bands from")
    request, regions, keep_bands = parse_payload(payload)
    storage = shared_storage(context.storage_url)
    key = image_key(context.job_id)
    with tempfile.TemporaryDirectory(prefix="fractalq-assemble-") as folder:
        path = os.path.join(folder, "image.png")
        write_png(storage, context.job_id, request, regions, path)
        size = storage.put_file(key, path)
    if not keep_bands:
        remove_bands(storage, context.job_id, request, regions)
    return json.dumps({"key": key, "url": storage.url(key), "bytes": size}).encode()


@task_type(CLEANUP_TYPE, check=_check, needs_storage=True)
def clean_up(payload: bytes, context: TaskContext) -> bytes:
    from fractalq.images import remove_bands

    if not context.storage_url:
        raise RuntimeError("this worker has no --storage to clean up")
    request, regions, _ = parse_payload(payload)
    render_job = context.job_id.removesuffix(config.CLEANUP_SUFFIX)
    storage = shared_storage(context.storage_url)
    remove_bands(storage, render_job, request, regions)
    storage.delete([image_key(render_job)])
    return b""
