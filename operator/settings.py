"""The operator's settings: the options of ``fractalq operator``.

They are rows of the command line's table (:data:`fractalq.cli.table.OPERATOR`):
each a flag and a ``FRACTALQ_*`` variable (the Helm chart sets the variables),
its default from :mod:`fractalq.config`. ``fractalq operator`` parses flags and
variables as every command does and hands the values to :meth:`OperatorSettings.from_values`;
:meth:`OperatorSettings.from_env` reads the variables alone, with the same parsers.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fractalq import config
from fractalq.cli.table import OPERATOR
from fractalq.endpoint import ENV_TOKEN, Endpoint
from fractalq.operator.autoscaler import ScalePolicy
from fractalq.security import ClientTLS
from fractalq.storage import StorageOptions

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


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
        """The settings the ``FRACTALQ_*`` variables of :data:`OPERATOR` give (each
        option's default where one is unset or empty)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for option in OPERATOR:
            text = env.get(option.variable, "")
            try:
                values[option.dest] = option.parse(text) if text else option.default
            except ValueError as error:
                raise SettingsError(f"{option.variable}: {error}") from None
        return cls.from_values(values, env.get(ENV_TOKEN))

    @classmethod
    def from_values(cls, values: Mapping[str, Any], token: str | None = None) -> OperatorSettings:
        """The settings from the options' parsed values (by ``dest``); ``token``:
        the one in ``FRACTALQ_TOKEN``, when no token file is given."""
        if not values["storage"]:
            raise SettingsError("FRACTALQ_STORAGE (--storage) is required")
        policy = ScalePolicy(
            minimum=values["scale_min"],
            maximum=values["scale_max"],
            tasks_per_worker=values["scale_tasks_per_worker"],
            down_window=values["scale_down_window"],
        )
        if policy.minimum > policy.maximum:
            raise SettingsError("FRACTALQ_SCALE_MIN is above FRACTALQ_SCALE_MAX")
        public_endpoint = values["s3_public_endpoint"] or None
        if public_endpoint is not None:
            try:
                StorageOptions(public_endpoint=public_endpoint)
            except ValueError as error:
                raise SettingsError(f"FRACTALQ_S3_PUBLIC_ENDPOINT: {error}") from None
        try:
            endpoint = Endpoint.create(
                values["coordinator"],
                tls_ca=values["tls_ca"],
                tls_cert=values["tls_cert"],
                tls_key=values["tls_key"],
                token_file=values["token_file"],
                token=token,
            )
        except ValueError as error:
            raise SettingsError(str(error)) from None
        return cls(
            tls=endpoint.tls,
            token=endpoint.token,
            coordinator=values["coordinator"],
            storage=values["storage"],
            worker_deployment=values["worker_deployment"],
            worker_namespace=values["worker_namespace"] or own_namespace(),
            scale_enabled=values["scale_enabled"],
            scale=policy,
            scale_interval=values["scale_interval"],
            url_expiry=values["url_expiry"],
            s3_public_endpoint=public_endpoint,
            requeue_check=values["requeue_check"],
        )


def own_namespace() -> str:
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"
