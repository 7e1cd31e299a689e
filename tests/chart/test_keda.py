"""KEDA instead of the operator's autoscaler (worker.autoscaling.keda): the ScaledObject
and its TriggerAuthentication, checked against a real coordinator started with the
chart's flags and files, read the way KEDA's metrics-api trigger reads it."""

from __future__ import annotations

import http.client
import json
import math
import re
import socket
import ssl
import tempfile
import urllib.parse
from pathlib import Path

import pytest
from procs import ProcessGroup, run_cli

from chart.rendering import (
    CHART,
    NAMESPACE,
    OPTIONS,
    RELEASE,
    Doc,
    Helm,
    container_of,
    env_value,
    flag,
    objects,
    one,
    pod_specs,
    sets,
)
from chart.security import (
    client_environment,
    provided,
    secret_data,
    secrets_referenced,
    start_coordinator,
)
from fractalq import config
from fractalq.security.tokens import Role, TokenTable

KEDA_OPTIONS = [name for name in OPTIONS if name.startswith("keda")]
# The queue depth the operator's autoscaler scales on (operator/scaler.py).
DEPTH = ("queued", "delayed", "leased")


def scaled_object(docs: list[Doc]) -> Doc:
    return one(docs, "ScaledObject")


def authentication(docs: list[Doc]) -> dict[str, bytes]:
    """The TriggerAuthentication's parameters, read from the Secrets it names."""
    found = objects(docs, "TriggerAuthentication")
    if not found:
        return {}
    [auth] = found
    return {
        ref["parameter"]: secret_data(docs, ref["name"])[ref["key"]]
        for ref in auth["spec"]["secretTargetRef"]
    }


def test_keda_is_off_by_default(chart_helm: Helm) -> None:
    docs = chart_helm.template()
    assert not objects(docs, "ScaledObject") and not objects(docs, "TriggerAuthentication")


@pytest.mark.parametrize("option", KEDA_OPTIONS)
def test_keda_scales_the_workers_instead_of_the_operator(chart_helm: Helm, option: str) -> None:
    docs = chart_helm.template(*OPTIONS[option])
    worker = one(docs, "Deployment", "worker")
    spec = scaled_object(docs)["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": worker["metadata"]["name"],
    }
    # KEDA's HPA owns the replicas; the operator neither scales nor may.
    assert "replicas" not in worker["spec"]
    operator = container_of(docs, "Deployment", "operator")
    assert env_value(operator, "FRACTALQ_SCALE_ENABLED") == "false"
    for role in objects(docs, "Role"):
        assert not [r for r in role["rules"] if "deployments/scale" in r["resources"]]

    # The operator's policy, with the defaults of fractalq/config.py.
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (
        config.SCALE_MIN,
        config.SCALE_MAX,
    )
    assert spec["pollingInterval"] == math.ceil(config.SCALE_INTERVAL)
    window = math.ceil(config.SCALE_DOWN_WINDOW)
    assert spec["cooldownPeriod"] == window
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior == {"scaleDown": {"stabilizationWindowSeconds": window}}
    # One metric: queued + delayed + leased tasks, config.SCALE_TASKS_PER_WORKER a worker.
    modifiers = spec["advanced"]["scalingModifiers"]
    assert modifiers["formula"] == " + ".join(DEPTH)
    assert modifiers["target"] == str(config.SCALE_TASKS_PER_WORKER)
    assert modifiers["metricType"] == "AverageValue"
    triggers = spec["triggers"]
    assert [t["name"] for t in triggers] == list(DEPTH)
    for trigger in triggers:
        assert trigger["type"] == "metrics-api"
        assert trigger["metadata"]["valueLocation"] == trigger["name"]
        assert trigger["metadata"]["format"] == "json"


@pytest.mark.parametrize("option", KEDA_OPTIONS)
def test_keda_reaches_the_coordinator_with_the_reader_token_and_the_ca(
    chart_helm: Helm, option: str
) -> None:
    docs = chart_helm.template(*OPTIONS[option])
    tls = "tls.enabled=false" not in OPTIONS[option]
    auth = "auth.enabled=false" not in OPTIONS[option]
    statefulset = one(docs, "StatefulSet", "coordinator")
    http_port = int(
        flag(statefulset["spec"]["template"]["spec"]["containers"][0]["args"], "--http-port")
    )
    service = next(
        s for s in objects(docs, "Service", "coordinator") if s["spec"].get("clusterIP") != "None"
    )
    triggers = scaled_object(docs)["spec"]["triggers"]
    for trigger in triggers:
        url = urllib.parse.urlsplit(trigger["metadata"]["url"])
        assert url.scheme == ("https" if tls else "http")
        # The coordinator Service, from KEDA's namespace, on its HTTP port.
        assert url.hostname == f"{service['metadata']['name']}.{NAMESPACE}.svc"
        assert url.port == http_port
        assert url.path == "/api/stats"
        modes = trigger["metadata"].get("authModes", "").split(",")
        wanted = {mode for mode, on in (("tls", tls), ("bearer", auth)) if on}
        assert set(filter(None, modes)) == wanted
        assert ("authenticationRef" in trigger) == (tls or auth)

    if not (tls or auth):
        assert not objects(docs, "TriggerAuthentication")
        return
    [auth_object] = objects(docs, "TriggerAuthentication")
    assert all(
        t["authenticationRef"] == {"name": auth_object["metadata"]["name"]} for t in triggers
    )
    refs = {r["parameter"]: (r["name"], r["key"]) for r in auth_object["spec"]["secretTargetRef"]}
    expected = set()
    if auth:
        # The reader token: /api/stats is a read, and the reader may do nothing else.
        assert refs["token"] == (f"{RELEASE}-reader-token", "token")
        expected.add("token")
    if tls:
        # KEDA (2.18 and later) takes a CA for this trigger only with a client
        # certificate and key, all from the scaler's own Secret.
        [secret] = {refs[p][0] for p in ("ca", "cert", "key")}
        assert (refs["ca"][1], refs["cert"][1], refs["key"][1]) == ("ca.crt", "tls.crt", "tls.key")
        for key in ("ca.crt", "tls.crt", "tls.key"):
            assert provided(docs, secret, key), (secret, key)
        if option == "keda-existing-tls":
            assert secret == "my-client-tls"
        else:
            assert secret == f"{RELEASE}-scaler-tls"
        expected |= {"ca", "cert", "key"}
    assert set(refs) == expected
    # No pod reads what only KEDA reads.
    for _, pod in pod_specs(docs):
        assert f"{RELEASE}-scaler-tls" not in secrets_referenced(pod)


def test_the_scaler_certificate_comes_from_the_charts_ca(chart_helm: Helm) -> None:
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.x509.oid import ExtendedKeyUsageOID

    docs = chart_helm.template(*OPTIONS["keda"])
    ca = x509.load_pem_x509_certificate(secret_data(docs, f"{RELEASE}-ca")["tls.crt"])
    scaler = secret_data(docs, f"{RELEASE}-scaler-tls")
    assert scaler["ca.crt"] == secret_data(docs, f"{RELEASE}-ca")["tls.crt"]
    certificate = x509.load_pem_x509_certificate(scaler["tls.crt"])
    certificate.verify_directly_issued_by(ca)
    usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in usages
    assert one(docs, "Secret", "scaler")["type"] == "Opaque"

    docs = chart_helm.template(*OPTIONS["keda-cert-manager"])
    certificate_spec = next(
        c["spec"]
        for c in objects(docs, "Certificate")
        if c["metadata"]["name"] == f"{RELEASE}-scaler"
    )
    assert certificate_spec["secretName"] == f"{RELEASE}-scaler-tls"
    assert "client auth" in certificate_spec["usages"]
    server = next(
        c["spec"]
        for c in objects(docs, "Certificate")
        if c["metadata"]["name"] == f"{RELEASE}-coordinator"
    )
    assert certificate_spec["issuerRef"] == server["issuerRef"]


class Loopback(http.client.HTTPSConnection):
    """HTTPS to 127.0.0.1, verified for ``host`` (a Service's name, as KEDA dials it)."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext) -> None:
        super().__init__(host, port, context=context, timeout=10)
        self.tls = context

    def connect(self) -> None:
        raw = socket.create_connection(("127.0.0.1", self.port), self.timeout)
        self.sock = self.tls.wrap_socket(raw, server_hostname=self.host)


def keda_replicas(docs: list[Doc], http_port: int, root: Path) -> int:
    """What KEDA would make of the ScaledObject against a coordinator whose HTTP port is
    ``http_port`` on 127.0.0.1: each metrics-api trigger's GET, as KEDA makes it (the CA,
    client certificate and bearer token of the TriggerAuthentication, the URL's host as
    the TLS server name), its JSON value, the formula, and the replica count."""
    spec = scaled_object(docs)["spec"]
    params = authentication(docs)
    values = {}
    for trigger in spec["triggers"]:
        metadata = trigger["metadata"]
        url = urllib.parse.urlsplit(metadata["url"])
        modes = metadata.get("authModes", "").split(",")
        headers = (
            {"Authorization": f"Bearer {params['token'].decode()}"} if "bearer" in modes else {}
        )
        connection: http.client.HTTPConnection
        if url.scheme == "https":
            assert "tls" in modes
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.load_verify_locations(cadata=params["ca"].decode())
            with tempfile.TemporaryDirectory(dir=root) as folder:
                cert, key = Path(folder, "tls.crt"), Path(folder, "tls.key")
                cert.write_bytes(params["cert"])
                key.write_bytes(params["key"])
                context.load_cert_chain(cert, key)
            connection = Loopback(url.hostname or "", http_port, context)
        else:
            connection = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
        try:
            connection.request("GET", url.path, headers=headers)
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        assert response.status == 200, (trigger["name"], response.status, body)
        location = metadata["valueLocation"]
        assert re.fullmatch(r"[a-z]+", location)  # a top-level key: the same in GJSON
        value = json.loads(body)[location]
        assert isinstance(value, int | float) and not isinstance(value, bool), (location, value)
        values[trigger["name"]] = value
    modifiers = spec["advanced"]["scalingModifiers"]
    terms = [term.strip() for term in modifiers["formula"].split("+")]
    depth = sum(values[term] for term in terms)
    wanted = math.ceil(depth / float(modifiers["target"]))
    replicas: int = max(spec["minReplicaCount"], min(spec["maxReplicaCount"], wanted))
    return replicas


@pytest.mark.parametrize(
    "option", ["keda", "keda-mutual-tls", "keda-tokens-only", "keda-plaintext"]
)
def test_keda_reads_the_queue_depth_of_a_real_coordinator(
    chart_helm: Helm, cluster: ProcessGroup, tmp_path: Path, option: str
) -> None:
    """The coordinator with the chart's flags and files; nine tasks queued and no worker:
    KEDA's triggers read 9 tasks and ask for ceil(9 / 4) = 3 workers. Without them it
    asks for none (min 0)."""
    docs = chart_helm.template(*OPTIONS[option])
    coordinator = start_coordinator(cluster, docs, tmp_path / "coordinator")
    assert keda_replicas(docs, coordinator.http_port, tmp_path) == config.SCALE_MIN

    client = client_environment(docs, "operator", tmp_path / "operator")
    submitted = run_cli(
        "submit", "--coordinator", coordinator.address, "--task", "noop", "--count", "9",
        env=client,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    assert keda_replicas(docs, coordinator.http_port, tmp_path) == math.ceil(
        9 / config.SCALE_TASKS_PER_WORKER
    )


def test_the_reader_token_is_the_one_keda_reads(chart_helm: Helm) -> None:
    docs = chart_helm.template(*OPTIONS["keda"])
    tokens = TokenTable.parse(secret_data(docs, f"{RELEASE}-auth-tokens")["tokens"].decode())
    assert tokens.role(authentication(docs)["token"].decode()) is Role.READER


@pytest.mark.parametrize(
    ("assignments", "message"),
    [
        (
            ("worker.autoscaling.keda.enabled=true",),
            "worker.autoscaling.keda.enabled and worker.autoscaling.enabled are both true",
        ),
        (
            (
                "worker.autoscaling.keda.enabled=true",
                "worker.autoscaling.enabled=false",
                "worker.autoscaling.scaleDownWindow=3601",
            ),
            "worker.autoscaling.scaleDownWindow must be at most 3600",
        ),
        (
            (
                "worker.autoscaling.keda.enabled=true",
                "worker.autoscaling.enabled=false",
                "tls.existingSecret=my-tls",
            ),
            "needs tls.existingClientSecret",
        ),
    ],
    ids=["both autoscalers", "window too long", "existing TLS without a client Secret"],
)
def test_contradictory_autoscaling_values_are_refused(
    chart_helm: Helm, assignments: tuple[str, ...], message: str
) -> None:
    result = chart_helm.run("template", RELEASE, str(CHART), *sets(*assignments))
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    if "both true" in message:
        # The message says what to do.
        assert "set worker.autoscaling.enabled=false" in result.stderr


def test_notes_say_who_scales_the_workers(chart_helm: Helm) -> None:
    def notes(*args: str) -> str:
        result = chart_helm.run(
            "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client", *args
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.split("NOTES:", 1)[1]

    assert "scaled by the operator between 0 and 10 replicas" in notes()
    assert "scaled by KEDA between 0 and 10 replicas" in notes(*OPTIONS["keda"])
    assert "3 replicas (autoscaler off)" in notes(*OPTIONS["autoscaler-off"])
