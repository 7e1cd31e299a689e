"""Prometheus metrics of the coordinator, served at ``GET /metrics`` (see :mod:`.http`).

Nothing is counted twice: at each scrape the collector turns the coordinator's
``Stats`` (what ``GetStats`` and ``/api/stats`` return) into metric families,
so there is no second set of counters to keep in step. Labels stay few and
bounded (task states, draining or not), never job or worker ids, whose number
grows without limit on a long-running cluster.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fractalq.proto import fractalq_pb2 as pb


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


def registry(stats: Callable[[], pb.Stats]) -> CollectorRegistry:
    """A registry with only the coordinator's metrics (no process or platform ones)."""
    found = CollectorRegistry(auto_describe=False)
    found.register(StatsCollector(stats))
    return found
