"""A band of pixels: the kernel's escape times, coloured by the request's palette.

:func:`render_rows` gives the colours; :func:`render_rows_and_counts` the colours and,
when asked, the numbers they were made from (:func:`counts_out`): each pixel's
smooth iteration value as float32, ``inf`` inside, which users recolour from
without rendering again (``render --counts-out``).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from fractalq.fractal import probe
from fractalq.fractal.kernels import DEFAULT_KERNEL, escape
from fractalq.fractal.palettes import ColourScale, colorize
from fractalq.fractal.reference import Reference
from fractalq.fractal.request import RenderRequest

# Pixels counted and coloured at a time within a band (bounded memory).
RENDER_PIECE_PIXELS = 1 << 20


def render_rows(
    request: RenderRequest,
    row_start: int,
    row_end: int,
    kernel: str = DEFAULT_KERNEL,
    reference: Reference | None = None,
    scale: ColourScale | None = None,
) -> npt.NDArray[np.uint8]:
    """RGB pixels (uint8, shape (row_end - row_start, width, 3)) of rows row_start..row_end-1.

    A deep view renders around ``reference`` (computed here when not given);
    the colours follow ``scale`` (the request's, measured here when not given).
    """
    return render_rows_and_counts(request, row_start, row_end, kernel, reference, scale)[0]


def render_rows_and_counts(
    request: RenderRequest,
    row_start: int,
    row_end: int,
    kernel: str = DEFAULT_KERNEL,
    reference: Reference | None = None,
    scale: ColourScale | None = None,
    with_counts: bool = False,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32] | None]:
    """:func:`render_rows`, and the rows' :func:`counts_out` if ``with_counts``.

    The rows go through in pieces of about ``RENDER_PIECE_PIXELS``, each coloured
    into the band's RGB as soon as it is counted, so a band of 4 M pixels holds
    its colours and one piece's counts (12 + 12 MiB) rather than every pixel's
    counts and smooth values at once (48 MiB, and as much again to colour them).
    A pixel's values depend on nothing but itself and the request, so the pieces
    change no byte. A deep view goes in one piece (its kernel has a cost per call).
    """
    if scale is None:
        scale = probe.colour_scale(request, reference)
    width, rows = request.width, row_end - row_start
    step = rows if request.deep else max(1, RENDER_PIECE_PIXELS // width)
    rgb = np.empty((rows, width, 3), dtype=np.uint8)
    values = np.empty((rows, width), dtype=np.float32) if with_counts else None
    for top in range(0, rows, step):
        bottom = min(top + step, rows)
        counts, smooth = escape(request, row_start + top, row_start + bottom, kernel, reference)
        rgb[top:bottom] = colorize(counts, smooth, request.max_iter, request.palette, scale)
        if values is not None:
            values[top:bottom] = counts_out(counts, smooth, request.max_iter)
        del counts, smooth
    return rgb, values


def counts_out(
    counts: npt.NDArray[np.int32], smooth: npt.NDArray[np.float64], max_iter: int
) -> npt.NDArray[np.float32]:
    """The smooth values the colouring reads, as float32, ``inf`` for inside pixels."""
    values = smooth.astype(np.float32)
    values[counts >= max_iter] = np.inf
    return values
