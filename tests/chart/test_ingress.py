"""The dashboard's Ingress (ingress.enabled)."""

from __future__ import annotations

import pytest

from chart.rendering import CHART, NAMESPACE, OPTIONS, RELEASE, Helm, objects, one, sets


def test_no_ingress_by_default(chart_helm: Helm) -> None:
    assert not objects(chart_helm.template(), "Ingress")


@pytest.mark.parametrize("option", ["ingress", "ingress-every-host", "everything-on"])
def test_ingress_sends_every_path_to_the_dashboard(chart_helm: Helm, option: str) -> None:
    docs = chart_helm.template(*OPTIONS[option])
    ingress = one(docs, "Ingress", "coordinator")
    spec = ingress["spec"]
    # The coordinator Service's HTTP port: the dashboard, /static/ and /api/ are all there.
    [service] = [s for s in objects(docs, "Service", "coordinator") if len(s["spec"]["ports"]) == 2]
    http = next(p for p in service["spec"]["ports"] if p["name"] == "http")
    hosts = []
    for rule in spec["rules"]:
        hosts.append(rule.get("host"))
        [path] = rule["http"]["paths"]
        assert (path["path"], path["pathType"]) == ("/", "Prefix")
        assert path["backend"] == {
            "service": {"name": service["metadata"]["name"], "port": {"name": http["name"]}}
        }
    if option == "ingress":
        assert hosts == ["fractalq.example.com", "*.render.example.com"]
        assert spec["ingressClassName"] == "nginx"
        assert spec["tls"] == [
            {"secretName": "fractalq-dashboard", "hosts": ["fractalq.example.com"]}
        ]
        assert ingress["metadata"]["annotations"] == {
            "nginx.ingress.kubernetes.io/backend-protocol": "HTTPS"
        }
    elif option == "ingress-every-host":
        assert hosts == [None]  # a rule without a host: every host
        assert "ingressClassName" not in spec and "tls" not in spec
        assert "annotations" not in ingress["metadata"]
    else:
        assert hosts == ["fractalq.example.com"]
    assert ingress["metadata"]["namespace"] == NAMESPACE


def test_notes_give_the_dashboards_address(chart_helm: Helm) -> None:
    def notes(*args: str) -> str:
        result = chart_helm.run(
            "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client", *args
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.split("NOTES:", 1)[1]

    with_tls = notes(*OPTIONS["ingress"])
    assert "https://fractalq.example.com/" in with_tls
    assert "http://*.render.example.com/" in with_tls  # no TLS for that host
    assert "the ingress controller must speak HTTPS" in with_tls
    plain = notes(*sets("ingress.enabled=true", "ingress.hosts[0]=a.example", "tls.enabled=false"))
    assert "http://a.example/" in plain and "must speak HTTPS" not in plain
    assert "Ingress" not in notes()
