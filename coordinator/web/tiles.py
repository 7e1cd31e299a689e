"""The explorer's tiles as render requests: the map's coordinates and what a browser may ask.

The map is Leaflet's simple CRS with square tiles of ``config.TILE_SIZE``
pixels. At zoom 0 the single tile (0, 0) is the fractal's default view, made
square (its width both ways, around its centre); at zoom z a tile is
``default width / 2**z`` wide, tile x counting rightwards and tile y
downwards, so tile (z, x, y) is the square whose top-left corner is
``(left + x * w, top - y * w)``. :func:`tile_view` is the only place that
turns tile numbers into a view: it computes in exact rational arithmetic and
spells the view as exact decimal strings (a render request's own form), so
equal tiles are equal requests (and equal bytes in the cache) however they
were reached, and a tile past float64's depth renders like any deep view.
The map itself is float64 in the browser (Leaflet's coordinates), which
bounds the zoom (``config.TILE_MAX_ZOOM``).

Everything a browser sends is checked here, with one-line messages, before
anything reaches the queue.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from fractions import Fraction

from fractalq import config
from fractalq.fractal import depth
from fractalq.fractal.palettes import COLOUR_SCALES, PALETTES
from fractalq.fractal.request import FRACTALS, RenderRequest

Coords = tuple[int, int, int]  # zoom, x, y


class TileError(ValueError):
    """A tile request the explorer refuses; the message says why, on one line."""


@dataclasses.dataclass(frozen=True)
class TileQuery:
    """What every tile of one map layer shares."""

    fractal: str
    max_iter: int
    palette: str
    c_re: float
    c_im: float
    colour_scale: str = config.DEFAULT_COLOUR_SCALE


# The colour scales a map offers: auto measures a range per view, and every tile
# is a view of its own, so neighbouring tiles would not match.
TILE_COLOUR_SCALES = tuple(scale for scale in COLOUR_SCALES if scale != "auto")


def tile_range(zoom: int) -> tuple[int, int]:
    """Tile numbers (first, last + 1) served at ``zoom``, on both axes: the default
    view and as much again on each side, so the map can be panned off the set."""
    side = 1 << zoom
    return -side, 2 * side


@functools.cache
def _corner(fractal: str) -> tuple[Fraction, Fraction, Fraction]:
    """The top-left corner and the width of ``fractal``'s tile (0, 0, 0), exactly."""
    center_x, center_y, width = (Fraction(value) for value in FRACTALS[fractal][:3])
    return center_x - width / 2, center_y + width / 2, width


def tile_view(fractal: str, zoom: int, x: int, y: int) -> tuple[str, str, str]:
    """The view (centre x, centre y, width) of tile (zoom, x, y) of ``fractal``'s map,
    as exact decimal strings."""
    left, top, width = _corner(fractal)
    tile = width / (1 << zoom)
    view = {
        "center_x": left + (x + Fraction(1, 2)) * tile,
        "center_y": top - (y + Fraction(1, 2)) * tile,
        "view_width": tile,
    }
    # A power of two below the default view's decimals: an exact decimal spelling.
    return tuple(  # type: ignore[return-value]
        depth.canonical(depth.parse_decimal(name, value)) for name, value in view.items()
    )


def tile_request(query: TileQuery, coords: Coords) -> RenderRequest:
    zoom, x, y = coords
    center_x, center_y, width = tile_view(query.fractal, zoom, x, y)
    return RenderRequest.create(
        query.fractal,
        width=config.TILE_SIZE,
        height=config.TILE_SIZE,
        max_iter=query.max_iter,
        center_x=center_x,
        center_y=center_y,
        view_width=width,
        c_re=query.c_re,
        c_im=query.c_im,
        palette=query.palette,
        colour_scale=query.colour_scale,
    )


def _integer(text: str, name: str, low: int, high: int) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise TileError(f"{name} must be a whole number (got {text[:40]!r})") from None
    if not low <= value <= high:
        raise TileError(f"{name} must be from {low} to {high} (got {value})")
    return value


def _number(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise TileError(f"{name} must be a number (got {text[:40]!r})") from None
    if not math.isfinite(value):
        raise TileError(f"{name} must be a finite number (got {text[:40]!r})")
    return value + 0.0  # -0.0 and 0.0: one tile


def parse_query(params: Mapping[str, str]) -> TileQuery:
    """The layer's settings from a request's query; TileError on anything amiss."""
    fractal = params.get("fractal", config.DEFAULT_FRACTAL)
    if fractal not in FRACTALS:
        raise TileError(f"unknown fractal {fractal[:40]!r} (known: {', '.join(sorted(FRACTALS))})")
    palette = params.get("palette", config.DEFAULT_PALETTE)
    if palette not in PALETTES:
        raise TileError(f"unknown palette {palette[:40]!r} (known: {', '.join(sorted(PALETTES))})")
    max_iter = _integer(
        params.get("max_iter", str(config.DEFAULT_MAX_ITER)), "max_iter", 1, config.TILE_MAX_ITER
    )
    c_re, c_im = config.DEFAULT_JULIA_C
    if fractal == "julia":  # the constant is no part of a Mandelbrot tile
        c_re = _number(params.get("c_re", repr(c_re)), "c_re")
        c_im = _number(params.get("c_im", repr(c_im)), "c_im")
    scale = params.get("colour_scale", config.DEFAULT_COLOUR_SCALE)
    if scale not in TILE_COLOUR_SCALES:
        raise TileError(
            f"unknown map colour scale {scale[:40]!r} (known: {', '.join(TILE_COLOUR_SCALES)})"
        )
    return TileQuery(fractal, max_iter, palette, c_re, c_im, scale)


def parse_coords(text: str) -> Coords:
    """``z/x/y``, checked against the map's zoom levels and extent."""
    parts = text.split("/")
    if len(parts) != 3:
        raise TileError(f"a tile is zoom/x/y (got {text[:40]!r})")
    zoom = _integer(parts[0], "zoom", 0, config.TILE_MAX_ZOOM)
    first, end = tile_range(zoom)
    x = _integer(parts[1], "tile x", first, end - 1)
    y = _integer(parts[2], "tile y", first, end - 1)
    return zoom, x, y


def parse_tile_list(text: str) -> list[Coords]:
    """A comma-separated list of ``z/x/y``: 1 to MAX_TILES_PER_REQUEST tiles."""
    items = text.split(",") if text else []
    if not 1 <= len(items) <= config.MAX_TILES_PER_REQUEST:
        raise TileError(
            f"ask for 1 to {config.MAX_TILES_PER_REQUEST} tiles at a time (got {len(items)})"
        )
    return [parse_coords(item) for item in items]
