"""Shared pytest fixtures. Each section below is self-contained."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import browser
import pytest
from playwright.sync_api import Browser
from procs import ProcessGroup
from s3server import SeaweedS3

# ---- S3: a real SeaweedFS server (see tests/s3server.py) -------------------
#
# ``s3_server`` starts one ``weed mini`` for the whole session (about a second)
# and always stops it, even when tests fail. Tests get a fresh bucket each from
# ``s3_server.make_bucket()`` and point the code under test at the server with
# ``s3_server.env()`` (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
# AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION), for example through
# ``monkeypatch.setenv`` or a subprocess's ``env``.


@pytest.fixture(scope="session")
def s3_server() -> Iterator[SeaweedS3]:
    with SeaweedS3() as server:
        yield server


# ---- end of S3 section -----------------------------------------------------


# ---- processes: coordinators and workers of one test (see tests/procs.py) ---


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ProcessGroup]:
    group = ProcessGroup(tmp_path)
    try:
        yield group
    finally:
        group.stop()


# ---- browser: Debian's headless Chromium (see tests/browser.py) -------------
#
# ``chromium`` is one browser per test module; ``page`` is a fresh context and
# page per test, screenshotted into tests/artifacts/<test name>.png at the end.
# A test asserts ``page.errors == []`` when the page must load cleanly.
# Not one browser per session: Playwright's synchronous API keeps an event loop
# running in the main thread while it is open, and asyncio.run() in the tests
# of later modules would refuse to start beside it.


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    if not browser.available():
        # CI installs it (.ci/run), so there a missing browser is a failure.
        missing = pytest.fail if os.environ.get("CI") else pytest.skip
        missing(f"no Chromium at {browser.CHROMIUM} (apt install chromium)")
    with browser.launch() as instance:
        yield instance


@pytest.fixture
def page(chromium: Browser, request: pytest.FixtureRequest) -> Iterator[browser.Page]:
    opened = browser.Page(chromium, request.node.name, ignore_https_errors=False)
    try:
        yield opened
    finally:
        opened.close()


# ---- end of browser section --------------------------------------------------
