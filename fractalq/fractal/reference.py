"""The reference orbit of a deep view, iterated once in arbitrary precision.

Perturbation (:mod:`.perturb`) iterates each pixel's small difference from one
orbit, the *reference*, which is computed here with MPFR (gmpy2) at the view's
precision (:attr:`RenderRequest.precision`) and kept as float64: the pixel's
difference carries the digits the reference's float64 copy lacks.

Two orbits are kept. The *start* orbit is the view centre's own (Mandelbrot:
``z0 = 0, c = centre``; Julia: ``z0 = centre``); a pixel follows it until it
is *rebased* (its orbit comes nearer 0 than the reference, or the reference
ends), after which it follows the *base* orbit, which starts at 0: the same
orbit for the Mandelbrot set, the critical orbit ``z0 = 0`` of the Julia map.
An orbit ends at ``max_iter`` or at its first point outside radius 2.

The orbit is iterated in compiled fixed point (:mod:`.fixedpoint`) up to about
900 bits, several times faster than gmpy2, whose time goes to Python's calls;
deeper, and for centres or Julia constants far from 0, with gmpy2 (MPFR).

The orbits come with their table of merged steps (:mod:`.bla`), built for the
view's largest pixel offset, so every band of a view skips alike.

:func:`to_bytes` / :func:`from_bytes` are the stored form that the reference
task writes and every band reads.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct

import gmpy2
import numpy as np
import numpy.typing as npt

from fractalq.fractal import bla, depth
from fractalq.fractal.request import RenderRequest

Orbit = npt.NDArray[np.complex128]
_MAGIC = b"FQORBIT2"
_HEADER = struct.Struct("<8sI")
_DTYPE = np.dtype("<c16")
_FLOATS = np.dtype("<f8")
_INTS = np.dtype("<i8")


@dataclasses.dataclass(frozen=True, eq=False)  # arrays: compared by identity
class Reference:
    """A deep view's reference orbits (float64 copies) and the precision they had."""

    start: Orbit
    base: Orbit
    # What each point's float64 leaves out (double-double, for fractal/precise.py).
    start_lo: Orbit
    base_lo: Orbit
    precision: int
    table: bla.Table

    @property
    def julia(self) -> bool:
        return self.base is not self.start

    @property
    def orbit(self) -> Orbit:
        """The orbits one after the other, as the table and the kernel index them."""
        return np.concatenate([self.start, self.base]) if self.julia else self.start

    @property
    def orbit_lo(self) -> Orbit:
        return np.concatenate([self.start_lo, self.base_lo]) if self.julia else self.start_lo


def _mpfr_orbit(
    zr: gmpy2.mpfr, zi: gmpy2.mpfr, cr: gmpy2.mpfr, ci: gmpy2.mpfr, max_iter: int
) -> tuple[Orbit, Orbit]:
    """z_0 .. z_n of z <- z^2 + c (n = max_iter, or the first n with |z_n| > 2),
    each as the float64 nearest it and the float64 nearest what remains."""
    square, fused = gmpy2.square, gmpy2.fma
    high = []
    low = []
    for n in range(max_iter + 1):
        if n:
            t = square(zi)
            zi = fused(zr + zr, zi, ci)
            zr = fused(zr, zr, cr) - t
        hr, hi = float(zr), float(zi)
        high.append(complex(hr, hi))
        low.append(complex(float(zr - hr), float(zi - hi)))
        # `not <=` so that an overflow to inf or nan ends the orbit too.
        if not hr * hr + hi * hi <= 4.0:
            break
    return np.array(high, dtype=np.complex128), np.array(low, dtype=np.complex128)


def compute(request: RenderRequest) -> Reference:
    """The reference orbits of ``request``'s view, at its precision, and their table."""
    bits = request.precision
    centre = (request.center_x, request.center_y)
    if request.fractal == "mandelbrot":
        start, start_lo = base, base_lo = _orbit(("0", "0"), centre, bits, request.max_iter)
    else:
        c = (request.c_re, request.c_im)
        start, start_lo = _orbit(centre, c, bits, request.max_iter)
        base, base_lo = _orbit(("0", "0"), c, bits, request.max_iter)
    return Reference(start, base, start_lo, base_lo, bits, table(request, start, base))


def _orbit(
    z: tuple[str | float, str | float], c: tuple[str | float, str | float], bits: int,
    max_iter: int,
) -> tuple[Orbit, Orbit]:  # fmt: skip
    """z_0 .. z_n of z <- z^2 + c at ``bits`` of precision: compiled fixed point
    (:mod:`.fixedpoint`) where it fits, else MPFR."""
    from fractalq.fractal import fixedpoint  # numba, loaded on first use as the kernels do

    if fixedpoint.usable(bits, *z, *c):
        return fixedpoint.orbit(z, c, bits, max_iter)
    with gmpy2.context(gmpy2.get_context(), precision=bits):
        zr, zi, cr, ci = (gmpy2.mpfr(value) for value in (*z, *c))
        return _mpfr_orbit(zr, zi, cr, ci, max_iter)


def table(request: RenderRequest, start: Orbit, base: Orbit) -> bla.Table:
    """The table of merged steps of a view's orbits (one segment per orbit)."""
    largest_offset = depth.pixel_log2(request.view_width, request.width) + math.log2(
        math.hypot(request.width / 2, request.height / 2)
    )
    if base is start:
        return bla.build(start, [1], [start.size - 1], True, largest_offset)
    orbit = np.concatenate([start, base])
    return bla.build(
        orbit, [1, start.size + 1], [start.size - 1, orbit.size - 1], False, largest_offset
    )


def to_bytes(reference: Reference) -> bytes:
    table = reference.table
    header = json.dumps(
        {
            "precision": reference.precision,
            "start": int(reference.start.size),
            "base": int(reference.base.size) if reference.julia else 0,
            "segments": int(table.anchors.size),
            "levels": int(table.levels.shape[1]),
            "nodes": int(table.nodes.shape[0]),
            "min_level": table.min_level,
        }
    ).encode()
    parts = [_HEADER.pack(_MAGIC, len(header)), header]
    parts += [orbit.astype(_DTYPE).tobytes() for orbit in (reference.orbit, reference.orbit_lo)]
    for array in (table.anchors, table.ends, table.levels):
        parts.append(array.astype(_INTS).tobytes())
    parts.append(table.nodes.astype(_FLOATS).tobytes())
    return b"".join(parts)


def from_bytes(data: bytes) -> Reference:
    """The stored form read back; ValueError if it is not one."""
    try:
        magic, length = _HEADER.unpack_from(data)
        if magic != _MAGIC:
            raise ValueError("not a reference orbit")
        header = json.loads(data[_HEADER.size : _HEADER.size + length])
        sizes = int(header["start"]), int(header["base"])
        precision = int(header["precision"])
        segments, levels, nodes = (
            int(header["segments"]),
            int(header["levels"]),
            int(header["nodes"]),
        )
        min_level = int(header["min_level"])
    except (struct.error, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"not a reference orbit: {error}") from None
    offset = _HEADER.size + length
    counts = (2 * sum(sizes), 2 * segments + segments * levels, nodes * bla.COLUMNS)
    itemsizes = (_DTYPE.itemsize, _INTS.itemsize, _FLOATS.itemsize)
    if (
        sizes[0] < 2
        or min(sizes[1], segments, levels, nodes, min_level) < 0
        or len(data) != offset + sum(n * size for n, size in zip(counts, itemsizes, strict=True))
    ):
        raise ValueError("not a reference orbit: its size does not match its header")
    orbits = np.frombuffer(data, dtype=_DTYPE, count=counts[0], offset=offset)
    offset += counts[0] * _DTYPE.itemsize
    ints = np.frombuffer(data, dtype=_INTS, count=counts[1], offset=offset).astype(np.int64)
    offset += counts[1] * _INTS.itemsize
    floats = np.frombuffer(data, dtype=_FLOATS, count=counts[2], offset=offset)
    orbits = orbits.astype(np.complex128)
    start, start_lo = orbits[: sizes[0]], orbits[sum(sizes) : sum(sizes) + sizes[0]]
    base, base_lo = (
        (orbits[sizes[0] : sum(sizes)], orbits[sum(sizes) + sizes[0] :])
        if sizes[1]
        else (start, start_lo)
    )
    table = bla.Table(
        ints[:segments],
        ints[segments : 2 * segments],
        ints[2 * segments :].reshape(segments, levels),
        floats.astype(np.float64).reshape(nodes, bla.COLUMNS),
        min_level,
    )
    return Reference(start, base, start_lo, base_lo, precision, table)
