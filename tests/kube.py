"""A Kubernetes API for operator tests: kmock's emulator on 127.0.0.1.

The emulator runs in its own thread and event loop, the operator runs in
another (kopf's KopfRunner), and the test talks to the emulator over HTTP like
kubectl would. kmock assigns no uid, generation or resourceVersion, so
:meth:`Emulator.create` fills them in.
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import kmock

FRACTALJOBS = "fractalq.dev/v1alpha1/fractaljobs"
DEPLOYMENTS = "apps/v1/deployments"


class Emulator:
    def __init__(self) -> None:
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self.url = ""
        self._thread = threading.Thread(target=self._run, name="kmock", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("kmock did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
            self.kmock = emulator
            emulator.resources[FRACTALJOBS] = kmock.ResourceInfo(
                kind="FractalJob", namespaced=True, subresources={"status"},
                verbs={"get", "list", "watch", "create", "patch", "update", "delete"},
            )  # fmt: skip
            emulator.resources[DEPLOYMENTS] = kmock.ResourceInfo(
                kind="Deployment", namespaced=True, subresources={"status", "scale"},
                verbs={"get", "list", "watch", "create", "patch", "update", "delete"},
            )  # fmt: skip
            emulator.resources["v1/events"] = kmock.ResourceInfo(
                kind="Event", namespaced=True, verbs={"create", "list", "get"}
            )
            # kopf's own backbone: it waits for these to be discoverable, watches CRDs
            # to notice new resources, and (run with -A) never lists namespaces.
            emulator.resources["v1/namespaces"] = kmock.ResourceInfo(
                kind="Namespace", namespaced=False, verbs={"list", "watch", "get"}
            )
            emulator.resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = (
                kmock.ResourceInfo(
                    kind="CustomResourceDefinition", namespaced=False, verbs={"list", "watch"}
                )
            )
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def close(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def kubeconfig(self, folder: Path) -> Path:
        path = folder / "kubeconfig"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
            "users": [{"name": "test", "user": {"token": "test"}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "test"}}],
            "current-context": "kmock",
        }
        path.write_text(json.dumps(config))
        return path

    # ---- talking to it like a client ----------------------------------------

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header(
            "Content-Type",
            "application/merge-patch+json" if method == "PATCH" else "application/json",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def create(self, resource: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        meta = body.setdefault("metadata", {})
        meta.setdefault("namespace", namespace)
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("generation", 1)
        meta.setdefault("resourceVersion", "1")
        meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
        group_version, plural = resource.rsplit("/", 1)
        prefix = "/api" if group_version == "v1" else "/apis"
        created: dict[str, Any] = self.request(
            "POST", f"{prefix}/{group_version}/namespaces/{namespace}/{plural}", body
        )
        return created

    def get(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        group_version, plural = resource.rsplit("/", 1)
        prefix = "/api" if group_version == "v1" else "/apis"
        try:
            found: dict[str, Any] = self.request(
                "GET", f"{prefix}/{group_version}/namespaces/{namespace}/{plural}/{name}"
            )
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return None
            raise
        return found

    def patch(self, resource: str, namespace: str, name: str, body: dict[str, Any]) -> None:
        group_version, plural = resource.rsplit("/", 1)
        self.request("PATCH", f"/apis/{group_version}/namespaces/{namespace}/{plural}/{name}", body)

    def delete(self, resource: str, namespace: str, name: str) -> None:
        group_version, plural = resource.rsplit("/", 1)
        self.request("DELETE", f"/apis/{group_version}/namespaces/{namespace}/{plural}/{name}")

    def patches(self, resource: str, namespace: str, name: str) -> list[str]:
        """The PATCH requests the emulator received for one object, oldest first.

        Each is its subresource (``"status"``) or ``""`` for the object itself.
        """
        plural = resource.rsplit("/", 1)[1]
        return [
            request.subresource or ""
            for request in list(self.kmock)
            if request.method == kmock.method.PATCH
            and request.resource is not None
            and request.resource.plural == plural
            and request.namespace == namespace
            and request.name == name
        ]

    def history(self, resource: str, namespace: str, name: str) -> list[dict[str, Any]]:
        """Every version the emulator stored of one object, oldest first."""
        obj = self.kmock.objects[resource, namespace, name]
        return [dict(version.raw) for version in obj.history if version is not None]
