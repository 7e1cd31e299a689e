"""The compiled escape-time kernel: the numpy kernel's arithmetic, 32 pixels at a time.

:func:`escape` gives, for every pixel, the same count and the same smooth value as
:func:`fractalq.fractal.kernels.numpy_escape`, bit for bit, so the two kernels
make byte-identical images and may be mixed freely across bands and workers. It
is numba code, compiled once per machine (``cache=True``: the machine code is
kept next to this file, or under ``NUMBA_CACHE_DIR``; the image ships it compiled,
see :mod:`.kernel_cache`) and run without the
interpreter lock (``nogil=True``), so threads render bands side by side.

How it goes fast
----------------
``LANES`` = 32 pixels are in flight at once, as four independent vectors of
eight float64 (one 512-bit register each on AVX-512; LLVM splits them on other
CPUs). A *round* advances every lane ``ROUND`` = 16 iterations, unrolled, with
the state in registers: the loop over the 8 slots is what LLVM vectorises, and
the four chains interleaved in it hide the latency of each iteration's chain of
dependent multiplications and additions. A lane whose orbit has left the radius-2
disc *freezes*: its z and count stop changing for the rest of the round (masked
updates, no branch), so the count and z at escape are exactly the reference's.
Between rounds the finished lanes (escaped, or at ``max_iter``) are recorded and
refilled with the next pixels of the band, so a slow pixel never holds up the
fast ones beside it. Escaped points are gathered ``BATCH`` at a time and carried
on to the large smoothing radius together, again vectorised.

Exactness
---------
Every float operation is the reference's, in the same order, each rounded on its
own: no fused multiply-add and no fast-math flags (numba enables neither by
default), so ``z <- z*z + c`` gives the same bits. Checking ``|z|^2 <= 4`` before
an iteration instead of after the previous one is the same test on the same
value. A lane may run up to ``ROUND - 1`` iterations past ``max_iter``; any
such lane is inside whatever happens after ``max_iter``, so the overshoot never
changes a count. The smooth value's two logarithms are numpy's own ``np.log2``
on the same values (its SIMD routine differs from the C library's ``log2`` in
the last bit now and then), and the clipping is the reference's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba
import numpy as np
import numpy.typing as npt

from fractalq.fractal import kernel_cache
from fractalq.fractal.intrinsics import prefer_512, trailing_zeros

# Before the first kernel below is defined (numba picks its cache folder then):
# the kernels compiled ahead into the image, if any (see kernel_cache).
kernel_cache.seed(kernel_cache.numba_cache_dir())

F = TypeVar("F", bound=Callable[..., Any])
Floats = npt.NDArray[np.float64]
Counts = npt.NDArray[np.int32]

# Pixels in flight: CHAINS vectors of SLOT float64 lanes.
SLOT = 8
CHAINS = 4
LANES = SLOT * CHAINS
# Iterations per round, between two looks at which lanes are done: the four
# _four_steps written out in _round (12 to 24 measure the same; fewer cost more
# bookkeeping, more leave finished lanes idle longer).
ROUND = 16
# Escaped points whose smooth values are computed together.
BATCH = 512
# Pixels per call of the compiled loop (whole rows, at least one).
CHUNK_PIXELS = 1 << 18
# The reference's smoothing: |z|^2 > 2**32, at most 64 more iterations (16 x 4).
SMOOTH_RADIUS_SQUARED = 2.0**32
SMOOTH_PASSES = 16
# Where each quantity lives in a lane array: [z.re | z.im | c.re | c.im | count].
# One array at constant offsets, not five arrays: LLVM then sees that the loads
# and stores cannot overlap, where five arrays would need run-time overlap
# checks, too many of which make it give up vectorising.
ZR, ZI, CR, CI, COUNT = 0, LANES, 2 * LANES, 3 * LANES, 4 * LANES
# The count of a lane with no pixel: never reaches max_iter, and z = c = 0 never escapes.
IDLE = -1.0e18
# A lane's pixel: NO_PIXEL before its first, IDLE_PIXEL once the band has run out.
NO_PIXEL = -1
IDLE_PIXEL = -2


def _compiled(function: F) -> F:
    """A numba function: compiled once, cached on disk, run without the GIL."""
    return cast(F, numba.njit(cache=True, nogil=True)(function))


def _inlined(function: F) -> F:
    """A helper inlined by numba into its caller, so LLVM sees one loop body."""
    return cast(F, numba.njit(cache=True, nogil=True, inline="always")(function))


@_compiled
def _step(a: float, b: float, c: float, d: float, m: float) -> tuple[float, float, float]:
    """One iteration of a lane unless it has escaped: z = a + ib, c = c + id, count m."""
    p = a * a
    q = b * b
    stays = p + q <= 4.0  # False for nan: an overflowed orbit has escaped
    t = a * b
    zi = (t + t) + d
    zr = (p - q) + c
    return (zr if stays else a), (zi if stays else b), (m + 1.0 if stays else m)


Chains = tuple[float, float, float, float, float, float, float, float, float, float, float, float]
Constants = tuple[float, float, float, float, float, float, float, float]


@_inlined
def _step_chains(z: Chains, c: Constants) -> Chains:
    """One iteration of each of the four chains, interleaved."""
    a0, b0, m0 = _step(z[0], z[1], c[0], c[1], z[2])
    a1, b1, m1 = _step(z[3], z[4], c[2], c[3], z[5])
    a2, b2, m2 = _step(z[6], z[7], c[4], c[5], z[8])
    a3, b3, m3 = _step(z[9], z[10], c[6], c[7], z[11])
    return (a0, b0, m0, a1, b1, m1, a2, b2, m2, a3, b3, m3)


@_inlined
def _four_steps(z: Chains, c: Constants) -> Chains:
    return _step_chains(_step_chains(_step_chains(_step_chains(z, c), c), c), c)


@_inlined
def _finished(a: float, b: float, m: float, limit: float, lane: int) -> np.uint64:
    """Bit `lane` set if the lane has escaped or reached the iteration limit."""
    done = (not (a * a + b * b <= 4.0)) or m >= limit
    return np.uint64(done) << np.uint64(lane)


@_compiled
def _round(lanes: Floats, limit: float) -> np.uint64:
    """ROUND iterations of every lane; returns the bit mask of the lanes now done.

    Slot k of chain j is lane 8j + k. The four chains of a slot are independent,
    so the vectorised loop has four dependency chains to interleave.
    """
    prefer_512()
    done = np.uint64(0)
    for k in range(SLOT):
        z = (
            lanes[ZR + k],
            lanes[ZI + k],
            lanes[COUNT + k],
            lanes[ZR + SLOT + k],
            lanes[ZI + SLOT + k],
            lanes[COUNT + SLOT + k],
            lanes[ZR + 2 * SLOT + k],
            lanes[ZI + 2 * SLOT + k],
            lanes[COUNT + 2 * SLOT + k],
            lanes[ZR + 3 * SLOT + k],
            lanes[ZI + 3 * SLOT + k],
            lanes[COUNT + 3 * SLOT + k],
        )
        c = (
            lanes[CR + k],
            lanes[CI + k],
            lanes[CR + SLOT + k],
            lanes[CI + SLOT + k],
            lanes[CR + 2 * SLOT + k],
            lanes[CI + 2 * SLOT + k],
            lanes[CR + 3 * SLOT + k],
            lanes[CI + 3 * SLOT + k],
        )
        # ROUND = 16 iterations, written out (a loop this size would not be
        # unrolled before vectorising): the state stays in registers throughout.
        z = _four_steps(z, c)
        z = _four_steps(z, c)
        z = _four_steps(z, c)
        z = _four_steps(z, c)
        lanes[ZR + k], lanes[ZI + k], lanes[COUNT + k] = z[0], z[1], z[2]
        lanes[ZR + SLOT + k], lanes[ZI + SLOT + k], lanes[COUNT + SLOT + k] = z[3], z[4], z[5]
        lanes[ZR + 2 * SLOT + k] = z[6]
        lanes[ZI + 2 * SLOT + k] = z[7]
        lanes[COUNT + 2 * SLOT + k] = z[8]
        lanes[ZR + 3 * SLOT + k] = z[9]
        lanes[ZI + 3 * SLOT + k] = z[10]
        lanes[COUNT + 3 * SLOT + k] = z[11]
        done |= _finished(z[0], z[1], z[2], limit, k)
        done |= _finished(z[3], z[4], z[5], limit, SLOT + k)
        done |= _finished(z[6], z[7], z[8], limit, 2 * SLOT + k)
        done |= _finished(z[9], z[10], z[11], limit, 3 * SLOT + k)
    return done


@_compiled
def _smooth_step(a: float, b: float, c: float, d: float, m: float) -> tuple[float, float, float]:
    """One smoothing iteration, written as the reference writes it, unless |z| > 2**16."""
    p = a * a
    q = b * b
    going = p + q <= SMOOTH_RADIUS_SQUARED
    zr = (p - q) + c
    zi = (a + a) * b + d
    return (zr if going else a), (zi if going else b), (m + 1.0 if going else m)


@_compiled
def _smooth_batch(
    n: int,
    zr: Floats,
    zi: Floats,
    cr: Floats,
    ci: Floats,
    m: Floats,
    where: npt.NDArray[np.int64],
    smooth: Floats,
    magnitude: Floats,
) -> None:
    """Carry n escaped points on to |z|^2 > 2**32; store their m and |z|^2 at `where`."""
    prefer_512()
    for _ in range(SMOOTH_PASSES):
        going = 0
        for e in range(n):
            a, b, mm = _smooth_step(zr[e], zi[e], cr[e], ci[e], m[e])
            a, b, mm = _smooth_step(a, b, cr[e], ci[e], mm)
            a, b, mm = _smooth_step(a, b, cr[e], ci[e], mm)
            a, b, mm = _smooth_step(a, b, cr[e], ci[e], mm)
            zr[e] = a
            zi[e] = b
            m[e] = mm
            going += a * a + b * b <= SMOOTH_RADIUS_SQUARED
        if going == 0:
            break
    for e in range(n):
        smooth[where[e]] = m[e]
        magnitude[where[e]] = zr[e] * zr[e] + zi[e] * zi[e]


@_inlined
def _aligned(n: int) -> Floats:
    """n float64 starting on a 64-byte boundary, so a vector never straddles cache lines."""
    block = np.empty(n + SLOT)
    offset = (-(block.ctypes.data // 8)) % SLOT
    return block[offset : offset + n]


@_compiled
def _escape(
    xs: Floats,
    ys: Floats,
    julia: bool,
    c_re: float,
    c_im: float,
    max_iter: int,
    counts: Counts,
    smooth: Floats,
    magnitude: Floats,
) -> None:
    """Counts of the pixels of rows ys x columns xs (flat, row by row).

    For an escaped pixel, `smooth` gets m (the iteration at which the smoothing
    stopped) and `magnitude` |z_m|^2; for an inside one, `smooth` gets max_iter
    and `magnitude` a placeholder. :func:`escape` turns them into smooth values.
    """
    prefer_512()
    width = xs.size
    total = width * ys.size
    limit = float(max_iter)
    lanes = _aligned(5 * LANES)
    pixel = np.full(LANES, NO_PIXEL, np.int64)
    bzr = np.empty(BATCH)
    bzi = np.empty(BATCH)
    bcr = np.empty(BATCH)
    bci = np.empty(BATCH)
    bm = np.empty(BATCH)
    where = np.empty(BATCH, np.int64)
    batched = 0
    nxt = 0  # the next pixel to start, and its row and column
    row = 0
    col = 0
    idle = 0
    todo = (np.uint64(1) << np.uint64(LANES)) - np.uint64(1)  # every lane needs a pixel
    while True:
        while todo:
            lane = np.int64(trailing_zeros(todo))
            todo &= todo - np.uint64(1)
            p = pixel[lane]
            if p >= 0:  # record the lane's pixel
                m = lanes[COUNT + lane]
                a = lanes[ZR + lane]
                b = lanes[ZI + lane]
                if m > limit or a * a + b * b <= 4.0:
                    counts[p] = max_iter
                    smooth[p] = limit
                    magnitude[p] = 16.0
                else:
                    counts[p] = np.int32(m) - 1
                    bzr[batched] = a
                    bzi[batched] = b
                    bcr[batched] = lanes[CR + lane]
                    bci[batched] = lanes[CI + lane]
                    bm[batched] = m
                    where[batched] = p
                    batched += 1
                    if batched == BATCH:
                        _smooth_batch(batched, bzr, bzi, bcr, bci, bm, where, smooth, magnitude)
                        batched = 0
            while True:  # give the lane the next pixel that needs iterating
                if nxt == total:
                    if p != IDLE_PIXEL:
                        idle += 1
                    lanes[ZR + lane] = 0.0
                    lanes[ZI + lane] = 0.0
                    lanes[CR + lane] = 0.0
                    lanes[CI + lane] = 0.0
                    lanes[COUNT + lane] = IDLE
                    pixel[lane] = IDLE_PIXEL
                    break
                q = nxt
                x = xs[col]
                y = ys[row]
                nxt += 1
                col += 1
                if col == width:
                    col = 0
                    row += 1
                if julia:
                    a, b, c, d = x, y, c_re, c_im
                else:
                    # The main cardioid and the period-2 disc, as _in_main_bulbs.
                    xm = x - 0.25
                    y2 = y * y
                    qq = xm * xm + y2
                    xp = x + 1.0
                    if qq * (qq + xm) <= 0.25 * y2 or xp * xp + y2 <= 0.0625:
                        counts[q] = max_iter
                        smooth[q] = limit
                        magnitude[q] = 16.0
                        continue
                    a, b, c, d = 0.0, 0.0, x, y
                # The first iteration, here: the vector loop tests |z|^2 <= 4
                # before iterating, which must not apply to z0.
                t = a * b
                b1 = (t + t) + d
                a1 = (a * a - b * b) + c
                if not (a1 * a1 + b1 * b1 <= 4.0):  # escaped at once: count 0
                    counts[q] = 0
                    bzr[batched] = a1
                    bzi[batched] = b1
                    bcr[batched] = c
                    bci[batched] = d
                    bm[batched] = 1.0
                    where[batched] = q
                    batched += 1
                    if batched == BATCH:
                        _smooth_batch(batched, bzr, bzi, bcr, bci, bm, where, smooth, magnitude)
                        batched = 0
                    continue
                lanes[ZR + lane] = a1
                lanes[ZI + lane] = b1
                lanes[CR + lane] = c
                lanes[CI + lane] = d
                lanes[COUNT + lane] = 1.0
                pixel[lane] = q
                break
        if idle == LANES:
            break
        todo = _round(lanes, limit)
    _smooth_batch(batched, bzr, bzi, bcr, bci, bm, where, smooth, magnitude)


@_compiled
def _finish(counts: Counts, smooth: Floats, loglog: Floats, max_iter: int) -> None:
    """smooth <- m + 1 - log2(log2 |z_m|^2), as the reference: non-finite -> 0, clipped."""
    prefer_512()
    limit = float(max_iter)
    for i in range(counts.size):
        value = smooth[i] + 1.0 - loglog[i]
        if not np.isfinite(value):
            value = 0.0
        if value < 0.0:
            value = 0.0
        if value > limit:
            value = limit
        smooth[i] = limit if counts[i] == max_iter else value


def escape(
    xs: Floats, ys: Floats, julia: bool, c_re: float, c_im: float, max_iter: int
) -> tuple[Counts, Floats]:
    """Counts and smooth values, shape (ys.size, xs.size), of the pixels at xs x ys.

    Mandelbrot (julia False): z0 = 0, c = x + iy. Julia: z0 = x + iy, c = c_re + i c_im.
    The rows go through in chunks of about CHUNK_PIXELS, which bounds the scratch
    memory and keeps numpy's logarithms in cache; a pixel's values do not depend
    on the chunks, nor on anything but its own x, y and the request.
    """
    xs = np.ascontiguousarray(xs, dtype=np.float64)
    ys = np.ascontiguousarray(ys, dtype=np.float64)
    height, width = ys.size, xs.size
    counts = np.empty((height, width), dtype=np.int32)
    smooth = np.empty((height, width), dtype=np.float64)
    rows = max(1, CHUNK_PIXELS // max(width, 1))
    scratch = np.empty(min(rows, height) * width, dtype=np.float64)
    for top in range(0, height, rows):
        bottom = min(top + rows, height)
        chunk_counts = counts[top:bottom].reshape(-1)
        chunk_smooth = smooth[top:bottom].reshape(-1)
        magnitude = scratch[: chunk_counts.size]
        _escape(
            xs,
            ys[top:bottom],
            bool(julia),
            float(c_re),
            float(c_im),
            int(max_iter),
            chunk_counts,
            chunk_smooth,
            magnitude,
        )
        # numpy's log2, on contiguous arrays as the reference's: the same bits.
        with np.errstate(divide="ignore", invalid="ignore"):
            np.log2(magnitude, out=magnitude)
            np.log2(magnitude, out=magnitude)
        _finish(chunk_counts, chunk_smooth, magnitude, int(max_iter))
    return counts, smooth
