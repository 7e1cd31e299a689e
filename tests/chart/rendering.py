"""Rendering the chart with the real helm, the options of values.yaml, and selectors
for the rendered objects: what every module of the chart tests shares."""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from chart_tools import REPO, helm_environment

CHART = REPO / "charts" / "fractalq"
CRD_FILE = CHART / "crds" / "fractaljob.yaml"
VALUES_FILE = CHART / "values.yaml"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
EXAMPLE = REPO / "deploy" / "examples" / "fractaljob.yaml"

# The Kubernetes version whose API schemas the rendered objects must satisfy.
KUBE_VERSION = "1.33.0"
RELEASE = "fractalq"
NAMESPACE = "render"


def sets(*assignments: str) -> tuple[str, ...]:
    return tuple(part for assignment in assignments for part in ("--set", assignment))


def set_json(**values: Any) -> tuple[str, ...]:
    """``--set-json`` arguments; a keyword's ``__`` stands for the dot of a key path."""
    return tuple(
        part
        for key, value in values.items()
        for part in ("--set-json", f"{key.replace('__', '.')}={json.dumps(value)}")
    )


# Where each component's pod settings live in values.yaml.
COMPONENT_VALUES = {
    "coordinator": "coordinator",
    "worker": "worker",
    "operator": "operator",
    "minio": "storage.minio",
}


def pod_settings(component: str) -> tuple[str, ...]:
    """Every pod setting of one component, set to something recognisable."""
    key = COMPONENT_VALUES[component]
    return set_json(
        **{
            f"{key}__extraEnv": [
                {"name": "EXTRA_PLAIN", "value": component},
                {"name": "EXTRA_FIELD", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            ],
            f"{key}__podAnnotations": {"example.com/owner": f"{component}-team"},
            f"{key}__podLabels": {"example.com/tier": component},
            f"{key}__nodeSelector": {"pool": component},
            f"{key}__tolerations": [{"key": "dedicated", "operator": "Equal", "value": component}],
            f"{key}__affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": "zone", "operator": "In", "values": ["a", "b"]}
                                ]
                            }
                        ]
                    }
                }
            },
            f"{key}__priorityClassName": f"{component}-priority",
            f"{key}__topologySpreadConstraints": [
                {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway"},
                {
                    "maxSkew": 2,
                    "topologyKey": "kubernetes.io/hostname",
                    "whenUnsatisfiable": "DoNotSchedule",
                    "labelSelector": {"matchLabels": {"example.com/tier": component}},
                },
            ],
        }
    )


KEDA = sets("worker.autoscaling.enabled=false", "worker.autoscaling.keda.enabled=true")


# Each documented option of values.yaml, as helm arguments.
OPTIONS: dict[str, tuple[str, ...]] = {
    "defaults": (),
    "external-s3": sets("storage.external.enabled=true", "storage.existingSecret=my-s3"),
    "minio-existing-secret": sets("storage.existingSecret=my-minio-keys"),
    "autoscaler-off": sets("worker.autoscaling.enabled=false", "worker.replicas=3"),
    "name-override": sets("nameOverride=fq"),
    "fullname-override": sets("fullnameOverride=art", "worker.nameOverride=painters"),
    "watch-all-namespaces": sets("operator.watchAllNamespaces=true"),
    "plaintext": sets("tls.enabled=false", "auth.enabled=false", "networkPolicy.enabled=false"),
    "tls-only": sets("auth.enabled=false"),
    "tokens-only": sets("tls.enabled=false"),
    "mutual-tls": sets("tls.mutual=true"),
    "cert-manager": sets("tls.certManager.enabled=true"),
    "cert-manager-issuer-mutual": sets(
        "tls.certManager.enabled=true",
        "tls.certManager.issuerRef.name=corp-ca",
        "tls.certManager.issuerRef.kind=ClusterIssuer",
        "tls.mutual=true",
    ),
    "existing-tls": sets("tls.existingSecret=my-tls"),
    "existing-tls-mutual": sets(
        "tls.existingSecret=my-tls", "tls.existingClientSecret=my-client-tls", "tls.mutual=true"
    ),
    "network-peers": sets(
        "networkPolicy.grpcFrom[0].namespaceSelector.matchLabels.team=ci",
        "networkPolicy.httpFrom[0].namespaceSelector.matchLabels.name=monitoring",
    ),
    "everything-else": sets(
        "image.tag=dev",
        "imagePullSecrets[0].name=registry",
        "commonLabels.team=art",
        "coordinator.serviceType=NodePort",
        "coordinator.persistence.storageClassName=fast",
        "coordinator.workerTimeout=7.5",
        "worker.concurrency=4",
        "worker.prefetch=0",
        "worker.gracePeriod=40",
        "worker.nodeSelector.pool=render",
        "worker.tolerations[0].key=render",
        "worker.tolerations[0].operator=Exists",
        "operator.serviceAccount.name=painter",
        "operator.urlExpiry=3600",
        "storage.bucket=images",
        "storage.prefix=a/b",
        "storage.minio.persistence.storageClassName=fast",
        "clusterDomain=corp.example",
        "tls.extraDnsNames[0]=fractalq.example.com",
        "tls.extraIpAddresses[0]=192.0.2.7",
    ),
    # KEDA instead of the operator's autoscaler, with each way of securing the coordinator.
    "keda": KEDA,
    "keda-mutual-tls": (*KEDA, *sets("tls.mutual=true")),
    "keda-cert-manager": (*KEDA, *sets("tls.certManager.enabled=true")),
    "keda-existing-tls": (
        *KEDA,
        *sets("tls.existingSecret=my-tls", "tls.existingClientSecret=my-client-tls"),
    ),
    "keda-tls-only": (*KEDA, *sets("auth.enabled=false")),
    "keda-tokens-only": (*KEDA, *sets("tls.enabled=false")),
    "keda-plaintext": (*KEDA, *sets("tls.enabled=false", "auth.enabled=false")),
    "service-monitor": sets(
        "serviceMonitor.enabled=true",
        "serviceMonitor.labels.release=kube-prometheus-stack",
        "serviceMonitor.interval=30s",
        "serviceMonitor.scrapeTimeout=10s",
    ),
    "service-monitor-cert-manager": sets(
        "serviceMonitor.enabled=true", "tls.certManager.enabled=true"
    ),
    "service-monitor-plaintext": sets("serviceMonitor.enabled=true", "tls.enabled=false"),
    "ingress": (
        *sets(
            "ingress.enabled=true",
            "ingress.className=nginx",
            "ingress.hosts[0]=fractalq.example.com",
            "ingress.hosts[1]=*.render.example.com",
            "ingress.tls[0].secretName=fractalq-dashboard",
            "ingress.tls[0].hosts[0]=fractalq.example.com",
        ),
        *set_json(ingress__annotations={"nginx.ingress.kubernetes.io/backend-protocol": "HTTPS"}),
    ),
    "ingress-every-host": sets("ingress.enabled=true"),
    "disruption-budgets": sets(
        "coordinator.podDisruptionBudget.enabled=true",
        "worker.podDisruptionBudget.maxUnavailable=2",
    ),
    "no-disruption-budget": sets("worker.podDisruptionBudget.enabled=false"),
    "pod-settings": tuple(part for c in COMPONENT_VALUES for part in pod_settings(c)),
    # Every toggle on at once.
    "everything-on": (
        *KEDA,
        *sets(
            "tls.mutual=true",
            "serviceMonitor.enabled=true",
            "ingress.enabled=true",
            "ingress.hosts[0]=fractalq.example.com",
            "coordinator.podDisruptionBudget.enabled=true",
        ),
        *pod_settings("worker"),
    ),
}

# Expected names per option: (worker Deployment, coordinator Service).
NAMES = {
    "name-override": ("fractalq-fq-worker", "fractalq-fq-coordinator"),
    "fullname-override": ("painters", "art-coordinator"),
}
DEFAULT_NAMES = ("fractalq-worker", "fractalq-coordinator")

Doc = dict[str, Any]


class Helm:
    def __init__(self, binary: Path, home: Path) -> None:
        self.binary = binary
        self.env = helm_environment(home)
        self._cache: dict[tuple[str, ...], list[Doc]] = {}

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.binary), *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=60,
            check=False,
        )

    def template(self, *args: str, release: str = RELEASE) -> list[Doc]:
        key = (release, *args)
        if key not in self._cache:
            result = self.run(
                "template",
                release,
                str(CHART),
                "--namespace",
                NAMESPACE,
                "--include-crds",
                "--kube-version",
                KUBE_VERSION,
                *args,
            )
            assert result.returncode == 0, result.stderr
            self._cache[key] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
        return copy.deepcopy(self._cache[key])


def objects(docs: list[Doc], kind: str, component: str | None = None) -> list[Doc]:
    return [
        doc
        for doc in docs
        if doc["kind"] == kind
        and (
            component is None
            or doc["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component
        )
    ]


def one(docs: list[Doc], kind: str, component: str | None = None) -> Doc:
    found = objects(docs, kind, component)
    assert len(found) == 1, f"expected one {kind} {component or ''}, found {len(found)}"
    return found[0]


def pod_specs(docs: list[Doc]) -> Iterator[tuple[Doc, Doc]]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
            yield doc, doc["spec"]["template"]["spec"]


def containers(pod: Doc) -> list[Doc]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def env_of(container: Doc) -> dict[str, Doc]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def env_value(container: Doc, name: str) -> str:
    entry = env_of(container)[name]
    assert "valueFrom" not in entry
    value = entry["value"]
    assert isinstance(value, str)
    return value


def container_of(docs: list[Doc], kind: str, component: str) -> Doc:
    pod = one(docs, kind, component)["spec"]["template"]["spec"]
    assert len(pod["containers"]) == 1
    container: Doc = pod["containers"][0]
    return container


def flag(args: list[str], name: str) -> str:
    assert args.count(name) == 1, f"{name} in {args}"
    return args[args.index(name) + 1]
