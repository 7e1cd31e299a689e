"""The ``fractal.band`` task type: render rows of an image and store them.

Payload: ``{"request": <RenderRequest JSON>, "rows": [start, end]}``, and
``"counts": true`` when the render's smooth counts are wanted too. The band
is stored under :func:`band_key`, a pure function of the job and the rows, so a
retried or duplicated task overwrites the same object with the same bytes and
the assembler knows every key without asking anyone; its counts, raw
little-endian float32 rows, under :func:`counts_key`. Bands travel through
storage, never through gRPC; the task's result is JSON: the key, and the band's
rows of the live preview (a few kB, :mod:`fractalq.preview`).
"""

from __future__ import annotations

import functools
import json
import os
from concurrent.futures import ThreadPoolExecutor

from fractalq import config
from fractalq.fractal.png import encode_band
from fractalq.fractal.render import render_rows, render_rows_and_counts
from fractalq.fractal.request import RenderRequest
from fractalq.preview import band_preview, band_result
from fractalq.storage import shared_storage
from fractalq.tasks.reference import reference_for, scale_for
from fractalq.tasks.registry import InvalidPayload, TaskContext, task_type

TASK_TYPE = "fractal.band"


def band_key(job_id: str, start: int, end: int) -> str:
    return f"jobs/{job_id}/bands/{start:06d}-{end:06d}.png"


def counts_key(job_id: str, start: int, end: int) -> str:
    return f"jobs/{job_id}/bands/{start:06d}-{end:06d}.counts"


def band_payload(request: RenderRequest, start: int, end: int, counts: bool = False) -> bytes:
    fields: dict[str, object] = {"request": json.loads(request.to_json()), "rows": [start, end]}
    if counts:
        fields["counts"] = True
    return json.dumps(fields, sort_keys=True).encode()


def parse_payload(payload: bytes) -> tuple[RenderRequest, int, int, bool]:
    try:
        data = json.loads(payload)
        request = RenderRequest.from_json(json.dumps(data["request"]))
        start, end = data["rows"]
        counts = data.get("counts", False)
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise InvalidPayload(f"not a band payload: {error}") from None
    except RecursionError:
        raise InvalidPayload("not a band payload: nested too deeply") from None
    if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= request.height):
        raise InvalidPayload(f"rows {start}..{end} are not a band of {request.height} rows")
    if not isinstance(counts, bool):
        raise InvalidPayload("counts must be true or false")
    return request, start, end, counts


def _check(payload: bytes) -> None:
    parse_payload(payload)


def _pixels(payload: bytes) -> int:
    request, start, end, _ = parse_payload(payload)
    return request.width * (end - start)


@functools.lru_cache(maxsize=1)
def _uploader(pid: int) -> ThreadPoolExecutor:
    """One thread per process that stores bands (by pid: a forked child makes its own)."""
    return ThreadPoolExecutor(1, thread_name_prefix="band-store")


def _warm() -> None:
    """Render and encode a tiny band: loads numba and its cached machine code."""
    encode_band(render_rows(RenderRequest.create("mandelbrot", width=8, height=2), 0, 2), 0)


@task_type(
    TASK_TYPE,
    check=_check,
    cpu_bound=True,
    needs_storage=True,
    warm=_warm,
    time_limit=config.BAND_TIME_LIMIT,
    pixels=_pixels,
)
def render_band(payload: bytes, context: TaskContext) -> bytes:
    if not context.storage_url:
        raise RuntimeError("this worker has no --storage to put bands in")
    request, start, end, with_counts = parse_payload(payload)
    reference = reference_for(request, context)
    scale = scale_for(request, context, reference)
    rgb, values = render_rows_and_counts(
        request, start, end, reference=reference, scale=scale, with_counts=with_counts
    )
    storage = shared_storage(context.storage_url)
    if values is not None:  # before the band: an assembler that finds the band finds these
        storage.put(counts_key(context.job_id, start, end), values.astype("<f4").tobytes())
    data = encode_band(rgb, start)
    key = band_key(context.job_id, start, end)
    stored = _uploader(os.getpid()).submit(storage.put, key, data)
    # The result also carries the band's rows of the live preview (fractalq/preview.py),
    # made while the band is stored: storing waits on a disk or the network.
    try:
        preview = band_preview(rgb, request.width, request.height, start)
    except Exception:  # a preview is a nicety: never worth failing a band for
        preview = None
    stored.result()  # only reported done once stored; its errors are the task's
    return band_result(key, preview)
