"""Escape-time kernels: which pixels are inside, and how fast the others escape.

A kernel maps ``(request, row_start, row_end)`` to two arrays of shape
``(rows, width)``: the iteration count (int32; ``max_iter`` means inside) and a
smooth, continuous iteration value (float64) for colouring outside pixels. A
faster kernel is one more entry in :data:`KERNELS`, and must give the same counts
and smooth values (``tests/test_kernels.py`` holds every entry to the reference).

Two kernels exist: ``numpy`` (:func:`numpy_escape`, the reference, always there)
and ``numba`` (:func:`numba_escape`, compiled, in :mod:`fractalq.fractal.fast`;
registered when numba is installed, and imported on first use so that processes
which never render, such as the coordinator, do not load it). They agree bit for
bit, counts and smooth values alike, so the PNG bytes never depend on which
kernel, or which mix of kernels across workers, rendered the bands.
:data:`DEFAULT_KERNEL` is the fastest one available.

The contract (docs/images.md, "The image") is followed literally:

* pixel ``(i, j)`` samples ``x = cx + (i + 0.5 - W/2) * s``,
  ``y = cy - (j + 0.5 - H/2) * s`` with ``s = view_width / W``, evaluated per
  pixel from ``i`` and ``j`` in that order, so a pixel never depends on its band;
* ``z <- z*z + c`` in separate float64 operations (numpy never fuses them), the
  same roundings as Python's complex arithmetic;
* a point is inside iff ``|z|^2 <= 4`` after each of the ``max_iter`` iterations.
  An escaped point's count is the number of iterations it stayed within that
  radius, in ``0 .. max_iter - 1``.

The classification uses radius 2 only. The smooth value comes from continuing the
escaped orbits a few iterations further, to a large radius where ``z -> z^2``
dominates ``c``; there ``m - log2(log2 |z_m|)`` is continuous across iteration
counts. Where ``|c|`` is small next to ``|z|`` it lies in [count, count + 1).
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from fractalq.fractal import reference as reference_orbit
from fractalq.fractal.reference import Reference
from fractalq.fractal.request import RenderRequest

Counts = npt.NDArray[np.int32]
Smooth = npt.NDArray[np.float64]
Floats = npt.NDArray[np.float64]
Kernel = Callable[[RenderRequest, int, int], tuple[Counts, Smooth]]

ESCAPE_RADIUS_SQUARED = 4.0
# Where the smooth value is read: |z| > 2**16, so |c| is negligible next to |z|^2.
SMOOTH_RADIUS_SQUARED = 2.0**32
# Escaped orbits normally pass 2**16 within about six more iterations; the cap
# only matters for Julia constants with |c| > 2, whose orbits may loiter.
SMOOTH_EXTRA_ITERATIONS = 64
# Points per block: the working arrays of one block stay in the CPU cache, and
# the per-call overhead of numpy stays small next to the arithmetic.
BLOCK_PIXELS = 1 << 17


def pixel_columns(request: RenderRequest) -> Floats:
    """x of every column's pixel centre."""
    i = np.arange(request.width, dtype=np.float64)
    return request.cx + (i + 0.5 - request.width / 2) * request.pixel_size


def pixel_rows(request: RenderRequest, row_start: int, row_end: int) -> Floats:
    """y of the pixel centres of rows row_start..row_end-1."""
    j = np.arange(row_start, row_end, dtype=np.float64)
    return request.cy - (j + 0.5 - request.height / 2) * request.pixel_size


def _in_main_bulbs(cr: Floats, ci: Floats) -> npt.NDArray[np.bool_]:
    """Points of the Mandelbrot set's main cardioid or period-2 disc.

    Their orbits converge to an attracting cycle well inside |z| <= 2, so they
    are inside for every max_iter; skipping them removes most of the cost of the
    default view. Near the boundary, where rounding could tip this test, a
    float64 orbit needs far more than MAX_ITERATIONS to escape, so the answer is
    the one that iterating would give.
    """
    xm = cr - 0.25
    y2 = ci * ci
    q = xm * xm + y2
    cardioid = q * (q + xm) <= 0.25 * y2
    xp = cr + 1.0
    disc = xp * xp + y2 <= 0.0625
    result: npt.NDArray[np.bool_] = cardioid | disc
    return result


def _escape_block(
    z_re: Floats, z_im: Floats, c_re: Floats, c_im: Floats, max_iter: int
) -> tuple[Counts, Smooth]:
    """Iterate flat arrays of points, carrying along only the ones still live.

    An escaping point is recorded, then parked at z = c = 0 (a fixed point, so it
    never escapes again) until enough have gathered to be worth compressing away:
    compressing at every escape would cost more than iterating a few dead points.
    """
    n = z_re.size
    counts = np.full(n, max_iter, dtype=np.int32)
    smooth = np.full(n, float(max_iter), dtype=np.float64)
    live = np.arange(n)  # block index of each slot of the working arrays
    alive = np.ones(n, dtype=np.bool_)
    parked = 0
    zr, zi, cr, ci = z_re.copy(), z_im.copy(), c_re.copy(), c_im.copy()
    zr2 = zr * zr
    zi2 = zi * zi
    stays = np.empty(n, dtype=np.bool_)
    # Each escaped point's index, z at escape and iteration of escape.
    escaped: list[tuple[npt.NDArray[np.intp], Floats, Floats, int]] = []
    for iteration in range(1, max_iter + 1):
        # z <- z*z + c, as (zr*zr - zi*zi) + cr and (zr*zi + zr*zi) + ci: the
        # roundings of Python's complex arithmetic.
        zi *= zr
        zi += zi
        zi += ci
        np.subtract(zr2, zi2, out=zr)
        zr += cr
        np.multiply(zr, zr, out=zr2)
        np.multiply(zi, zi, out=zi2)
        # `<=` is False for nan, so an orbit that overflowed counts as escaped.
        np.less_equal(zr2 + zi2, ESCAPE_RADIUS_SQUARED, out=stays)
        if stays.all():
            continue
        gone = np.flatnonzero(~stays)
        escaped.append((live[gone], zr[gone], zi[gone], iteration))
        for array in (zr, zi, zr2, zi2, cr, ci):
            array[gone] = 0.0
        alive[gone] = False
        parked += gone.size
        if parked == live.size:
            break
        if parked * 4 >= live.size:
            keep = np.flatnonzero(alive)
            live = live[keep]
            zr, zi, zr2, zi2 = zr[keep], zi[keep], zr2[keep], zi2[keep]
            cr, ci = cr[keep], ci[keep]
            alive = np.ones(live.size, dtype=np.bool_)
            stays = np.empty(live.size, dtype=np.bool_)
            parked = 0
    if escaped:
        index = np.concatenate([item[0] for item in escaped])
        first = np.concatenate([np.full(item[0].size, item[3], dtype=np.int32) for item in escaped])
        counts[index] = first - 1
        smooth[index] = _smooth_values(
            np.concatenate([item[1] for item in escaped]),
            np.concatenate([item[2] for item in escaped]),
            c_re[index],
            c_im[index],
            first,
            max_iter,
        )
    return counts, smooth


def _smooth_values(
    zr: Floats,
    zi: Floats,
    cr: Floats,
    ci: Floats,
    first: Counts,
    max_iter: int,
) -> Smooth:
    """The continuous iteration value of escaped points, from their z at escape."""
    m = first.astype(np.float64)
    mag = zr * zr + zi * zi
    live = np.arange(zr.size)
    for _ in range(SMOOTH_EXTRA_ITERATIONS):
        going = mag[live] <= SMOOTH_RADIUS_SQUARED
        live = live[going]
        if live.size == 0:
            break
        zr, zi, cr, ci = zr[going], zi[going], cr[going], ci[going]
        zr, zi = zr * zr - zi * zi + cr, (zr + zr) * zi + ci
        mag[live] = zr * zr + zi * zi
        m[live] += 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        # m - log2(log2 |z_m|), with log2 |z_m| = log2(mag) / 2.
        value = m + 1.0 - np.log2(np.log2(mag))
    # Only an overflowed orbit (inf or nan) gives a non-finite value; such points
    # escaped at once, from far away.
    value = np.nan_to_num(value, nan=0.0, posinf=0.0, neginf=0.0)
    result: Smooth = np.clip(value, 0.0, float(max_iter))
    return result


def numpy_escape(request: RenderRequest, row_start: int, row_end: int) -> tuple[Counts, Smooth]:
    """The reference kernel: vectorised numpy, a block of rows at a time."""
    width = request.width
    counts = np.empty((row_end - row_start, width), dtype=np.int32)
    smooth = np.empty((row_end - row_start, width), dtype=np.float64)
    xs = pixel_columns(request)
    block_rows = max(1, BLOCK_PIXELS // width)
    # Orbits from far-out views may overflow to inf or nan; both count as escaped.
    with np.errstate(over="ignore", invalid="ignore"):
        for top in range(row_start, row_end, block_rows):
            bottom = min(top + block_rows, row_end)
            x = np.tile(xs, bottom - top)
            y = np.repeat(pixel_rows(request, top, bottom), width)
            block_counts = np.full(x.size, request.max_iter, dtype=np.int32)
            block_smooth = np.full(x.size, float(request.max_iter), dtype=np.float64)
            if request.fractal == "mandelbrot":
                todo = np.flatnonzero(~_in_main_bulbs(x, y))
                cr, ci = x[todo], y[todo]
                zero = np.zeros_like(cr)
                found = _escape_block(zero, zero, cr, ci, request.max_iter)
            else:
                todo = np.arange(x.size)
                cr = np.full_like(x, request.c_re)
                ci = np.full_like(x, request.c_im)
                found = _escape_block(x, y, cr, ci, request.max_iter)
            block_counts[todo], block_smooth[todo] = found
            rows = slice(top - row_start, bottom - row_start)
            counts[rows] = block_counts.reshape(-1, width)
            smooth[rows] = block_smooth.reshape(-1, width)
    return counts, smooth


def numba_escape(request: RenderRequest, row_start: int, row_end: int) -> tuple[Counts, Smooth]:
    """The compiled kernel: the reference's arithmetic, vectorised by numba."""
    from fractalq.fractal import fast  # imports numba (a third of a second) on first use

    return fast.escape(
        pixel_columns(request),
        pixel_rows(request, row_start, row_end),
        request.fractal == "julia",
        request.c_re,
        request.c_im,
        request.max_iter,
    )


KERNELS: dict[str, Kernel] = {"numpy": numpy_escape}
if importlib.util.find_spec("numba") is not None:
    KERNELS["numba"] = numba_escape
# The fastest kernel available, chosen here once; render_rows and the workers use it.
DEFAULT_KERNEL = "numba" if "numba" in KERNELS else "numpy"


def escape(
    request: RenderRequest,
    row_start: int,
    row_end: int,
    kernel: str = DEFAULT_KERNEL,
    reference: Reference | None = None,
) -> tuple[Counts, Smooth]:
    """Counts and smooth values of rows row_start..row_end-1 of the request's image.

    A deep view (:attr:`RenderRequest.deep`) renders by perturbation
    (:mod:`.perturb`) around ``reference``, computed here when not given; the
    others with ``kernel``.
    """
    if not 0 <= row_start < row_end <= request.height:
        raise ValueError(
            f"rows {row_start}..{row_end} are not within the image's {request.height} rows"
        )
    request.validate()  # the kernels trust the sizes and numbers they are given
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r} (known: {', '.join(sorted(KERNELS))})")
    if request.deep:
        from fractalq.fractal import perturb  # numba, loaded on first use

        return perturb.escape(request, reference or cached_reference(request), row_start, row_end)
    return KERNELS[kernel](request, row_start, row_end)


@functools.lru_cache(maxsize=4)
def cached_reference(request: RenderRequest) -> Reference:
    """A deep view's reference, computed in this process (a band task reads the
    one its job's first task stored instead; a tile computes its own)."""
    return reference_orbit.compute(request)
