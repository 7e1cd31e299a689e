"""The ServiceMonitor (serviceMonitor.enabled): Prometheus Operator scrapes the
coordinator's /metrics through its Service, verifying it with the chart's CA; checked
against a real coordinator started with the chart's flags and files."""

from __future__ import annotations

import http.client
import socket
import ssl
from pathlib import Path

import pytest
from procs import ProcessGroup

from chart.rendering import NAMESPACE, OPTIONS, Doc, Helm, flag, objects, one
from chart.security import provided, secret_data, start_coordinator
from fractalq.coordinator.access import OPEN_PATHS

MONITORED = ["service-monitor", "service-monitor-cert-manager", "service-monitor-plaintext"]


def test_no_service_monitor_by_default(chart_helm: Helm) -> None:
    assert not objects(chart_helm.template(), "ServiceMonitor")


def targets(docs: list[Doc]) -> list[tuple[Doc, Doc]]:
    """(Service, port) pairs the ServiceMonitor's one endpoint scrapes, as Prometheus
    Operator selects them: Services in its namespaces whose labels match, ports by name."""
    monitor = one(docs, "ServiceMonitor")["spec"]
    [endpoint] = monitor["endpoints"]
    selector = monitor["selector"]["matchLabels"]
    found = []
    for service in objects(docs, "Service"):
        if service["metadata"]["namespace"] not in monitor["namespaceSelector"]["matchNames"]:
            continue
        if selector.items() <= service["metadata"]["labels"].items():
            for port in service["spec"]["ports"]:
                if port["name"] == endpoint["port"]:
                    found.append((service, port))
    return found


@pytest.mark.parametrize("option", MONITORED)
def test_service_monitor_scrapes_the_coordinators_metrics(chart_helm: Helm, option: str) -> None:
    docs = chart_helm.template(*OPTIONS[option])
    tls = "tls.enabled=false" not in OPTIONS[option]
    monitor = one(docs, "ServiceMonitor", "coordinator")
    [endpoint] = monitor["spec"]["endpoints"]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}

    # One target: the coordinator Service's HTTP port, which reaches the pod's --http-port.
    [(service, port)] = targets(docs)
    statefulset = one(docs, "StatefulSet", "coordinator")
    assert service["spec"]["selector"].items() <= (
        statefulset["spec"]["template"]["metadata"]["labels"].items()
    )
    container = statefulset["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports[port["targetPort"]] == int(flag(container["args"], "--http-port"))

    # /metrics answers without a token: the ServiceMonitor carries none.
    assert endpoint["path"] in OPEN_PATHS and endpoint["path"] == "/metrics"
    assert not {"authorization", "bearerTokenSecret", "basicAuth"} & set(endpoint)
    assert endpoint["scheme"] == ("https" if tls else "http")
    if tls:
        tls_config = endpoint["tlsConfig"]
        assert "insecureSkipVerify" not in tls_config
        assert tls_config["serverName"] == f"{service['metadata']['name']}.{NAMESPACE}.svc"
        ca = tls_config["ca"]["secret"]
        assert ca["key"] == "ca.crt" and provided(docs, ca["name"], "ca.crt")
        if option == "service-monitor-cert-manager":
            [server] = [
                c["spec"]
                for c in objects(docs, "Certificate")
                if c["spec"]["secretName"] == f"{service['metadata']['name']}-tls"
            ]
            assert tls_config["serverName"] in server["dnsNames"]
    else:
        assert "tlsConfig" not in endpoint

    if option == "service-monitor":
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert (endpoint["interval"], endpoint["scrapeTimeout"]) == ("30s", "10s")
    else:
        assert "interval" not in endpoint and "scrapeTimeout" not in endpoint


def test_prometheus_scrapes_a_real_coordinator_as_the_service_monitor_says(
    chart_helm: Helm, cluster: ProcessGroup, tmp_path: Path
) -> None:
    """With the ServiceMonitor's CA and server name, and no token, /metrics answers."""
    docs = chart_helm.template(*OPTIONS["service-monitor"])
    coordinator = start_coordinator(cluster, docs, tmp_path / "coordinator")
    [endpoint] = one(docs, "ServiceMonitor")["spec"]["endpoints"]
    tls_config = endpoint["tlsConfig"]
    ca = secret_data(docs, tls_config["ca"]["secret"]["name"])[tls_config["ca"]["secret"]["key"]]
    context = ssl.create_default_context(cadata=ca.decode())
    with (
        socket.create_connection(("127.0.0.1", coordinator.http_port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=tls_config["serverName"]) as stream,
    ):
        request = f"GET {endpoint['path']} HTTP/1.1\r\nHost: {tls_config['serverName']}\r\n"
        stream.sendall((request + "Connection: close\r\n\r\n").encode())
        response = http.client.HTTPResponse(stream)
        response.begin()
        body = response.read().decode()
    assert response.status == 200
    assert "# TYPE fractalq_tasks gauge" in body
