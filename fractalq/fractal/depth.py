"""Decimal view coordinates, and how deep a view is.

A view's centre and width travel as decimal strings of any length
(``"-1.7499999999999999999999999999999999999999"``, ``"1e-300"``), so a view
narrower than float64 can tell apart keeps every digit its author gave. One
canonical spelling per number (no trailing zeros, no ``+``, ``-0`` is ``0``)
keeps equal views' requests equal, and so their keys. A number given as a float
is spelled as Python's ``repr`` of it, which converts back to the same float:
a view given in floats renders exactly as it always did.

A view is *deep* when a pixel is so narrow next to the coordinates that float64
no longer tells neighbouring pixels' orbits apart well; those views render by
perturbation around one reference orbit iterated at :func:`precision_bits`.
"""

from __future__ import annotations

import contextlib
import decimal
import functools
import math
import re
from decimal import Decimal
from fractions import Fraction

from fractalq import config

# Past float64's exponent range (the perturbation kernels, perturb.py and
# precise.py): a pixel narrower than 2**SCALED_BELOW starts *scaled*, its
# difference carried as w 2**E, until E reaches PLAIN_FROM (the difference then
# above about 2**-800, far from underflow); w is renormalised by 2**-RESCALE
# whenever it passes 2**RESCALE.
SCALED_BELOW = -900
PLAIN_FROM = -800
RESCALE = 64

_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,9})?")
# Enough digits for comparisons and logarithms of any allowed value.
_CONTEXT = decimal.Context(prec=40, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_decimal(name: str, value: object) -> Decimal:
    """The number ``value`` (a decimal string, an int or a float), exactly.

    ValueError with a one-line message naming ``name`` when it is not a finite
    number written in decimal.
    """
    if isinstance(value, Decimal | Fraction):
        return parse_decimal(name, _exact(name, value))
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{name} must be a number or a decimal string (got {_show(value)})")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number (got {_show(value)})")
        return Decimal(repr(value))
    if isinstance(value, int):
        if abs(value) > 10**308:
            raise ValueError(f"{name} must be a finite number (got <int too long to show>)")
        return Decimal(value)
    text = value.strip()
    if len(text) > config.MAX_DECIMAL_LENGTH:
        raise ValueError(
            f"{name} has {len(text)} characters, more than the {config.MAX_DECIMAL_LENGTH} allowed"
        )
    if text.lower().lstrip("+-") in ("nan", "inf", "infinity"):  # as a float's message says
        raise ValueError(f"{name} must be a finite number (got {text.lower()})")
    if not _NUMBER.fullmatch(text):
        raise ValueError(
            f"{name} must be a decimal number such as -0.75 or 1.5e-300 (got {_show(value)})"
        )
    number = Decimal(text)
    if number.is_zero():
        return Decimal(0)
    if number.adjusted() > 308 or not math.isfinite(float(number)):
        raise ValueError(f"{name} must be a finite number (got {_show(value)})")
    return number


def _exact(name: str, value: Decimal | Fraction) -> str:
    """A Decimal's or a Fraction's exact decimal spelling (a map tile's view is a
    Fraction with a power of two below: it has one)."""
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{name} must be a finite number (got {_show(value)})")
        return str(value)
    numerator, denominator = value.numerator, value.denominator
    twos = (denominator & -denominator).bit_length() - 1
    rest = denominator >> twos
    fives = 0
    while rest % 5 == 0:
        rest //= 5
        fives += 1
    if rest != 1:
        raise ValueError(f"{name} has no exact decimal spelling (got {_show(value)})")
    digits = max(twos, fives)
    scaled = numerator * 2 ** (digits - twos) * 5 ** (digits - fives)
    return f"{scaled}e-{digits}"


def canonical(number: Decimal) -> str:
    """One spelling per value: trailing zeros dropped, exact (no rounding)."""
    if number.is_zero():
        return "0"
    sign, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)
    kept = list(digits)
    while kept[-1] == 0:
        kept.pop()
        exponent += 1
    return str(Decimal((sign, tuple(kept), exponent)))


def log2(number: Decimal) -> float:
    """log2 of a positive Decimal of any exponent (a float would underflow)."""
    return float(number.ln(_CONTEXT) / Decimal(2).ln(_CONTEXT))


def pixel_log2(view_width: str, width: int) -> float:
    """log2 of the distance between neighbouring pixel centres."""
    return log2(Decimal(view_width)) - math.log2(width)


@functools.lru_cache(maxsize=256)  # asked for every payload read; Decimal.ln is slow
def is_deep(center_x: str, center_y: str, view_width: str, width: int) -> bool:
    """Whether a pixel is narrower than float64 renders well at this centre.

    The limit, ``config.DEEP_PIXEL_RELATIVE``, is a pixel a few thousand units of
    the last place wide: shallower views keep the float64 kernels and their
    exact bytes.
    """
    scale = max(1.0, abs(float(center_x)), abs(float(center_y)))
    return pixel_log2(view_width, width) < math.log2(scale * config.DEEP_PIXEL_RELATIVE)


def precision_bits(center_x: str, center_y: str, view_width: str, width: int) -> int:
    """Bits of mantissa for a deep view's reference orbit: enough to place the
    centre to a small fraction of a pixel, plus guard bits for the iteration."""
    scale = max(1.0, abs(float(center_x)), abs(float(center_y)))
    bits = math.log2(scale) - pixel_log2(view_width, width)
    return max(64, math.ceil(bits) + config.REFERENCE_GUARD_BITS)


def decimal_context() -> contextlib.AbstractContextManager[decimal.Context]:
    """A context with enough digits and exponent range for any allowed view."""
    return decimal.localcontext(_CONTEXT)
