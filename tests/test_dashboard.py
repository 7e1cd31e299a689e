"""The dashboard in a real browser (Debian's Chromium) against real processes.

One coordinator (reading the workers' storage folder) and two workers serve
the whole module; each test opens a fresh page. Screenshots of the overview
and of a render midway are saved as artifacts.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import browser
import pytest
from playwright.sync_api import Browser, expect
from procs import (
    SLOW_VIEW,
    Coordinator,
    ProcessGroup,
    Trust,
    fractalq,
    run_cli,
    start_zoom,
    wait_until,
)

from fractalq.proto import fractalq_pb2 as pb

TIMEOUT = 30_000  # ms, Playwright's unit


class Dash:
    def __init__(self, group: ProcessGroup, storage: str) -> None:
        self.group = group
        self.storage = storage
        assert group.coordinator is not None
        self.coordinator: Coordinator = group.coordinator
        self.url = f"http://127.0.0.1:{self.coordinator.http_port}/"


@pytest.fixture(scope="module")
def dash(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dash]:
    tmp = tmp_path_factory.mktemp("dashboard")
    storage = (tmp / "storage").as_uri()
    group = ProcessGroup(tmp)
    try:
        group.start_coordinator(extra=("--storage", storage))
        for n in range(2):
            group.start_worker(storage=storage, name=f"worker{n}")
        client = group.coordinator.client() if group.coordinator else None
        assert client is not None
        wait_until(lambda: len(client.stats().workers) == 2, message="two workers")
        yield Dash(group, storage)
    finally:
        group.stop()


def _value(page: browser.Page, card: str) -> str:
    return page.page.get_by_test_id(f"stat-{card}").locator(".value").inner_text()


def test_the_overview_follows_a_job_submitted_from_the_command_line(
    page: browser.Page, dash: Dash
) -> None:
    page.page.goto(dash.url)
    expect(page.page.get_by_test_id("stat-workers").locator(".value")).to_have_text(
        "2", timeout=TIMEOUT
    )
    before = int(_value(page, "succeeded"))
    submitted = run_cli("submit", "--coordinator", dash.coordinator.address, "--task", "sleep",
                        "--payload", '{"seconds": 0.4}', "--count", "6")  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.split()[-1]
    row = page.page.locator(f'[data-testid="job-row"][data-job-id="{job_id}"]')
    expect(row).to_be_visible(timeout=TIMEOUT)
    # Busy workers show while it runs; the cards settle on the job's six tasks.
    expect(page.page.get_by_test_id("stat-leased").locator(".value")).not_to_have_text(
        "0", timeout=TIMEOUT
    )
    page.screenshot("-overview")
    expect(row.get_by_test_id("job-state")).to_have_text("succeeded", timeout=TIMEOUT)
    expect(page.page.get_by_test_id("stat-succeeded").locator(".value")).to_have_text(
        str(before + 6), timeout=TIMEOUT
    )
    assert _value(page, "queued") == "0" and _value(page, "dead") == "0"
    assert page.errors == []


def test_a_render_from_the_form_previews_band_by_band_and_downloads(
    page: browser.Page, dash: Dash, tmp_path: Path
) -> None:
    options = dict(zip(SLOW_VIEW[::2], SLOW_VIEW[1::2], strict=True))
    # Five times SLOW_VIEW's work (seconds on two workers): the page hears of
    # bands once a second, and a quicker render can fill the preview in one tick.
    options["--max-iter"] = "100000"
    view = [part for option in options.items() for part in option]
    page.page.goto(dash.url)
    form = page.page.get_by_test_id("render-form")
    for option, value in options.items():
        form.locator(f'[name="{option.removeprefix("--")}"]').fill(value)
    form.locator('[name="palette"]').select_option("fire")
    page.page.get_by_test_id("render-submit").click()
    preview = page.page.get_by_test_id("preview")
    # Seen partly filled: some bands drawn, not all.
    wait_until(
        lambda: (
            0
            < int(preview.get_attribute("data-filled") or 0)
            < int(preview.get_attribute("data-rows") or 0)
        ),
        timeout=60,
        message="a partly filled preview",
    )
    page.screenshot("-render-midway")
    job_id = preview.get_attribute("data-job-id")
    assert job_id
    wait_until(
        lambda: preview.get_attribute("data-filled") == preview.get_attribute("data-rows") == "480",
        timeout=60,
        message="the whole preview",
    )
    # Drawn from the bands' pieces: the last row is the image's (black: inside the
    # set), not the placeholder the canvas starts with.
    last_row = preview.evaluate(
        "c => Array.from(c.getContext('2d').getImageData(0, c.height - 1, c.width, 1).data)"
    )
    assert set(last_row) <= {0, 255}, "the preview's last row is not the image's"
    download = page.page.get_by_test_id("download")
    expect(download).to_be_visible(timeout=TIMEOUT)
    expect(page.page.get_by_test_id("preview-image")).to_be_visible(timeout=TIMEOUT)
    with page.page.expect_download() as info:
        download.click()
    got = tmp_path / "dashboard.png"
    info.value.save_as(got)
    # The same render from the command line gives the same bytes.
    out = tmp_path / "cli.png"
    rendered = run_cli("render", "--mandelbrot", *view, "--palette", "fire",
                       "--coordinator", dash.coordinator.address, "--storage", dash.storage,
                       "--out", str(out), timeout=120)  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr
    assert got.read_bytes() == out.read_bytes()
    assert page.errors == []


def test_a_zoom_shows_its_keyframes_as_they_land_then_plays_its_video(
    page: browser.Page, dash: Dash, tmp_path: Path
) -> None:
    page.page.goto(dash.url)
    expect(page.page.get_by_test_id("stat-workers").locator(".value")).to_have_text(
        "2", timeout=TIMEOUT
    )
    # A render runs first: the page previews it, and moves on to the zoom once it is done.
    render = subprocess.Popen(
        fractalq("render", "--mandelbrot", *SLOW_VIEW, "--coordinator", dash.coordinator.address,
                 "--storage", dash.storage, "--out", str(tmp_path / "first.png")),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    preview = page.page.get_by_test_id("preview")
    first = wait_until(lambda: preview.get_attribute("data-job-id"), 60, "the render previewed")
    _, stderr = render.communicate(timeout=120)
    assert render.returncode == 0, stderr
    out = tmp_path / "zoom.mp4"
    zoom = start_zoom(dash.coordinator.address, dash.storage, out)
    keyframes = page.page.get_by_test_id("keyframes")
    # The page picks the running zoom and shows its thumbnails, shallowest first.
    wait_until(lambda: int(keyframes.get_attribute("data-count") or 0) > 0, 60, "a keyframe")
    job_id = keyframes.get_attribute("data-job-id")
    assert job_id and job_id != first
    _, stderr = zoom.communicate(timeout=120)
    assert zoom.returncode == 0, stderr
    total = dash.coordinator.client().job(job_id).total
    video = page.page.get_by_test_id("preview-video")
    expect(video).to_be_visible(timeout=TIMEOUT)
    # Every keyframe shown (the last ones may come in the event after the video's).
    expect(keyframes).to_have_attribute("data-count", str(total), timeout=TIMEOUT)
    levels = [
        int(n) for n in keyframes.locator("img").evaluate_all("i => i.map(x => x.dataset.level)")
    ]
    assert levels == sorted(levels, reverse=True) and len(levels) == total
    # The browser decodes the stored video: its length, its frame size.
    wait_until(lambda: video.evaluate("v => v.readyState") >= 2, 30, "the video's first frame")
    width, height, duration = video.evaluate("v => [v.videoWidth, v.videoHeight, v.duration]")
    assert (width, height) == (160, 90) and duration == pytest.approx(2.0, abs=0.15)
    page.screenshot("-zoom")
    download = page.page.get_by_test_id("download")
    expect(download).to_have_text("Download video")
    with page.page.expect_download() as info:
        download.click()
    got = tmp_path / "dashboard.mp4"
    info.value.save_as(got)
    assert got.read_bytes() == out.read_bytes()
    assert page.errors == []


def test_bad_input_is_shown_next_to_its_field(page: browser.Page, dash: Dash) -> None:
    page.page.goto(dash.url)
    form = page.page.get_by_test_id("render-form")
    form.locator('[name="width"]').fill("-3")
    page.page.get_by_test_id("render-submit").click()
    error = form.get_by_test_id("error-width")
    expect(error).to_contain_text("width must be an integer from 1", timeout=TIMEOUT)
    expect(form.locator('[name="width"]')).to_have_class("invalid")


def test_cancel_from_the_page(page: browser.Page, dash: Dash) -> None:
    submitted = run_cli("submit", "--coordinator", dash.coordinator.address, "--task", "sleep",
                        "--payload", '{"seconds": 1}', "--count", "200",
                        "--priority", "50")  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.split()[-1]
    page.page.goto(dash.url)
    row = page.page.locator(f'[data-testid="job-row"][data-job-id="{job_id}"]')
    row.get_by_test_id("cancel").click(timeout=TIMEOUT)
    expect(row.get_by_test_id("job-state")).to_have_text("cancelled", timeout=TIMEOUT)
    job = dash.coordinator.client().job(job_id)
    assert job.state == pb.CANCELLED and job.succeeded < 200


def test_dead_letters_are_shown_with_their_error_requeued_and_purged_from_the_page(
    page: browser.Page, dash: Dash
) -> None:
    submitted = run_cli("submit", "--coordinator", dash.coordinator.address, "--task", "fail",
                        "--max-attempts", "1")  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.split()[-1]
    page.page.goto(dash.url)
    letter = page.page.locator(f'[data-testid="dead-letter"][data-job-id="{job_id}"]')
    expect(letter).to_contain_text("task 0 (fail), 1 attempt(s)", timeout=TIMEOUT)
    expect(letter.locator(".note")).to_contain_text("always fails (attempt 1)", timeout=TIMEOUT)
    client = dash.coordinator.client()
    requeued = client.stats().tasks_requeued
    letter.get_by_test_id("requeue").click()
    wait_until(lambda: client.stats().tasks_requeued == requeued + 1, message="the requeue")
    # The `fail` task fails again: dead-lettered again, shown again.
    wait_until(lambda: client.job(job_id).dead_letters_held, message="dead again")
    purged = client.stats().tasks_purged
    letter.get_by_test_id("purge").click(timeout=TIMEOUT)
    expect(letter).to_have_count(0, timeout=TIMEOUT)
    assert client.stats().tasks_purged == purged + 1
    assert not client.job(job_id).dead_letters_held
    assert page.errors == []


def test_with_tokens_the_page_asks_for_one_and_refuses_a_wrong_one(
    chromium: Browser, cluster: ProcessGroup, tmp_path: Path
) -> None:
    trust = Trust(tmp_path)
    coordinator = cluster.start_coordinator(trust=trust)
    url = f"https://127.0.0.1:{coordinator.http_port}/"
    opened = browser.Page(chromium, "dashboard-tokens", ignore_https_errors=True)
    try:
        page = opened.page
        page.goto(url)
        token = page.get_by_test_id("token")
        expect(token).to_be_visible(timeout=TIMEOUT)
        expect(page.get_by_test_id("render-form")).to_be_hidden()
        token.fill("not-the-token-at-all")
        page.get_by_test_id("login-submit").click()
        expect(page.get_by_test_id("login-error")).to_have_text(
            "that token is not valid", timeout=TIMEOUT
        )
        stats = coordinator.client().stats()
        assert stats.requests_unauthenticated >= 1
        token.fill(trust.tokens["reader"])
        page.get_by_test_id("login-submit").click()
        expect(page.get_by_test_id("stat-workers").locator(".value")).to_have_text(
            "0", timeout=TIMEOUT
        )
        expect(page.get_by_test_id("render-form")).to_be_hidden()  # a reader only watches
        [cookie] = opened.context.cookies()
        assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
        kept = page.evaluate("JSON.stringify([{...localStorage}, {...sessionStorage}])")
        assert trust.tokens["reader"] not in kept + cookie["value"]
        assert json.loads(kept) == [{}, {}]
    finally:
        opened.close()
