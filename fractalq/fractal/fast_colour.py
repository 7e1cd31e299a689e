"""The compiled colouring: :func:`fractalq.fractal.palettes.colorize_numpy` in one pass.

:func:`colorize` gives the same bytes as the numpy reference for every input, so
a worker with numba and one without colour a band identically. Like the
compiled kernel (:mod:`fractalq.fractal.fast`) it is numba code, compiled once
per machine and kept on disk, and run without the interpreter lock.

How it goes fast
----------------
The reference makes some twenty passes over the band, each numpy operation
reading and writing whole arrays, plus gathers of each pixel's segment from the
palette table; that costs twice what computing the escape times does. Here one
loop takes each pixel from its smooth value to its three bytes, written straight
into the output, and LLVM vectorises that loop, eight pixels at a time on
AVX-512. Two things make it vectorise well:

* the palette goes in as a flat tuple of its segments (start, three slopes,
  three colours each: :func:`segment_table`), so numba compiles the loop once
  per number of segments, the loop over the segments is unrolled, and finding
  a pixel's segment is a few comparisons and blends in registers, not a search
  and a gather from memory;
* no branches: the guards, the black nudge and the inside test are selects.

The loop is bound by the square root and the division, which share one unit of
the CPU; the rest costs about as much again. How the first guard is written
matters: written as ``not value > 0 or value == inf``, LLVM turns it into
integer tests whose all-ones constant it materialises in a register last
written at the end of the previous iteration, which chains every iteration to
the one before and makes the loop twice as slow.

Why it matches the reference bit for bit
----------------------------------------
Every float operation is the reference's, on the same float64 values, each
rounded on its own (no fused multiply-add and no fast-math flags: numba
enables neither by default):

* ``nan_to_num(maximum(smooth, 0), nan=0, posinf=0)`` keeps exactly the values
  that are positive and finite and makes every other one 0 (numpy keeps a
  ``-0.0``; it gives the same ``where`` as ``+0.0``: ``sqrt(-0.0) = -0.0``, and
  ``-0.0 / cycle + offset`` equals ``0.0 / cycle + offset`` but for ``offset``
  zero, where the fraction taken next is ``+0.0`` either way);
* ``where = sqrt(value) / cycle + offset``: the square root is correctly
  rounded in both, and the division stays a division; then
  ``where - floor(where)``, which is exact, and a nan (only from an infinite
  ``where``) becomes 0 as the reference's ``np.fmax(where, 0)`` makes it;
* the segment is the last one whose start is ``<= where``, as the reference's
  ``np.searchsorted(positions, where, side="right") - 1``, and the level
  ``slope * (where - start) + colour``, with the slopes that
  :func:`fractalq.fractal.palettes.gradient` computed once for both paths;
* ``np.rint`` (round half to even), then the conversion to uint8, exact as
  the rounded levels lie in 0..255 (palette colours are bytes); an outside
  pixel whose three rounded levels are 0 gets blue 1, an inside pixel 0, 0, 0.

The reference writes out ``np.interp``'s arithmetic rather than calling it:
``np.interp`` is C compiled by the platform's compiler, which may fuse its
``slope * (x - xp[j]) + fp[j]`` into one multiply-add (clang does by default on
arm64), and then nothing else could be relied on to match it. On x86-64 the
two give the same bits.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from fractalq.fractal.intrinsics import prefer_512
from fractalq.fractal.jit import compiled

if TYPE_CHECKING:  # palettes imports this module (lazily) to colour with it
    from fractalq.fractal.palettes import Gradient

Floats = npt.NDArray[np.float64]
Counts = npt.NDArray[np.int32]
Bytes = npt.NDArray[np.uint8]

# Numbers per segment in the table: start, the three slopes, the three colours.
SEGMENT = 7
# The largest float64: `value <= LARGEST` is False for inf and nan.
LARGEST = float(np.finfo(np.float64).max)


def segment_table(chosen: Gradient) -> tuple[float, ...]:
    """The gradient's segments as one flat tuple of SEGMENT numbers each."""
    return tuple(
        float(number)
        for j in range(chosen.positions.size - 1)
        for number in (chosen.positions[j], *chosen.slopes[j], *chosen.colours[j])
    )


@compiled
def _colour(
    counts: Counts,
    smooth: Floats,
    max_iter: int,
    table: tuple[float, ...],
    cycle: float,
    offset: float,
    rgb: Bytes,
) -> None:
    """Colour flat pixels into rgb (3 bytes a pixel); see the module docstring."""
    prefer_512()
    segments = len(table) // SEGMENT  # a constant: numba compiles per table length
    for i in range(counts.size):
        value = smooth[i]
        value = value if (value > 0.0) & (value <= LARGEST) else 0.0
        where = math.sqrt(value) / cycle + offset
        where -= np.floor(where)
        where = where if where >= 0.0 else 0.0
        start, sr, sg, sb, cr, cg, cb = table[:SEGMENT]
        for k in range(1, segments):
            later = table[SEGMENT * k] <= where
            start = table[SEGMENT * k] if later else start
            sr = table[SEGMENT * k + 1] if later else sr
            sg = table[SEGMENT * k + 2] if later else sg
            sb = table[SEGMENT * k + 3] if later else sb
            cr = table[SEGMENT * k + 4] if later else cr
            cg = table[SEGMENT * k + 5] if later else cg
            cb = table[SEGMENT * k + 6] if later else cb
        along = where - start
        r = np.rint(sr * along + cr)
        g = np.rint(sg * along + cg)
        b = np.rint(sb * along + cb)
        b = 1.0 if (r == 0.0) & (g == 0.0) & (b == 0.0) else b  # black is for inside
        outside = counts[i] < max_iter
        rgb[3 * i] = np.uint8(r if outside else 0.0)
        rgb[3 * i + 1] = np.uint8(g if outside else 0.0)
        rgb[3 * i + 2] = np.uint8(b if outside else 0.0)


def colorize(counts: Counts, smooth: Floats, max_iter: int, chosen: Gradient) -> Bytes:
    """RGB (uint8, shape counts.shape + (3,)); the caller has checked the arguments."""
    rgb = np.empty((*counts.shape, 3), dtype=np.uint8)
    _colour(
        np.ascontiguousarray(counts).reshape(-1),
        np.ascontiguousarray(smooth, dtype=np.float64).reshape(-1),
        int(max_iter),
        segment_table(chosen),
        float(chosen.cycle),
        float(chosen.offset),
        rgb.reshape(-1),
    )
    return rgb
