"""The dashboard's server side, in-process: event stream, previews, sessions, forms.

A real broker and service behind the real aiohttp app (aiohttp's test server
on 127.0.0.1); workers are played by calling the broker directly.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import itertools
import json
import pathlib
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient as BaseClient
from aiohttp.test_utils import TestServer
from PIL import Image

from fractalq import config
from fractalq.coordinator import validation
from fractalq.coordinator.broker import Broker
from fractalq.coordinator.http import make_app
from fractalq.coordinator.policy import Caller
from fractalq.coordinator.service import CoordinatorService
from fractalq.coordinator.settings import CoordinatorSettings
from fractalq.coordinator.web import actions
from fractalq.coordinator.web.app import TICKER
from fractalq.coordinator.web.events import Ticker
from fractalq.coordinator.web.preview import Previews
from fractalq.coordinator.web.session import Sessions
from fractalq.fractal.render import render_rows
from fractalq.fractal.request import RenderRequest
from fractalq.images import render_job
from fractalq.preview import band_preview, band_result, preview_size
from fractalq.proto import fractalq_pb2 as pb
from fractalq.security.tokens import Identity, Role, TokenTable, default_holder
from fractalq.tasks.band import render_band
from fractalq.tasks.registry import TaskContext

TestClient = BaseClient[web.Request, web.Application]
READER, CLIENT, WORKER = "r" * 20, "c" * 20, "w" * 20


def _run(test: Callable[[], Awaitable[None]]) -> None:
    """Run an async test on a loop of its own, in a thread: the browser tests'
    Playwright keeps an event loop running in the main thread."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(lambda: asyncio.run(test())).result()  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def served(secure: bool = False) -> AsyncIterator[tuple[CoordinatorService, TestClient]]:
    """A service behind the real app; with ``secure``, role tokens (the names above)."""
    service = CoordinatorService(Broker(), CoordinatorSettings())
    tokens = None
    if secure:
        tokens = TokenTable([(Role.READER, READER), (Role.CLIENT, CLIENT), (Role.WORKER, WORKER)])
    client = TestClient(TestServer(make_app(service, tokens)))
    await client.start_server()
    try:
        yield service, client
    finally:
        await client.close()


async def _submit_render(service: CoordinatorService, request: RenderRequest, bands: int) -> str:
    response = await service.submit_job(render_job(request, bands, 10))
    return response.job.job_id


def _complete_bands(service: CoordinatorService, count: int) -> None:
    """A worker's part: lease ``count`` bands, run the band task, report their results."""
    broker = service.broker
    worker = broker.workers.get("w") or broker.registry.register("w", ("fractal.band",), 64, "h", 0)
    with tempfile.TemporaryDirectory() as folder:
        for task in broker.lease(worker, count, 1.0):
            context = TaskContext(pathlib.Path(folder).as_uri(), task.job_id, task.index)
            result = render_band(task.payload, context)
            assert broker.complete(worker, task.job_id, task.index, task.attempt, result, 1.0)


# ---- the event stream ---------------------------------------------------------------


def test_one_snapshot_per_tick_whatever_the_number_of_watchers() -> None:
    _run(_one_snapshot_per_tick_whatever_the_number_of_watchers)


async def _one_snapshot_per_tick_whatever_the_number_of_watchers() -> None:
    broker = Broker()
    ticker = Ticker(broker, Previews(), tls=False, images=False)
    streams = [ticker.watch() for _ in range(50)]
    firsts = [await anext(stream) for stream in streams]  # each gets the history first
    assert all(first.startswith(b"event: history") for first in firsts)
    latest = [await anext(stream) for stream in streams]  # and the snapshot of now
    assert ticker.snapshots == 1 and all(chunk is latest[0] for chunk in latest)
    waiting = [asyncio.ensure_future(anext(stream)) for stream in streams]
    await asyncio.sleep(0)
    ticker.sample()
    chunks = await asyncio.gather(*waiting)
    # One snapshot built and serialised for all fifty: the very same bytes object.
    assert ticker.snapshots == 2 and all(chunk is chunks[0] for chunk in chunks)
    assert chunks[0].startswith(b"event: snapshot\ndata: {")
    for stream in streams[1:]:
        await stream.aclose()
    # A stopping server ends the streams still open rather than wait for them.
    last = asyncio.ensure_future(anext(streams[0]))
    await asyncio.sleep(0)
    ticker.close()
    with pytest.raises(StopAsyncIteration):
        await last
    assert ticker.watchers == 0
    ticker.closed = False
    ticker.sample()
    assert ticker.snapshots == 2  # nobody watches: the history grows, no snapshot is built
    assert len(ticker.history) == 3


def test_the_stream_carries_stats_workers_jobs_and_labels() -> None:
    _run(_the_stream_carries_stats_workers_jobs_and_labels)


async def _the_stream_carries_stats_workers_jobs_and_labels() -> None:
    async with served() as (service, http):
        request = RenderRequest.create("mandelbrot", width=120, height=80, max_iter=32)
        job_id = await _submit_render(service, request, 4)
        _complete_bands(service, 2)
        response = await http.get("/api/events")
        assert response.headers["Content-Type"] == "text/event-stream"
        events: dict[str, object] = {}
        while "snapshot" not in events:
            kind = (await response.content.readline()).decode().strip().removeprefix("event: ")
            data = (await response.content.readline()).decode().removeprefix("data: ")
            await response.content.readline()
            events[kind] = json.loads(data)
        response.close()
        snapshot = events["snapshot"]
        assert isinstance(snapshot, dict)
        assert snapshot["stats"]["succeeded"] == 2 and snapshot["stats"]["queued"] == 2
        assert snapshot["stats"]["workers"] == 1 and snapshot["stats"]["idle"] == 1
        [row] = snapshot["jobs"]
        # Two bands of a mirrored render: each brings two preview pieces.
        assert row["id"] == job_id and row["succeeded"] == 2 and row["previews"] == 4
        assert row["labels"] == {"fractal": "mandelbrot", "size": "120x80"}
        assert http.app is not None and http.app[TICKER].snapshots >= 1


async def _first_snapshot(http: TestClient) -> dict[str, Any]:
    response = await http.get("/api/events")
    try:
        while True:
            kind = (await response.content.readline()).decode().strip().removeprefix("event: ")
            data = (await response.content.readline()).decode().removeprefix("data: ")
            await response.content.readline()
            if kind == "snapshot":
                found: dict[str, Any] = json.loads(data)
                return found
    finally:
        response.close()


def test_a_session_sees_and_changes_what_its_token_may_as_over_grpc() -> None:
    _run(_a_session_sees_and_changes_what_its_token_may_as_over_grpc)


async def _a_session_sees_and_changes_what_its_token_may_as_over_grpc() -> None:
    tokens = TokenTable(
        [(Role.CLIENT, "a" * 20, "alice"), (Role.CLIENT, "b" * 20, "bob"), (Role.READER, READER)]
    )
    service = CoordinatorService(Broker(), CoordinatorSettings(tokens=tokens))
    http = TestClient(TestServer(make_app(service, tokens)))
    await http.start_server()
    try:
        mine = await service.submit_job(pb.SubmitJobRequest(task_type="noop", count=1),
                                        Caller(Role.CLIENT, "alice"))  # fmt: skip
        theirs = await service.submit_job(pb.SubmitJobRequest(task_type="noop", count=1),
                                          Caller(Role.CLIENT, "bob"))  # fmt: skip
        alice, bob = mine.job.job_id, theirs.job.job_id
        assert (await http.post("/api/session", json={"token": "b" * 20})).status == 200
        session = await (await http.get("/api/session")).json()
        assert session == {"auth": True, "role": "client", "holder": "bob"}
        listed = await (await http.get("/api/jobs")).json()
        assert [job["jobId"] for job in listed["jobs"]] == [bob]
        assert (await http.get(f"/api/jobs/{alice}")).status == 403
        assert (await http.get(f"/api/jobs/{alice}/image.png")).status == 403
        assert (await http.post(f"/api/jobs/{alice}/cancel", json={})).status == 403
        assert (await http.post(f"/api/jobs/{bob}/cancel", json={})).status == 200
        # The live overview is bob's view: his jobs only, not alice's ids anywhere.
        snapshot = await _first_snapshot(http)
        assert [row["id"] for row in snapshot["jobs"]] == [bob]
        assert alice not in json.dumps(snapshot)
        # A reader's session watches every holder's jobs.
        assert (await http.post("/api/session", json={"token": READER})).status == 200
        snapshot = await _first_snapshot(http)
        assert {row["id"] for row in snapshot["jobs"]} == {alice, bob}
        assert (await http.post(f"/api/jobs/{alice}/cancel", json={})).status == 403
        assert service.refusals.counts["permission denied"] == 4
    finally:
        await http.close()


# ---- previews ----------------------------------------------------------------------


def test_preview_pieces_arrive_band_by_band() -> None:
    _run(_preview_pieces_arrive_band_by_band)


async def _preview_pieces_arrive_band_by_band() -> None:
    async with served() as (service, http):
        request = RenderRequest.create("mandelbrot", width=900, height=600, max_iter=64)
        job_id = await _submit_render(service, request, 6)
        empty = await (await http.get(f"/api/jobs/{job_id}/preview")).json()
        assert empty == {"size": None, "next": 0, "pieces": []}
        _complete_bands(service, 2)
        first = await (await http.get(f"/api/jobs/{job_id}/preview")).json()
        assert first["size"] == list(preview_size(900, 600)) == [512, 341]
        # A mirrored render: each band brings its rows' piece and its mirror rows'.
        assert first["next"] == 4 and len(first["pieces"]) == 4
        _complete_bands(service, 4)
        rest = await (await http.get(f"/api/jobs/{job_id}/preview?since=4")).json()
        assert rest["next"] == 12 and len(rest["pieces"]) == 8
        # Together the pieces cover every preview row exactly once.
        rows = sorted(tuple(piece["rows"]) for piece in first["pieces"] + rest["pieces"])
        assert rows[0][0] == 0 and rows[-1][1] == 341
        assert all(a[1] == b[0] for a, b in itertools.pairwise(rows))
        # And drawn together they are the image's preview.
        drawn = np.zeros((341, 512, 3), np.uint8)
        for piece in first["pieces"] + rest["pieces"]:
            top, bottom = piece["rows"]
            drawn[top:bottom] = np.asarray(Image.open(io.BytesIO(base64.b64decode(piece["jpeg"]))))
        rows_at = ((2 * np.arange(341) + 1) * 600) // (2 * 341)
        columns_at = ((2 * np.arange(512) + 1) * 900) // (2 * 512)
        sampled = render_rows(request, 0, 600)[rows_at][:, columns_at]
        assert np.abs(drawn.astype(int) - sampled.astype(int)).mean() < 4  # JPEG's changes


def test_preview_endpoint_refuses_bad_input() -> None:
    _run(_preview_endpoint_refuses_bad_input)


async def _preview_endpoint_refuses_bad_input() -> None:
    async with served() as (_, http):
        assert (await http.get("/api/jobs/nope/preview")).status == 404
        assert (await http.get("/api/jobs/bad$id/preview")).status == 400
        assert (await http.get("/api/jobs/x/preview?since=lots")).status == 400


def test_a_gigapixel_band_previews_in_a_few_rows() -> None:
    # A 32768-square image's band of 128 rows holds 2 of the preview's 512 rows.
    request = RenderRequest.create("mandelbrot", width=32768, height=32768, max_iter=1)
    rgb = render_rows(RenderRequest.create("mandelbrot", width=64, height=128, max_iter=1), 0, 128)
    rgb = rgb.repeat(512, axis=1)  # a band's worth of pixels, cheaply
    piece = band_preview(rgb, request.width, request.height, 128 * 100)
    assert piece is not None and piece["size"] == [512, 512]
    assert piece["rows"][1] - piece["rows"][0] == 2


def test_previews_stay_within_their_memory_bound() -> None:
    previews = Previews(max_jobs=3, max_bytes=10_000)
    broker = Broker()
    request = RenderRequest.create("mandelbrot", width=200, height=100, max_iter=16)
    rgb = render_rows(request, 0, 100)
    result = band_result(["k"], [band_preview(rgb, 200, 100, 0)])
    for n in range(6):
        spec = render_job(request, 1, 10, job_id=f"job-{n}")
        job, _ = broker.submit(
            validation.job_spec(
                task_type=spec.task_type,
                payloads=list(spec.payloads),
                payload=b"",
                count=0,
                priority=10,
                max_attempts=0,
                labels={},
                job_id=spec.job_id,
                limits=broker.limits,
            ),
            0.0,
            spec.job_id,
        )
        previews.add(job, 0, result)
        assert len(previews._jobs) <= 3 and previews.bytes <= 10_000
    assert previews.count("job-5") == 1 and previews.count("job-0") == 0
    previews.add(job, 0, b"jobs/x/bands/000000-000100.png")  # an older worker's result
    previews.add(job, 0, b'{"preview": {"size": [1e9, 2], "rows": [0, 1], "jpeg": ""}}')
    assert previews.count("job-5") == 1


# ---- sessions and roles -----------------------------------------------------------


def test_a_token_becomes_a_session_cookie_of_its_role() -> None:
    _run(_a_token_becomes_a_session_cookie_of_its_role)


async def _a_token_becomes_a_session_cookie_of_its_role() -> None:
    async with served(secure=True) as (service, secured):
        assert (await secured.get("/")).status == 200  # the page loads without a token
        assert (await secured.get("/static/main.js")).status == 200
        assert (await secured.get("/api/stats")).status == 401
        assert await (await secured.get("/api/session")).json() == {
            "auth": True,
            "role": None,
            "holder": None,
        }
        refused = service.refusals.counts["unauthenticated"]
        wrong = await secured.post("/api/session", json={"token": "x" * 20})
        assert wrong.status == 401 and (await wrong.json())["error"] == "that token is not valid"
        assert service.refusals.counts["unauthenticated"] == refused + 1
        assert (await secured.post("/api/session", json={"token": WORKER})).status == 403
        assert (await secured.post("/api/session", data=b"not json")).status == 401

        login = await secured.post("/api/session", json={"token": READER})
        assert login.status == 200
        cookie = login.cookies[config.SESSION_COOKIE]
        assert cookie["httponly"] and cookie["samesite"] == "Strict"
        assert READER not in cookie.value and int(cookie["max-age"]) == config.SESSION_LIFETIME
        assert (await secured.get("/api/stats")).status == 200
        assert await (await secured.get("/api/session")).json() == {
            "auth": True,
            "role": "reader",
            "holder": default_holder(READER),
        }
        # A reader watches; it may not submit or cancel.
        assert (await secured.post("/api/render", json={})).status == 403
        assert (await secured.post("/api/jobs/x/cancel", json={})).status == 403

        assert (await secured.post("/api/session", json={"token": CLIENT})).status == 200
        submitted = await secured.post("/api/render", json={"width": "64", "height": "32"})
        assert submitted.status == 200
        await secured.delete("/api/session")
        assert (await secured.get("/api/stats")).status == 401


def test_sessions_expire_and_are_bounded() -> None:
    now = [0.0]
    sessions = Sessions(lifetime=10, limit=2, clock=lambda: now[0])
    first = sessions.create(Identity(Role.READER, "r"))
    second = sessions.create(Identity(Role.CLIENT, "alice"))
    assert sessions.role(first) is Role.READER and sessions.role(second) is Role.CLIENT
    assert sessions.identity(second) == Identity(Role.CLIENT, "alice")
    sessions.create(Identity(Role.READER, "r"))
    assert sessions.role(first) is None and len(sessions) == 2  # the oldest made room
    now[0] = 10.0
    assert sessions.role(second) is None
    assert sessions.role("") is None and sessions.role("x" * 1000) is None


# ---- forms ---------------------------------------------------------------------------


def test_the_render_form_names_the_bad_field_and_changes_nothing() -> None:
    _run(_the_render_form_names_the_bad_field_and_changes_nothing)


async def _the_render_form_names_the_bad_field_and_changes_nothing() -> None:
    async with served() as (service, http):
        cases = {
            "width": {"width": "-5"},
            "height": {"height": "70000"},
            "regions": {"height": "10", "regions": "11"},
            "max-iter": {"max-iter": "2.5"},
            "palette": {"palette": "mauve"},
            "fractal": {"fractal": "sierpinski"},
            "priority": {"priority": "9999999"},
            "center-x": {"center-x": "nan"},
        }
        for field, form in cases.items():
            response = await http.post("/api/render", json=form)
            body = await response.json()
            assert response.status == 400 and body["field"] == field, (field, body)
        # What a form on another site can send (no preflight) is refused.
        plain = {"Content-Type": "text/plain"}
        assert (await http.post("/api/render", data=b"{}", headers=plain)).status == 415
        assert (await http.post("/api/jobs/x/cancel", headers=plain)).status == 415
        json_type = {"Content-Type": "application/json"}
        assert (await http.post("/api/render", data=b"[1", headers=json_type)).status == 400
        nested = b"[" * 100_000
        assert (await http.post("/api/render", data=nested, headers=json_type)).status == 400
        assert (await http.post("/api/tasks", json={"task": "nope"})).status == 400
        assert (
            await (await http.post("/api/tasks", json={"task": "sleep", "payload": "{"})).json()
        )["field"] == "payload"
        assert service.broker.jobs == {}
        ok = await http.post("/api/tasks", json={"task": "noop", "count": "3"})
        assert ok.status == 200 and (await ok.json())["total"] == 3


def test_the_render_form_keeps_a_deep_view_digit_for_digit() -> None:
    center = "-0.74364388703715870475219150611477640000000000000000000000000000000001"
    form = {"center-x": center, "center-y": "0.1318", "view-width": "1e-300", "width": "64"}
    request, _, _ = actions.render_request(form)
    assert request.deep
    assert (request.center_x, float(request.view_width)) == (center, 1e-300)
    with pytest.raises(actions.FieldError) as bad:
        actions.render_request({"view-width": "1e-3e"})
    assert bad.value.field == "view-width"


# ---- finished images -------------------------------------------------------------------


def test_without_storage_the_image_endpoint_says_why() -> None:
    _run(_without_storage_the_image_endpoint_says_why)


async def _without_storage_the_image_endpoint_says_why() -> None:
    async with served() as (service, http):
        request = RenderRequest.create("mandelbrot", width=64, height=32, max_iter=16)
        job_id = await _submit_render(service, request, 2)  # two bands: an assembly task
        unfinished = await http.get(f"/api/jobs/{job_id}/image.png")
        assert unfinished.status == 404 and "no image" in await unfinished.text()
        assert (await http.get("/api/jobs/nope/image.png")).status == 404
        _complete_bands(service, 2)
        broker = service.broker
        worker = broker.registry.register("a", ("fractal.assemble",), 1, "h", 2.0)
        [final] = broker.lease(worker, 1, 2.0)
        result = b'{"key": "jobs/x/image.png", "url": "s3://bucket/jobs/x/image.png", "bytes": 9}'
        assert broker.complete(worker, final.job_id, final.index, final.attempt, result, 2.0)
        response = await http.get(f"/api/jobs/{job_id}/image.png")
        assert response.status == 404 and "--storage" in await response.text()


def test_a_preview_piece_shows_the_bands_pixels() -> None:
    request = RenderRequest.create("mandelbrot", width=1000, height=600, palette="fire")
    rgb = render_rows(request, 100, 200)
    piece = band_preview(rgb, 1000, 600, 100)
    assert piece is not None and piece["size"] == [512, 307]
    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(piece["jpeg"]))), dtype=int)
    first, last = piece["rows"]
    rows = [((2 * p + 1) * 600) // (2 * 307) - 100 for p in range(first, last)]
    columns = [((2 * q + 1) * 1000) // (2 * 512) for q in range(512)]
    expected = rgb[rows][:, columns].astype(int)
    assert decoded.shape == expected.shape
    assert np.abs(decoded - expected).mean() < 6  # the same picture, up to JPEG's losses
