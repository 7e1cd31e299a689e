"""Prometheus metrics of the coordinator, served at ``GET /metrics`` (see :mod:`.http`).

Nothing is counted twice: at each scrape the collector turns the coordinator's
``Stats`` (what ``GetStats`` and ``/api/stats`` return) into metric families,
so there is no second set of counters to keep in step. Two histograms are
observed as tasks go (:class:`TaskTimings`): how long attempts ran on their
workers and how long tasks waited in the queue, by task type. The process's own
figures (CPU, memory, open files, garbage collection) come from
prometheus_client's standard collectors. Labels stay few and bounded (task
states, draining or not, the registered task types), never job or worker ids,
whose number grows without limit on a long-running cluster.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Histogram,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fractalq import config
from fractalq.coordinator.listeners import Listener
from fractalq.proto import fractalq_pb2 as pb

if TYPE_CHECKING:
    from fractalq.coordinator.broker import Broker


class StatsCollector(Collector):
    """Prometheus families from one ``Stats`` message, taken at each scrape."""

    def __init__(self, stats: Callable[[], pb.Stats]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self.stats()
        tasks = GaugeMetricFamily(
            "fractalq_tasks",
            "Tasks of unfinished jobs by state: queued (ready now), delayed (waiting out"
            " a retry backoff), leased (running on a worker).",
            labels=["state"],
        )
        tasks.add_metric(["queued"], stats.queued)
        tasks.add_metric(["delayed"], stats.delayed)
        tasks.add_metric(["leased"], stats.leased)
        yield tasks
        yield GaugeMetricFamily("fractalq_jobs_active", "Jobs not finished yet.", stats.jobs_active)
        outcomes = (
            ("succeeded", "Tasks that succeeded", stats.tasks_succeeded),
            ("failed", "Failed task attempts (each retry counts)", stats.tasks_failed),
            ("dead", "Tasks dead-lettered after their last attempt", stats.tasks_dead),
            ("requeued", "Dead-lettered tasks put back on the queue", stats.tasks_requeued),
            ("purged", "Dead letters purged (or forgotten)", stats.tasks_purged),
        )
        for name, text, value in outcomes:
            yield CounterMetricFamily(
                f"fractalq_tasks_{name}", f"{text}, since the coordinator started.", value=value
            )
        yield GaugeMetricFamily(
            "fractalq_dead_letters",
            "Dead-lettered tasks held now, for a requeue or a purge.",
            stats.dead_letters,
        )
        refused = CounterMetricFamily(
            "fractalq_requests_refused",
            "Requests refused, since the coordinator started: malformed (invalid), without"
            " a valid token (unauthenticated), with a token of a role that may not make the"
            " call or on another holder's job (denied), over a holder's quota (over_quota),"
            " or worker calls with an unknown session or a live worker's id (worker_session).",
            labels=["reason"],
        )
        refused.add_metric(["invalid"], stats.requests_invalid)
        refused.add_metric(["unauthenticated"], stats.requests_unauthenticated)
        refused.add_metric(["denied"], stats.requests_denied)
        refused.add_metric(["over_quota"], stats.requests_over_quota)
        refused.add_metric(["worker_session"], stats.requests_refused)
        yield refused
        yield CounterMetricFamily(
            "fractalq_reports_ignored",
            "Task reports that changed nothing (late, duplicate, cancelled, or not the"
            " lease holder's), since the coordinator started.",
            value=stats.reports_ignored,
        )
        workers = GaugeMetricFamily(
            "fractalq_workers",
            "Registered workers, by whether they are draining.",
            labels=["draining"],
        )
        draining = sum(1 for worker in stats.workers if worker.draining)
        workers.add_metric(["false"], len(stats.workers) - draining)
        workers.add_metric(["true"], draining)
        yield workers
        yield GaugeMetricFamily(
            "fractalq_workers_storage_unavailable",
            "Registered workers that cannot reach their storage (they take no task meanwhile).",
            sum(1 for worker in stats.workers if worker.storage_error),
        )
        yield GaugeMetricFamily(
            "fractalq_worker_slots",
            "Tasks the registered workers run at once, in total.",
            sum(worker.concurrency for worker in stats.workers),
        )


class TaskTimings(Collector, Listener):
    """Histograms of task runtime and queue wait, fed by the broker's hooks.

    Runtime is what the worker measured around the task's function (its
    ``seconds`` in the report: no network, no time prefetched); the queue wait
    runs from when the task was ready (its stage released, its retry due, its
    lease lost or handed back) to its lease.
    """

    def __init__(self) -> None:
        # Not in any registry of their own: collected through this collector.
        self.runtime = Histogram(
            "fractalq_task_runtime_seconds",
            "How long task attempts ran on their workers, by task type and outcome.",
            ["task_type", "outcome"],
            buckets=config.RUNTIME_BUCKETS,
            registry=None,
        )
        self.queue_wait = Histogram(
            "fractalq_task_queue_wait_seconds",
            "How long tasks waited ready in the queue before a worker leased them, by task type.",
            ["task_type"],
            buckets=config.QUEUE_WAIT_BUCKETS,
            registry=None,
        )

    def attach(self, broker: Broker) -> TaskTimings:
        """Observe ``broker``'s leases and reports from now on."""
        broker.listeners.add(self)
        return self

    def leased(self, task_type: str, waited: float) -> None:
        self.queue_wait.labels(task_type).observe(waited)

    def ran(self, task_type: str, outcome: str, seconds: float) -> None:
        # 0: a worker that did not say; a worker's number is checked, not trusted.
        if math.isfinite(seconds) and 0 < seconds <= config.MAX_TIME_LIMIT * 2:
            self.runtime.labels(task_type, outcome).observe(seconds)

    def collect(self) -> Iterator[Metric]:
        yield from self.runtime.collect()
        yield from self.queue_wait.collect()


def registry(
    stats: Callable[[], pb.Stats], timings: TaskTimings | None = None
) -> CollectorRegistry:
    """The coordinator's metrics, its task timings and its process's own figures."""
    found = CollectorRegistry(auto_describe=False)
    found.register(StatsCollector(stats))
    if timings is not None:
        found.register(timings)
    # prometheus_client's standard collectors (process_*, python_*), whose
    # default instances live in its global registry: registered here as well.
    for standard in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        found.register(standard)
    return found
