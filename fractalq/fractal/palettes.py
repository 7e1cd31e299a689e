"""Palettes, and the colouring of escape-time results.

A palette is a cyclic gradient: a few colour stops, interpolated linearly in RGB.
A pixel's place on the gradient is a function of its own smooth iteration value
only (no histogram over the image), so a band colours the same wherever it is cut,
and the continuous value leaves no visible steps between iteration counts.

The gradient position grows with the square root of the iteration value. Near
the set that value climbs steeply from pixel to pixel; the root slows the colour
cycling there (less noise in the filaments) yet keeps a visible gradient far
out, and it does not depend on ``max_iter``, so deeper renders keep their colours.

Inside pixels are pure black; no outside pixel is (a palette that would round to
black is nudged to ``(0, 0, 1)``), so black means *inside* in every image.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import numpy.typing as npt

from fractalq import config

Rgb = tuple[int, int, int]


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


def _table(palette: Palette) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Stop positions and colours, closed with a copy of the first stop at 1.0."""
    positions = [position for position, _ in palette.stops] + [1.0]
    colours = [colour for _, colour in palette.stops] + [palette.stops[0][1]]
    return np.array(positions, dtype=np.float64), np.array(colours, dtype=np.float64)


def colorize(
    counts: npt.NDArray[np.int32],
    smooth: npt.NDArray[np.float64],
    max_iter: int,
    palette: str,
) -> npt.NDArray[np.uint8]:
    """RGB (uint8, shape counts.shape + (3,)) for escape-time results.

    ``counts == max_iter`` marks inside pixels (black); ``smooth`` is the
    continuous iteration value of the outside ones.
    """
    if palette not in PALETTES:
        known = ", ".join(sorted(PALETTES))
        raise ValueError(f"unknown palette {palette!r} (known: {known})")
    if counts.shape != smooth.shape:
        raise ValueError(f"counts are {counts.shape} but smooth values are {smooth.shape}")
    chosen = PALETTES[palette]
    positions, colours = _table(chosen)
    inside = counts >= max_iter
    # nan/inf never reach here from the kernels; the guard keeps one bad value from
    # turning into an arbitrary colour.
    value = np.nan_to_num(np.maximum(smooth, 0.0), nan=0.0, posinf=0.0)
    where = np.sqrt(value) / chosen.cycle + chosen.offset
    where -= np.floor(where)
    rgb = np.empty((*counts.shape, 3), dtype=np.uint8)
    for channel in range(3):
        level = np.interp(where, positions, colours[:, channel])
        rgb[..., channel] = np.rint(level).astype(np.uint8)
    # Black is reserved for inside.
    black = ~rgb.any(axis=-1) & ~inside
    rgb[black] = (0, 0, 1)
    rgb[inside] = 0
    return rgb
