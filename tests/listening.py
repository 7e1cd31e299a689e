"""A listener that records the broker's events, for tests of what the broker tells."""

from __future__ import annotations

from fractalq.coordinator.jobs import Job
from fractalq.coordinator.listeners import Listener


class Recorder(Listener):
    """Records the broker's events, as the coordinator's listeners receive them."""

    def __init__(self) -> None:
        self.waits: list[tuple[str, float]] = []
        self.runs: list[tuple[str, str, float]] = []
        self.results: list[tuple[str, int, int]] = []

    def leased(self, task_type: str, waited: float) -> None:
        self.waits.append((task_type, waited))

    def ran(self, task_type: str, outcome: str, seconds: float) -> None:
        self.runs.append((task_type, outcome, seconds))

    def task_result(self, job: Job, index: int, result: bytes) -> None:
        self.results.append((job.task_type, index, len(result)))
