"""The helm binary, the chart's metadata, ``helm lint --strict`` and the Kubernetes API
schemas: every option of values.yaml renders objects that kubernetes-validate accepts
in strict mode (cert-manager's, Prometheus Operator's and KEDA's objects against their
CRDs' schemas, see tests/chart/crd_schemas.py)."""

from __future__ import annotations

import re
from collections.abc import Callable

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from chart_tools import REPO

from chart.crd_schemas import is_custom, validator
from chart.rendering import (
    CHART,
    KUBE_VERSION,
    NAMESPACE,
    OPTIONS,
    Doc,
    Helm,
    objects,
    one,
)

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
        custom = validator(doc["apiVersion"], doc["kind"])
        if custom is not None:
            # Another project's kind: checked against its CRD's schema (tests/chart/crd_schemas.py).
            for error in custom.iter_errors(doc):
                path = ".".join(str(part) for part in error.path)
                pytest.fail(f"{name}: {path}: {error.message}")
            continue
        assert not is_custom(doc["apiVersion"]), f"{name}: no schema for {doc['apiVersion']}"
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


@pytest.mark.parametrize(
    ("kind", "mistake"),
    [
        ("ScaledObject", lambda doc: doc["spec"].update(pollingIntervall=5)),
        ("ScaledObject", lambda doc: doc["spec"].update(minReplicaCount="0")),
        ("ScaledObject", lambda doc: doc["spec"]["triggers"][0]["metadata"].update(port=8080)),
        ("ScaledObject", lambda doc: doc["spec"]["advanced"]["scalingModifiers"].update(
            metricType="Utilization"
        )),
        ("TriggerAuthentication", lambda doc: doc["spec"]["secretTargetRef"][0].pop("key")),
        ("ServiceMonitor", lambda doc: doc["spec"]["endpoints"][0].update(scheme="tcp")),
        ("ServiceMonitor", lambda doc: doc["spec"]["endpoints"][0].update(interval="30 s")),
        ("ServiceMonitor", lambda doc: doc["spec"].pop("selector")),
        ("ServiceMonitor", lambda doc: doc["metadata"].pop("namespace")),
    ],
    ids=[
        "unknown field",
        "string for an integer",
        "trigger metadata not a string",
        "metric type",
        "secret reference without a key",
        "scheme",
        "duration",
        "no selector",
        "no namespace",
    ],
)  # fmt: skip
def test_the_crd_schemas_catch_mistakes(
    chart_helm: Helm, kind: str, mistake: Callable[[Doc], object]
) -> None:
    """The vendored schemas are strict: what the API server would refuse, they refuse."""
    [doc] = objects(chart_helm.template(*OPTIONS["everything-on"]), kind)
    check = validator(doc["apiVersion"], doc["kind"])
    assert check is not None
    assert not list(check.iter_errors(doc))
    mistake(doc)
    assert list(check.iter_errors(doc))
