"""The coordinator's NetworkPolicy."""

from __future__ import annotations

import pytest

from chart.rendering import (
    OPTIONS,
    Doc,
    Helm,
    flag,
    objects,
    one,
    pod_specs,
    sets,
)
from chart.security import (
    component_of,
)


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
