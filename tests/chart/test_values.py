"""values.yaml and values.schema.json: the schema refuses nonsense, the defaults mirror
fractalq/config.py, and the values render into command lines fractalq parses."""

from __future__ import annotations

import json
import re

import jsonschema
import kopf.cli
import pytest
import yaml

from chart.rendering import (
    CHART,
    NAMESPACE,
    OPTIONS,
    RELEASE,
    VALUES_FILE,
    Helm,
    container_of,
    env_of,
    env_value,
    flag,
    one,
    sets,
)
from fractalq import config
from fractalq.cli import build_parser
from fractalq.cli.common import resolve_now


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
        "worker.autoscaling.keda.enable=true",
        "worker.autoscaling.keda.enabled=maybe",
        "worker.podDisruptionBudget.maxUnavailable=-1",
        "coordinator.podDisruptionBudget.maxUnavailable=1",
        "serviceMonitor.interval=soon",
        "serviceMonitor.enabled=yes",
        "ingress.hosts[0]=Not_A_Host",
        "ingress.className=Not A Class",
        "ingress.path=/fractalq",
        "worker.priorityClassName=Not_A_Name",
        "storage.minio.extraEnv[0].value=nameless",
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
        "--quota-active-jobs",
        str(config.QUOTA_ACTIVE_JOBS),
        "--quota-queued-tasks",
        str(config.QUOTA_QUEUED_TASKS),
        "--quota-job-pixels",
        str(config.QUOTA_JOB_PIXELS),
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
def test_containers_run_valid_fractalq_commands(
    chart_helm: Helm, option: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chart's command lines parse with fractalq's own parser (and kopf's), each
    with its container's FRACTALQ_* variables (options read them as they are parsed)."""
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

    container = container_of(docs, "Deployment", "operator")
    for name, entry in env_of(container).items():
        if name.startswith("FRACTALQ_") and "value" in entry:
            monkeypatch.setenv(name, entry["value"])
    operator, extra = parser.parse_known_args(container["args"])
    resolve_now(operator)  # as fractalq operator does, once it has found its extra
    assert operator.storage == env_value(container, "FRACTALQ_STORAGE")
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
