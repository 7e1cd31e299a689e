"""The explorer (/explore) in a real browser against a real coordinator and workers.

Tiles appear, a zoom step fetches the next zoom level's tiles, "render this
view" submits a normal render job of the view on screen; with tokens on, the
page asks for one and tiles load after login. Screenshots are saved as
artifacts (tests/artifacts/test_*.png).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import browser
from playwright.sync_api import Browser, Request, expect
from procs import ProcessGroup, Trust, wait_until

TIMEOUT = 30_000  # ms, Playwright's unit
LOADED = "#map .leaflet-tile-loaded"


def _zooms(requests: list[Request]) -> set[int]:
    """The zoom levels of the tiles the page asked for."""
    levels = set()
    for request in requests:
        if "/api/explore/tiles?" in request.url:
            query = request.url.split("tiles=", 1)[1].split("&", 1)[0]
            levels |= {int(tile.split("/")[0]) for tile in query.split(",")}
    return levels


def test_the_explorer_shows_tiles_zooms_and_renders_the_view(
    page: browser.Page, cluster: ProcessGroup
) -> None:
    coordinator = cluster.start_coordinator()
    for n in range(2):
        cluster.start_worker(name=f"worker{n}")
    client = coordinator.client()
    wait_until(lambda: len(client.stats().workers) == 2, message="two workers")
    requests: list[Request] = []
    page.page.on("request", lambda request: requests.append(request))

    page.page.goto(f"http://127.0.0.1:{coordinator.http_port}/explore")
    expect(page.page.locator(LOADED).first).to_be_visible(timeout=TIMEOUT)
    page.page.wait_for_function("!window.fractalqExplorer.layer.isLoading()", timeout=TIMEOUT)
    zoom = page.page.evaluate("window.fractalqExplorer.map.getZoom()")
    assert _zooms(requests) == {zoom}
    assert page.page.locator(LOADED).count() >= 4  # a screen of 256-pixel tiles

    page.page.locator(".leaflet-control-zoom-in").click()
    page.page.wait_for_function(
        f"window.fractalqExplorer.map.getZoom() === {zoom + 1}"
        " && !window.fractalqExplorer.layer.isLoading()",
        timeout=TIMEOUT,
    )
    assert zoom + 1 in _zooms(requests)
    expect(page.page.get_by_test_id("explore-status")).to_contain_text(f"zoom {zoom + 1}")
    page.screenshot("-zoomed")
    shared = page.page.url  # the view is in the address: opening it again shows it
    assert f"z={zoom + 1}" in shared and "max_iter=500" in shared
    page.page.goto("about:blank")
    page.page.goto(shared)
    page.page.wait_for_function(
        "window.fractalqExplorer && window.fractalqExplorer.layer"
        " && !window.fractalqExplorer.layer.isLoading()",
        timeout=TIMEOUT,
    )
    assert page.page.evaluate("window.fractalqExplorer.map.getZoom()") == zoom + 1

    page.page.get_by_test_id("explore-render-open").click()
    panel = page.page.get_by_test_id("explore-render")
    expect(panel).to_be_visible()
    panel.locator("input[name=width]").fill("320")
    panel.locator("input[name=height]").fill("200")
    page.page.get_by_test_id("explore-render-submit").click()
    expect(panel).to_contain_text("submitted", timeout=TIMEOUT)
    job_id = panel.locator("#render-done").inner_text().split()[1]
    job = client.job(job_id)
    assert job.task_type == "fractal.band" and job.total == 8
    assert job.labels["via"] == "dashboard"
    assert page.errors == []


def test_with_tokens_tiles_load_after_login(
    chromium: Browser, cluster: ProcessGroup, tmp_path: Path
) -> None:
    trust = Trust(tmp_path)
    coordinator = cluster.start_coordinator(trust=trust)
    cluster.start_worker()
    client = coordinator.client()
    wait_until(lambda: len(client.stats().workers) == 1, message="a worker")
    opened = browser.Page(chromium, "test_explore_with_tokens", ignore_https_errors=True)
    try:
        page = opened.page
        page.goto(f"https://127.0.0.1:{coordinator.http_port}/explore")
        token = page.get_by_test_id("token")
        expect(token).to_be_visible(timeout=TIMEOUT)
        token.fill(trust.tokens["reader"])  # a reader may explore
        page.get_by_test_id("login-submit").click()
        expect(page.locator(LOADED).first).to_be_visible(timeout=TIMEOUT)
        assert opened.errors == []
    finally:
        opened.close()


def test_zooming_on_drops_the_tiles_of_the_levels_passed(
    page: browser.Page, cluster: ProcessGroup
) -> None:
    coordinator = cluster.start_coordinator()
    cluster.start_worker()
    client = coordinator.client()
    wait_until(lambda: len(client.stats().workers) == 1, message="a worker")
    url = f"http://127.0.0.1:{coordinator.http_port}"
    page.page.goto(f"{url}/explore")
    page.page.wait_for_function("window.fractalqExplorer && window.fractalqExplorer.layer")
    # Inside the period-3 bulb every pixel runs every iteration: slow tiles.
    page.page.get_by_test_id("explore-max-iter").fill("2000")
    page.page.locator("#controls button[type=submit]").click()
    x, y = -0.1226, 0.7449
    lat, lng = (y - 1.75) * 256 / 3.5, (x + 2.25) * 256 / 3.5
    page.page.evaluate(f"window.fractalqExplorer.map.setView([{lat}, {lng}], 7)")
    for _ in range(2):
        page.page.locator(".leaflet-control-zoom-in").click()

    def stats() -> dict[str, int]:
        answer = page.page.request.get(f"{url}/api/explore/stats")
        data: dict[str, int] = answer.json()
        return data

    wait_until(lambda: stats()["abandoned"] >= 1, message="a passed level's job cancelled")
    page.page.wait_for_function("!window.fractalqExplorer.layer.isLoading()", timeout=TIMEOUT)
    assert page.page.evaluate("window.fractalqExplorer.map.getZoom()") == 9
    wait_until(lambda: stats()["jobs_in_flight"] == 0, message="no tile job left")
    assert client.stats().jobs_active == 0
    assert page.errors == []


def test_bad_tile_requests_get_a_400_and_never_reach_the_queue(cluster: ProcessGroup) -> None:
    coordinator = cluster.start_coordinator()
    api = f"http://127.0.0.1:{coordinator.http_port}/api/explore"

    def get(path: str) -> tuple[int, str, dict[str, str]]:
        try:
            with urllib.request.urlopen(f"{api}/{path}", timeout=10) as answer:
                return answer.status, answer.read().decode(), dict(answer.headers)
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(), dict(error.headers)

    for path, message in [
        ("tiles?tiles=40/0/0", "zoom must be from 0 to 36 (got 40)\n"),
        ("tiles?tiles=1/0/0&max_iter=1e9", "max_iter must be a whole number (got '1e9')\n"),
        ("tiles?tiles=1/0/0&palette=neon", "unknown palette 'neon' (known: "),
        ("tiles?tiles=1/0/0&max_iter=99999999", "max_iter must be from 1 to 10000"),
        ("tiles?tiles=1/a/0", "tile x must be a whole number (got 'a')\n"),
        ("tile/1/0/9.png", "tile y must be from -2 to 3 (got 9)\n"),
        ("tiles?tiles=1/0/0&fractal=julia&c_re=inf", "c_re must be a finite number"),
    ]:
        status, body, _ = get(path)
        assert (status, body[: len(message)]) == (400, message), path
        assert body.count("\n") == 1
    status, body, headers = get("tiles?tiles=1/0/0")  # good, but no worker to render it
    assert (status, body) == (503, "no worker serves fractal.tile tasks\n")
    assert headers["Retry-After"] == "1"
    _, stats, _ = get("stats")
    assert json.loads(stats)["jobs"] == 0 and json.loads(stats)["busy"] == 1
    assert coordinator.client().stats().jobs_active == 0
