"""A real headless Chromium (Debian's ``chromium``) driven by Playwright.

Playwright's own browser download does not work offline, so the tests launch
the system's binary (``FRACTALQ_CHROMIUM``, default ``/usr/bin/chromium``).
The flags keep it from reaching for the network at start-up.

:class:`Page` wraps a Playwright page with what every dashboard test checks:
the console errors and uncaught exceptions the page produced, and a screenshot
saved under the artifacts folder (``FRACTALQ_TEST_ARTIFACTS``, default
``tests/artifacts``) at the end of the test.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from playwright.sync_api import Browser, ConsoleMessage, Error, sync_playwright
from playwright.sync_api import Page as PlaywrightPage

CHROMIUM = os.environ.get("FRACTALQ_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("FRACTALQ_TEST_ARTIFACTS", Path(__file__).parent / "artifacts"))
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def available() -> bool:
    return shutil.which(CHROMIUM) is not None or Path(CHROMIUM).is_file()


@contextmanager
def launch() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()


class Page:
    """A fresh browser context and page; ``errors`` collects what went wrong in it."""

    def __init__(self, browser: Browser, name: str, ignore_https_errors: bool = False) -> None:
        self.name = name
        self.context = browser.new_context(
            viewport={"width": 1600, "height": 1000}, ignore_https_errors=ignore_https_errors
        )
        self.page: PlaywrightPage = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error}"))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text}")

    def screenshot(self, suffix: str = "") -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{self.name}{suffix}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def close(self) -> None:
        # The page may already be gone; the test's own failure says why.
        with suppress(Error):
            self.screenshot()
        self.context.close()
