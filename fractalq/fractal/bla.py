"""Bilinear approximation (BLA): many perturbation iterations in one step.

While a pixel's difference ``dz`` from the reference is small next to the
reference point ``Z_m``, the iteration ``dz <- 2 Z_m dz + dz^2 + dc`` is
nearly linear: dropping ``dz^2`` changes it by a factor of at most
``1 + |dz| / |2 Z_m|``. Then ``l`` iterations compose into one::

    dz_{m+l} = A dz_m + B dc        (Mandelbrot; a Julia view has no dc: B = 0)

Steps are merged pairwise into a tree (Zhuoran 2021, as in Imagina and Kalles
Fraktaler 2.15): a node of level ``j`` covers ``2**j`` iterations from an index
``anchor + q * 2**j`` of one orbit, and is valid while ``|dz| < R``::

    single step at m:  A = 2 Z_m, B = 1, R = min(eps * |2 Z_m|, 2 - |Z_m|)
    x then y:          A = A_y A_x,  B = A_y B_x + B_y,
                       R = min(R_x, (R_y - |B_x| max|dc|) / |A_x|)

``eps`` bounds the relative error of every iteration skipped, and the second
term of the single step's radius keeps a skipped iteration's ``z`` inside
radius 2, so a skip never passes an escape; while ``|dz| < eps |2 Z|`` the
orbit is nowhere near 0 either, so no skip passes a rebase (:mod:`.perturb`).
``max|dc|`` is the image's largest pixel offset, so one table serves every
band of a view.

A table holds radii for several values of ``eps`` (:data:`EPSILONS`, coarse to
fine) over one set of coefficients: :mod:`.perturb` renders a pixel with the
coarsest first and again with a finer one when the pixel's own sensitivity
says the coarse error could change its count.

Nodes of levels below the table's ``min_level`` are not stored (a pixel takes
plain steps there), which bounds a table of a long orbit
(:data:`MAX_TABLE_BYTES`); coefficients past float64's range
(:data:`LIMIT`) make a node invalid (radius 0) rather than wrong.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import threading
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]

# The relative errors a table has radii for, coarse to fine: 2**-20 (about
# 1e-6, the usual default of BLA renderers), 2**-36 and 2**-50 (a few units
# of float64's last place).
EPSILONS = (2.0**-20, 2.0**-36, 2.0**-50)
# The columns of a node: A, B, then one radius per epsilon.
AR, AI, BR, BI, RADII = 0, 1, 2, 3, 4
COLUMNS = RADII + len(EPSILONS)
# A stored table is at most this big: longer orbits drop their lowest levels.
MAX_TABLE_BYTES = 64 << 20
# Coefficients this large make a node invalid: applied to offsets of any
# exponent (scaled pixels, see perturb.py), they must not overflow.
LIMIT = 2.0**900


@dataclasses.dataclass(frozen=True, eq=False)  # arrays: compared by identity
class Table:
    """The merged steps of a view's orbits.

    ``levels[s, j]`` is the first row of ``nodes`` holding level ``j`` of
    segment ``s`` (rows ``levels[s, j] .. levels[s, j + 1] - 1``); a segment is
    one orbit of the concatenated orbit array, ``anchors[s]`` its first index
    with a node, ``ends[s]`` its last index. Levels below ``min_level`` hold no
    rows. ``nodes`` has :data:`COLUMNS` columns.
    """

    anchors: Ints
    ends: Ints
    levels: Ints
    nodes: Floats
    min_level: int

    @property
    def nbytes(self) -> int:
        return int(self.nodes.nbytes + self.levels.nbytes)


def _level_count(span: int) -> int:
    """Levels 0..n-1 of a segment whose anchor is ``span`` iterations from its end."""
    return max(1, span.bit_length())


def _build(
    orbit: npt.NDArray[np.complex128],
    anchors: Ints,
    ends: Ints,
    levels: Ints,
    min_level: int,
    with_dc: bool,
    dc_mantissa: float,
    dc_exponent: int,
    epsilons: Floats,
    nodes: Floats,
) -> None:
    eps_count = epsilons.size
    for s in range(anchors.size):
        anchor = anchors[s]
        span = ends[s] - anchor
        if span < 2:
            continue
        # Level 1 from pairs of single steps, then each level from the one below.
        count = span // 2
        below = np.empty((count, RADII + eps_count))
        for q in range(count):
            m = anchor + 2 * q
            zx = orbit[m]
            zy = orbit[m + 1]
            ax, ay = 2.0 * zx, 2.0 * zy
            bx = 1.0 if with_dc else 0.0
            a = ay * ax
            b = ay * bx + (1.0 if with_dc else 0.0)
            below[q, AR] = a.real
            below[q, AI] = a.imag
            below[q, BR] = b.real
            below[q, BI] = b.imag
            size_x, size_y = abs(zx), abs(zy)
            for e in range(eps_count):
                rx = min(epsilons[e] * 2.0 * size_x, 2.0 - size_x)
                ry = min(epsilons[e] * 2.0 * size_y, 2.0 - size_y)
                below[q, RADII + e] = _merged_radius(rx, ry, abs(ax), bx, dc_mantissa, dc_exponent)
        _store(below, nodes, levels, s, 1, min_level)
        level = 1
        while below.shape[0] >= 2:
            level += 1
            count = below.shape[0] // 2
            above = np.empty((count, RADII + eps_count))
            for q in range(count):
                x = below[2 * q]
                y = below[2 * q + 1]
                a = complex(y[AR], y[AI]) * complex(x[AR], x[AI])
                b = complex(y[AR], y[AI]) * complex(x[BR], x[BI]) + complex(y[BR], y[BI])
                above[q, AR] = a.real
                above[q, AI] = a.imag
                above[q, BR] = b.real
                above[q, BI] = b.imag
                size_a = math.hypot(x[AR], x[AI])
                size_b = math.hypot(x[BR], x[BI])
                for e in range(eps_count):
                    above[q, RADII + e] = _merged_radius(
                        x[RADII + e], y[RADII + e], size_a, size_b, dc_mantissa, dc_exponent
                    )
            _store(above, nodes, levels, s, level, min_level)
            below = above


def _merged_radius(
    rx: float, ry: float, size_a: float, size_b: float, dc_mantissa: float, dc_exponent: int
) -> float:
    """R of x then y, 0 when invalid (a radius of 0 allows no skip)."""
    if not (rx > 0.0 and ry > 0.0 and size_a < LIMIT and size_b < LIMIT):
        return 0.0  # also for nan: a coefficient overflowed
    spread = math.ldexp(size_b * dc_mantissa, dc_exponent)
    if size_a == 0.0:  # x maps every dz to B_x dc
        return rx if spread < ry else 0.0
    return max(0.0, min(rx, (ry - spread) / size_a))


def _store(
    level_nodes: Floats, nodes: Floats, levels: Ints, s: int, j: int, min_level: int
) -> None:
    if j < min_level:
        return
    first = levels[s, j]
    for q in range(level_nodes.shape[0]):
        for column in range(level_nodes.shape[1]):
            value = level_nodes[q, column]
            if column >= RADII and not (
                math.hypot(level_nodes[q, AR], level_nodes[q, AI]) < LIMIT
                and math.hypot(level_nodes[q, BR], level_nodes[q, BI]) < LIMIT
            ):
                value = 0.0
            nodes[first + q, column] = value


_compiling = threading.Lock()


def compiled_build() -> Callable[..., None]:
    """_build, compiled by numba on first use: processes that only read tables
    (the coordinator, clients) never load numba. Under a lock: a worker's warm-ups
    and its first tasks ask for it from several threads at once, and its helpers
    must be compiled once (numba refuses to compile a compiled function)."""
    with _compiling:
        return _compile_build()


@functools.cache
def _compile_build() -> Callable[..., None]:
    import numba

    from fractalq.fractal import numba_cache

    numba_cache.seed(numba_cache.numba_cache_dir())  # before numba picks its folder
    inline = numba.njit(cache=True, nogil=True, inline="always")
    globals()["_merged_radius"] = inline(_merged_radius)
    globals()["_store"] = inline(_store)
    compiled: Callable[..., None] = numba.njit(cache=True, nogil=True)(_build)
    return compiled


def layout(anchors: list[int], ends: list[int], min_level: int) -> Ints:
    """Where each segment's levels start in the node array (see :class:`Table`)."""
    depth = max(_level_count(end - anchor) for anchor, end in zip(anchors, ends, strict=True))
    levels = np.zeros((len(anchors), depth + 1), dtype=np.int64)
    row = 0
    for s, (anchor, end) in enumerate(zip(anchors, ends, strict=True)):
        for j in range(depth):
            levels[s, j] = row
            if j >= max(1, min_level):
                row += max(0, (end - anchor) >> j)
        levels[s, depth] = row
    return levels


def build(
    orbit: npt.NDArray[np.complex128],
    anchors: list[int],
    ends: list[int],
    with_dc: bool,
    max_dc_log2: float,
) -> Table:
    """The table of ``orbit`` (segments from ``anchors[s]`` to ``ends[s]``).

    ``with_dc``: the iteration adds the pixel's ``dc`` (Mandelbrot), else not
    (Julia). ``max_dc_log2``: log2 of the image's largest ``|dc|`` (or of its
    largest starting offset, for Julia), which may be below float64's range.
    """
    min_level = 1
    while True:
        levels = layout(anchors, ends, min_level)
        if int(levels[:, -1].max()) * COLUMNS * 8 <= MAX_TABLE_BYTES:
            break
        min_level += 1
    exponent = math.floor(max_dc_log2) + 1
    mantissa = 2.0 ** (max_dc_log2 - exponent)  # in [0.5, 1): the bound rounds up below
    nodes = np.zeros((int(levels[:, -1].max()), COLUMNS), dtype=np.float64)
    compiled_build()(
        np.ascontiguousarray(orbit, dtype=np.complex128),
        np.array(anchors, dtype=np.int64),
        np.array(ends, dtype=np.int64),
        levels,
        min_level,
        with_dc,
        min(1.0, mantissa * (1.0 + 2.0**-40)),
        exponent,
        np.array(EPSILONS, dtype=np.float64),
        nodes,
    )
    return Table(
        np.array(anchors, dtype=np.int64), np.array(ends, dtype=np.int64), levels, nodes, min_level
    )
