"""A band of pixels: the kernel's escape times, coloured by the request's palette."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from fractalq.fractal.kernels import DEFAULT_KERNEL, escape
from fractalq.fractal.palettes import colorize
from fractalq.fractal.reference import Reference
from fractalq.fractal.request import RenderRequest


def render_rows(
    request: RenderRequest,
    row_start: int,
    row_end: int,
    kernel: str = DEFAULT_KERNEL,
    reference: Reference | None = None,
) -> npt.NDArray[np.uint8]:
    """RGB pixels (uint8, shape (row_end - row_start, width, 3)) of rows row_start..row_end-1.

    A deep view renders around ``reference`` (computed here when not given).
    """
    counts, smooth = escape(request, row_start, row_end, kernel, reference)
    return colorize(counts, smooth, request.max_iter, request.palette)
