"""Palettes, and the colouring of escape-time results.

A palette is a cyclic gradient: a few colour stops, interpolated linearly in RGB.
A pixel's place on the gradient is a function of its own smooth iteration value
only (no histogram over the image), so a band colours the same wherever it is cut,
and the continuous value leaves no visible steps between iteration counts.

The gradient position grows with the square root of the iteration value. Near
the set that value climbs steeply from pixel to pixel; the root slows the colour
cycling there (less noise in the filaments) yet keeps a visible gradient far
out, and it does not depend on ``max_iter``, so deeper renders keep their colours.

That is the ``sqrt`` colour scale, the default. The others make one trip round
the gradient over a range of iteration values: ``linear`` and ``log`` over
``0 .. max_iter``, ``auto`` over the view's own range (from a small probe render,
:mod:`fractalq.fractal.probe`), on a log scale: deep views, whose counts lie far
from 0 and close together, come out smooth instead of cycling every few hundred
iterations. They feed the same routine: a value's place ``t`` on the trip
becomes the value whose square root lands there (:func:`scaled`).

Inside pixels are pure black; no outside pixel is (a palette that would round to
black is nudged to ``(0, 0, 1)``), so black means *inside* in every image.

:func:`colorize` runs compiled (:mod:`fractalq.fractal.fast_colour`) when numba
is installed, and as :func:`colorize_numpy` otherwise; the two give the same
bytes for every input. So that they can, the numpy reference writes out
``np.interp``'s arithmetic instead of calling it (whose compiled C may fuse a
multiply and an add on some platforms): each pixel's segment with
``np.searchsorted``, then ``slope * (where - start) + colour``, one rounding per
operation, with the slopes computed once per palette by :func:`gradient`.
That is exactly what ``np.interp`` computes on x86-64, so the colours are the
ones it gave.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util

import numpy as np
import numpy.typing as npt

from fractalq import config

Rgb = tuple[int, int, int]
Floats = npt.NDArray[np.float64]

# Colour with the compiled routine (fractalq.fractal.fast_colour) when numba is there.
COMPILED = importlib.util.find_spec("numba") is not None
# How iteration values are laid on the gradient (see the module's docstring).
COLOUR_SCALES = ("sqrt", "linear", "log", "auto")
DEFAULT_COLOUR_SCALE = config.DEFAULT_COLOUR_SCALE
# The end of a trip round the gradient: just short of where it starts again.
_TRIP_END = 1.0 - 2.0**-20


@dataclasses.dataclass(frozen=True)
class ColourScale:
    """A trip round the gradient from iteration value ``low`` to ``high``, linear
    in the value or in its logarithm; or the default ``sqrt`` (no range)."""

    kind: str = "sqrt"
    low: float = 0.0
    high: float = 0.0

    @classmethod
    def fixed(cls, kind: str, max_iter: int) -> ColourScale:
        """A scale that needs no probe: sqrt, or linear and log over 0 .. max_iter."""
        if kind == "auto":
            raise ValueError("the auto colour scale's range comes from a probe render")
        return cls(kind, 0.0, float(max_iter)) if kind != "sqrt" else cls()


def scaled(
    smooth: Floats, palette: Palette, scale: ColourScale, logs: Floats | None = None
) -> Floats:
    """The values whose square roots the colouring lays on the gradient.

    For a trip, a value's place ``t`` in [0, 1) becomes ``(t * cycle) ** 2``, whose
    square root over the cycle is ``t`` again: both colouring paths then do the rest.
    ``logs``, if given, is :func:`log_values` of ``smooth``, which a caller that
    colours the same values on many log scales computes once (a zoom's frames).
    """
    if scale.kind == "sqrt":
        return smooth
    low, high = scale.low, max(scale.high, scale.low + 1.0)
    if scale.kind == "linear":
        value = np.nan_to_num(np.maximum(smooth, 0.0), nan=0.0, posinf=0.0)
        t = (value - low) / (high - low)
    else:  # log and auto
        logs = log_values(smooth) if logs is None else logs
        t = (logs - np.log1p(low)) / (np.log1p(high) - np.log1p(low))
    np.clip(t, 0.0, _TRIP_END, out=t)
    t *= palette.cycle
    result: Floats = t * t
    return result


def log_values(smooth: Floats) -> Floats:
    """What the log scales read of each value: ``log1p`` of it, clamped at 0."""
    logs: Floats = np.log1p(np.nan_to_num(np.maximum(smooth, 0.0), nan=0.0, posinf=0.0))
    return logs


@dataclasses.dataclass(frozen=True)
class Palette:
    """Colour stops at positions in [0, 1); the gradient wraps from the last to the first.

    ``cycle`` is how far the square root of the iteration value travels for one
    trip round the gradient, and ``offset`` where iteration zero starts on it.
    """

    stops: tuple[tuple[float, Rgb], ...]
    cycle: float = 4.0
    offset: float = 0.0

    def __post_init__(self) -> None:
        positions = [position for position, _ in self.stops]
        if not positions or positions[0] != 0.0 or positions != sorted(set(positions)):
            raise ValueError("palette stops must start at 0 and increase")
        if positions[-1] >= 1.0 or self.cycle <= 0:
            raise ValueError("palette stops must lie in [0, 1) and the cycle be positive")
        if not all(0 <= level <= 255 for _, colour in self.stops for level in colour):
            raise ValueError("palette colours must be bytes, 0 to 255")


PALETTES: dict[str, Palette] = {
    # The well-known deep blue / white / gold gradient: a dark-blue background
    # that brightens to white and gold along the filaments.
    "classic": Palette(
        stops=(
            (0.0, (0, 7, 100)),
            (0.16, (32, 107, 203)),
            (0.42, (237, 255, 255)),
            (0.6425, (255, 170, 0)),
            (0.8575, (0, 2, 0)),
        ),
        # Starts just past the near-black stop, so the far background is deep blue.
        cycle=5.0,
        offset=0.9,
    ),
    "fire": Palette(
        stops=(
            (0.0, (20, 0, 0)),
            (0.25, (150, 10, 0)),
            (0.5, (255, 110, 0)),
            (0.7, (255, 220, 60)),
            (0.85, (255, 255, 220)),
        ),
        cycle=5.0,
    ),
    "ocean": Palette(
        stops=(
            (0.0, (2, 12, 40)),
            (0.3, (0, 80, 140)),
            (0.55, (0, 180, 190)),
            (0.75, (200, 250, 240)),
            (0.9, (20, 60, 110)),
        ),
        cycle=4.0,
    ),
    "grayscale": Palette(
        stops=((0.0, (16, 16, 16)), (0.5, (255, 255, 255))),
        cycle=4.0,
    ),
}
DEFAULT_PALETTE = config.DEFAULT_PALETTE


@dataclasses.dataclass(frozen=True)
class Gradient:
    """A palette as the colouring reads it: its segments, and where a value falls on them.

    ``positions`` are the stop positions closed with 1.0 (n of them), ``colours``
    the stops' colours (n x 3, the first stop again at 1.0), and ``slopes`` each
    segment's change of colour per unit of position ((n - 1) x 3), computed once
    as ``np.interp`` computes them. All float64, C-contiguous and read-only.
    """

    positions: Floats
    colours: Floats
    slopes: Floats
    cycle: float
    offset: float


@functools.lru_cache(maxsize=64)
def gradient(palette: Palette) -> Gradient:
    """The palette's segments, closed with a copy of the first stop at 1.0."""
    positions = np.array([position for position, _ in palette.stops] + [1.0], dtype=np.float64)
    colours = np.array(
        [colour for _, colour in palette.stops] + [palette.stops[0][1]], dtype=np.float64
    )
    slopes = (colours[1:] - colours[:-1]) / (positions[1:] - positions[:-1])[:, np.newaxis]
    for array in (positions, colours, slopes):
        array.setflags(write=False)
    return Gradient(positions, colours, slopes, palette.cycle, palette.offset)


def _checked(
    counts: npt.NDArray[np.int32], smooth: npt.NDArray[np.float64], palette: str
) -> tuple[Floats, Gradient]:
    """The smooth values as float64 (both paths compute in float64), and the gradient."""
    if palette not in PALETTES:
        known = ", ".join(sorted(PALETTES))
        raise ValueError(f"unknown palette {palette!r} (known: {known})")
    if counts.shape != smooth.shape:
        raise ValueError(f"counts are {counts.shape} but smooth values are {smooth.shape}")
    return np.asarray(smooth, dtype=np.float64), gradient(PALETTES[palette])


def colorize(
    counts: npt.NDArray[np.int32],
    smooth: npt.NDArray[np.float64],
    max_iter: int,
    palette: str,
    scale: ColourScale = ColourScale(),
    logs: Floats | None = None,
) -> npt.NDArray[np.uint8]:
    """RGB (uint8, shape counts.shape + (3,)) for escape-time results.

    ``counts == max_iter`` marks inside pixels (black); ``smooth`` is the
    continuous iteration value of the outside ones. Compiled
    (:mod:`fractalq.fractal.fast_colour`) when numba is installed, else
    :func:`colorize_numpy`; the two give the same bytes. ``logs``: see :func:`scaled`.
    """
    smooth, chosen = _checked(counts, smooth, palette)
    smooth = scaled(smooth, PALETTES[palette], scale, logs)
    if not COMPILED:
        return _colorize_numpy(counts, smooth, max_iter, chosen)
    from fractalq.fractal import fast_colour  # imports numba on first use

    return fast_colour.colorize(counts, smooth, max_iter, chosen)


def colorize_numpy(
    counts: npt.NDArray[np.int32],
    smooth: npt.NDArray[np.float64],
    max_iter: int,
    palette: str,
    scale: ColourScale = ColourScale(),
) -> npt.NDArray[np.uint8]:
    """:func:`colorize` in numpy: the reference, and the path without numba."""
    smooth, chosen = _checked(counts, smooth, palette)
    smooth = scaled(smooth, PALETTES[palette], scale)
    return _colorize_numpy(counts, smooth, max_iter, chosen)


def _colorize_numpy(
    counts: npt.NDArray[np.int32],
    smooth: npt.NDArray[np.float64],
    max_iter: int,
    chosen: Gradient,
) -> npt.NDArray[np.uint8]:
    shape = counts.shape
    counts, smooth = counts.reshape(-1), smooth.reshape(-1)
    # nan/inf never reach here from the kernels; the guard keeps one bad value from
    # turning into an arbitrary colour.
    value = np.nan_to_num(np.maximum(smooth, 0.0), nan=0.0, posinf=0.0)
    with np.errstate(over="ignore", invalid="ignore"):
        where = np.sqrt(value) / chosen.cycle + chosen.offset
        where -= np.floor(where)  # exact: in [0, 1), or nan if `where` was infinite
    np.fmax(where, 0.0, out=where)  # nan -> 0; nothing else changes
    # np.interp's arithmetic, written out (see the module docstring): the segment
    # j with positions[j] <= where < positions[j + 1], then slope * (where -
    # positions[j]) + colour[j], one rounding per operation.
    segment = np.searchsorted(chosen.positions, where, side="right") - 1
    along = where - chosen.positions.take(segment)
    r, g, b = (
        np.rint(
            chosen.slopes[:, channel].take(segment) * along
            + chosen.colours[:, channel].take(segment)
        ).astype(np.uint8)
        for channel in range(3)
    )
    b[(r | g | b) == 0] = 1  # black is reserved for inside
    outside = counts < max_iter
    rgb = np.empty((counts.size, 3), dtype=np.uint8)
    for channel, level in enumerate((r, g, b)):
        np.multiply(level, outside, out=rgb[:, channel])
    return rgb.reshape(*shape, 3)
