"""The pods: locked down, given time to stop, keeping their data, found by Prometheus;
the image tag and the notes."""

from __future__ import annotations

import pytest
import yaml
from chart_tools import (
    REPO,
    dockerfile_instructions,
)

from chart.rendering import (
    CHART,
    DOCKERFILE,
    EXAMPLE,
    NAMESPACE,
    OPTIONS,
    RELEASE,
    Helm,
    containers,
    flag,
    one,
    pod_specs,
    sets,
)
from fractalq import config


def dockerfile_uid() -> int:
    users = [
        args
        for instruction, args in dockerfile_instructions(DOCKERFILE.read_text())
        if instruction == "USER"
    ]
    return int(users[-1].split(":")[0])


@pytest.mark.parametrize("option", ["defaults", "everything-else", "everything-on"])
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
            component = workload["metadata"]["labels"]["app.kubernetes.io/component"]
            if component != "minio":
                # The operator's image is the fractalq image plus its Kubernetes packages.
                image = "fractalq-operator" if component == "operator" else "fractalq"
                assert pod["containers"][0]["image"] == f"{image}:{tag}"
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
