"""The operator's own Kubernetes API calls: read and set the worker count.

kopf handles the FractalJob resources; the worker Deployment is read and
patched here with the official client (blocking; call it from a thread).
Only ``spec.replicas`` is patched, so RBAC needs get and patch on that one
Deployment.
"""

from __future__ import annotations

from typing import Any

from kubernetes import client
from kubernetes import config as kube_config


def apps_api() -> Any:
    try:
        kube_config.load_incluster_config()
    except kube_config.ConfigException:
        kube_config.load_kube_config()
    return client.AppsV1Api()


def read_replicas(api: Any, name: str, namespace: str) -> tuple[int, dict[str, Any]]:
    """The Deployment's replica count and a body to attach events to."""
    deployment = api.read_namespaced_deployment(name, namespace)
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "uid": deployment.metadata.uid},
    }
    return int(deployment.spec.replicas or 0), body


def set_replicas(api: Any, name: str, namespace: str, replicas: int) -> None:
    api.patch_namespaced_deployment(
        name,
        namespace,
        {"spec": {"replicas": replicas}},
        _content_type="application/merge-patch+json",
    )
