"""The lane scheduler of the compiled kernels: lanes refilled, pixels retired, smoothing batched.

Both compiled kernels, the float64 one (:mod:`.fast`) and the perturbation one
(:mod:`.perturb`), keep a fixed number of pixels in flight in *lanes*: one float64
array holding each quantity of every lane at a constant offset (``[z.re | z.im |
... | count]``, LANES each), which their vector *round* advances a fixed number of
iterations. The round returns a bit mask of the lanes that need looking at; the
kernel's scheduling loop walks that mask (:func:`take_lane`), *retires* each
finished lane's pixel and *refills* the lane with the next pixel of the band, so
a slow pixel never holds up the fast ones beside it. The loop ends when every
lane is *parked* (:func:`park`): the band has run out of pixels.

What the kernels share lives here, as small numba functions that LLVM writes into
the kernels' loops (they take arrays but call nothing, so the loops count no
references for them):

* the lane array (:func:`aligned`) and the mask walk (:func:`every_lane`, :func:`take_lane`);
* retiring a pixel: an inside one gets its values at once (:func:`retire_inside`); an
  escaped one goes into the batch of escaped points (:func:`new_batch`,
  :func:`retire_escaped`), whose orbits are carried on to the smoothing radius
  ``BATCH`` at a time, in one vector loop (:func:`flush`, :func:`smooth_batch`);
* a lane with no pixel left (:func:`park`): ``z = c = 0`` never escapes and its count
  ``IDLE`` never reaches a limit, so the round needs no test for it;
* the smooth values from what the batches stored (:func:`finish`).

What each kernel keeps for itself is where its next pixel comes from and how it
starts (a raster walk with the first iteration taken at once, or a list of pixels
with a scaled start and skips), and its round.

The smoothing is the reference's (fractal/kernels.py): the escaped orbit carried on
to ``|z|^2 > 2**32``, at most ``SMOOTH_EXTRA_ITERATIONS`` more iterations, each operation
rounded on its own, then ``m + 1 - log2(log2 |z_m|^2)`` with numpy's own ``log2`` on
contiguous arrays (its SIMD routine differs from the C library's in the last bit
now and then), non-finite values to 0, clipped to ``[0, max_iter]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from fractalq.fractal.escape_round import (
    SMOOTH_LANES,
    SMOOTH_STEPS,
    smooth_steps,
)
from fractalq.fractal.intrinsics import prefer_512, trailing_zeros
from fractalq.fractal.jit import compiled, inlined

Floats = npt.NDArray[np.float64]
Counts = npt.NDArray[np.int32]
Ints = npt.NDArray[np.int64]
# An index or a count as numba code computes it: a Python or a numpy integer.
Integer = int | np.integer[Any]

# Escaped points whose smooth values are computed together.
BATCH = 512
# Where each quantity of an escaped point lives in a batch array (BATCH each):
# [z.re | z.im | c.re | c.im | m], the pixel's index in an array of its own. One
# array, not a tuple of arrays: unpacking one in the scheduling loop would cost
# reference counting for every pixel.
# Each quantity starts a cache line past a multiple of 4 KiB from the one before:
# addresses 4 KiB apart look alike to the CPU's store forwarding, which then stalls.
BATCH_STRIDE = BATCH + 8
BZR, BZI, BCR, BCI, BM = (n * BATCH_STRIDE for n in range(5))
BATCH_FIELDS = 5
# The reference's smoothing: |z|^2 > 2**32, at most 64 more iterations.
SMOOTH_EXTRA_ITERATIONS = 64
SMOOTH_PASSES = SMOOTH_EXTRA_ITERATIONS // SMOOTH_STEPS
# A lane's pixel: NO_PIXEL before its first, IDLE_PIXEL once the band has run out.
NO_PIXEL = -1
IDLE_PIXEL = -2
# The count of a lane with no pixel: never reaches a limit.
IDLE = -1.0e18
# A lane array starts on this many float64 (64 bytes, one cache line).
ALIGN = 8


@inlined
def aligned(n: int) -> Floats:
    """n float64 starting on a 64-byte boundary, so a vector never straddles cache lines."""
    block = np.empty(n + ALIGN)
    offset = (-(block.ctypes.data // 8)) % ALIGN
    return block[offset : offset + n]


@inlined
def every_lane(lanes: int) -> np.uint64:
    """The mask with a bit for each of `lanes` lanes (at most 64)."""
    return ~np.uint64(0) >> np.uint64(64 - lanes)


@inlined
def take_lane(todo: np.uint64) -> tuple[np.int64, np.uint64]:
    """The lowest lane of the mask `todo` (not 0), and the mask without it."""
    return np.int64(trailing_zeros(todo)), todo & (todo - np.uint64(1))


@compiled
def park(state: Floats, lanes: int, fields: int, count: int, lane: Integer) -> None:
    """Lane `lane` of a lane array of `fields` quantities gets no pixel: every
    quantity 0, its count (at offset `count`) IDLE."""
    for field in range(fields):
        state[field * lanes + lane] = 0.0
    state[count + lane] = IDLE


@inlined
def new_batch() -> tuple[Floats, Ints]:
    """An empty batch of escaped points: its values, and its points' pixels."""
    # Zeros where no point is: the smoothing's vectors may take in a few of them.
    values = aligned(BATCH_FIELDS * BATCH_STRIDE)
    values[:] = 0.0
    return values, np.empty(BATCH, np.int64)


@compiled
def retire_inside(
    p: Integer, max_iter: int, counts: Counts, smooth: Floats, magnitude: Floats
) -> None:
    """Pixel p is inside: count max_iter, painted black whatever its smooth value."""
    counts[p] = max_iter
    smooth[p] = float(max_iter)
    magnitude[p] = 16.0


@compiled
def retire_escaped(
    batch: Floats, where: Ints, batched: int, p: Integer, count: Integer, zr: float,
    zi: float, cr: float, ci: float, m: float, counts: Counts,
) -> int:  # fmt: skip
    """Pixel p escaped with `count`, at z_m = zr + i zi, for c = cr + i ci: its count
    now, its smoothing with the batch's. Returns the number of points now batched;
    the caller flushes a full batch (BATCH points).

    No call in here: numba would count references to the arrays passed on, for
    every pixel retired (hence the caller's flush)."""
    counts[p] = count
    batch[BZR + batched] = zr
    batch[BZI + batched] = zi
    batch[BCR + batched] = cr
    batch[BCI + batched] = ci
    batch[BM + batched] = m
    where[batched] = p
    return batched + 1


@compiled
def flush(batch: Floats, where: Ints, batched: int, smooth: Floats, magnitude: Floats) -> int:
    """The smoothing of the points batched: when the batch is full, and at the end
    of a kernel's loop. Returns the number of points left batched, 0."""
    smooth_batch(batch, where, batched, smooth, magnitude)
    return 0


@compiled
def smooth_batch(batch: Floats, where: Ints, n: int, smooth: Floats, magnitude: Floats) -> None:
    """Carry the batch's first n escaped points on to |z|^2 > 2**32; store their m
    in `smooth` and their |z_m|^2 in `magnitude`, at their pixels.

    SMOOTH_LANES points at a time (:func:`.escape_round.smooth_steps`, vector code),
    each group until none of its points is going on, at most SMOOTH_PASSES times."""
    for start in range(0, n, SMOOTH_LANES):
        for _ in range(SMOOTH_PASSES):
            if smooth_steps(batch, start, BATCH_STRIDE) == 0:
                break
    zr = batch[BZR : BZR + BATCH]
    zi = batch[BZI : BZI + BATCH]
    m = batch[BM : BM + BATCH]
    for e in range(n):
        smooth[where[e]] = m[e]
        magnitude[where[e]] = zr[e] * zr[e] + zi[e] * zi[e]


@compiled
def _clip(counts: Counts, smooth: Floats, loglog: Floats, max_iter: int) -> None:
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


def finish(counts: Counts, smooth: Floats, magnitude: Floats, max_iter: int) -> None:
    """The smooth values, in `smooth`, of flat arrays a kernel filled: `smooth` holds
    m and `magnitude` |z_m|^2 (overwritten) for an escaped pixel, max_iter for an inside one."""
    # numpy's log2, on contiguous arrays as the reference's: the same bits.
    with np.errstate(divide="ignore", invalid="ignore"):
        np.log2(magnitude, out=magnitude)
        np.log2(magnitude, out=magnitude)
    _clip(counts, smooth, magnitude, max_iter)
