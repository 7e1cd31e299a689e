"""The perturbation kernel: deep views in float64, around one reference orbit.

A pixel's orbit is written ``z_n = Z_m + dz_n``, where ``Z`` is the reference
(:mod:`.reference`, computed once in arbitrary precision) and ``dz`` the
pixel's difference from it, small enough for float64 to hold it to many
digits. Expanding ``z^2 + c`` gives the iteration of the difference::

    dz <- (2 Z_m + dz) dz + dc        (dc: the pixel's offset from the centre;
                                       0 for Julia, whose dz_0 is that offset)

Rebasing (Zhuoran's method): when ``|z_n| < |dz_n|`` (the pixel's orbit passes
nearer 0 than the reference's, where the difference would lose its digits), or
the reference has ended, the pixel moves to the base orbit, which starts at 0:
``dz <- z_n``, ``m <- 0``. So no glitch detection, no correction passes and no
second references: every pixel comes out right from one reference.

Past float64's exponent range (pixels narrower than ``2**SCALED_BELOW``) a
pixel starts *scaled*: ``dz = w * 2**E`` and ``dc = d * 2**E`` with one
exponent ``E`` per pixel, ``w`` renormalised as it grows, until ``dz`` is large
enough to be a plain float64 (it grows by about ``|2 Z|`` per iteration), after
which the plain loop goes on. Views down to 1e-10000 render this way.

Pixels go through LANES at a time, as in the float64 kernel (:mod:`.fast`):
between rounds of iterations (:mod:`.lanes`, vector code) the finished lanes
are recorded and refilled, so a slow pixel never holds up the fast ones: after
every round where pixels take few iterations, every other round elsewhere.

Counts follow the float64 kernels' definition (DESIGN.md): an escaped pixel's
count is the number of iterations it stayed within radius 2. Smooth values are
computed as theirs (the orbit carried on to ``|z|^2 > 2**32``, then
``m + 1 - log2(log2 |z_m|^2)``), from the pixel's full ``z`` once it has escaped,
by their own vector loop over a batch of escaped pixels.
Each pixel's values depend only on its own offset, the reference and the
request: any band split gives the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar, cast

import numba
import numpy as np
import numpy.typing as npt

from fractalq.fractal import depth
from fractalq.fractal.fast import (
    BATCH,
    _aligned,
    _finish,
    _prefer_512,
    _smooth_batch,
    _trailing_zeros,
)
from fractalq.fractal.lanes import DCI, DCR, DZI, DZR, LANES, K, M, perturbation_round
from fractalq.fractal.reference import Reference
from fractalq.fractal.request import RenderRequest

F = TypeVar("F", bound=Callable[..., Any])
Floats = npt.NDArray[np.float64]
Counts = npt.NDArray[np.int32]

# Pixels narrower than 2**SCALED_BELOW start scaled (their offsets, times the
# image's half-width, would come within reach of float64's smallest numbers).
SCALED_BELOW = -900
# A scaled pixel goes plain once its exponent E reaches PLAIN_FROM (|dz| then
# above about 2**-800, far from underflow); its w is renormalised by 2**-RESCALE
# whenever it passes 2**RESCALE.
PLAIN_FROM = -800
RESCALE = 64
SMOOTH_RADIUS_SQUARED = 2.0**32
SMOOTH_EXTRA_ITERATIONS = 64
# The lanes are looked at after one round (lanes.ROUND iterations) while the
# pixels recorded lately took fewer than this many iterations on average (a
# finished lane then waits fewer iterations for its next pixel), else after two
# (half the bookkeeping per iteration).
SHORT_BELOW = 64.0


def _compiled(function: F) -> F:
    return cast(F, numba.njit(cache=True, nogil=True)(function))


# The lanes (fractalq/fractal/lanes.py): LANES pixels in flight, and where each
# quantity lives in the lane array: [dz.re | dz.im | dc.re | dc.im | m (reference
# index) | k (iteration)]. The end of the orbit a lane follows is start_end or
# base_end, whichever m reaches: a Julia view's base orbit comes after its start
# orbit, so each orbit's indices stop short of the other's end.
IDLE = -1.0e18  # the k of a lane with no pixel: never done
NO_PIXEL = -1
IDLE_PIXEL = -2
# What _start found: the pixel goes on in a lane, escaped, or is inside.
GO_ON, ESCAPED, INSIDE = 0, 1, 2


@_compiled
def _start(
    orbit_re: Floats,
    orbit_im: Floats,
    start_end: int,
    base_start: int,
    base_end: int,
    ox: float,
    oy: float,
    exponent: int,
    julia: bool,
    max_iter: int,
) -> tuple[int, float, float, float, float, int, int, int]:
    """A pixel's first iterations, at offset (ox, oy) * 2**exponent from the centre.

    Runs the scaled iterations (see the module's docstring) while the pixel needs
    them, then the first plain one (the lanes test |z| <= 2 before iterating,
    which must not apply to z_0). Returns (what, dzr, dzi, dcr, dci, m, end, k):
    GO_ON with the plain state at iteration k >= 1; ESCAPED with z_k in (dzr, dzi);
    INSIDE.
    """
    # Offsets: the pixel's dz_0 (Julia) or dc (Mandelbrot), in units of 2**exponent.
    if julia:
        wr, wi, dr, di = ox, oy, 0.0, 0.0
    else:
        wr, wi, dr, di = 0.0, 0.0, ox, oy
    m = 0
    end = start_end
    k = 0  # the iteration: z_k = Z_m + dz
    # 2**E as a float (0.0 below 2**-1074, where ldexp must do the scaling), and
    # the size below which a Z may be as small as dz (|w| <= 2**RESCALE): only
    # then can the pixel rebase. Only the scaled iterations need them: ldexp is
    # a call into numba's C helpers, which a plain pixel (exponent 0) never makes.
    scale = near = 0.0
    if exponent < PLAIN_FROM:
        scale = math.ldexp(1.0, exponent)
        near = math.ldexp(1.0, exponent + RESCALE + 2)
    while exponent < PLAIN_FROM:
        zr = orbit_re[m]
        zi = orbit_im[m]
        if k > 0:
            if not zr * zr + zi * zi <= 4.0:  # |dz| < 2**-800 changes nothing here
                return ESCAPED, zr, zi, 0.0, 0.0, m, end, k
            if k == max_iter:
                return INSIDE, 0.0, 0.0, 0.0, 0.0, m, end, k
        # Rebase (see the module's docstring), with Z in units of 2**E.
        rebase = m == end
        if not rebase and k > 0 and abs(zr) < near and abs(zi) < near:
            sr = math.ldexp(zr, -exponent) + wr
            si = math.ldexp(zi, -exponent) + wi
            rebase = sr * sr + si * si < wr * wr + wi * wi
        if rebase:
            wr = math.ldexp(zr, -exponent) + wr
            wi = math.ldexp(zi, -exponent) + wi
            m = base_start
            end = base_end
            zr = 0.0
            zi = 0.0
        # w <- (2 Z 2**-E + w) w 2**E + d, the first product in plain units.
        if scale != 0.0:  # the same bits as ldexp: a power of two, correctly rounded
            sq_r = (wr * wr - wi * wi) * scale
            sq_i = (2.0 * wr * wi) * scale
        else:
            sq_r = math.ldexp(wr * wr - wi * wi, exponent)
            sq_i = math.ldexp(2.0 * wr * wi, exponent)
        nr = 2.0 * (zr * wr - zi * wi) + sq_r + dr
        ni = 2.0 * (zr * wi + zi * wr) + sq_i + di
        wr, wi = nr, ni
        m += 1
        k += 1
        if max(abs(wr), abs(wi)) > 2.0**RESCALE:
            wr = math.ldexp(wr, -RESCALE)
            wi = math.ldexp(wi, -RESCALE)
            dr = math.ldexp(dr, -RESCALE)
            di = math.ldexp(di, -RESCALE)
            exponent += RESCALE
            scale = math.ldexp(1.0, exponent)
            near = math.ldexp(1.0, exponent + RESCALE + 2)
    if exponent == 0:
        dzr, dzi, dcr, dci = wr, wi, dr, di
    else:
        dzr = math.ldexp(wr, exponent)
        dzi = math.ldexp(wi, exponent)
        dcr = math.ldexp(dr, exponent)
        dci = math.ldexp(di, exponent)
    if k == 0:
        zr = orbit_re[m]
        zi = orbit_im[m]
        fr = zr + dzr
        fi = zi + dzi
        if m == end or fr * fr + fi * fi < dzr * dzr + dzi * dzi:
            dzr, dzi = fr, fi
            m = base_start
            end = base_end
            zr = 0.0
            zi = 0.0
        tr = 2.0 * zr + dzr
        ti = 2.0 * zi + dzi
        nr = (tr * dzr - ti * dzi) + dcr
        dzi = (tr * dzi + ti * dzr) + dci
        dzr = nr
        m += 1
        k += 1
    return GO_ON, dzr, dzi, dcr, dci, m, end, k


@_compiled
def _smooth(
    fr: float, fi: float, k: int, cr: float, ci: float, max_iter: int
) -> tuple[float, float]:
    """An escaped z_k carried on to the smoothing radius: (m, |z_m|^2) for _finish."""
    mag = fr * fr + fi * fi
    smooth = float(k)
    for _ in range(SMOOTH_EXTRA_ITERATIONS):
        if not mag <= SMOOTH_RADIUS_SQUARED:
            break
        fr, fi = (fr * fr - fi * fi) + cr, (fr + fr) * fi + ci
        mag = fr * fr + fi * fi
        smooth += 1.0
    return smooth, mag


@_compiled
def _escape(
    orbit_re: Floats,
    orbit_im: Floats,
    orbit: Floats,
    start_end: int,
    base_start: int,
    base_end: int,
    ox: Floats,
    oy: Floats,
    exponent: int,
    julia: bool,
    c_re: float,
    c_im: float,
    max_iter: int,
    counts: Counts,
    smooth: Floats,
    magnitude: Floats,
) -> None:
    """Counts, and m and |z_m|^2 for the smooth values, of the pixels ox x oy (flat).

    Lanes are refilled as in the float64 kernel: between rounds, the finished
    lanes are recorded and given the next pixels, so no slow pixel holds up
    the others.
    """
    _prefer_512()
    width = ox.size
    total = width * oy.size
    limit = float(max_iter)
    lanes = _aligned(6 * LANES)
    plain_mandelbrot = exponent == 0 and not julia
    # The recorded pixels' iterations, a moving average over about 256 of them
    recent = SHORT_BELOW
    pixel = np.full(LANES, NO_PIXEL, np.int64)
    # Escaped points waiting for their smoothing iterations, done BATCH at a
    # time by the float64 kernel's vector loop (the same arithmetic as _smooth).
    bzr = np.empty(BATCH)
    bzi = np.empty(BATCH)
    bcr = np.empty(BATCH)
    bci = np.empty(BATCH)
    bk = np.empty(BATCH)
    where = np.empty(BATCH, np.int64)
    batched = 0
    nxt = 0
    idle = 0
    todo = (np.uint64(1) << np.uint64(LANES)) - np.uint64(1)
    while True:
        while todo:
            lane = np.int64(_trailing_zeros(todo))
            todo &= todo - np.uint64(1)
            p = pixel[lane]
            if p >= 0:  # record the lane's pixel
                k = lanes[K + lane]
                recent += (min(k, limit) - recent) * (1.0 / 256.0)
                m = np.uint64(lanes[M + lane])
                fr = orbit_re[m] + lanes[DZR + lane]
                fi = orbit_im[m] + lanes[DZI + lane]
                if k > limit or fr * fr + fi * fi <= 4.0:
                    counts[p] = max_iter
                    smooth[p] = limit
                    magnitude[p] = 16.0
                else:
                    counts[p] = np.int32(k) - 1
                    bzr[batched] = fr
                    bzi[batched] = fi
                    if julia:
                        bcr[batched], bci[batched] = c_re, c_im
                    else:
                        bcr[batched] = c_re + lanes[DCR + lane]
                        bci[batched] = c_im + lanes[DCI + lane]
                    bk[batched] = k
                    where[batched] = p
                    batched += 1
                    if batched == BATCH:
                        _smooth_batch(batched, bzr, bzi, bcr, bci, bk, where, smooth, magnitude)
                        batched = 0
            while True:  # give the lane the next pixel that needs iterating
                if nxt == total:
                    if p != IDLE_PIXEL:
                        idle += 1
                    # dz = dc = 0: the lane follows the reference's own orbit
                    # (rebasing at its end, so its reads stay within the orbit)
                    lanes[DZR + lane] = 0.0
                    lanes[DZI + lane] = 0.0
                    lanes[DCR + lane] = 0.0
                    lanes[DCI + lane] = 0.0
                    lanes[M + lane] = 0.0
                    lanes[K + lane] = IDLE
                    pixel[lane] = IDLE_PIXEL
                    break
                q = nxt
                nxt += 1
                if plain_mandelbrot:
                    # z_0 = 0 is the reference's own z_0 and is never tested:
                    # the lanes' first iteration is _start's, to the bit.
                    lanes[DZR + lane] = 0.0
                    lanes[DZI + lane] = 0.0
                    lanes[DCR + lane] = ox[q % width]
                    lanes[DCI + lane] = oy[q // width]
                    lanes[M + lane] = 0.0
                    lanes[K + lane] = 0.0
                    pixel[lane] = q
                    break
                what, dzr, dzi, dcr, dci, m0, _, k0 = _start(
                    orbit_re,
                    orbit_im,
                    start_end,
                    base_start,
                    base_end,
                    ox[q % width],
                    oy[q // width],
                    exponent,
                    julia,
                    max_iter,
                )
                if what == INSIDE:
                    counts[q] = max_iter
                    smooth[q] = limit
                    magnitude[q] = 16.0
                    continue
                if what == ESCAPED:  # in the scaled iterations: z_k = Z_m
                    counts[q] = k0 - 1
                    cr, ci = (c_re, c_im) if julia else (c_re + dcr, c_im + dci)
                    smooth[q], magnitude[q] = _smooth(dzr, dzi, k0, cr, ci, max_iter)
                    continue
                lanes[DZR + lane] = dzr
                lanes[DZI + lane] = dzi
                lanes[DCR + lane] = dcr
                lanes[DCI + lane] = dci
                lanes[M + lane] = m0
                lanes[K + lane] = k0
                pixel[lane] = q
                break
        if idle == LANES:
            _smooth_batch(batched, bzr, bzi, bcr, bci, bk, where, smooth, magnitude)
            break
        todo = perturbation_round(
            lanes, orbit, float(base_start), float(base_end), limit, float(start_end)
        )
        if recent >= SHORT_BELOW:  # a second round before looking at the lanes
            todo = perturbation_round(
                lanes, orbit, float(base_start), float(base_end), limit, float(start_end)
            )


def pixel_scale(request: RenderRequest) -> tuple[float, int]:
    """The pixel size as (mantissa in [1, 2), exponent): size = mantissa * 2**exponent."""
    exponent = math.floor(depth.pixel_log2(request.view_width, request.width))
    with depth.decimal_context():
        mantissa = float(Decimal(request.view_width) / request.width / Decimal(2) ** exponent)
    while mantissa >= 2.0:  # the logarithm's last digit, either way
        mantissa, exponent = mantissa / 2.0, exponent + 1
    while mantissa < 1.0:
        mantissa, exponent = mantissa * 2.0, exponent - 1
    return mantissa, exponent


def escape(
    request: RenderRequest, reference: Reference, row_start: int, row_end: int
) -> tuple[Counts, Floats]:
    """Counts and smooth values of rows row_start..row_end-1 of a deep view."""
    mantissa, exponent = pixel_scale(request)
    if exponent >= SCALED_BELOW:  # plain: offsets in units of 1
        mantissa, exponent = math.ldexp(mantissa, exponent), 0
    i = np.arange(request.width, dtype=np.float64)
    j = np.arange(row_start, row_end, dtype=np.float64)
    ox = (i + 0.5 - request.width / 2) * mantissa
    oy = -((j + 0.5 - request.height / 2) * mantissa)
    start, base = reference.start, reference.base
    if reference.julia:
        orbit = np.concatenate([start, base])
        base_start, base_end = start.size, start.size + base.size - 1
        c_re, c_im = request.c_re, request.c_im
    else:
        orbit = start
        base_start, base_end = 0, start.size - 1
        c_re, c_im = request.cx, request.cy
    rows = row_end - row_start
    counts = np.empty(rows * request.width, dtype=np.int32)
    smooth = np.empty(rows * request.width, dtype=np.float64)
    magnitude = np.empty(rows * request.width, dtype=np.float64)
    _escape(
        np.ascontiguousarray(orbit.real),
        np.ascontiguousarray(orbit.imag),
        np.ascontiguousarray(orbit).view(np.float64),  # (re, im) pairs, for the lanes
        start.size - 1,
        base_start,
        base_end,
        ox,
        oy,
        exponent,
        reference.julia,
        c_re,
        c_im,
        request.max_iter,
        counts,
        smooth,
        magnitude,
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        np.log2(magnitude, out=magnitude)
        np.log2(magnitude, out=magnitude)
    _finish(counts, smooth, magnitude, request.max_iter)
    return counts.reshape(rows, request.width), smooth.reshape(rows, request.width)
