"""The compiled escape-time kernel: the numpy kernel's arithmetic, 32 pixels at a time.

:func:`escape` gives, for every pixel, the same count and the same smooth value as
:func:`fractalq.fractal.kernels.numpy_escape`, bit for bit, so the two kernels
make byte-identical images and may be mixed freely across bands and workers. It
is numba code, compiled once per machine and run without the interpreter lock,
so threads render bands side by side (:mod:`.jit`).

How it goes fast
----------------
``LANES`` = 32 pixels are in flight at once. A *round* (:mod:`.escape_round`,
vector code written in LLVM IR) advances every lane ``ROUND`` = 16 iterations,
unrolled, a group of vectors at a time with its state in registers and the
group's independent chains interleaved to hide the latency of each iteration's
dependent multiplications and additions. A lane whose orbit has left the radius-2
disc *freezes*: its z and count stop changing for the rest of the round (masked
updates, no branch), so the count and z at escape are exactly the reference's.
Between rounds the lane scheduler (:mod:`.scheduler`, shared with the
perturbation kernel) retires the finished lanes (escaped, or at ``max_iter``)
and refills them with the next pixels of the band, so a slow pixel never holds
up the fast ones beside it; escaped points are carried on to the large
smoothing radius a batch at a time, again vectorised.

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

import numpy as np
import numpy.typing as npt

from fractalq.fractal import scheduler
from fractalq.fractal.escape_round import (
    CI,
    COUNT,
    CR,
    FIELDS,
    LANES,
    ZI,
    ZR,
    julia_round,
    mandelbrot_round,
)
from fractalq.fractal.intrinsics import prefer_512
from fractalq.fractal.jit import compiled
from fractalq.fractal.scheduler import BATCH, IDLE_PIXEL, NO_PIXEL

Floats = npt.NDArray[np.float64]
Counts = npt.NDArray[np.int32]

# Pixels per call of the compiled loop (whole rows, at least one).
CHUNK_PIXELS = 1 << 18


@compiled
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
    lanes = scheduler.aligned(FIELDS * LANES)
    pixel = np.full(LANES, NO_PIXEL, np.int64)
    batch, where = scheduler.new_batch()
    batched = 0
    nxt = 0  # the next pixel to start, and its row and column
    row = 0
    col = 0
    idle = 0
    todo = scheduler.every_lane(LANES)  # every lane needs a pixel
    while True:
        while todo:
            lane, todo = scheduler.take_lane(todo)
            p = pixel[lane]
            if p >= 0:  # retire the lane's pixel
                m = lanes[COUNT + lane]
                a = lanes[ZR + lane]
                b = lanes[ZI + lane]
                if m > limit or a * a + b * b <= 4.0:
                    scheduler.retire_inside(p, max_iter, counts, smooth, magnitude)
                else:
                    batched = scheduler.retire_escaped(
                        batch, where, batched, p, np.int32(m) - 1, a, b, lanes[CR + lane],
                        lanes[CI + lane], m, counts,
                    )  # fmt: skip
                    if batched == BATCH:
                        batched = scheduler.flush(batch, where, batched, smooth, magnitude)
            while True:  # refill: give the lane the next pixel that needs iterating
                if nxt == total:
                    if p != IDLE_PIXEL:
                        idle += 1
                    scheduler.park(lanes, LANES, FIELDS, COUNT, lane)
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
                        scheduler.retire_inside(q, max_iter, counts, smooth, magnitude)
                        continue
                    a, b, c, d = 0.0, 0.0, x, y
                # The first iteration, here: the vector loop tests |z|^2 <= 4
                # before iterating, which must not apply to z0.
                t = a * b
                b1 = (t + t) + d
                a1 = (a * a - b * b) + c
                if not (a1 * a1 + b1 * b1 <= 4.0):  # escaped at once: count 0
                    batched = scheduler.retire_escaped(
                        batch, where, batched, q, 0, a1, b1, c, d, 1.0, counts
                    )
                    if batched == BATCH:
                        batched = scheduler.flush(batch, where, batched, smooth, magnitude)
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
        todo = julia_round(lanes, limit, c_re, c_im) if julia else mandelbrot_round(lanes, limit)
    scheduler.flush(batch, where, batched, smooth, magnitude)


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
        scheduler.finish(chunk_counts, chunk_smooth, magnitude, int(max_iter))
    return counts, smooth
