"""``fractal.assemble`` and ``fractal.cleanup``: the final and the cleanup task of a render.

Payload: ``{"request": <RenderRequest JSON>, "regions": N, "keep_bands": bool}``,
and ``"counts": true`` when the smooth counts are wanted too.
It runs once every band of the job is stored: it stitches them into the PNG
(one band in memory at a time, :func:`write_png`; a small image in memory),
stores that under :func:`~fractalq.tasks.band.image_key` (S3: a multipart
upload), does the same with the bands' counts into a NumPy ``.npy`` file under
:func:`~fractalq.tasks.band.image_counts_key` when asked, then removes the bands
unless asked to keep them. The keys are pure functions of the job, so a retried
assembly rewrites the same objects with the same bytes. The task's result, which
becomes the job's, is JSON: ``{"key", "url", "bytes"}``, and ``"counts"``: the
same three for the counts; clients (``render``, ``fetch``, the operator) read the
image from there and never assemble themselves. A small render of one band has
no assembly: its band task stores the image under the same keys and gives the
same result (:mod:`fractalq.tasks.band`).

``fractal.cleanup`` (same payload) runs as a job of its own when a render
fails or is cancelled, once none of its bands is being written any more: it
removes the bands and any image, so a render that did not finish leaves
nothing behind in storage.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import tempfile
from collections.abc import Iterator

from fractalq import config
from fractalq.fractal import symmetry
from fractalq.fractal.png import assemble as join_bands
from fractalq.fractal.request import (
    BandPlan,
    RenderRequest,
    band_plan,
    band_rows,
    is_small,
    split_rows,
)
from fractalq.storage import Storage, shared_storage
from fractalq.tasks.band import band_key, image_counts_key, image_key, write_counts_header
from fractalq.tasks.band import counts_key as band_counts_key
from fractalq.tasks.reference import shared_keys
from fractalq.tasks.registry import InvalidPayload, TaskContext, task_type

TASK_TYPE = "fractal.assemble"
CLEANUP_TYPE = "fractal.cleanup"


@dataclasses.dataclass(frozen=True)
class Assembly:
    """What the final task is asked to make of a render's bands."""

    request: RenderRequest
    rows: list[tuple[int, int]]  # the stored bands', top to bottom
    keep_bands: bool = False
    counts: bool = False


def assemble_payload(
    request: RenderRequest, regions: int | None, keep_bands: bool = False, counts: bool = False
) -> bytes:
    """The payload for a render asked for in ``regions`` bands (None: the default);
    it names the count of band tasks made (:func:`~fractalq.fractal.request.band_plan`),
    and whether they mirror their rows."""
    plan = band_plan(request, regions)
    bands = len(plan.tasks)
    fields: dict[str, object] = {
        "request": json.loads(request.to_json()),
        # An older assembler reads this alone: the count made gives it the same bands.
        "regions": bands if regions is None else regions,
        "bands": bands,
        "keep_bands": keep_bands,
    }
    if counts:
        fields["counts"] = True
    if plan.mirror is not None:
        fields["mirror"] = True
    return json.dumps(fields, sort_keys=True).encode()


def parse_payload(payload: bytes) -> Assembly:
    try:
        data = json.loads(payload)
        request = RenderRequest.from_json(json.dumps(data["request"]))
        regions, keep = data["regions"], data.get("keep_bands", False)
        bands = data.get("bands", None)
        counts = data.get("counts", False)
        mirror = data.get("mirror", False)
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise InvalidPayload(f"not an assembly payload: {error}") from None
    flags = (keep, counts, mirror)
    if not isinstance(regions, int) or not all(isinstance(flag, bool) for flag in flags):
        raise InvalidPayload(
            "regions must be a whole number, keep_bands, counts and mirror true or false"
        )
    if bands is not None and (isinstance(bands, bool) or not isinstance(bands, int)):
        raise InvalidPayload("bands must be a whole number")
    kind = symmetry.kind(request) if mirror else None
    if mirror and (kind is None or bands is None):
        raise InvalidPayload("mirror: this view does not mirror onto itself, or names no bands")
    try:
        split_rows(request.height, regions)
        if bands is None:  # an older payload names no count: its bands are those of its regions
            rows = band_rows(request, regions)
        else:
            rows = BandPlan.cut(request.height, bands, kind).strips
    except ValueError as error:
        raise InvalidPayload(str(error)) from None
    return Assembly(request, rows, keep, counts)


# ---- the bands in storage, one in memory at a time ----------------------------


Rows = list[tuple[int, int]]


def band_keys(job_id: str, rows: Rows) -> list[str]:
    return [band_key(job_id, start, end) for start, end in rows]


def _bands(storage: Storage, keys: list[str]) -> Iterator[bytes]:
    for key in keys:
        yield storage.get(key)  # one band in memory at a time


def write_png(storage: Storage, job_id: str, request: RenderRequest, rows: Rows, path: str) -> None:
    """Assemble the stored bands of ``rows`` into a PNG at ``path``, atomically (temp
    file, then rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(prefix=".fractalq-", suffix=".png", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            join_bands(_bands(storage, band_keys(job_id, rows)), request.width, rows, out)
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def write_counts(
    storage: Storage, job_id: str, request: RenderRequest, rows: Rows, path: str
) -> None:
    """The bands' counts as one NumPy ``.npy`` file at ``path`` (float32, height x
    width), one band in memory at a time."""
    with open(path, "wb") as out:
        write_counts_header(out, request.width, request.height)
        for start, end in rows:
            data = storage.get(band_counts_key(job_id, start, end))
            if len(data) != 4 * (end - start) * request.width:
                raise ValueError(f"the counts of rows {start}..{end} are cut short")
            out.write(data)


def remove_bands(
    storage: Storage, job_id: str, request: RenderRequest, rows: Rows, counts: bool = False
) -> None:
    """Remove the bands (and their counts), and what the first task stored for them."""
    keys = band_keys(job_id, rows) + shared_keys(job_id, request)
    if counts:
        keys += [band_counts_key(job_id, start, end) for start, end in rows]
    storage.delete(keys)


def _check(payload: bytes) -> None:
    parse_payload(payload)


@task_type(TASK_TYPE, check=_check, needs_storage=True)
def assemble_image(payload: bytes, context: TaskContext) -> bytes:
    if not context.storage_url:
        raise RuntimeError("this worker has no --storage to read bands from")
    job = parse_payload(payload)
    storage = shared_storage(context.storage_url)
    key = image_key(context.job_id)
    with tempfile.TemporaryDirectory(prefix="fractalq-assemble-") as folder:
        if is_small(job.request):
            image = io.BytesIO()  # a small image: no file to write, copy and remove
            join_bands(_bands(storage, band_keys(context.job_id, job.rows)),
                       job.request.width, job.rows, image)  # fmt: skip
            storage.put(key, image.getvalue())
            size = image.tell()
        else:
            path = os.path.join(folder, "image.png")
            write_png(storage, context.job_id, job.request, job.rows, path)
            size = storage.put_file(key, path)
        result: dict[str, object] = {"key": key, "url": storage.url(key), "bytes": size}
        if job.counts:
            path = os.path.join(folder, "counts.npy")
            write_counts(storage, context.job_id, job.request, job.rows, path)
            stored = image_counts_key(context.job_id)
            result["counts"] = {
                "key": stored, "url": storage.url(stored), "bytes": storage.put_file(stored, path)
            }  # fmt: skip
    if not job.keep_bands:
        remove_bands(storage, context.job_id, job.request, job.rows, job.counts)
    return json.dumps(result).encode()


@task_type(CLEANUP_TYPE, check=_check, needs_storage=True)
def clean_up(payload: bytes, context: TaskContext) -> bytes:
    if not context.storage_url:
        raise RuntimeError("this worker has no --storage to clean up")
    job = parse_payload(payload)
    render_job = context.job_id.removesuffix(config.CLEANUP_SUFFIX)
    storage = shared_storage(context.storage_url)
    remove_bands(storage, render_job, job.request, job.rows, job.counts)
    storage.delete([image_key(render_job), image_counts_key(render_job)])
    return b""
