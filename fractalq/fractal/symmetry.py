"""Mirror-symmetric views: the rows below the middle copied from the rows above.

Two common views hold every pixel twice, bit for bit:

* a Mandelbrot view centred on the real axis (``cy = 0``, the default view): the
  pixel in row ``H-1-j`` samples the conjugate of row ``j``'s c, and conjugate
  points have conjugate orbits (*rows*: the rows flipped);
* a Julia view centred on 0 (the default view): the pixel at ``(W-1-i, H-1-j)``
  starts from ``-z0``, and ``(-z0)^2 = z0^2``, so from ``z1`` on both orbits are the
  same (*point*: the rows and the columns flipped).

Exactly so in float64, not only in exact arithmetic: with a centre of 0 the
sampled coordinates of mirrored pixels are exact negatives of each other
(``0 - t`` is ``-t``; :func:`~fractalq.fractal.kernels.pixel_rows`), and IEEE
rounding is the same for ``-x`` as for ``x``, so every product and sum of the
mirrored orbit is the exact negative (or the same value) of the original's:
the same counts, the same smooth values, the same bytes. Deep views are never
mirrored: the perturbation kernel's reference point is not at the centre's mirror.

A mirrored render's band tasks split the top half (rows ``0..ceil(H/2)-1``); each
stores its own rows and their mirror rows below the middle (:func:`mirror_rows`,
:func:`mirrored`), so half the pixels are computed at no cost to the bytes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy.typing as npt

if TYPE_CHECKING:
    from fractalq.fractal.request import RenderRequest

Kind = Literal["rows", "point"]


def kind(request: RenderRequest) -> Kind | None:
    """How the request's view mirrors onto itself, or None."""
    if request.fractal == "mandelbrot" and request.cy == 0.0 and not request.deep:
        return "rows"
    if request.fractal == "julia" and request.cx == request.cy == 0.0 and not request.deep:
        return "point"
    return None


def top_half(height: int) -> int:
    """The rows a mirrored render computes: down to the middle row, included."""
    return (height + 1) // 2


def mirror_rows(height: int, start: int, end: int) -> tuple[int, int] | None:
    """The rows below the middle that mirror rows ``start..end-1`` of the top half
    (half-open), or None (the middle row of an odd height is its own mirror)."""
    low, high = max(height - end, top_half(height)), height - start
    return (low, high) if low < high else None


def mirrored(pixels: npt.NDArray[Any], how: Kind, height: int, start: int) -> npt.NDArray[Any]:
    """The pixels of :func:`mirror_rows` from those of rows ``start..`` (first axis
    rows, second columns), as a view: no copy."""
    end = start + pixels.shape[0]
    rows = mirror_rows(height, start, end)
    if rows is None:
        raise ValueError(f"rows {start}..{end} of {height} have no mirror rows")
    flipped = pixels[::-1][rows[0] - (height - end) :]
    return flipped[:, ::-1] if how == "point" else flipped
