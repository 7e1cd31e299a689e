"""A worker's warm-ups: one after another, the types users wait for first, never in a task's way.

A new worker warms each of its task types in the background (:attr:`TaskType.warm`:
imports, numba's compiled kernels). On a cold cache the deep-zoom types' warm-ups
compile for tens of seconds, and numba compiles one function at a time per process:
warm-ups side by side held a worker's first band behind all of them. Here the
warm-ups are stand-ins that record when they run and one that blocks until released,
so the order and the overlap are seen directly.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from procs import wait_until

from fractalq import tasks
from fractalq.tasks import registry
from fractalq.worker.executor import TaskRunner, warm_order

DEADLINE = 30.0


class Recorder:
    def __init__(self) -> None:
        self.spans: dict[str, tuple[float, float]] = {}
        self.lock = threading.Lock()

    def warm_up(self, name: str, hold: threading.Event | None = None) -> Callable[[], None]:
        def warm() -> None:
            began = time.monotonic()
            if hold is not None:
                assert hold.wait(DEADLINE), "the test never released the warm-up"
            if name == "test.broken":
                raise RuntimeError("the broken warm-up broke")
            with self.lock:
                self.spans[name] = (began, time.monotonic())

        return warm


def _echo(payload: bytes, context: tasks.TaskContext) -> bytes:
    return payload


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Recorder, threading.Event]]:
    """Types test.deep (its warm-up blocks until the event is set), test.broken (its
    warm-up fails) and test.band (warm_first), on threads as in a one-slot worker."""
    record, hold = Recorder(), threading.Event()
    kinds = [
        tasks.TaskType("test.deep", _echo, lambda p: None, warm=record.warm_up("test.deep", hold)),
        tasks.TaskType("test.broken", _echo, lambda p: None, warm=record.warm_up("test.broken")),
        tasks.TaskType(
            "test.band", _echo, lambda p: None, warm=record.warm_up("test.band"), warm_first=True
        ),
        tasks.TaskType("test.plain", _echo, lambda p: None),  # nothing to warm
    ]
    for kind in kinds:
        monkeypatch.setitem(registry._REGISTRY, kind.name, kind)
    yield record, hold
    hold.set()


def test_the_types_users_wait_for_are_warmed_first_then_the_rest_in_turn(
    recorder: tuple[Recorder, threading.Event], caplog: pytest.LogCaptureFixture
) -> None:
    record, hold = recorder
    caplog.set_level(logging.INFO, logger="fractalq.worker.executor")

    async def scenario() -> None:
        runner = TaskRunner(1)
        try:
            runner.warm(["test.deep", "test.broken", "test.plain", "test.band"])
            runner.announce_warm_up()
            wait_until(lambda: "test.band" in record.spans, DEADLINE, "the band's warm-up")
            # The deep type's warm-up is under way and blocked: a task does not wait for it.
            context = tasks.TaskContext()
            answer = await asyncio.wait_for(runner.run("test.band", b"x", context), DEADLINE)
            assert answer == b"x"
            # Nor did anything warm beside it: the broken one waits its turn.
            assert "test.deep" not in record.spans and "warming up failed" not in caplog.text
            hold.set()
            wait_until(lambda: "warmed up in" in caplog.text, DEADLINE, "the warm-ups' end")
        finally:
            runner.shutdown(wait=False)

    asyncio.run(scenario())
    band, deep = record.spans["test.band"], record.spans["test.deep"]
    assert band[1] <= deep[0], "the deep warm-up began before the band's had ended"
    # A failed warm-up is said, and the ones after it still ran.
    assert "warming up failed: RuntimeError: the broken warm-up broke" in caplog.text
    assert "warmed up in" in caplog.text and "test.band, test.deep, test.broken" in caplog.text


def test_the_render_types_are_warmed_before_the_deep_zoom_ones() -> None:
    order = warm_order(tasks.names())
    deep = [
        order.index(name) for name in ("fractal.reference", "fractal.orbits", "fractal.keyframe")
    ]
    assert max(order.index("fractal.band"), order.index("fractal.tile")) < min(deep)
    assert "noop" not in order  # nothing to warm
