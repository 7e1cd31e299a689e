"""The ``fractal.tile`` task type: render a few map tiles for the explorer, as PNGs.

Payload: ``{"tiles": [<RenderRequest JSON>, ...]}``, each tile a whole image of
its own (a tile is a render request, so it is the very PNG ``fractalq render``
makes of that request in one band). Result: the PNGs in payload order, each
preceded by its length and the microseconds its rendering and its encoding
took, in wall-clock and in CPU time (five 4-byte big-endian numbers, the
explorer's figures: on a busy machine the two differ);
:func:`split_result` cuts them apart. Tiles are small and wanted at once, so
they come back in the task's result rather than through storage; the type
declares a result limit to match (``config.TILE_RESULT_BYTES``).
"""

from __future__ import annotations

import dataclasses
import io
import json
import struct
import time

import numpy as np
import numpy.typing as npt

from fractalq import config
from fractalq.fractal.png import PngWriter
from fractalq.fractal.render import render_rows
from fractalq.fractal.request import RenderRequest
from fractalq.tasks.registry import InvalidPayload, TaskContext, task_type

TASK_TYPE = "fractal.tile"
# Tiles of one task: what the result limit holds even when nothing compresses.
MAX_TILES = config.TILE_RESULT_BYTES // (3 * config.TILE_SIZE * config.TILE_SIZE + 4096)
# Length; render and encode microseconds, wall-clock; the same in the thread's CPU time.
_HEADER = struct.Struct(">IIIII")


def tile_payload(requests: list[RenderRequest]) -> bytes:
    return json.dumps({"tiles": [json.loads(r.to_json()) for r in requests]}).encode()


def parse_payload(payload: bytes) -> list[RenderRequest]:
    try:
        tiles = json.loads(payload)["tiles"]
        if not isinstance(tiles, list):
            raise TypeError("tiles is not a list")
        requests = [RenderRequest.from_json(json.dumps(tile)) for tile in tiles]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise InvalidPayload(f"not a tile payload: {error}") from None
    if not 1 <= len(requests) <= MAX_TILES:
        raise InvalidPayload(f"a tile task holds 1 to {MAX_TILES} tiles, not {len(requests)}")
    for request in requests:
        if request.width > config.TILE_SIZE or request.height > config.TILE_SIZE:
            raise InvalidPayload(f"a tile is at most {config.TILE_SIZE} pixels a side")
    return requests


def png_bytes(rgb: npt.NDArray[np.uint8]) -> bytes:
    """A whole PNG of RGB rows, by the same encoder as every band and image."""
    out = io.BytesIO()
    with PngWriter(out, rgb.shape[1], rgb.shape[0]) as writer:
        writer.write_rows(rgb)
    return out.getvalue()


@dataclasses.dataclass(frozen=True)
class Tile:
    png: bytes
    render_us: int = 0
    encode_us: int = 0
    render_cpu_us: int = 0
    encode_cpu_us: int = 0


def _us(seconds: float) -> int:
    return min(round(seconds * 1e6), 0xFFFFFFFF)


def render_tile(request: RenderRequest) -> Tile:
    wall, cpu = time.perf_counter(), time.thread_time()
    rgb = render_rows(request, 0, request.height)
    wall_rendered, cpu_rendered = time.perf_counter(), time.thread_time()
    png = png_bytes(rgb)
    return Tile(
        png,
        _us(wall_rendered - wall),
        _us(time.perf_counter() - wall_rendered),
        _us(cpu_rendered - cpu),
        _us(time.thread_time() - cpu_rendered),
    )


def join_result(tiles: list[Tile]) -> bytes:
    return b"".join(
        _HEADER.pack(
            len(tile.png), tile.render_us, tile.encode_us, tile.render_cpu_us, tile.encode_cpu_us
        )
        + tile.png
        for tile in tiles
    )


def split_result(result: bytes) -> list[Tile]:
    """The tiles of a tile task's result; ValueError if it is cut short."""
    tiles, offset = [], 0
    while offset < len(result):
        if offset + _HEADER.size > len(result):
            raise ValueError("a tile result is cut short")
        length, *times = _HEADER.unpack_from(result, offset)
        offset += _HEADER.size
        if offset + length > len(result):
            raise ValueError("a tile result is cut short")
        tiles.append(Tile(result[offset : offset + length], *times))
        offset += length
    return tiles


def _check(payload: bytes) -> None:
    parse_payload(payload)


def _pixels(payload: bytes) -> int:
    return sum(request.width * request.height for request in parse_payload(payload))


def _warm() -> None:
    render_tile(RenderRequest.create("mandelbrot", width=8, height=8))


@task_type(
    TASK_TYPE,
    check=_check,
    cpu_bound=True,
    warm=_warm,
    warm_first=True,
    time_limit=config.TILE_TIMEOUT,
    max_result_bytes=config.TILE_RESULT_BYTES,
    pixels=_pixels,
)
def render_tiles(payload: bytes, context: TaskContext) -> bytes:
    return join_result([render_tile(request) for request in parse_payload(payload)])
