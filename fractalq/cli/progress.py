"""Progress display: a redrawn bar on a terminal, plain lines elsewhere."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    """Shows ``done/total`` with rate and ETA; ``unit`` names what is counted."""

    def __init__(
        self, total: int, unit: str, stream: TextIO | None = None, plain_every: float = 2.0
    ) -> None:
        self.total = total
        self.unit = unit
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.plain_every = plain_every
        self.started = time.monotonic()
        self._last_plain = 0.0
        self._last_text = ""

    def line(self, done: int, running: int) -> str:
        elapsed = time.monotonic() - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else None
        text = f"{done}/{self.total} {self.unit}, {running} running, {rate:.1f}/s"
        if eta is not None and done < self.total:
            text += f", ETA {_duration(eta)}"
        return text

    def update(self, done: int, running: int, final: bool = False) -> None:
        text = self.line(done, running)
        if self.tty:
            width = 24
            filled = width * done // self.total if self.total else width
            bar = "#" * filled + "." * (width - filled)
            self.stream.write(f"\r[{bar}] {text}\x1b[K" + ("\n" if final else ""))
            self.stream.flush()
            return
        now = time.monotonic()
        if text != self._last_text and (final or now - self._last_plain >= self.plain_every):
            self.stream.write(text + "\n")
            self.stream.flush()
            self._last_plain, self._last_text = now, text
