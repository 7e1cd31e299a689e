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

Counts follow the float64 kernels' definition (DESIGN.md): an escaped pixel's
count is the number of iterations it stayed within radius 2. Smooth values are
computed as theirs (the orbit carried on to ``|z|^2 > 2**32``, then
``m + 1 - log2(log2 |z_m|^2)``), from the pixel's full ``z`` once it has escaped.
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
from fractalq.fractal.fast import _finish
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


def _compiled(function: F) -> F:
    return cast(F, numba.njit(cache=True, nogil=True)(function))


@_compiled
def _pixel(
    orbit_re: Floats,
    orbit_im: Floats,
    start_end: int,
    base_start: int,
    base_end: int,
    ox: float,
    oy: float,
    exponent: int,
    julia: bool,
    c_re: float,
    c_im: float,
    max_iter: int,
) -> tuple[int, float, float]:
    """One pixel at offset (ox, oy) * 2**exponent from the centre: (count, m, |z_m|^2).

    m and |z_m|^2 feed the smooth value (see :func:`fractalq.fractal.fast._finish`);
    an inside pixel returns (max_iter, max_iter, 16.0).
    """
    limit = float(max_iter)
    # Offsets: the pixel's dz_0 (Julia) or dc (Mandelbrot), in units of 2**exponent.
    if julia:
        wr, wi, dr, di = ox, oy, 0.0, 0.0
    else:
        wr, wi, dr, di = 0.0, 0.0, ox, oy
    m = 0
    end = start_end
    k = 0  # the iteration: z_k = Z_m + dz
    scaled = exponent < PLAIN_FROM
    # ---- scaled: dz = w 2**E, dc = d 2**E, while dz is beyond float64's reach
    while scaled:
        zr = orbit_re[m]
        zi = orbit_im[m]
        if k > 0:
            if not zr * zr + zi * zi <= 4.0:  # |dz| < 2**-800 changes nothing here
                return k - 1, float(k), zr * zr + zi * zi
            if k == max_iter:
                return max_iter, limit, 16.0
        # Rebase (see the module's docstring), with Z in units of 2**E.
        sr = math.ldexp(zr, -exponent) + wr
        si = math.ldexp(zi, -exponent) + wi
        if m == end or (k > 0 and sr * sr + si * si < wr * wr + wi * wi):
            wr, wi = sr, si
            m = base_start
            end = base_end
            zr = 0.0
            zi = 0.0
        # w <- (2 Z 2**-E + w) w 2**E + d, the first product in plain units.
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
            scaled = exponent < PLAIN_FROM
    dzr = math.ldexp(wr, exponent)
    dzi = math.ldexp(wi, exponent)
    dcr = math.ldexp(dr, exponent)
    dci = math.ldexp(di, exponent)
    # ---- plain float64
    while True:
        zr = orbit_re[m]
        zi = orbit_im[m]
        fr = zr + dzr
        fi = zi + dzi
        mag = fr * fr + fi * fi
        if k > 0:
            if not mag <= 4.0:  # nan too: an overflowed orbit has escaped
                break
            if k == max_iter:
                return max_iter, limit, 16.0
        if m == end or mag < dzr * dzr + dzi * dzi:
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
    # Escaped at iteration k: carry the full z on to the smoothing radius.
    if julia:
        cr, ci = c_re, c_im
    else:
        cr, ci = c_re + dcr, c_im + dci  # c_re, c_im: the centre
    smooth = float(k)
    for _ in range(SMOOTH_EXTRA_ITERATIONS):
        if not mag <= SMOOTH_RADIUS_SQUARED:
            break
        fr, fi = (fr * fr - fi * fi) + cr, (fr + fr) * fi + ci
        mag = fr * fr + fi * fi
        smooth += 1.0
    return k - 1, smooth, mag


@_compiled
def _escape(
    orbit_re: Floats,
    orbit_im: Floats,
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
    width = ox.size
    for row in range(oy.size):
        for col in range(width):
            p = row * width + col
            count, sm, mag = _pixel(
                orbit_re,
                orbit_im,
                start_end,
                base_start,
                base_end,
                ox[col],
                oy[row],
                exponent,
                julia,
                c_re,
                c_im,
                max_iter,
            )
            counts[p] = count
            smooth[p] = sm
            magnitude[p] = mag


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
