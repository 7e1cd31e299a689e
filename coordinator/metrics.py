"""Prometheus metrics of the coordinator, served at ``GET /metrics`` (see :mod:`.http`).

Nothing is counted twice: the collector reads the broker's own figures (the
same that ``GetStats`` and ``/api/stats`` return) when Prometheus scrapes, so
there is no second set of counters to keep in step. Labels stay few and
bounded (task states, draining or not), never job or worker ids, whose number
grows without limit on a long-running cluster.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fractalq.coordinator.broker import Broker
from fractalq.coordinator.jobs import TaskState

_QUEUE_STATES = (TaskState.QUEUED, TaskState.DELAYED, TaskState.LEASED)


class BrokerCollector(Collector):
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def collect(self) -> Iterator[Metric]:
        broker = self.broker
        tasks = GaugeMetricFamily(
            "fractalq_tasks",
            "Tasks of unfinished jobs by state: queued (ready now), delayed (waiting out"
            " a retry backoff), leased (running on a worker).",
            labels=["state"],
        )
        totals = broker.totals()
        for state in _QUEUE_STATES:
            tasks.add_metric([state.name.lower()], totals[state])
        yield tasks
        yield GaugeMetricFamily(
            "fractalq_jobs_active",
            "Jobs not finished yet.",
            value=sum(1 for _ in broker.active_jobs()),
        )
        outcomes = (
            ("succeeded", "Tasks that succeeded", broker.succeeded),
            ("failed", "Failed task attempts (each retry counts)", broker.failed),
            ("dead", "Tasks dead-lettered after their last attempt", broker.dead),
        )
        for name, text, value in outcomes:
            yield CounterMetricFamily(
                f"fractalq_tasks_{name}", f"{text}, since the coordinator started.", value=value
            )
        workers = GaugeMetricFamily(
            "fractalq_workers",
            "Registered workers, by whether they are draining.",
            labels=["draining"],
        )
        slots = GaugeMetricFamily(
            "fractalq_worker_slots", "Tasks the registered workers run at once, in total."
        )
        draining = sum(1 for worker in broker.workers.values() if worker.draining)
        workers.add_metric(["false"], len(broker.workers) - draining)
        workers.add_metric(["true"], draining)
        slots.add_metric([], sum(worker.concurrency for worker in broker.workers.values()))
        yield workers
        yield slots


def registry(broker: Broker) -> CollectorRegistry:
    """A registry with only the coordinator's metrics (no process or platform ones)."""
    found = CollectorRegistry(auto_describe=False)
    found.register(BrokerCollector(broker))
    return found
