"""Each component's pod settings: extraEnv, podAnnotations, podLabels, nodeSelector,
tolerations, affinity, priorityClassName and topologySpreadConstraints."""

from __future__ import annotations

import pytest

from chart.rendering import (
    CHART,
    COMPONENT_VALUES,
    OPTIONS,
    RELEASE,
    Doc,
    Helm,
    env_of,
    one,
    pod_settings,
    set_json,
    sets,
)

KINDS = {"coordinator": "StatefulSet", "worker": "Deployment", "operator": "Deployment"}


def workload(docs: list[Doc], component: str) -> Doc:
    return one(docs, KINDS.get(component, "Deployment"), component)


@pytest.mark.parametrize("component", COMPONENT_VALUES)
def test_pod_settings_reach_the_pod(chart_helm: Helm, component: str) -> None:
    plain = workload(chart_helm.template(), component)
    docs = chart_helm.template(*OPTIONS["pod-settings"])
    found = workload(docs, component)
    template = found["spec"]["template"]
    pod = template["spec"]
    selector = found["spec"]["selector"]["matchLabels"]

    # The pod's own labels and annotations, beside the chart's.
    labels = template["metadata"]["labels"]
    assert labels["example.com/tier"] == component
    assert labels.items() >= plain["spec"]["template"]["metadata"]["labels"].items()
    annotations = template["metadata"].get("annotations", {})
    assert annotations["example.com/owner"] == f"{component}-team"
    before = plain["spec"]["template"]["metadata"].get("annotations", {})
    assert {k: v for k, v in annotations.items() if k.startswith("prometheus.io/")} == {
        k: v for k, v in before.items() if k.startswith("prometheus.io/")
    }
    assert {k for k in annotations if k.startswith("checksum/")} == {
        k for k in before if k.startswith("checksum/")
    }

    # Scheduling.
    assert pod["nodeSelector"] == {"pool": component}
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": component}]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == ["a", "b"]
    assert pod["priorityClassName"] == f"{component}-priority"
    spread, explicit = pod["topologySpreadConstraints"]
    # A constraint without a labelSelector spreads the component's own pods.
    assert spread["labelSelector"] == {"matchLabels": selector}
    assert selector.items() <= labels.items()
    assert explicit["labelSelector"] == {"matchLabels": {"example.com/tier": component}}

    # The extra variables come after the chart's, which are unchanged.
    [container] = pod["containers"]
    [plain_container] = plain["spec"]["template"]["spec"]["containers"]
    names = [entry["name"] for entry in container["env"]]
    assert container["env"][: len(plain_container["env"])] == plain_container["env"]
    assert names[len(plain_container["env"]) :] == ["EXTRA_PLAIN", "EXTRA_FIELD"]
    assert env_of(container)["EXTRA_PLAIN"]["value"] == component
    assert env_of(container)["EXTRA_FIELD"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "spec.nodeName"}
    }


def test_pod_settings_stay_with_their_component(chart_helm: Helm) -> None:
    docs = chart_helm.template(*pod_settings("worker"))
    for component in ("coordinator", "operator", "minio"):
        template = workload(docs, component)["spec"]["template"]
        assert "example.com/tier" not in template["metadata"]["labels"], component
        assert "nodeSelector" not in template["spec"], component
        assert not [n for n in env_of(template["spec"]["containers"][0]) if n.startswith("EXTRA")]


def test_a_hint_may_be_overridden(chart_helm: Helm) -> None:
    docs = chart_helm.template(
        *set_json(coordinator__podAnnotations={"prometheus.io/scrape": "false"})
    )
    annotations = workload(docs, "coordinator")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "false"
    assert annotations["prometheus.io/path"] == "/metrics"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            set_json(worker__extraEnv=[{"name": "FRACTALQ_TOKEN_FILE", "value": "/x"}]),
            "worker.extraEnv: FRACTALQ_TOKEN_FILE is set by the chart",
        ),
        (
            set_json(operator__extraEnv=[{"name": "FRACTALQ_SCALE_MAX", "value": "3"}]),
            "operator.extraEnv: FRACTALQ_SCALE_MAX is set by the chart",
        ),
        (
            set_json(coordinator__extraEnv=[{"name": "AWS_ACCESS_KEY_ID", "value": "k"}]),
            "coordinator.extraEnv: AWS_ACCESS_KEY_ID is set by the chart",
        ),
        (
            set_json(storage__minio__extraEnv=[{"name": "MINIO_BROWSER", "value": "on"}]),
            "storage.minio.extraEnv: MINIO_BROWSER is set by the chart",
        ),
    ],
    ids=["worker", "operator", "coordinator", "minio"],
)
def test_extra_env_may_not_replace_the_charts(
    chart_helm: Helm, values: tuple[str, ...], message: str
) -> None:
    result = chart_helm.run("template", RELEASE, str(CHART), *values)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize(
    "values",
    [
        set_json(worker__podLabels={"app.kubernetes.io/component": "other"}),
        set_json(worker__podLabels={"helm.sh/chart": "other"}),
        set_json(operator__podAnnotations={"checksum/auth": "0"}),
        set_json(worker__extraEnv=[{"value": "nameless"}]),
        set_json(worker__extraEnv=[{"name": "A", "valueFrm": {}}]),
        set_json(coordinator__topologySpreadConstraints=[{"maxSkew": 1}]),
        sets("operator.priorityClassName=Not_A_Name"),
    ],
    ids=[
        "selector label",
        "chart label",
        "checksum annotation",
        "env without a name",
        "env typo",
        "spread without topologyKey",
        "priority class name",
    ],
)
def test_pod_settings_that_would_break_the_chart_are_refused(
    chart_helm: Helm, values: tuple[str, ...]
) -> None:
    result = chart_helm.run("template", RELEASE, str(CHART), *values)
    assert result.returncode != 0
    assert "schema" in result.stderr, result.stderr
