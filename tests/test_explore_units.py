"""The explorer's server side without a network: tile mapping, checks, cache, batching.

The batching tests use a real :class:`Broker` and run the real ``fractal.tile``
task function where a worker would, so a tile goes the whole way: request,
transient job, lease, render, result, cache, answer.
"""

from __future__ import annotations

import asyncio
import io
import zlib
from fractions import Fraction

import numpy as np
import pytest
from listening import Recorder

from fractalq import config, tasks
from fractalq.coordinator.broker import Broker, JobSpec, NullJournal
from fractalq.coordinator.jobs import Job
from fractalq.coordinator.web.tilecache import TileCache
from fractalq.coordinator.web.tilerender import Busy, TileFailed, TileRenderer
from fractalq.coordinator.web.tiles import (
    TileError,
    TileQuery,
    parse_coords,
    parse_query,
    parse_tile_list,
    tile_request,
    tile_view,
)
from fractalq.fractal import PngWriter, RenderRequest, render_rows
from fractalq.tasks.tile import TASK_TYPE, split_result, tile_payload

QUERY = TileQuery("mandelbrot", 64, "classic", *config.DEFAULT_JULIA_C)


# ---- the map's coordinates ----------------------------------------------------


def _view(fractal: str, zoom: int, x: int, y: int) -> tuple[Fraction, ...]:
    return tuple(Fraction(value) for value in tile_view(fractal, zoom, x, y))


def test_zoom_0_is_the_default_view_and_each_zoom_halves_the_tiles() -> None:
    for fractal, view in (("mandelbrot", config.DEFAULT_MANDELBROT_VIEW), ("julia", (0, 0, 3))):
        assert _view(fractal, 0, 0, 0) == tuple(Fraction(v) for v in view)
        x, y, width = _view(fractal, 3, 5, 2)
        assert width == Fraction(view[2]) / 8
        # Tile (5, 2) at zoom 3: its left edge is 5 tiles right of the view's.
        assert x - width / 2 == Fraction(view[0]) - Fraction(view[2]) / 2 + 5 * width
        assert y + width / 2 == Fraction(view[1]) + Fraction(view[2]) / 2 - 2 * width


def test_a_tiles_four_children_tile_it_exactly() -> None:
    zoom, x, y = 20, 393_000, 301_000
    parent_x, parent_y, width = _view("mandelbrot", zoom, x, y)
    for dx in (0, 1):
        for dy in (0, 1):
            cx, cy, w = _view("mandelbrot", zoom + 1, 2 * x + dx, 2 * y + dy)
            assert w == width / 2
            assert cx == parent_x + (2 * dx - 1) * width / 4
            assert cy == parent_y - (2 * dy - 1) * width / 4


def test_the_deepest_tiles_are_exact_decimal_views() -> None:
    zoom = config.TILE_MAX_ZOOM
    x, y = (1 << zoom) // 3, (1 << zoom) // 7
    exact_width = Fraction(7, 2) / (1 << zoom)
    exact_x = Fraction(-9, 4) + (x + Fraction(1, 2)) * exact_width
    assert _view("mandelbrot", zoom, x, y)[0] == exact_x
    request = tile_request(QUERY, (zoom, x, y))
    assert Fraction(request.center_x) == exact_x and Fraction(request.view_width) == exact_width
    assert request.deep  # past float64's depth: rendered by perturbation, like any deep view


def test_equal_tiles_are_equal_requests_and_a_mandelbrot_tile_ignores_c() -> None:
    a = tile_request(QUERY, (4, 3, 5))
    b = tile_request(parse_query({"max_iter": "64", "c_re": "0.3"}), (4, 3, 5))
    assert a == b and a.to_json() == b.to_json()
    julia = parse_query({"fractal": "julia", "max_iter": "64", "c_re": "0.3", "c_im": "-0"})
    assert (julia.c_re, julia.c_im) == (0.3, 0.0)
    assert tile_request(julia, (4, 3, 5)).key() != a.key()


@pytest.mark.parametrize(
    ("params", "tiles", "message"),
    [
        ({}, "37/0/0", "zoom must be from 0 to 36 (got 37)"),
        ({}, "-1/0/0", "zoom must be from 0 to 36 (got -1)"),
        ({}, "2/12/0", "tile x must be from -4 to 7 (got 12)"),
        ({}, "2/x/0", "tile x must be a whole number (got 'x')"),
        ({}, "2/0", "a tile is zoom/x/y (got '2/0')"),
        ({}, "", "ask for 1 to 160 tiles at a time (got 0)"),
        ({}, ",".join(["1/0/0"] * 161), "ask for 1 to 160 tiles at a time (got 161)"),
        ({"palette": "nope"}, "0/0/0", "unknown palette 'nope'"),
        ({"fractal": "burning-ship"}, "0/0/0", "unknown fractal 'burning-ship'"),
        ({"max_iter": "10001"}, "0/0/0", "max_iter must be from 1 to 10000 (got 10001)"),
        ({"max_iter": "1e9"}, "0/0/0", "max_iter must be a whole number (got '1e9')"),
        ({"fractal": "julia", "c_re": "nan"}, "0/0/0", "c_re must be a finite number"),
        ({"fractal": "julia", "c_im": "i"}, "0/0/0", "c_im must be a number (got 'i')"),
    ],
)
def test_bad_tile_requests_are_refused_with_one_line(
    params: dict[str, str], tiles: str, message: str
) -> None:
    with pytest.raises(TileError) as refused:
        parse_query(params)
        parse_tile_list(tiles)
    assert str(refused.value).startswith(message)
    assert "\n" not in str(refused.value)


def test_tile_lists_parse_in_order() -> None:
    assert parse_tile_list("0/0/0,3/-8/15") == [(0, 0, 0), (3, -8, 15)]
    assert parse_coords("36/0/1") == (36, 0, 1)


# ---- the cache ------------------------------------------------------------------


def test_the_cache_keeps_the_recently_used_within_its_bytes() -> None:
    cache = TileCache(capacity=30)
    cache.put(b"a", b"x" * 9)  # 10 bytes with its key
    cache.put(b"b", b"x" * 9)
    cache.put(b"c", b"x" * 9)
    assert cache.size == 30 and len(cache) == 3
    assert cache.get(b"a") == b"x" * 9  # a is now the most recent
    cache.put(b"d", b"y" * 9)  # b goes
    assert b"b" not in cache and all(key in cache for key in (b"a", b"c", b"d"))
    assert (cache.hits, cache.evictions) == (1, 1)
    assert cache.get(b"b") is None and cache.misses == 1
    cache.put(b"c", b"z" * 4)  # replaced: its size follows
    assert cache.size == 25
    cache.put(b"huge", b"x" * 100)  # larger than the whole cache: not kept, nothing dropped
    assert b"huge" not in cache and len(cache) == 3


# ---- tiles through the queue --------------------------------------------------------


def _png(request: RenderRequest) -> bytes:
    out = io.BytesIO()
    with PngWriter(out, request.width, request.height) as writer:
        writer.write_rows(render_rows(request, 0, request.height))
    return out.getvalue()


class RecordingJournal(NullJournal):
    def __init__(self) -> None:
        self.jobs: list[str] = []

    def job_added(self, job: Job) -> None:
        self.jobs.append(job.job_id)


def _broker() -> tuple[Broker, RecordingJournal]:
    journal = RecordingJournal()
    broker = Broker(journal=journal)
    return broker, journal


def _work(broker: Broker, worker_id: str = "w1", *, fail: bool = False) -> int:
    """Lease every ready task as a worker would, run it for real, report it; how many."""
    worker = broker.workers.get(worker_id) or broker.registry.register(
        worker_id, (TASK_TYPE,), 2, "host", 0.0
    )
    done = 0
    while leased := broker.lease(worker, 10, 0.0):
        for task in leased:
            assert task.task_type == TASK_TYPE
            if fail:
                broker.fail(worker, task.job_id, task.index, task.attempt, "boom", 0.0)
            else:
                result = tasks.get(TASK_TYPE).run(task.payload, tasks.TaskContext())
                broker.complete(worker, task.job_id, task.index, task.attempt, result, 0.0)
            done += 1
    return done


def test_tiles_render_through_a_transient_job_and_come_back_from_the_cache() -> None:
    async def scenario() -> None:
        broker, journal = _broker()
        broker.registry.register("w1", (TASK_TYPE,), 2, "host", 0.0)
        renderer = TileRenderer(broker, window=0.0)
        requests = [tile_request(QUERY, (2, x, 1)) for x in range(4)]
        futures = renderer.tiles([*requests, requests[0]])  # a tile twice: one render
        assert futures[0] is futures[4]
        await asyncio.sleep(0.01)  # the batch window
        [job] = [job for job in broker.jobs.values() if job.task_type == TASK_TYPE]
        assert job.priority == config.EXPLORE_PRIORITY < config.DEFAULT_PRIORITY
        assert job.transient and journal.jobs == []  # never written down
        assert _work(broker) == job.total
        pngs = [await future for future in futures]
        assert pngs[0] == _png(requests[0]) and pngs[3] == _png(requests[3])
        assert broker.get_job(job.job_id) is None  # forgotten once done
        assert len(renderer.cache) == 4 and renderer.stats.rendered == 4
        again = renderer.tiles(requests[1:3])  # served at once, no new job
        assert all(future.done() for future in again)
        assert [future.result() for future in again] == pngs[1:3]
        assert not broker.jobs and renderer.stats.cached == 3  # the duplicate and these two

    asyncio.run(scenario())


def test_a_failed_tile_job_fails_its_tiles_and_they_may_be_asked_again() -> None:
    async def scenario() -> None:
        broker, _ = _broker()
        renderer = TileRenderer(broker, window=0.0)
        broker.registry.register("w1", (TASK_TYPE,), 1, "host", 0.0)
        [future] = renderer.tiles([tile_request(QUERY, (1, 0, 0))])
        await asyncio.sleep(0.01)
        [job] = broker.jobs.values()
        for _ in range(job.max_attempts):
            broker.promote_due(float("inf"))
            _work(broker, fail=True)
        with pytest.raises(TileFailed, match="boom"):
            await future
        [again] = renderer.tiles([tile_request(QUERY, (1, 0, 0))])
        assert again is not future and not again.done()

    asyncio.run(scenario())


def test_the_explorer_bounds_what_it_queues() -> None:
    async def scenario() -> None:
        broker, _ = _broker()
        renderer = TileRenderer(broker, window=0.0, max_jobs=2, max_tiles=5)
        with pytest.raises(Busy, match=f"no worker serves {TASK_TYPE}"):
            renderer.tiles([tile_request(QUERY, (1, 0, 0))])
        broker.registry.register("w1", (TASK_TYPE,), 1, "host", 0.0)
        with pytest.raises(Busy, match="as many tiles"):
            renderer.tiles([tile_request(QUERY, (3, x, 0)) for x in range(6)])
        for x in range(2):
            renderer.tiles([tile_request(QUERY, (3, x, 0))])
            await asyncio.sleep(0.01)
        with pytest.raises(Busy, match="as many tiles"):
            renderer.tiles([tile_request(QUERY, (3, 5, 0))])
        assert broker.active == 2 and renderer.stats.busy == 3
        _work(broker)
        renderer.tiles([tile_request(QUERY, (3, 5, 0))])  # room again

    asyncio.run(scenario())


def test_tiles_nobody_waits_for_leave_the_queue() -> None:
    async def scenario() -> None:
        broker, _ = _broker()
        broker.registry.register("w1", (TASK_TYPE,), 1, "host", 0.0)
        renderer = TileRenderer(broker, window=0.0)
        first = renderer.tiles([tile_request(QUERY, (4, x, 4)) for x in range(3)])
        second = renderer.tiles([tile_request(QUERY, (4, 0, 4))])  # shares a tile
        renderer.release(second)  # still wanted by the first request
        await asyncio.sleep(0.01)
        [job] = broker.jobs.values()
        renderer.release(first)  # a browser zoomed on: nobody waits any more
        assert job.state.finished and renderer.stats.abandoned == 1
        assert broker.active == 0 and all(future.done() for future in first)
        unsent = renderer.tiles([tile_request(QUERY, (4, 9, 4))])
        renderer.release(unsent)  # gone within the batch window: never queued
        await asyncio.sleep(0.01)
        assert unsent[0].cancelled() and not broker.jobs

    asyncio.run(scenario())


def test_a_tile_job_nobody_takes_is_cancelled_after_the_timeout() -> None:
    async def scenario() -> None:
        now = [0.0]
        broker, _ = _broker()
        broker.registry.register("w1", (TASK_TYPE,), 1, "host", 0.0)
        renderer = TileRenderer(broker, clock=lambda: now[0], window=0.0, timeout=5.0)
        [future] = renderer.tiles([tile_request(QUERY, (1, 1, 1))])
        await asyncio.sleep(0.01)
        now[0] = 6.0
        renderer.expire()
        with pytest.raises(TileFailed, match="not rendered within 5 s"):
            await future
        assert broker.active == 0

    asyncio.run(scenario())


# ---- the task ---------------------------------------------------------------------


def _pixels(png: bytes) -> np.ndarray:
    """Decode an 8-bit RGB PNG whose rows all use the Sub filter (fractalq's)."""
    offset, data, size = 8, b"", (0, 0)
    while offset < len(png):
        length = int.from_bytes(png[offset : offset + 4], "big")
        kind, body = png[offset + 4 : offset + 8], png[offset + 8 : offset + 8 + length]
        if kind == b"IHDR":
            size = (int.from_bytes(body[:4], "big"), int.from_bytes(body[4:8], "big"))
        elif kind == b"IDAT":
            data += body
        offset += 12 + length
    width, height = size
    rows = np.frombuffer(zlib.decompress(data), np.uint8).reshape(height, 1 + 3 * width)
    assert (rows[:, 0] == 1).all()  # Sub
    return np.cumsum(rows[:, 1:].reshape(height, width, 3), axis=1, dtype=np.uint8)


def test_a_tile_is_the_png_of_its_request_and_its_result_may_pass_the_queue_limit() -> None:
    request = tile_request(QUERY, (3, 2, 3))
    result = tasks.get(TASK_TYPE).run(tile_payload([request] * 3), tasks.TaskContext())
    tiles = split_result(result)
    assert [tile.png for tile in tiles] == [_png(request)] * 3
    assert (_pixels(tiles[0].png) == render_rows(request, 0, request.height)).all()
    assert tasks.get(TASK_TYPE).max_result_bytes == config.TILE_RESULT_BYTES
    assert config.TILE_RESULT_BYTES > config.MAX_RESULT_BYTES
    with pytest.raises(ValueError, match="cut short"):
        split_result(result[:-1])


def test_the_broker_takes_a_tile_result_past_the_queue_limit_but_no_other() -> None:
    broker, _ = _broker()
    recorder = Recorder()
    broker.listeners.add(recorder)
    results = recorder.results
    worker = broker.registry.register("w1", (TASK_TYPE, "noop"), 2, "host", 0.0)
    big = b"x" * (config.MAX_RESULT_BYTES + 1)
    for task_type in (TASK_TYPE, "noop"):
        spec = JobSpec(task_type, None, b"{}", 1, 0, 1, {}, transient=True)
        broker.submit(spec, 0.0, f"job-{task_type}")
        [task] = broker.lease(worker, 1, 0.0)
        broker.complete(worker, task.job_id, 0, task.attempt, big, 0.0)
    assert results == [(TASK_TYPE, 0, len(big))]  # the noop's result failed its attempt
    assert broker.dead == 1
