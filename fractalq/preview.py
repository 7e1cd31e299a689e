"""Live previews: each band brings its rows of a small image of the whole render.

A render's preview is at most ``config.PREVIEW_SIZE`` pixels on its longer side,
whatever the image's size, so a gigapixel render previews as well as a small
one. Preview row ``p`` shows image row ``((2p + 1) H) // (2 h)`` (the row under
its centre) and column ``q`` image column ``((2q + 1) W) // (2 w)``: every
preview row belongs to exactly one band, the band that rendered that image row,
which samples it from the pixels it has in memory anyway (nearest neighbour:
a tenth of a millisecond, where averaging a 4 M pixel band would cost several)
and JPEG-codes it: about 0.3 ms a band (``bench/dashboard_bench.py``). The band
task's result carries the piece next to its storage key (:func:`band_result`);
the coordinator keeps the pieces of running jobs and the dashboard draws them on
a canvas as bands complete.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from fractalq import config


def preview_size(width: int, height: int, limit: int = config.PREVIEW_SIZE) -> tuple[int, int]:
    """The preview's (width, height): the image scaled to fit ``limit``, never enlarged."""
    scale = min(1.0, limit / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _samples(size: int, preview: int) -> npt.NDArray[np.int64]:
    """The image row (or column) each preview row (or column) shows."""
    return ((2 * np.arange(preview, dtype=np.int64) + 1) * size) // (2 * preview)


def preview_rows(width: int, height: int, start: int, end: int) -> tuple[int, int]:
    """The preview rows ``[first, end)`` that image rows ``start..end-1`` hold."""
    _, rows = preview_size(width, height)
    samples = _samples(height, rows)
    return int(np.searchsorted(samples, start)), int(np.searchsorted(samples, end))


def band_preview(
    rgb: npt.NDArray[np.uint8],
    width: int,
    height: int,
    start: int,
    max_bytes: int = config.PREVIEW_MAX_BYTES,
) -> dict[str, Any] | None:
    """The preview piece of a band (image rows ``start..``, pixels ``rgb``); None if
    the band holds no preview row or its piece cannot fit in ``max_bytes``."""
    end = start + rgb.shape[0]
    columns, rows = preview_size(width, height)
    first, last = preview_rows(width, height, start, end)
    if first == last:
        return None
    rows_at = _samples(height, rows)[first:last] - start
    # The sampled rows' bytes, then each sampled pixel's three: take() on bytes is
    # several times faster than fancy indexing of pixels.
    channels = (_samples(width, columns)[:, None] * 3 + np.arange(3)).ravel()
    small = rgb.reshape(rgb.shape[0], width * 3).take(rows_at, axis=0).take(channels, axis=1)
    image = Image.frombuffer("RGB", (columns, len(rows_at)), small, "raw", "RGB", 0, 1)
    for quality in (config.PREVIEW_QUALITY, 50, 25):
        out = io.BytesIO()
        image.save(out, "JPEG", quality=quality)  # 4:2:0: half the time and bytes of 4:4:4
        if out.tell() <= max_bytes:
            return {
                "size": [columns, rows],
                "rows": [first, last],
                "jpeg": base64.b64encode(out.getvalue()).decode("ascii"),
            }
    return None


def band_result(keys: list[str], previews: list[dict[str, Any] | None]) -> bytes:
    """A band task's result, JSON: its storage key and its preview piece when it has
    one; for a mirrored band (two keys), the mirror's under ``"mirror"``."""
    fields = _band_fields(keys[0], previews[0])
    if len(keys) == 1:
        return fields
    return fields[:-1] + b',"mirror":' + _band_fields(keys[1], previews[1]) + b"}"


def _band_fields(key: str, preview: dict[str, Any] | None) -> bytes:
    head = b'{"key":' + json.dumps(key).encode()
    if preview is None:
        return head + b"}"
    # Written by hand: json.dumps scans the base64 text for characters to escape,
    # which costs more than sampling the pixels did (base64 has none to escape).
    (columns, rows), (first, last) = preview["size"], preview["rows"]
    return b"".join(
        [head, b',"preview":{"size":[%d,%d],"rows":[%d,%d],"jpeg":"' % (columns, rows, first, last),
         preview["jpeg"].encode("ascii"), b'"}}']
    )  # fmt: skip


def parse_pieces(result: bytes) -> list[dict[str, Any]]:
    """The preview pieces in a band's result, checked: its own and its mirror's, the
    ones it has and that are good."""
    if not result.startswith(b"{"):
        return []  # a result of another shape (an older worker's: the key alone)
    try:
        fields = json.loads(result)
        mirror = fields.get("mirror")
        pieces = [
            fields.get("preview"),
            mirror.get("preview") if isinstance(mirror, dict) else None,
        ]
    except (ValueError, AttributeError, RecursionError):
        return []
    return [piece for piece in map(_checked_piece, pieces) if piece is not None]


def _checked_piece(piece: Any) -> dict[str, Any] | None:
    try:
        (columns, rows), (first, last), jpeg = piece["size"], piece["rows"], piece["jpeg"]
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    numbers = (columns, rows, first, last)
    if not all(type(n) is int for n in numbers) or not isinstance(jpeg, str):
        return None
    if not (0 < columns <= config.PREVIEW_SIZE and 0 < rows <= config.PREVIEW_SIZE):
        return None
    if not 0 <= first < last <= rows:
        return None
    return {"size": [columns, rows], "rows": [first, last], "jpeg": jpeg}


def keyframe_preview(
    rgb: npt.NDArray[np.uint8],
    index: int,
    count: int,
    level: int,
    limit: int = config.KEYFRAME_PREVIEW_SIZE,
) -> dict[str, Any]:
    """A zoom keyframe's thumbnail for the dashboard: at most ``limit`` pixels on its
    longer side, JPEG-coded, with the keyframe's place (task ``index`` of ``count``,
    ``level`` doublings above the deepest)."""
    image = Image.fromarray(rgb)
    image.thumbnail((limit, limit), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=config.PREVIEW_QUALITY)
    return {
        "index": index,
        "count": count,
        "level": level,
        "size": list(image.size),
        "jpeg": base64.b64encode(out.getvalue()).decode("ascii"),
    }


def parse_keyframe(result: bytes) -> dict[str, Any] | None:
    """The thumbnail in a keyframe task's result, checked; None when it has none or
    it is bad."""
    try:
        piece = json.loads(result).get("preview")
        numbers = (piece["index"], piece["count"], piece["level"], *piece["size"])
        jpeg = piece["jpeg"]
    except (ValueError, AttributeError, KeyError, TypeError, RecursionError):
        return None
    if len(numbers) != 5 or not all(type(n) is int and n >= 0 for n in numbers):
        return None
    index, count, level, columns, rows = numbers
    limit = config.KEYFRAME_PREVIEW_SIZE
    if not (isinstance(jpeg, str) and index < count and 0 < columns <= limit and 0 < rows <= limit):
        return None
    return {"index": index, "count": count, "level": level, "size": [columns, rows], "jpeg": jpeg}
