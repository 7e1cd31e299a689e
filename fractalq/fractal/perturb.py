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

Skipping: while ``dz`` is small next to ``Z`` the iteration is nearly linear,
and :mod:`.bla`'s table applies many iterations at once. Its error is bounded
relative to ``dz`` (``eps``); so is float64's own rounding (a few units of
``2**-53`` an iteration).

Exact counts: such an error becomes a shift of the pixel's position by that
fraction of its offset from the centre, which changes its count only where
the count changes over so small a shift: the *sensitivity* ``S = |dz_n/dc| |dc|``
(``|dz_n/dz_0| |dz_0|`` for Julia), carried along each pixel's orbit (skips
included) and read when it ends, says where. A pixel is rendered with the
coarsest ``eps`` of the table first; one whose ``S * eps`` is above
:data:`SENSITIVE` is rendered again with the next finer one, and one too
sensitive even for float64 with twice its digits (:mod:`.precise`).

Past float64's exponent range (pixels narrower than ``2**SCALED_BELOW``) a
pixel starts *scaled*: ``dz = w * 2**E`` and ``dc = d * 2**E`` with one
exponent ``E`` per pixel, ``w`` renormalised as it grows, until ``dz`` is large
enough to be a plain float64 (it grows by about ``|2 Z|`` per iteration, or a
skip's ``|A|``), after which the plain loop goes on. Views down to 1e-10000
render this way.

Counts follow the float64 kernels' definition (fractal/kernels.py): an escaped pixel's
count is the number of iterations it stayed within radius 2. Smooth values are
computed as theirs (the orbit carried on to ``|z|^2 > 2**32``, then
``m + 1 - log2(log2 |z_m|^2)``), from the pixel's full ``z`` once it has escaped,
by the lane scheduler's vector loop over a batch of escaped pixels (:mod:`.scheduler`).
Each pixel's values depend only on its own offset, the reference and the
request: any band split gives the same bytes.
"""

from __future__ import annotations

import math
from decimal import Decimal

import numpy as np
import numpy.typing as npt

from fractalq.fractal import bla, depth, precise, scheduler
from fractalq.fractal.depth import PLAIN_FROM, RESCALE, SCALED_BELOW
from fractalq.fractal.intrinsics import fma, trailing_zeros
from fractalq.fractal.jit import compiled, inlined
from fractalq.fractal.lanes import (
    DCI,
    DCR,
    DERI,
    DERR,
    DZI,
    DZR,
    FIELDS,
    LANES,
    ROUND,
    G,
    K,
    M,
    perturbation_round,
)  # fmt: skip
from fractalq.fractal.reference import Reference
from fractalq.fractal.request import RenderRequest
from fractalq.fractal.scheduler import BATCH, IDLE_PIXEL, NO_PIXEL

Floats = npt.NDArray[np.float64]
Counts = npt.NDArray[np.int32]
Ints = npt.NDArray[np.int64]

# A pixel whose sensitivity times the relative error of its render is above
# this is rendered again more finely (see the module's docstring).
SENSITIVE = 2.0**-4
# What a pixel's scalar iterations ended with: it goes on (in the lanes), it
# escaped, or it is inside.
GO_ON, ESCAPED, INSIDE = 0, 1, 2
# A skip is worth leaving the lanes for when it covers at least two rounds of
# iterations (2 lanes.ROUND = 2**WORTH_LEVEL): a lane asks for one of that
# length, and a pixel whose plain steps and skips shorter than a round in a row
# reach PATIENCE (enough to reach the next index a long skip can start from)
# goes back to the lanes. A scalar step costs about three of the lanes' (in the
# seahorse valley at 1e-30 to 1e-10, asking for skips of one round took 12%
# longer). Without PATIENCE, the orbit of an inside pixel passing near 0 every
# few iterations (which cuts every skip short there) is skipped 2-4 iterations
# at a time in scalar code, twice as slow as the lanes.
WORTH_LEVEL = 4
PATIENCE = 2**WORTH_LEVEL - 1


@inlined
def _node(
    anchors: Ints, ends: Ints, levels: Ints, min_level: int, m: int, k: int, max_iter: int,
    d2: float, exponent: int, column: int, nodes: Floats,
) -> tuple[int, int]:  # fmt: skip
    """The row of the longest skip valid at (m, k) for |dz|^2 = d2 (in units of
    2**(2 exponent)), and its length; (-1, 0) if none. (_advance has its own
    copy, written out: see there.)"""
    s = 0 if m <= ends[0] else 1
    rel = m - anchors[s]
    if rel < 0 or m >= ends[s]:
        return -1, 0
    top = levels.shape[1] - 2
    j = top if rel == 0 else min(int(trailing_zeros(np.int64(rel))), top)
    while j >= min_level:
        row = levels[s, j] + (rel >> j)
        if row < levels[s, j + 1]:
            radius = nodes[row, bla.RADII + column]
            if exponent != 0:
                radius = math.ldexp(radius, -exponent)
            if d2 < radius * radius and k + (1 << j) <= max_iter:
                return row, 1 << j
        j -= 1
    return -1, 0


@inlined
def _linear(
    ar: float, ai: float, br: float, bi: float, xr: float, xi: float, yr: float, yi: float
) -> tuple[float, float]:
    """A x + B y, fused as the lanes fuse."""
    return (
        fma(ar, xr, fma(-ai, xi, fma(br, yr, -(bi * yi)))),
        fma(ar, xi, fma(ai, xr, fma(br, yi, bi * yr))),
    )


@inlined
def _apply(
    nodes: Floats, row: int, xr: float, xi: float, yr: float, yi: float
) -> tuple[float, float]:
    """A x + B y for the node at ``row`` (_start_scaled's: its pixels are few)."""
    return _linear(
        nodes[row, bla.AR], nodes[row, bla.AI], nodes[row, bla.BR], nodes[row, bla.BI],
        xr, xi, yr, yi,
    )  # fmt: skip


@compiled
def _advance(
    orbit_re: Floats, orbit_im: Floats, start_end: int, base_start: int, base_end: int,
    anchors: Ints, ends: Ints, levels: Ints, min_level: int, nodes: Floats, column: int,
    dzr: float, dzi: float, dcr: float, dci: float, derr: float, deri: float, g: float,
    m: int, k: int, max_iter: int, patience: int,
) -> tuple[int, int, int, float, float, float, float]:  # fmt: skip
    """A plain pixel's iterations from z_k = Z_m + dz, skipping where it can.

    Returns (what, m, k, dz or z_k at escape, derivative): GO_ON once it has
    taken ``patience`` plain steps or short skips in a row (the lanes then take
    it on), ESCAPED or INSIDE. The derivative (see the module's docstring) goes
    ``der <- 2 z der + g``, ``g = |dc|`` (Mandelbrot) or 0 (Julia), and
    ``der <- A der + B g`` in a skip. The plain step is the lanes' (lanes.py),
    to the bit.
    """
    end = start_end if m <= start_end else base_end
    steps = 0
    top = levels.shape[1] - 2
    while True:
        zr = orbit_re[m]
        zi = orbit_im[m]
        fr = zr + dzr
        fi = zi + dzi
        mag = fr * fr + fi * fi
        if k > 0 and not mag <= 4.0:  # false for nan: escaped
            return ESCAPED, m, k, fr, fi, derr, deri
        if k >= max_iter:
            return INSIDE, m, k, fr, fi, derr, deri
        d2 = fma(dzr, dzr, dzi * dzi)
        if mag < d2 or m == end:  # rebase: z is the new difference, from Z = 0
            dzr, dzi = fr, fi
            m, end = base_start, base_end
            zr = orbit_re[m]
            zi = orbit_im[m]
        elif nodes.shape[0] > 0:
            # _node, written out: an inlined function taking the arrays counts
            # references to each of them at every call, which cost more than
            # the step itself.
            row, length = -1, 0
            s = 0 if m <= ends[0] else 1
            rel = m - anchors[s]
            if rel >= 0 and m < ends[s]:
                j = top if rel == 0 else min(int(trailing_zeros(np.int64(rel))), top)
                while j >= min_level:
                    at = levels[s, j] + (rel >> j)
                    if at < levels[s, j + 1]:
                        radius = nodes[at, bla.RADII + column]
                        if d2 < radius * radius and k + (1 << j) <= max_iter:
                            row, length = at, 1 << j
                            break
                    j -= 1
            if row >= 0:
                ar, ai = nodes[row, bla.AR], nodes[row, bla.AI]
                br, bi = nodes[row, bla.BR], nodes[row, bla.BI]
                dzr, dzi = _linear(ar, ai, br, bi, dzr, dzi, dcr, dci)
                derr, deri = _linear(ar, ai, br, bi, derr, deri, g, 0.0)
                m += length
                k += length
                steps = 0 if length >= ROUND else steps + 1
                if steps > patience:
                    return GO_ON, m, k, dzr, dzi, derr, deri
                continue
        if steps == patience and k > 0:
            return GO_ON, m, k, dzr, dzi, derr, deri
        tr = 2.0 * fr
        ti = 2.0 * fi
        derr, deri = fma(tr, derr, fma(-ti, deri, g)), fma(tr, deri, ti * derr)
        tr = fma(2.0, zr, dzr)
        ti = fma(2.0, zi, dzi)
        dzr, dzi = fma(dzr, tr, fma(-ti, dzi, dcr)), fma(dzi, tr, fma(ti, dzr, dci))
        m += 1
        k += 1
        steps += 1


@compiled
def _start_scaled(
    orbit_re: Floats, orbit_im: Floats, start_end: int, base_start: int, base_end: int,
    anchors: Ints, ends: Ints, levels: Ints, min_level: int, nodes: Floats, column: int,
    ox: float, oy: float, exponent: int, julia: bool, max_iter: int,
) -> tuple[int, int, int, float, float, float, float, float, float, float]:  # fmt: skip
    """A pixel at offset (ox, oy) * 2**exponent from the centre, while its
    difference is below float64's plain range (see the module's docstring).

    Returns (what, m, k, dzr, dzi, dcr, dci, derr, deri, g) in plain units:
    what is GO_ON with the state to go on from in _advance, or ESCAPED with z_k in
    (dzr, dzi), or INSIDE.
    """
    # Offsets in units of 2**exponent: w (the difference), d (dc), and the
    # derivative's, which scale alike.
    if julia:
        wr, wi, dr, di = ox, oy, 0.0, 0.0
        vr, vi, h = math.hypot(ox, oy), 0.0, 0.0
    else:
        wr, wi, dr, di = 0.0, 0.0, ox, oy
        vr, vi, h = 0.0, 0.0, math.hypot(ox, oy)
    m = 0
    end = start_end
    k = 0  # the iteration: z_k = Z_m + dz
    # 2**E as a float (0.0 below 2**-1074, where ldexp must do the scaling), and
    # the size below which a Z may be as small as dz (|w| <= 2**RESCALE): only
    # then can the pixel rebase.
    scale = math.ldexp(1.0, exponent)
    near = math.ldexp(1.0, exponent + RESCALE + 2)
    while exponent < PLAIN_FROM:
        zr = orbit_re[m]
        zi = orbit_im[m]
        if k > 0:
            if not zr * zr + zi * zi <= 4.0:  # |dz| < 2**-800 changes nothing here
                return ESCAPED, m, k, zr, zi, 0.0, 0.0, 0.0, 0.0, 0.0
            if k >= max_iter:
                return INSIDE, m, k, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
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
        elif nodes.shape[0] > 0:
            row, length = _node(
                anchors, ends, levels, min_level, m, k, max_iter, wr * wr + wi * wi,
                exponent, column, nodes,
            )  # fmt: skip
            if row >= 0:
                wr, wi = _apply(nodes, row, wr, wi, dr, di)
                vr, vi = _apply(nodes, row, vr, vi, h, 0.0)
                m += length
                k += length
                while max(abs(wr), abs(wi)) > 2.0**RESCALE:  # a skip may grow w a lot
                    exponent, scale, near, wr, wi, dr, di, vr, vi, h = _rescale(
                        exponent, wr, wi, dr, di, vr, vi, h
                    )
                continue
        # w <- (2 Z 2**-E + w) w 2**E + d, the first product in plain units.
        if scale != 0.0:  # the same bits as ldexp: a power of two, correctly rounded
            sq_r = (wr * wr - wi * wi) * scale
            sq_i = (2.0 * wr * wi) * scale
        else:
            sq_r = math.ldexp(wr * wr - wi * wi, exponent)
            sq_i = math.ldexp(2.0 * wr * wi, exponent)
        # The derivative's z is Z: |dz| < 2**-800 changes nothing next to it.
        vr, vi = 2.0 * (zr * vr - zi * vi) + h, 2.0 * (zr * vi + zi * vr)
        nr = 2.0 * (zr * wr - zi * wi) + sq_r + dr
        ni = 2.0 * (zr * wi + zi * wr) + sq_i + di
        wr, wi = nr, ni
        m += 1
        k += 1
        if max(abs(wr), abs(wi)) > 2.0**RESCALE:
            exponent, scale, near, wr, wi, dr, di, vr, vi, h = _rescale(
                exponent, wr, wi, dr, di, vr, vi, h
            )
    return (
        GO_ON, m, k, math.ldexp(wr, exponent), math.ldexp(wi, exponent),
        math.ldexp(dr, exponent), math.ldexp(di, exponent),
        math.ldexp(vr, exponent), math.ldexp(vi, exponent), math.ldexp(h, exponent),
    )  # fmt: skip


@inlined
def _rescale(
    exponent: int, wr: float, wi: float, dr: float, di: float, vr: float, vi: float, h: float
) -> tuple[int, float, float, float, float, float, float, float, float, float]:
    """Everything in units of 2**exponent, moved to units of 2**(exponent + RESCALE)."""
    exponent += RESCALE
    return (
        exponent, math.ldexp(1.0, exponent), math.ldexp(1.0, exponent + RESCALE + 2),
        math.ldexp(wr, -RESCALE), math.ldexp(wi, -RESCALE),
        math.ldexp(dr, -RESCALE), math.ldexp(di, -RESCALE),
        math.ldexp(vr, -RESCALE), math.ldexp(vi, -RESCALE), math.ldexp(h, -RESCALE),
    )  # fmt: skip


@compiled
def _hints(
    anchors: Ints, ends: Ints, levels: Ints, min_level: int, nodes: Floats, column: int,
    size: int,
) -> Floats:  # fmt: skip
    """For every orbit index m, the squared radius of the table's skip of level
    ``min_level`` at m or at the next index that has one: a lane whose |dz|^2 is
    below it goes to _advance (lanes.py)."""
    hint = np.zeros(size)
    if nodes.shape[0] == 0:
        return hint
    for s in range(anchors.size):
        first = levels[s, min_level]
        for q in range(levels[s, min_level + 1] - first):
            radius = nodes[first + q, bla.RADII + column]
            at = anchors[s] + (q << min_level)
            for m in range(max(at - (1 << min_level) + 1, 0), at + 1):
                hint[m] = radius * radius
    return hint


@inlined
def _begin(
    orbit_re: Floats, orbit_im: Floats, start_end: int, base_start: int, base_end: int,
    anchors: Ints, ends: Ints, levels: Ints, min_level: int, nodes: Floats, column: int,
    x: float, y: float, exponent: int, julia: bool, max_iter: int,
) -> tuple[int, int, int, float, float, float, float, float, float, float]:  # fmt: skip
    """A pixel's state at iteration 0, or after its scaled start (_start_scaled)."""
    if exponent != 0:
        return _start_scaled(
            orbit_re, orbit_im, start_end, base_start, base_end, anchors, ends, levels,
            min_level, nodes, column, x, y, exponent, julia, max_iter,
        )  # fmt: skip
    if julia:
        return GO_ON, 0, 0, x, y, 0.0, 0.0, math.hypot(x, y), 0.0, 0.0
    return GO_ON, 0, 0, 0.0, 0.0, x, y, 0.0, 0.0, math.hypot(x, y)


@compiled
def _escape(
    orbit_re: Floats, orbit_im: Floats, start_end: int, base_start: int, base_end: int,
    anchors: Ints, ends: Ints, levels: Ints, min_level: int, nodes: Floats, column: int,
    ox: Floats, oy: Floats, pixels: Ints, exponent: int, julia: bool,
    c_re: float, c_im: float, max_iter: int,
    counts: Counts, smooth: Floats, magnitude: Floats, sensitivity: Floats,
) -> None:  # fmt: skip
    """Counts, m and |z_m|^2 for the smooth values, and the sensitivity of the
    pixels ``pixels`` (flat indices into the grid ox x oy).

    Pixels go through LANES at a time: the lanes' rounds (lanes.py, vector code)
    take the plain steps; between rounds the finished lanes are retired and
    refilled (scheduler.py), and the lanes that could skip are skipped here, so a slow pixel
    never holds up the fast ones. Where a pixel's rounds fall depends only on
    the pixel (a round is always ROUND iterations, and every lane is looked at
    after every round), so its values do not depend on its neighbours.
    """
    width = ox.size
    limit = float(max_iter)
    orbit = np.empty(2 * orbit_re.size)  # (re, im) pairs, for the lanes
    orbit[0::2] = orbit_re
    orbit[1::2] = orbit_im
    hint = _hints(anchors, ends, levels, max(min_level, WORTH_LEVEL), nodes, column, orbit_re.size)
    patience = max(PATIENCE, (1 << min_level) - 1)
    state = scheduler.aligned(FIELDS * LANES)
    pixel = np.full(LANES, NO_PIXEL, np.int64)
    batch, where = scheduler.new_batch()
    batched = 0
    nxt = 0
    idle = 0
    todo = scheduler.every_lane(LANES)
    done = todo
    while True:
        while todo:
            lane, todo = scheduler.take_lane(todo)
            p = pixel[lane]
            what = GO_ON
            if p >= 0:
                m = int(state[M + lane])
                k = int(state[K + lane])
                dzr, dzi = state[DZR + lane], state[DZI + lane]
                derr, deri = state[DERR + lane], state[DERI + lane]
                dcr, dci = state[DCR + lane], state[DCI + lane]
                # A finished lane's state is its end; a skipping lane's goes on here.
                what, m, k, dzr, dzi, derr, deri = _advance(
                    orbit_re, orbit_im, start_end, base_start, base_end, anchors, ends,
                    levels, min_level, nodes, column, dzr, dzi, dcr, dci, derr, deri,
                    state[G + lane], m, k, max_iter,
                    0 if done & (np.uint64(1) << np.uint64(lane)) else patience,
                )  # fmt: skip
            while what != GO_ON or p < 0:  # retire the pixel, refill the lane
                if p >= 0:
                    sensitivity[p] = math.hypot(derr, deri)
                    if what == INSIDE:
                        scheduler.retire_inside(p, max_iter, counts, smooth, magnitude)
                    else:
                        cr, ci = (c_re, c_im) if julia else (c_re + dcr, c_im + dci)
                        batched = scheduler.retire_escaped(
                            batch, where, batched, p, k - 1, dzr, dzi, cr, ci, float(k), counts
                        )
                        if batched == BATCH:
                            batched = scheduler.flush(batch, where, batched, smooth, magnitude)
                if nxt == pixels.size:
                    if p != IDLE_PIXEL:
                        idle += 1
                    p = IDLE_PIXEL
                    break
                p = pixels[nxt]
                nxt += 1
                what, m, k, dzr, dzi, dcr, dci, derr, deri, g = _begin(
                    orbit_re, orbit_im, start_end, base_start, base_end, anchors, ends, levels,
                    min_level, nodes, column, ox[p % width], oy[p // width], exponent, julia,
                    max_iter,
                )  # fmt: skip
                state[G + lane] = g
                if what == GO_ON:
                    what, m, k, dzr, dzi, derr, deri = _advance(
                        orbit_re, orbit_im, start_end, base_start, base_end, anchors, ends,
                        levels, min_level, nodes, column, dzr, dzi, dcr, dci, derr, deri,
                        g, m, k, max_iter, patience,
                    )  # fmt: skip
            pixel[lane] = p
            if p == IDLE_PIXEL:
                # dz = dc = 0: the lane follows the reference's own orbit (rebasing
                # at its end, so its reads stay within the orbit); its count,
                # below 0, never reaches the limit nor lets it skip.
                scheduler.park(state, LANES, FIELDS, K, lane)
                state[M + lane] = 1.0
                continue
            state[DZR + lane], state[DZI + lane] = dzr, dzi
            state[DCR + lane], state[DCI + lane] = dcr, dci
            state[DERR + lane], state[DERI + lane] = derr, deri
            state[M + lane], state[K + lane] = m, k
        if idle == LANES:
            scheduler.flush(batch, where, batched, smooth, magnitude)
            break
        result = perturbation_round(
            state, orbit, hint, float(base_start), float(base_end), limit, float(start_end)
        )
        done = result & np.uint64(0xFFFFFFFF)
        todo = done | (result >> np.uint64(32))


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


def _pixel_size(request: RenderRequest, exponent: int) -> tuple[float, float]:
    """The pixel's width in units of 2**exponent, as a double-double (float64 and
    what it leaves out)."""
    with depth.decimal_context():
        size = Decimal(request.view_width) / request.width / Decimal(2) ** exponent
        high = float(size)
        return high, float(size - Decimal(high))


def _pairs(orbit: npt.NDArray[np.complex128]) -> Floats:
    return np.ascontiguousarray(orbit).view(np.float64)


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
    table = reference.table
    rows = row_end - row_start
    counts = np.empty(rows * request.width, dtype=np.int32)
    smooth = np.empty(rows * request.width, dtype=np.float64)
    magnitude = np.empty(rows * request.width, dtype=np.float64)
    sensitivity = np.empty(rows * request.width, dtype=np.float64)
    pixels = np.arange(counts.size, dtype=np.int64)
    orbit_re = np.ascontiguousarray(orbit.real)
    orbit_im = np.ascontiguousarray(orbit.imag)
    for column, eps in enumerate(bla.EPSILONS):
        _escape(
            orbit_re, orbit_im, start.size - 1, base_start, base_end,
            table.anchors, table.ends, table.levels, table.min_level, table.nodes, column,
            ox, oy, pixels, exponent, reference.julia, c_re, c_im, request.max_iter,
            counts, smooth, magnitude, sensitivity,
        )  # fmt: skip
        pixels = pixels[sensitivity[pixels] * eps > SENSITIVE]
        if pixels.size == 0:
            break
    if pixels.size:  # too sensitive for float64: double-double
        size_hi, size_lo = _pixel_size(request, exponent)
        precise.escape_pixels(
            _pairs(reference.orbit), _pairs(reference.orbit_lo), start.size - 1, base_start,
            base_end, i + 0.5 - request.width / 2, -(j + 0.5 - request.height / 2), pixels,
            size_hi, size_lo, exponent, reference.julia, c_re, c_im, request.max_iter,
            counts, smooth, magnitude,
        )  # fmt: skip
    scheduler.finish(counts, smooth, magnitude, request.max_iter)
    return counts.reshape(rows, request.width), smooth.reshape(rows, request.width)
