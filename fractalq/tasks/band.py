"""The ``fractal.band`` task type: render rows of an image and store them.

Payload: ``{"request": <RenderRequest JSON>, "rows": [start, end]}``,
``"counts": true`` when the render's smooth counts are wanted too, and
``"mirror": true`` in a mirrored render (:mod:`fractalq.fractal.symmetry`): the
band's rows are in the top half, and it stores their mirror rows below the middle
as a band of their own too.

A band is stored under :func:`band_key`, a pure function of the job and the rows,
so a retried or duplicated task overwrites the same object with the same bytes and
the assembler knows every key without asking anyone; its counts, raw
little-endian float32 rows, under :func:`counts_key`. Bands travel through
storage, never through gRPC; the task's result is JSON: the key, and the band's
rows of the live preview (a few kB, :mod:`fractalq.preview`), and the mirror
band's (``"mirror"``: its key and preview rows) when it stores one.

With ``"image": true`` the band is the whole image (or its top half, mirrored) of
a small render that has no assembly task: the task stores the image and counts
itself, under the keys the assembly would (:func:`image_key`), and its result is
the assembly's (:mod:`fractalq.tasks.assemble`), which is then the job's.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from fractalq import config
from fractalq.fractal import symmetry
from fractalq.fractal.png import PngWriter, encode_band
from fractalq.fractal.render import render_rows, render_rows_and_counts
from fractalq.fractal.request import RenderRequest, is_small
from fractalq.preview import band_preview, band_result
from fractalq.storage import Storage, shared_storage
from fractalq.tasks.reference import reference_for, scale_for, shared_keys
from fractalq.tasks.registry import InvalidPayload, TaskContext, task_type

TASK_TYPE = "fractal.band"


def band_key(job_id: str, start: int, end: int) -> str:
    return f"jobs/{job_id}/bands/{start:06d}-{end:06d}.png"


def counts_key(job_id: str, start: int, end: int) -> str:
    return f"jobs/{job_id}/bands/{start:06d}-{end:06d}.counts"


def image_key(job_id: str) -> str:
    return f"jobs/{job_id}/image.png"


def image_counts_key(job_id: str) -> str:
    return f"jobs/{job_id}/counts.npy"


# A strip of stored rows: its first row, its pixels, and its counts when asked for.
Strip = tuple[int, npt.NDArray[np.uint8], npt.NDArray[np.float32] | None]


def write_counts_header(out: BinaryIO, width: int, height: int) -> None:
    """The ``.npy`` header of an image's counts (float32, height x width), whose rows follow."""
    header = {"descr": "<f4", "fortran_order": False, "shape": (height, width)}
    np.lib.format.write_array_header_1_0(out, header)


@dataclasses.dataclass(frozen=True)
class Band:
    """A band task's payload, read."""

    request: RenderRequest
    start: int
    end: int
    counts: bool = False
    mirror: bool = False
    image: bool = False


def band_payload(
    request: RenderRequest,
    start: int,
    end: int,
    counts: bool = False,
    mirror: bool = False,
    image: bool = False,
) -> bytes:
    fields: dict[str, object] = {"request": json.loads(request.to_json()), "rows": [start, end]}
    for name, value in (("counts", counts), ("mirror", mirror), ("image", image)):
        if value:
            fields[name] = True
    return json.dumps(fields, sort_keys=True).encode()


def parse_payload(payload: bytes) -> Band:
    try:
        data = json.loads(payload)
        request = RenderRequest.from_json(json.dumps(data["request"]))
        start, end = data["rows"]
        counts = data.get("counts", False)
        mirror = data.get("mirror", False)
        image = data.get("image", False)
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise InvalidPayload(f"not a band payload: {error}") from None
    except RecursionError:
        raise InvalidPayload("not a band payload: nested too deeply") from None
    if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= request.height):
        raise InvalidPayload(f"rows {start}..{end} are not a band of {request.height} rows")
    if not all(isinstance(flag, bool) for flag in (counts, mirror, image)):
        raise InvalidPayload("counts, mirror and image must be true or false")
    if mirror and symmetry.kind(request) is None:
        raise InvalidPayload("mirror: this view does not mirror onto itself")
    half = symmetry.top_half(request.height)
    if mirror and end > half:
        raise InvalidPayload(f"mirror: rows {start}..{end} reach below the middle row")
    if image and (start != 0 or end != (half if mirror else request.height)):
        raise InvalidPayload(f"image: rows {start}..{end} are not the whole image")
    if image and not is_small(request):
        raise InvalidPayload("image: too large to be made by one band task")
    return Band(request, start, end, counts, mirror, image)


def _check(payload: bytes) -> None:
    parse_payload(payload)


def _pixels(payload: bytes) -> int:
    """The pixels the band makes: its rows and, mirrored, their mirror rows."""
    band = parse_payload(payload)
    below = symmetry.mirror_rows(band.request.height, band.start, band.end) if band.mirror else None
    mirrored = 0 if below is None else below[1] - below[0]
    return band.request.width * (band.end - band.start + mirrored)


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
    warm_first=True,
    time_limit=config.BAND_TIME_LIMIT,
    pixels=_pixels,
)
def render_band(payload: bytes, context: TaskContext) -> bytes:
    if not context.storage_url:
        raise RuntimeError("this worker has no --storage to put bands in")
    band = parse_payload(payload)
    request, start, end = band.request, band.start, band.end
    reference = reference_for(request, context)
    scale = scale_for(request, context, reference)
    rgb, values = render_rows_and_counts(
        request, start, end, reference=reference, scale=scale, with_counts=band.counts
    )
    strips = _strips(band, rgb, values)
    storage = shared_storage(context.storage_url)
    if band.image:
        return _store_image(request, strips, storage, context.job_id)
    keys, stored = [], []
    for first, pixels, counts in strips:
        rows = (first, first + pixels.shape[0])
        if counts is not None:  # before the band: an assembler that finds the band finds these
            storage.put(counts_key(context.job_id, *rows), counts.astype("<f4").tobytes())
        keys.append(band_key(context.job_id, *rows))
        stored.append(
            _uploader(os.getpid()).submit(storage.put, keys[-1], encode_band(pixels, first))
        )
    # The result also carries the band's rows of the live preview (fractalq/preview.py),
    # made while the band is stored: storing waits on a disk or the network.
    previews = _previews(request, strips)
    for upload in stored:
        upload.result()  # only reported done once stored; its errors are the task's
    return band_result(keys, previews)


def _strips(
    band: Band, rgb: npt.NDArray[np.uint8], values: npt.NDArray[np.float32] | None
) -> list[Strip]:
    """What the band stores: its rows, and in a mirrored render their mirror rows too."""
    strips: list[Strip] = [(band.start, rgb, values)]
    height = band.request.height
    how = symmetry.kind(band.request) if band.mirror else None
    below = symmetry.mirror_rows(height, band.start, band.end)
    if how is not None and below is not None:
        flip = functools.partial(symmetry.mirrored, how=how, height=height, start=band.start)
        strips.append((below[0], flip(rgb), None if values is None else flip(values)))
    return strips


def _previews(request: RenderRequest, strips: list[Strip]) -> list[dict[str, Any] | None]:
    """Each strip's piece of the live preview (None: it has none, or it failed)."""
    pieces = []
    for first, pixels, _ in strips:
        try:
            pieces.append(band_preview(pixels, request.width, request.height, first))
        except Exception:  # a preview is a nicety: never worth failing a band for
            pieces.append(None)
    return pieces


def _store_image(
    request: RenderRequest, strips: list[Strip], storage: Storage, job_id: str
) -> bytes:
    """A render of one band: its task stores the image (and counts) itself, under the keys
    the assembly would, and its result is the assembly's, with the band's preview."""
    out = io.BytesIO()
    with PngWriter(out, request.width, request.height) as writer:
        for _, pixels, _ in strips:  # top to bottom: the rows, then their mirror
            writer.write_rows(pixels)
    key = image_key(job_id)
    storage.put(key, out.getvalue())
    result: dict[str, object] = {"key": key, "url": storage.url(key), "bytes": out.tell()}
    if strips[0][2] is not None:
        counts = io.BytesIO()
        write_counts_header(counts, request.width, request.height)
        for _, _, values in strips:
            assert values is not None
            counts.write(values.astype("<f4").tobytes())
        stored = image_counts_key(job_id)
        storage.put(stored, counts.getvalue())
        result["counts"] = {"key": stored, "url": storage.url(stored), "bytes": counts.tell()}
    pieces = _previews(request, strips)
    if pieces[0] is not None:
        result["preview"] = pieces[0]
    if len(pieces) > 1 and pieces[1] is not None:
        result["mirror"] = {"preview": pieces[1]}
    # What the first task stored for the bands, as the assembly removes it (a retry
    # would compute it again).
    storage.delete(shared_keys(job_id, request))
    return json.dumps(result).encode()
