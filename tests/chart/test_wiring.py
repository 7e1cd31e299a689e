"""Names, addresses and replicas: the workers and the operator find the coordinator,
the storage and each other under every option."""

from __future__ import annotations

import re

import pytest

from chart.rendering import (
    CHART,
    DEFAULT_NAMES,
    NAMES,
    NAMESPACE,
    OPTIONS,
    RELEASE,
    Helm,
    container_of,
    env_of,
    env_value,
    flag,
    objects,
    one,
    sets,
)
from fractalq import config


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
