"""The operator's settings, read from ``FRACTALQ_*`` environment variables.

``fractalq operator`` turns its flags into these variables, and the Helm chart
sets them, so there is one way in; the defaults come from :mod:`fractalq.config`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from pathlib import Path

from fractalq import config
from fractalq.endpoint import Endpoint
from fractalq.operator.autoscaler import ScalePolicy
from fractalq.security import ClientTLS
from fractalq.storage import StorageOptions

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

# flag -> (environment variable, default, help)
VARIABLES: dict[str, tuple[str, object, str]] = {
    "coordinator": ("FRACTALQ_COORDINATOR", f"127.0.0.1:{config.DEFAULT_PORT}", "HOST:PORT"),
    "storage": ("FRACTALQ_STORAGE", "", "storage URL for bands and images"),
    "worker-deployment": (
        "FRACTALQ_WORKER_DEPLOYMENT",
        config.DEFAULT_WORKER_DEPLOYMENT,
        "the worker Deployment to scale",
    ),
    "worker-namespace": (
        "FRACTALQ_WORKER_NAMESPACE",
        "",
        "its namespace (default: the operator's own)",
    ),
    "scale-enabled": ("FRACTALQ_SCALE_ENABLED", True, "scale workers with the queue"),
    "scale-min": ("FRACTALQ_SCALE_MIN", config.SCALE_MIN, "fewest workers"),
    "scale-max": ("FRACTALQ_SCALE_MAX", config.SCALE_MAX, "most workers"),
    "scale-tasks-per-worker": (
        "FRACTALQ_SCALE_TASKS_PER_WORKER",
        config.SCALE_TASKS_PER_WORKER,
        "queued + running tasks per worker",
    ),
    "scale-interval": (
        "FRACTALQ_SCALE_INTERVAL",
        config.SCALE_INTERVAL,
        "seconds between decisions",
    ),
    "scale-down-window": (
        "FRACTALQ_SCALE_DOWN_WINDOW",
        config.SCALE_DOWN_WINDOW,
        "seconds of lower demand before scaling down",
    ),
    "tls-ca": ("FRACTALQ_TLS_CA", "", "CA of the coordinator's certificate (turns TLS on)"),
    "tls-cert": ("FRACTALQ_TLS_CERT", "", "client certificate, for mutual TLS"),
    "tls-key": ("FRACTALQ_TLS_KEY", "", "its key"),
    # The token itself may come in FRACTALQ_TOKEN (never as a flag: argv is public).
    "token-file": ("FRACTALQ_TOKEN_FILE", "", "file holding the client token"),
    "url-expiry": ("FRACTALQ_URL_EXPIRY", config.URL_EXPIRY, "presigned link lifetime, seconds"),
    "requeue-check": (
        "FRACTALQ_REQUEUE_CHECK",
        config.REQUEUE_CHECK_INTERVAL,
        "seconds between looks at a dead-lettered FractalJob's job (requeued? purged?)",
    ),
    "s3-public-endpoint": (
        "FRACTALQ_S3_PUBLIC_ENDPOINT",
        "",
        "http(s)://host[:port] presigned links are signed for (default: the S3 endpoint)",
    ),
}


class SettingsError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class OperatorSettings:
    coordinator: str
    storage: str
    worker_deployment: str
    worker_namespace: str
    scale_enabled: bool
    scale: ScalePolicy
    scale_interval: float
    url_expiry: int
    s3_public_endpoint: str | None = None
    requeue_check: float = config.REQUEUE_CHECK_INTERVAL
    tls: ClientTLS | None = None
    token: str | None = dataclasses.field(default=None, repr=False)

    @property
    def endpoint(self) -> Endpoint:
        """The coordinator, with the TLS and token the FRACTALQ_* variables give."""
        return Endpoint(self.coordinator, self.tls, self.token)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorSettings:
        env = os.environ if env is None else env

        def get(flag: str) -> str:
            name, default, _ = VARIABLES[flag]
            return env.get(name, "") or str(default)

        def number(flag: str, kind: type[int] | type[float], low: float) -> float:
            name = VARIABLES[flag][0]
            try:
                value = kind(get(flag))
            except ValueError:
                raise SettingsError(f"{name}={get(flag)!r} is not a number") from None
            if not math.isfinite(value):  # NaN passes every comparison below
                raise SettingsError(f"{name}={get(flag)!r} is not a finite number")
            if value < low:
                raise SettingsError(f"{name} must be at least {low:g}")
            return value

        enabled = get("scale-enabled").lower()
        if enabled not in ("true", "false", "1", "0", "yes", "no"):
            raise SettingsError(f"FRACTALQ_SCALE_ENABLED={enabled!r} is not true or false")
        if not get("storage"):
            raise SettingsError("FRACTALQ_STORAGE (--storage) is required")
        policy = ScalePolicy(
            minimum=int(number("scale-min", int, 0)),
            maximum=int(number("scale-max", int, 1)),
            tasks_per_worker=int(number("scale-tasks-per-worker", int, 1)),
            down_window=number("scale-down-window", float, 0),
        )
        if policy.minimum > policy.maximum:
            raise SettingsError("FRACTALQ_SCALE_MIN is above FRACTALQ_SCALE_MAX")
        public_endpoint = get("s3-public-endpoint") or None
        if public_endpoint is not None:
            try:
                StorageOptions(public_endpoint=public_endpoint)
            except ValueError as error:
                raise SettingsError(f"FRACTALQ_S3_PUBLIC_ENDPOINT: {error}") from None
        try:
            endpoint = Endpoint.from_env(get("coordinator"), env)
        except ValueError as error:
            raise SettingsError(str(error)) from None
        return cls(
            tls=endpoint.tls,
            token=endpoint.token,
            coordinator=get("coordinator"),
            storage=get("storage"),
            worker_deployment=get("worker-deployment"),
            worker_namespace=get("worker-namespace") or own_namespace(),
            scale_enabled=enabled in ("true", "1", "yes"),
            scale=policy,
            scale_interval=number("scale-interval", float, 0.1),
            url_expiry=int(number("url-expiry", int, 1)),
            s3_public_endpoint=public_endpoint,
            requeue_check=number("requeue-check", float, 0.1),
        )


def own_namespace() -> str:
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"
