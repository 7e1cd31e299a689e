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
    """:func:`render_rows`, and the rows' :func:`counts_out` if ``with_counts``."""
    counts, smooth = escape(request, row_start, row_end, kernel, reference)
    if scale is None:
        scale = probe.colour_scale(request, reference)
    rgb = colorize(counts, smooth, request.max_iter, request.palette, scale)
    return rgb, counts_out(counts, smooth, request.max_iter) if with_counts else None


def counts_out(
    counts: npt.NDArray[np.int32], smooth: npt.NDArray[np.float64], max_iter: int
) -> npt.NDArray[np.float32]:
    """The smooth values the colouring reads, as float32, ``inf`` for inside pixels."""
    values = smooth.astype(np.float32)
    values[counts >= max_iter] = np.inf
    return values
