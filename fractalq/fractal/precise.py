"""The few pixels float64 cannot count exactly: perturbation in double-double.

float64 rounds a pixel's difference ``dz`` to about ``2**-53`` of itself at every
iteration, which moves the pixel by that fraction of its offset from the
centre. Near the boundary of a deep view a few pixels (a few in a thousand, in
the seahorse valley at 1e-30) are so sensitive that this moves their count:
their orbits pass close to 0 after thousands of iterations, where a shift far
below a pixel decides when they escape. :mod:`.perturb` finds them by their
sensitivity and renders them again here, with every quantity held as an
unevaluated sum of two float64 (``hi + lo``, about 106 bits; Dekker's and
Knuth's error-free transformations, the products by ``llvm.fma``) and the
reference to the same precision (:attr:`Reference.lo <.reference.Reference>`).

No skipping here: a skip's error is relative to ``dz`` too. So these pixels
cost every iteration, a few dozen nanoseconds each.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba
import numpy as np
import numpy.typing as npt

from fractalq.fractal.depth import PLAIN_FROM, RESCALE
from fractalq.fractal.escape_round import SMOOTH_RADIUS_SQUARED
from fractalq.fractal.intrinsics import fma
from fractalq.fractal.scheduler import SMOOTH_EXTRA_ITERATIONS

F = TypeVar("F", bound=Callable[..., Any])
Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Counts = npt.NDArray[np.int32]

GO_ON, ESCAPED, INSIDE = 0, 1, 2


def _inlined(function: F) -> F:
    return cast(F, numba.njit(cache=True, nogil=True, inline="always")(function))


@_inlined
def _two_sum(a: float, b: float) -> tuple[float, float]:
    s = a + b
    v = s - a
    return s, (a - (s - v)) + (b - v)


@_inlined
def _fast_two_sum(a: float, b: float) -> tuple[float, float]:  # |a| >= |b|
    s = a + b
    return s, b - (s - a)


@_inlined
def _add(ah: float, al: float, bh: float, bl: float) -> tuple[float, float]:
    """(ah + al) + (bh + bl), accurately (both sums' errors kept)."""
    sh, sl = _two_sum(ah, bh)
    th, tl = _two_sum(al, bl)
    sl += th
    sh, sl = _fast_two_sum(sh, sl)
    sl += tl
    return _fast_two_sum(sh, sl)


@_inlined
def _mul(ah: float, al: float, bh: float, bl: float) -> tuple[float, float]:
    """(ah + al) (bh + bl)."""
    p = ah * bh
    e = fma(ah, bh, -p)
    e = fma(ah, bl, fma(al, bh, e))
    return _fast_two_sum(p, e)


@_inlined
def _sum(ah: float, al: float, bh: float, bl: float) -> tuple[float, float]:
    """(ah + al) + (bh + bl), with one error-free sum: enough where the result is
    not far smaller than both (no catastrophic cancellation to keep)."""
    s, e = _two_sum(ah, bh)
    return _fast_two_sum(s, e + (al + bl))


@_inlined
def _dot(
    ah: float, al: float, bh: float, bl: float, ch: float, cl: float, dh: float, dl: float,
    eh: float, el: float,
) -> tuple[float, float]:  # fmt: skip
    """a b - c d + e, each product split error-free by an fma, the small terms summed
    in float64: the error is about 2**-106 of the largest term."""
    p = ah * bh
    q = ch * dh
    low = (fma(ah, bh, -p) + fma(ah, bl, al * bh)) - (fma(ch, dh, -q) + fma(ch, dl, cl * dh))
    s, e = _two_sum(p, -q)
    s, f = _two_sum(s, eh)
    return _fast_two_sum(s, (low + el) + (e + f))


@numba.njit(cache=True, nogil=True)
def escape(
    orbit_hi: Floats, orbit_lo: Floats, start_end: int, base_start: int, base_end: int,
    dzr: float, dzrl: float, dzi: float, dzil: float,
    dcr: float, dcrl: float, dci: float, dcil: float, m: int, k: int, max_iter: int,
) -> tuple[int, int, float, float]:  # fmt: skip
    """One pixel's iterations from z_k = Z_m + dz (both in hi + lo parts; the
    orbit as (re, im) pairs), as :mod:`.perturb` iterates them, in double-double.

    Returns (ESCAPED or INSIDE, k, z_k at escape as float64).
    """
    end = start_end if m <= start_end else base_end
    while True:
        zr, zrl = orbit_hi[2 * m], orbit_lo[2 * m]
        zi, zil = orbit_hi[2 * m + 1], orbit_lo[2 * m + 1]
        fr = zr + dzr  # the tests need no more digits than this
        fi = zi + dzi
        mag = fr * fr + fi * fi
        if k > 0 and not mag <= 4.0:
            return ESCAPED, k, fr, fi
        if k >= max_iter:
            return INSIDE, k, fr, fi
        if mag < dzr * dzr + dzi * dzi or m == end:  # rebase (perturb.py)
            dzr, dzrl = _add(zr, zrl, dzr, dzrl)
            dzi, dzil = _add(zi, zil, dzi, dzil)
            m, end = base_start, base_end
            zr, zrl = orbit_hi[2 * m], orbit_lo[2 * m]
            zi, zil = orbit_hi[2 * m + 1], orbit_lo[2 * m + 1]
        # dz <- (2 Z + dz) dz + dc
        tr, trl = _sum(2.0 * zr, 2.0 * zrl, dzr, dzrl)
        ti, til = _sum(2.0 * zi, 2.0 * zil, dzi, dzil)
        nr, nrl = _dot(tr, trl, dzr, dzrl, ti, til, dzi, dzil, dcr, dcrl)
        dzi, dzil = _dot(tr, trl, dzi, dzil, -ti, -til, dzr, dzrl, dci, dcil)
        dzr, dzrl = nr, nrl
        m += 1
        k += 1


@numba.njit(cache=True, nogil=True)
def _start_scaled(
    orbit_hi: Floats, orbit_lo: Floats, start_end: int, base_start: int, base_end: int,
    wr: float, wrl: float, wi: float, wil: float,
    dr: float, drl: float, di: float, dil: float, exponent: int, max_iter: int,
) -> tuple[int, int, int, float, float, float, float, float, float, float, float]:  # fmt: skip
    """A pixel's first iterations while its difference is below float64's range:
    ``dz = w 2**exponent`` and ``dc = d 2**exponent``, as perturb._start_scaled
    (no skips). Returns (what, m, k, dz, dc in plain units, or z_k at escape)."""
    m = 0
    k = 0
    end = start_end
    near = math.ldexp(1.0, exponent + RESCALE + 2)
    while exponent < PLAIN_FROM:
        zr, zrl = orbit_hi[2 * m], orbit_lo[2 * m]
        zi, zil = orbit_hi[2 * m + 1], orbit_lo[2 * m + 1]
        if k > 0:
            if not zr * zr + zi * zi <= 4.0:  # |dz| < 2**-800 changes nothing here
                return ESCAPED, m, k, zr, 0.0, zi, 0.0, 0.0, 0.0, 0.0, 0.0
            if k >= max_iter:
                return INSIDE, m, k, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
        rebase = m == end
        if not rebase and k > 0 and abs(zr) < near and abs(zi) < near:
            sr = math.ldexp(zr, -exponent) + wr
            si = math.ldexp(zi, -exponent) + wi
            rebase = sr * sr + si * si < wr * wr + wi * wi
        if rebase:
            wr, wrl = _add(math.ldexp(zr, -exponent), math.ldexp(zrl, -exponent), wr, wrl)
            wi, wil = _add(math.ldexp(zi, -exponent), math.ldexp(zil, -exponent), wi, wil)
            m, end = base_start, base_end
            zr = zrl = zi = zil = 0.0
        # w <- 2 Z w + w^2 2**E + d, the square in plain units (far below the rest)
        sr = math.ldexp(wr * wr - wi * wi, exponent)
        si = math.ldexp(2.0 * wr * wi, exponent)
        nr, nrl = _dot(2.0 * zr, 2.0 * zrl, wr, wrl, 2.0 * zi, 2.0 * zil, wi, wil, dr, drl)
        ni, nil = _dot(2.0 * zr, 2.0 * zrl, wi, wil, -2.0 * zi, -2.0 * zil, wr, wrl, di, dil)
        wr, wrl = _add(nr, nrl, sr, 0.0)
        wi, wil = _add(ni, nil, si, 0.0)
        m += 1
        k += 1
        while max(abs(wr), abs(wi)) > 2.0**RESCALE:
            wr, wrl, wi, wil = _scale(wr, wrl, wi, wil, -RESCALE)
            dr, drl, di, dil = _scale(dr, drl, di, dil, -RESCALE)
            exponent += RESCALE
            near = math.ldexp(1.0, exponent + RESCALE + 2)
    wr, wrl, wi, wil = _scale(wr, wrl, wi, wil, exponent)
    dr, drl, di, dil = _scale(dr, drl, di, dil, exponent)
    return GO_ON, m, k, wr, wrl, wi, wil, dr, drl, di, dil


@_inlined
def _scale(a: float, b: float, c: float, d: float, by: int) -> tuple[float, float, float, float]:
    """A complex double-double times 2**by."""
    return math.ldexp(a, by), math.ldexp(b, by), math.ldexp(c, by), math.ldexp(d, by)


@numba.njit(cache=True, nogil=True)
def escape_pixels(
    orbit_hi: Floats, orbit_lo: Floats, start_end: int, base_start: int, base_end: int,
    ox: Floats, oy: Floats, pixels: Ints, size_hi: float, size_lo: float, exponent: int,
    julia: bool, c_re: float, c_im: float, max_iter: int,
    counts: Counts, smooth: Floats, magnitude: Floats,
) -> None:  # fmt: skip
    """Counts, m and |z_m|^2 for the smooth values of the pixels ``pixels`` (flat
    indices into the grid ox x oy of offsets in pixels; a pixel is
    ``(size_hi + size_lo) 2**exponent`` wide), by :func:`escape`."""
    width = ox.size
    for p in pixels:
        xr, xrl = _mul(ox[p % width], 0.0, size_hi, size_lo)
        yi, yil = _mul(oy[p // width], 0.0, size_hi, size_lo)
        # The offset is the pixel's dz_0 (Julia) or its dc (Mandelbrot).
        wr, wrl, wi, wil = (xr, xrl, yi, yil) if julia else (0.0, 0.0, 0.0, 0.0)
        dr, drl, di, dil = (0.0, 0.0, 0.0, 0.0) if julia else (xr, xrl, yi, yil)
        m = k = 0
        what = GO_ON
        if exponent != 0:
            what, m, k, wr, wrl, wi, wil, dr, drl, di, dil = _start_scaled(
                orbit_hi, orbit_lo, start_end, base_start, base_end,
                wr, wrl, wi, wil, dr, drl, di, dil, exponent, max_iter,
            )  # fmt: skip
        fr, fi = wr, wi  # z_k, if the scaled start escaped
        if what == GO_ON:
            what, k, fr, fi = escape(
                orbit_hi, orbit_lo, start_end, base_start, base_end,
                wr, wrl, wi, wil, dr, drl, di, dil, m, k, max_iter,
            )  # fmt: skip
        cr, ci = (c_re, c_im) if julia else (c_re + dr, c_im + di)
        if what == INSIDE:
            counts[p] = max_iter
            smooth[p] = float(max_iter)
            magnitude[p] = 16.0
        else:
            counts[p] = k - 1
            smooth[p], magnitude[p] = _smooth(fr, fi, k, cr, ci)


@numba.njit(cache=True, nogil=True)
def _smooth(fr: float, fi: float, k: int, cr: float, ci: float) -> tuple[float, float]:
    """An escaped z_k carried on to the smoothing radius: (m, |z_m|^2), as the
    lane scheduler's batch loop carries it (scheduler.smooth_batch)."""
    mag = fr * fr + fi * fi
    smooth = float(k)
    for _ in range(SMOOTH_EXTRA_ITERATIONS):
        if not mag <= SMOOTH_RADIUS_SQUARED:
            break
        fr, fi = (fr * fr - fi * fi) + cr, (fr + fr) * fi + ci
        mag = fr * fr + fi * fi
        smooth += 1.0
    return smooth, mag
