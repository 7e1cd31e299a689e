"""HTTP routes of the explorer (/explore): its page, its settings and its tiles.

* ``GET /explore``: the page (Leaflet, vendored under ``static/vendor``).
* ``GET /api/explore/config``: tile size, zoom levels, fractals and palettes.
* ``GET /api/explore/stats``: tiles asked, cached, rendered; time spent where.
* ``GET /api/explore/tiles?tiles=z/x/y,...&fractal=&max_iter=&palette=&c_re=&c_im=``:
  the page's one request per map update, answered as a stream of frames as
  the tiles are ready (cached ones first): each frame is the tile's position
  in the list, 0 or 1 (a PNG follows, or a one-line error), and the length of
  what follows, three big-endian 32-bit numbers, then the bytes. One request
  for a whole screen keeps the browser's six connections per server from
  queueing tiles behind each other. A GET, so that a reader token may explore.
* ``GET /api/explore/tile/{z}/{x}/{y}.png?...``: one tile, cacheable by any
  HTTP cache (a tile's bytes are a function of its URL).

A bad request is a 400 with a one-line message and reaches no queue; when the
explorer may not queue more (:class:`.tilerender.Busy`), a 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import dataclasses
import struct
import time
from pathlib import Path

from aiohttp import web

from fractalq import config
from fractalq.coordinator.service import CoordinatorService
from fractalq.coordinator.web.tilerender import Busy, TileFailed, TileRenderer
from fractalq.coordinator.web.tiles import (
    TILE_COLOUR_SCALES,
    TileError,
    parse_coords,
    parse_query,
    parse_tile_list,
    tile_request,
)
from fractalq.fractal.palettes import PALETTES
from fractalq.fractal.request import FRACTALS

STATIC = Path(__file__).parent / "static"
RENDERER = web.AppKey("explore_renderer", TileRenderer)
_FRAME = struct.Struct(">III")
# How often a tile request that waits checks whether its browser is still there.
DISCONNECT_CHECK = 0.1
OK, FAILED = 0, 1


@dataclasses.dataclass
class Served:
    requests: int = 0  # tile-list requests answered in full
    request_us: int = 0  # arrival to last frame written, summed


def _bad(error: TileError) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=f"{error}\n")


def _busy(error: Busy) -> web.HTTPServiceUnavailable:
    return web.HTTPServiceUnavailable(text=f"{error}\n", headers={"Retry-After": "1"})


def explore_config() -> dict[str, object]:
    return {
        "tile_size": config.TILE_SIZE,
        "max_zoom": config.TILE_MAX_ZOOM,
        "max_iter": config.TILE_MAX_ITER,
        "max_tiles": config.MAX_TILES_PER_REQUEST,
        "default_max_iter": config.DEFAULT_MAX_ITER,
        "default_palette": config.DEFAULT_PALETTE,
        "palettes": sorted(PALETTES),
        "colour_scales": list(TILE_COLOUR_SCALES),
        "default_colour_scale": config.DEFAULT_COLOUR_SCALE,
        "fractals": {
            name: {"center_x": view[0], "center_y": view[1], "view_width": view[2]}
            for name, view in FRACTALS.items()
        },
        "julia_c": list(config.DEFAULT_JULIA_C),
    }


def add_routes(app: web.Application, service: CoordinatorService) -> None:
    """Mount the explorer on the coordinator's HTTP app."""
    renderer = TileRenderer(service.broker, clock=service.clock, submit=service.submit_internal)
    explorer = Explorer(renderer)
    app[RENDERER] = explorer.renderer
    app.router.add_get("/explore", explorer.page)
    app.router.add_get("/api/explore/config", explorer.settings)
    app.router.add_get("/api/explore/tiles", explorer.tiles)
    app.router.add_get("/api/explore/stats", explorer.stats)
    app.router.add_get("/api/explore/tile/{z}/{x}/{y}.png", explorer.one_tile)


class Explorer:
    """The explorer's handlers, around one tile renderer shared by every browser."""

    def __init__(self, renderer: TileRenderer) -> None:
        self.renderer = renderer
        self.served = Served()

    async def page(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "explore.html")

    async def settings(self, request: web.Request) -> web.Response:
        return web.json_response(explore_config())

    async def stats(self, request: web.Request) -> web.Response:
        renderer, cache = self.renderer, self.renderer.cache
        return web.json_response(
            {
                **dataclasses.asdict(renderer.stats),
                **dataclasses.asdict(self.served),
                "cache_tiles": len(cache),
                "cache_bytes": cache.size,
                "cache_evictions": cache.evictions,
                "jobs_in_flight": renderer.jobs_in_flight,
            }
        )

    async def tiles(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            query = parse_query(request.query)
            coords = parse_tile_list(request.query.get("tiles", ""))
            futures = self.renderer.tiles([tile_request(query, tile) for tile in coords])
        except TileError as error:
            raise _bad(error) from None
        except Busy as error:
            raise _busy(error) from None
        response = web.StreamResponse(
            headers={"Content-Type": "application/octet-stream", "Cache-Control": "no-store"}
        )
        await response.prepare(request)
        try:
            complete = await self._stream(request, response, futures)
        except ConnectionError:  # the browser went while a frame was written
            return response
        finally:
            self.renderer.release(futures)
        if complete:
            await response.write_eof()
            self.served.requests += 1
            self.served.request_us += round((time.perf_counter() - started) * 1e6)
        return response

    async def _stream(
        self,
        request: web.Request,
        response: web.StreamResponse,
        futures: list[asyncio.Future[bytes]],
    ) -> bool:
        """Write each tile's frame as it is ready; False if the browser went first."""
        places: dict[asyncio.Future[bytes], list[int]] = {}
        for index, future in enumerate(futures):
            places.setdefault(future, []).append(index)
        waiting = set(places)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.renderer.timeout
        while waiting:
            ready = {future for future in waiting if future.done()}
            remaining = deadline - loop.time()
            if not ready and remaining <= 0:  # past the deadline: the rest fail
                self.renderer.expire()
                ready = set(waiting)
            elif not ready:
                ready, _ = await asyncio.wait(
                    waiting,
                    timeout=min(remaining, DISCONNECT_CHECK),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not ready:
                    if request.transport is None or request.transport.is_closing():
                        return False  # nothing more to send
                    continue
            waiting -= ready
            await response.write(
                b"".join(_frame(index, future) for future in ready for index in places[future])
            )
        return True

    async def one_tile(self, request: web.Request) -> web.Response:
        info = request.match_info
        try:
            query = parse_query(request.query)
            coords = parse_coords(f"{info['z']}/{info['x']}/{info['y']}")
            (future,) = self.renderer.tiles([tile_request(query, coords)])
        except TileError as error:
            raise _bad(error) from None
        except Busy as error:
            raise _busy(error) from None
        try:
            png = await asyncio.wait_for(asyncio.shield(future), self.renderer.timeout)
        except TimeoutError:
            self.renderer.expire()
            raise web.HTTPGatewayTimeout(text="the tile was not rendered in time\n") from None
        except TileFailed as error:
            raise web.HTTPBadGateway(text=f"{error}\n") from None
        finally:
            self.renderer.release([future])
        return web.Response(
            body=png,
            content_type="image/png",
            headers={"Cache-Control": "public, max-age=31536000, immutable"},
        )


def _frame(index: int, future: asyncio.Future[bytes]) -> bytes:
    if not future.done():
        body, status = b"the tile was not rendered in time", FAILED
    elif future.cancelled():
        body, status = b"cancelled", FAILED
    elif (error := future.exception()) is not None:
        body, status = (str(error).splitlines() or ["failed"])[0].encode(), FAILED
    else:
        body, status = future.result(), OK
    return _FRAME.pack(index, status, len(body)) + body
