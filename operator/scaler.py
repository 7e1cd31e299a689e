"""The autoscaler's loop: every interval, queue depth -> replicas of the worker Deployment.

What to decide is :mod:`fractalq.operator.autoscaler` (pure); this module reads
the inputs (the coordinator's Stats, the Deployment's scale) and applies the
decision. Its calls are all blocking, so it runs on a thread of its own rather
than borrowing the operator's event loop; the clock is injected so tests can
drive the stabilisation window without waiting for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from fractalq.client import Client, ClientError
from fractalq.operator import kube
from fractalq.operator.autoscaler import Autoscaler
from fractalq.operator.settings import OperatorSettings

log = logging.getLogger("fractalq.operator")


def scale_once(
    scaler: Autoscaler, api: Any, client: Client, settings: OperatorSettings, now: float
) -> int:
    """One round: read, decide, apply if it changes anything; returns the count set."""
    name, namespace = settings.worker_deployment, settings.worker_namespace
    current = kube.read_replicas(api, name, namespace)
    depth: int | None
    try:
        stats = client.stats()
        depth = stats.queued + stats.delayed + stats.leased
    except ClientError as error:
        log.warning("autoscaler: no queue depth (%s): holding %d workers", error, current)
        depth = None
    wanted = scaler.decide(depth, current, now)
    if wanted != current:
        decision = f"queue depth {depth}: {current} -> {wanted} workers"
        kube.set_replicas(api, name, namespace, wanted)
        log.info("autoscaler: %s", decision)
        kube.record(api, name, namespace, "Scaled", decision)
    return wanted


class ScalerThread(threading.Thread):
    def __init__(
        self,
        settings: OperatorSettings,
        client: Client,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(name="fractalq-autoscaler", daemon=True)
        self.settings = settings
        self.client = client
        self.clock = clock
        self.halt = threading.Event()

    def run(self) -> None:
        scaler = Autoscaler(self.settings.scale)
        api = None
        while not self.halt.is_set():
            try:
                api = api or kube.api_client()
                scale_once(scaler, api, self.client, self.settings, self.clock())
            except Exception as error:  # keep going whatever one round met
                log.warning("autoscaler: %s", error)
            self.halt.wait(self.settings.scale_interval)

    def stop(self, timeout: float) -> None:
        self.halt.set()
        self.join(timeout)
        self.client.close()
