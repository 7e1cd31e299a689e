"""Where the pods' certificates and tokens come from: the Secrets they mount, and
whether the release provides each key (shared by the TLS and token tests)."""

from __future__ import annotations

import base64
import os
from pathlib import Path

from procs import Coordinator, ProcessGroup

from chart.rendering import Doc, container_of, containers, env_of, env_value, objects, one

# The one token Secret each component mounts (none for MinIO; the reader's is for people).
TOKEN_SECRET = {
    "coordinator": "fractalq-auth-tokens",
    "worker": "fractalq-worker-token",
    "operator": "fractalq-client-token",
}
# Secrets a user brings (tls.existingSecret, tls.existingClientSecret in OPTIONS).
USER_SECRETS = {"my-tls", "my-client-tls"}


def secret_data(docs: list[Doc], name: str) -> dict[str, bytes]:
    [secret] = [s for s in objects(docs, "Secret") if s["metadata"]["name"] == name]
    return {key: base64.b64decode(value) for key, value in secret["data"].items()}


def mounted_files(pod: Doc, container: Doc) -> dict[str, tuple[str, str]]:
    """Every file a container reads from a Secret: path -> (Secret name, key)."""
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    files: dict[str, tuple[str, str]] = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes.get(mount["name"], {})  # absent: a StatefulSet's claim template
        sources = []
        if "secret" in volume:
            sources.append((volume["secret"]["secretName"], volume["secret"].get("items")))
        for source in volume.get("projected", {}).get("sources", []):
            sources.append((source["secret"]["name"], source["secret"].get("items")))
        for secret, items in sources:
            # Named keys only: a Secret's other keys never reach the container.
            assert items, f"{container['name']} mounts all of {secret}"
            for item in items:
                files[f"{mount['mountPath'].rstrip('/')}/{item['path']}"] = (secret, item["key"])
    return files


def secrets_referenced(pod: Doc) -> set[str]:
    """The Secrets a pod's kubelet fetches: volumes, projected sources, env references."""
    names = set()
    for volume in pod.get("volumes", []):
        if "secret" in volume:
            names.add(volume["secret"]["secretName"])
        for source in volume.get("projected", {}).get("sources", []):
            names.add(source["secret"]["name"])
    for container in containers(pod):
        for entry in container.get("env", []):
            if "secretKeyRef" in entry.get("valueFrom", {}):
                names.add(entry["valueFrom"]["secretKeyRef"]["name"])
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                names.add(source["secretRef"]["name"])
    return names


def provided(docs: list[Doc], secret: str, key: str) -> bool:
    """Whether the release fills ``key`` of ``secret``: a rendered Secret holds it, or a
    cert-manager Certificate writes it (tls.crt, tls.key and, from a CA issuer, ca.crt),
    or it is a Secret the user brings (with the keys values.yaml asks for)."""
    for doc in docs:
        if doc["kind"] == "Secret" and doc["metadata"]["name"] == secret:
            return key in doc["data"]
        if doc["kind"] == "Certificate" and doc["spec"]["secretName"] == secret:
            return key in ("tls.crt", "tls.key", "ca.crt")
    return secret in USER_SECRETS and key in ("tls.crt", "tls.key", "ca.crt")


def component_of(workload: Doc) -> str:
    component: str = workload["metadata"]["labels"]["app.kubernetes.io/component"]
    return component


def materialise(docs: list[Doc], kind: str, component: str, root: Path) -> dict[str, str]:
    """Write the Secret files one container mounts under ``root`` (as the kubelet would
    under /); return chart path -> local path."""
    pod = one(docs, kind, component)["spec"]["template"]["spec"]
    local = {}
    for path, (secret, key) in mounted_files(pod, pod["containers"][0]).items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(secret_data(docs, secret)[key])
        target.chmod(0o400)
        local[path] = str(target)
    return local


def client_environment(docs: list[Doc], component: str, root: Path) -> dict[str, str]:
    """The environment a worker or operator container gets from the chart (its TLS and
    token variables), with its files written under ``root``."""
    files = materialise(docs, "Deployment", component, root)
    container = container_of(docs, "Deployment", component)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRACTALQ_")}
    for name in env_of(container):
        if name.startswith(("FRACTALQ_TLS_", "FRACTALQ_TOKEN")):
            env[name] = files[env_value(container, name)]
    return env


def start_coordinator(cluster: ProcessGroup, docs: list[Doc], root: Path) -> Coordinator:
    """A real coordinator on 127.0.0.1 with the chart's security flags (TLS, tokens) and
    its Secrets' files written under ``root``."""
    files = materialise(docs, "StatefulSet", "coordinator", root)
    args = container_of(docs, "StatefulSet", "coordinator")["args"]
    flags = ("--tls-cert", "--tls-key", "--tls-client-ca", "--auth-tokens")
    extra = [
        part
        for index, name in enumerate(args)
        if name in flags
        for part in (name, files[args[index + 1]])
    ]
    return cluster.start_coordinator(extra=tuple(extra))
