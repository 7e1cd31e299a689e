"""PodDisruptionBudgets: on for the workers, optional for the one coordinator pod."""

from __future__ import annotations

import pytest

from chart.rendering import CHART, OPTIONS, RELEASE, Doc, Helm, objects, one, sets


def budget(docs: list[Doc], component: str) -> Doc | None:
    found = objects(docs, "PodDisruptionBudget", component)
    assert len(found) <= 1
    return found[0] if found else None


def selects(budget: Doc, workload: Doc) -> bool:
    selector = budget["spec"]["selector"]["matchLabels"]
    return bool(selector.items() <= workload["spec"]["template"]["metadata"]["labels"].items())


@pytest.mark.parametrize("option", ["defaults", "disruption-budgets", "keda", "fullname-override"])
def test_a_drain_evicts_few_workers_at_once(chart_helm: Helm, option: str) -> None:
    docs = chart_helm.template(*OPTIONS[option])
    workers = budget(docs, "worker")
    assert workers is not None
    assert selects(workers, one(docs, "Deployment", "worker"))
    for workload in (*objects(docs, "Deployment"), *objects(docs, "StatefulSet")):
        if workload["metadata"]["labels"]["app.kubernetes.io/component"] != "worker":
            assert not selects(workers, workload), workload["metadata"]["name"]
    spec = workers["spec"]
    # A percentage of whatever the autoscaler has set; never a minAvailable, which would
    # block every drain of a Deployment scaled down to its minimum.
    assert spec["maxUnavailable"] == (2 if option == "disruption-budgets" else "25%")
    assert "minAvailable" not in spec
    # A crash-looping worker never holds a drain up.
    assert spec["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_the_coordinator_budget_is_a_choice(chart_helm: Helm) -> None:
    assert budget(chart_helm.template(), "coordinator") is None
    docs = chart_helm.template(*OPTIONS["disruption-budgets"])
    coordinator = budget(docs, "coordinator")
    assert coordinator is not None
    assert selects(coordinator, one(docs, "StatefulSet", "coordinator"))
    assert not selects(coordinator, one(docs, "Deployment", "worker"))
    assert coordinator["spec"]["maxUnavailable"] == 0
    assert coordinator["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_the_worker_budget_can_be_turned_off(chart_helm: Helm) -> None:
    assert budget(chart_helm.template(*OPTIONS["no-disruption-budget"]), "worker") is None


@pytest.mark.parametrize("value", ["150%", "-1", "half", "1.5"])
def test_nonsense_budgets_are_refused(chart_helm: Helm, value: str) -> None:
    result = chart_helm.run(
        "template",
        RELEASE,
        str(CHART),
        "--set-string" if value.endswith("%") or value == "half" else "--set",
        f"worker.podDisruptionBudget.maxUnavailable={value}",
    )
    assert result.returncode != 0
    assert "schema" in result.stderr, result.stderr
    assert "maxUnavailable" in result.stderr


def test_an_integer_budget_stays_an_integer(chart_helm: Helm) -> None:
    docs = chart_helm.template(*sets("worker.podDisruptionBudget.maxUnavailable=0"))
    workers = budget(docs, "worker")
    assert workers is not None and workers["spec"]["maxUnavailable"] == 0
