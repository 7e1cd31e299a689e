"""A reference orbit in fixed point, compiled: ten times gmpy2's speed at deep-zoom precisions.

The reference orbit (:mod:`.reference`) needs a few hundred bits per number,
and gmpy2 spends most of its time per operation in Python, not in MPFR: about
3 microseconds an iteration, whatever the precision below a thousand bits. Here
the whole loop is numba code on fixed-point numbers: a number is
``LIMBS + 1`` limbs of ``BITS`` = 28 bits (little end first, each in a uint64),
two's complement, worth ``sum(limb[i] * 2**(BITS * (i - LIMBS)))``: the top
limb is the integer part and the sign, the others ``BITS * LIMBS`` bits of
fraction. A product is the schoolbook one of the magnitudes, truncated to the
fraction's bits: 28-bit limbs make each partial product under 2**56, so a
column of up to 256 of them adds up in a uint64 with no carry to split off. The
square is ``(x + y)(x - y) + 2ixy``, two products. The error of an iteration is
a few units of ``2**-(BITS * LIMBS)``, which the orbit's precision
(:attr:`RenderRequest.precision`, rounded up to whole limbs) covers as MPFR's
rounding did.

Each point comes out as the float64 nearest it and the float64 nearest the rest
(the double-double :mod:`.precise` reads), both exact functions of the fixed-point
value. Orbits whose numbers outgrow the integer limb (a centre or Julia constant
beyond :data:`LARGEST`) or need more than :data:`MAX_LIMBS` limbs, where the
quadratic product loses to MPFR's, are left to gmpy2.
"""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

import numba
import numpy as np
import numpy.typing as npt

from fractalq.fractal import kernel_cache

# Before the first kernel below is defined: the kernels compiled into the image.
kernel_cache.seed(kernel_cache.numba_cache_dir())

Limbs = npt.NDArray[np.uint64]
Orbit = npt.NDArray[np.complex128]

BITS = 28
MASK = np.uint64((1 << BITS) - 1)
SHIFT = np.uint64(BITS)
# Above this many limbs of fraction (about 900 bits) MPFR's products are as fast.
MAX_LIMBS = 32
# Centres and Julia constants within this of 0 keep every orbit value (at most
# |z|^2 + |c| before the escape test stops it) well inside the integer limb.
LARGEST = 4.0


def usable(bits: int, *values: str | float) -> bool:
    """Whether an orbit at ``bits`` of precision starting from ``values`` fits here."""
    return limbs_for(bits) <= MAX_LIMBS and all(abs(float(v)) <= LARGEST for v in values)


def limbs_for(bits: int) -> int:
    return max(2, math.ceil(bits / BITS))


def encode(value: str | float, limbs: int) -> Limbs:
    """``value`` (a decimal string or a float) in fixed point, rounded toward minus infinity."""
    exact = Fraction(Decimal(value)) if isinstance(value, str) else Fraction(value)
    number = math.floor(exact * (1 << (BITS * limbs))) % (1 << (BITS * (limbs + 1)))
    mask = (1 << BITS) - 1
    return np.array([(number >> (BITS * i)) & mask for i in range(limbs + 1)], np.uint64)


@numba.njit(cache=True, nogil=True, inline="always")
def _negative(a: Limbs) -> bool:
    return bool((a[a.size - 1] >> np.uint64(BITS - 1)) != np.uint64(0))


@numba.njit(cache=True, nogil=True, inline="always")
def _negate(a: Limbs, out: Limbs) -> None:
    carry = np.uint64(1)
    for i in range(a.size):
        value = ((~a[i]) & MASK) + carry
        out[i] = value & MASK
        carry = value >> SHIFT


@numba.njit(cache=True, nogil=True, inline="always")
def _add(a: Limbs, b: Limbs, out: Limbs) -> None:
    carry = np.uint64(0)
    for i in range(a.size):
        value = a[i] + b[i] + carry
        out[i] = value & MASK
        carry = value >> SHIFT


@numba.njit(cache=True, nogil=True, inline="always")
def _subtract(a: Limbs, b: Limbs, out: Limbs) -> None:
    borrow = np.uint64(0)
    for i in range(a.size):
        value = (a[i] | np.uint64(1 << BITS)) - b[i] - borrow
        out[i] = value & MASK
        borrow = np.uint64(1) - (value >> SHIFT)


@numba.njit(cache=True, nogil=True, inline="always")
def _multiply(a: Limbs, b: Limbs, out: Limbs, x: Limbs, y: Limbs) -> None:
    """out = a b, the magnitudes' product truncated to the fraction (toward 0);
    x and y are scratch for |a| and |b|."""
    n = a.size
    limbs = n - 1
    negative = _negative(a) != _negative(b)
    if _negative(a):
        _negate(a, x)
    else:
        for i in range(n):
            x[i] = a[i]
    if _negative(b):
        _negate(b, y)
    else:
        for i in range(n):
            y[i] = b[i]
    # Column sums of the product from column limbs - 1 (the carry into the kept
    # part from the columns below is at most a few units: the truncation error).
    carry = np.uint64(0)
    for column in range(limbs - 1, limbs + n):
        total = carry
        first = column - n + 1 if column >= n - 1 else 0
        last = column if column < n - 1 else n - 1
        for i in range(first, last + 1):
            total += x[i] * y[column - i]
        if column >= limbs:
            out[column - limbs] = total & MASK
        carry = total >> SHIFT
    if negative:
        _negate(out, out)


@numba.njit(cache=True, nogil=True, inline="always")
def _two_sum(a: float, b: float) -> tuple[float, float]:
    s = a + b
    v = s - a
    return s, (a - (s - v)) + (b - v)


@numba.njit(cache=True, nogil=True)
def _to_float(a: Limbs, scratch: Limbs, weights: npt.NDArray[np.float64]) -> tuple[float, float]:
    """The float64 nearest ``a`` (give or take its last bit), and the float64 nearest
    what remains: the top limbs summed with their rounding errors kept."""
    n = a.size
    negative = _negative(a)
    if negative:
        _negate(a, scratch)
    else:
        for i in range(n):
            scratch[i] = a[i]
    top = n - 1
    while top > 0 and scratch[top] == 0:
        top -= 1
    # Limbs times powers of two are exact; each sum's error is kept.
    high = float(scratch[top]) * weights[top]
    rest = 0.0
    for i in range(top - 1, max(top - 6, -1), -1):
        high, error = _two_sum(high, float(scratch[i]) * weights[i])
        rest += error
    high, rest = _two_sum(high, rest)
    return (-high, -rest) if negative else (high, rest)


@numba.njit(cache=True, nogil=True)
def _iterate(
    zr: Limbs, zi: Limbs, cr: Limbs, ci: Limbs, max_iter: int, high: Orbit, low: Orbit
) -> int:
    """z_0 .. z_n of z <- z^2 + c into high/low; returns n + 1 (n: max_iter, or the
    first n with |z_n| > 2)."""
    n = zr.size
    total = np.empty(n, np.uint64)
    difference = np.empty(n, np.uint64)
    square = np.empty(n, np.uint64)
    ri = np.empty(n, np.uint64)
    x = np.empty(n, np.uint64)
    y = np.empty(n, np.uint64)
    scratch = np.empty(n, np.uint64)
    weights = np.array([math.ldexp(1.0, BITS * (i - (n - 1))) for i in range(n)])
    for k in range(max_iter + 1):
        if k:
            # z^2 = (zr + zi)(zr - zi) + 2i zr zi
            _add(zr, zi, total)
            _subtract(zr, zi, difference)
            _multiply(total, difference, square, x, y)
            _multiply(zr, zi, ri, x, y)
            _add(square, cr, zr)
            _add(ri, ri, zi)
            _add(zi, ci, zi)
        hr, lr = _to_float(zr, scratch, weights)
        hi, li = _to_float(zi, scratch, weights)
        high[k] = complex(hr, hi)
        low[k] = complex(lr, li)
        if not hr * hr + hi * hi <= 4.0:
            return k + 1
    return max_iter + 1


def orbit(
    z: tuple[str | float, str | float], c: tuple[str | float, str | float], bits: int,
    max_iter: int,
) -> tuple[Orbit, Orbit]:  # fmt: skip
    """z_0 .. z_n of z <- z^2 + c (n = max_iter, or the first n with |z_n| > 2), as
    float64 (high, low) pairs; the numbers carried to ``bits`` bits or more."""
    limbs = limbs_for(bits)
    high = np.empty(max_iter + 1, np.complex128)
    low = np.empty(max_iter + 1, np.complex128)
    size = _iterate(
        encode(z[0], limbs), encode(z[1], limbs), encode(c[0], limbs), encode(c[1], limbs),
        max_iter, high, low,
    )  # fmt: skip
    return high[:size].copy(), low[:size].copy()
