"""The operator's own Kubernetes API calls: status patches, the worker count, and why it changed.

kopf watches the FractalJob resources, but applies a handler's status patch
only when the handler returns, and a daemon runs as long as its resource
needs following: its status goes out through :func:`patch_status`. The
worker Deployment is scaled here
with the official client (blocking; the autoscaler runs on its own thread)
through the ``scale`` subresource, so RBAC grants get/patch on
``deployments/scale`` of that one Deployment and nothing that could change
its pods. Each decision is also recorded as an Event on the Deployment.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import uuid
from typing import Any

from kubernetes import client
from kubernetes import config as kube_config

TIMEOUT = (5.0, 15.0)  # connect, read: a stuck call must not hang the operator


def _finish(response: Any) -> None:
    """Read the answer to its end before the connection goes back to the pool:
    a connection returned with an unread body breaks the next request sent on
    it (http.client's ResponseNotReady)."""
    response.drain_conn()
    response.release_conn()


def api_client() -> Any:
    try:
        kube_config.load_incluster_config()
    except kube_config.ConfigException:
        # The path is read now, not when the client library was imported.
        kube_config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    return client.ApiClient()


def patch_status(
    api: Any, group: str, version: str, plural: str, namespace: str, name: str,
    fields: dict[str, Any],
) -> None:  # fmt: skip
    """A merge patch of ``fields`` into a custom resource's status (None removes a field)."""
    response = client.CustomObjectsApi(api).patch_namespaced_custom_object_status(
        group,
        version,
        namespace,
        plural,
        name,
        {"status": fields},
        _content_type="application/merge-patch+json",
        _preload_content=False,
        _request_timeout=TIMEOUT,
    )
    _finish(response)


def read_replicas(api: Any, name: str, namespace: str) -> int:
    # Raw JSON: one field matters, and the client's models refuse partial objects.
    response = client.AppsV1Api(api).read_namespaced_deployment_scale(
        name, namespace, _preload_content=False, _request_timeout=TIMEOUT
    )
    scale = json.loads(response.data)
    _finish(response)
    return int(scale.get("spec", {}).get("replicas") or 0)


def set_replicas(api: Any, name: str, namespace: str, replicas: int) -> None:
    response = client.AppsV1Api(api).patch_namespaced_deployment_scale(
        name,
        namespace,
        {"spec": {"replicas": replicas}},
        _content_type="application/merge-patch+json",
        _preload_content=False,
        _request_timeout=TIMEOUT,
    )
    _finish(response)


def record(api: Any, name: str, namespace: str, reason: str, message: str) -> None:
    """An Event on the Deployment, so ``kubectl describe`` shows each decision."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    event = {
        "metadata": {"name": f"{name}.{uuid.uuid4().hex[:16]}", "namespace": namespace},
        "involvedObject": {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
            "namespace": namespace,
        },
        "reason": reason,
        "message": message,
        "type": "Normal",
        "source": {"component": "fractalq-operator", "host": socket.gethostname()},
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    response = client.CoreV1Api(api).create_namespaced_event(
        namespace, event, _preload_content=False, _request_timeout=TIMEOUT
    )
    _finish(response)
