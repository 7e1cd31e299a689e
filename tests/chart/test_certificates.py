"""Certificates: Helm's own CA, cert-manager's, a user's Secret; contradictory TLS
values refused; TLS and tokens off give the plaintext shape."""

from __future__ import annotations

from typing import Any

import pytest

from chart.rendering import (
    CHART,
    NAMESPACE,
    OPTIONS,
    RELEASE,
    Helm,
    container_of,
    containers,
    env_of,
    env_value,
    flag,
    objects,
    one,
    pod_specs,
    sets,
)
from chart.security import (
    mounted_files,
    secret_data,
)
from fractalq import config


def load_certificate(pem: bytes) -> Any:
    x509 = pytest.importorskip(
        "cryptography.x509", reason="the cryptography package is needed to read certificates"
    )
    return x509.load_pem_x509_certificate(pem)


def spki(certificate: Any) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    der: bytes = certificate.public_key().public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo
    )
    return der


def public_key(key_pem: bytes) -> bytes:
    """The public half of a PEM private key, as DER, to compare with a certificate's."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(key_pem, password=None)
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.parametrize("option", ["defaults", "mutual-tls", "everything-else"])
def test_helm_makes_a_ca_and_certificates_for_the_coordinators_names(
    chart_helm: Helm, option: str
) -> None:
    import datetime
    import ipaddress

    x509 = pytest.importorskip(
        "cryptography.x509", reason="the cryptography package is needed to read certificates"
    )
    from cryptography.x509.oid import ExtendedKeyUsageOID

    docs = chart_helm.template(*OPTIONS[option])
    ca_secret = secret_data(docs, "fractalq-ca")
    server_secret = secret_data(docs, "fractalq-coordinator-tls")
    client_secret = secret_data(docs, "fractalq-client-tls")
    ca = load_certificate(ca_secret["tls.crt"])
    assert server_secret["ca.crt"] == client_secret["ca.crt"] == ca_secret["tls.crt"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    now = datetime.datetime.now(datetime.UTC)
    assert ca.not_valid_after_utc - now > datetime.timedelta(days=config.CA_DAYS - 1)

    server = load_certificate(server_secret["tls.crt"])
    server.verify_directly_issued_by(ca)
    assert public_key(server_secret["tls.key"]) == spki(server)
    assert server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    lifetime = server.not_valid_after_utc - now
    assert datetime.timedelta(days=config.CERT_DAYS - 1) < lifetime
    assert lifetime <= datetime.timedelta(days=config.CERT_DAYS)
    usages = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usages

    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = set(names.get_values_for_type(x509.DNSName))
    ips = {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    # Every name a pod uses for the coordinator's Service, and the port-forward's.
    domain = "corp.example" if option == "everything-else" else "cluster.local"
    for service in objects(docs, "Service", "coordinator"):  # the ClusterIP and headless ones
        name = service["metadata"]["name"]
        for dns_name in (
            name,
            f"{name}.{NAMESPACE}",
            f"{name}.{NAMESPACE}.svc",
            f"{name}.{NAMESPACE}.svc.{domain}",
        ):
            assert dns_name in dns, dns_name
    assert "localhost" in dns
    address = env_value(container_of(docs, "Deployment", "operator"), "FRACTALQ_COORDINATOR")
    assert address.rsplit(":", 1)[0] in dns  # the host the workers and the operator dial
    assert {"127.0.0.1", "::1"} <= ips
    assert all(ipaddress.ip_address(ip) for ip in ips)
    if option == "everything-else":
        assert "fractalq.example.com" in dns and "192.0.2.7" in ips

    if option == "mutual-tls":
        client = load_certificate(client_secret["tls.crt"])
        client.verify_directly_issued_by(ca)
        usages = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert ExtendedKeyUsageOID.CLIENT_AUTH in usages
        assert public_key(client_secret["tls.key"]) == spki(client)
    else:
        assert set(client_secret) == {"ca.crt"}


@pytest.mark.parametrize("option", ["cert-manager", "cert-manager-issuer-mutual"])
def test_cert_manager_makes_the_certificates(chart_helm: Helm, option: str) -> None:
    docs = chart_helm.template(*OPTIONS[option])
    # cert-manager writes the TLS Secrets; Helm makes none (the tokens are still Helm's).
    assert {s["metadata"]["name"] for s in objects(docs, "Secret")} == {
        "fractalq-storage",
        "fractalq-auth-tokens",
        "fractalq-worker-token",
        "fractalq-client-token",
        "fractalq-reader-token",
        "fractalq-admin-token",
    }
    certificates = {c["metadata"]["name"]: c["spec"] for c in objects(docs, "Certificate")}
    issuers = {i["metadata"]["name"]: i["spec"] for i in objects(docs, "Issuer")}
    server = certificates["fractalq-coordinator"]
    coordinator = container_of(docs, "StatefulSet", "coordinator")
    pod = one(docs, "StatefulSet", "coordinator")["spec"]["template"]["spec"]
    assert mounted_files(pod, coordinator)[flag(coordinator["args"], "--tls-cert")] == (
        server["secretName"],
        "tls.crt",
    )
    assert "fractalq-coordinator" in server["dnsNames"]
    assert f"fractalq-coordinator.{NAMESPACE}.svc.cluster.local" in server["dnsNames"]
    assert "localhost" in server["dnsNames"] and "127.0.0.1" in server["ipAddresses"]
    assert "server auth" in server["usages"]
    if option == "cert-manager":
        # The chart's own CA: self-signed Issuer -> CA Certificate -> CA Issuer.
        assert issuers["fractalq-selfsigned"] == {"selfSigned": {}}
        ca = certificates["fractalq-ca"]
        assert ca["isCA"] is True
        assert ca["issuerRef"]["name"] == "fractalq-selfsigned"
        assert issuers["fractalq-ca"] == {"ca": {"secretName": ca["secretName"]}}
        assert server["issuerRef"] == {
            "name": "fractalq-ca",
            "kind": "Issuer",
            "group": "cert-manager.io",
        }
        assert set(certificates) == {"fractalq-ca", "fractalq-coordinator"}
    else:
        assert not issuers
        assert set(certificates) == {"fractalq-coordinator", "fractalq-client"}
        client = certificates["fractalq-client"]
        reference = {"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
        assert server["issuerRef"] == client["issuerRef"] == reference
        assert "client auth" in client["usages"]
        worker = container_of(docs, "Deployment", "worker")
        pod = one(docs, "Deployment", "worker")["spec"]["template"]["spec"]
        assert mounted_files(pod, worker)[env_value(worker, "FRACTALQ_TLS_CERT")] == (
            client["secretName"],
            "tls.crt",
        )


@pytest.mark.parametrize("option", ["existing-tls", "existing-tls-mutual"])
def test_an_existing_tls_secret_is_used_as_it_is(chart_helm: Helm, option: str) -> None:
    docs = chart_helm.template(*OPTIONS[option])
    assert not objects(docs, "Certificate")
    names = {s["metadata"]["name"] for s in objects(docs, "Secret")}
    assert not names & {"fractalq-ca", "fractalq-coordinator-tls", "fractalq-client-tls"}
    pod = one(docs, "StatefulSet", "coordinator")["spec"]["template"]["spec"]
    assert {secret for secret, _ in mounted_files(pod, pod["containers"][0]).values()} == {
        "my-tls",
        "fractalq-auth-tokens",
    }
    pod = one(docs, "Deployment", "worker")["spec"]["template"]["spec"]
    tls_files = {
        path: source
        for path, source in mounted_files(pod, pod["containers"][0]).items()
        if source[1] != "token"
    }
    if option == "existing-tls":
        assert set(tls_files.values()) == {("my-tls", "ca.crt")}
    else:
        assert set(tls_files.values()) == {
            ("my-client-tls", "ca.crt"),
            ("my-client-tls", "tls.crt"),
            ("my-client-tls", "tls.key"),
        }


@pytest.mark.parametrize(
    "assignments",
    [
        ("tls.existingSecret=my-tls", "tls.mutual=true"),
        ("tls.existingSecret=my-tls", "tls.certManager.enabled=true"),
    ],
    ids=["mutual without client secret", "existing and cert-manager"],
)
def test_contradictory_tls_values_are_refused(
    chart_helm: Helm, assignments: tuple[str, ...]
) -> None:
    result = chart_helm.run("template", RELEASE, str(CHART), *sets(*assignments))
    assert result.returncode != 0
    assert "schema" in result.stderr, result.stderr


def test_tls_and_tokens_off_render_the_old_plaintext_shape(chart_helm: Helm) -> None:
    docs = chart_helm.template(*OPTIONS["plaintext"])
    assert [s["metadata"]["name"] for s in objects(docs, "Secret")] == ["fractalq-storage"]
    assert not objects(docs, "NetworkPolicy") and not objects(docs, "Certificate")
    coordinator = container_of(docs, "StatefulSet", "coordinator")
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
        "--storage",
        flag(container_of(docs, "Deployment", "worker")["args"], "--storage"),
    ]
    assert coordinator["readinessProbe"]["grpc"]["port"] == config.DEFAULT_PORT
    assert coordinator["startupProbe"]["grpc"]["port"] == config.DEFAULT_PORT
    assert coordinator["livenessProbe"]["httpGet"]["scheme"] == "HTTP"
    for workload, pod in pod_specs(docs):
        assert [v["name"] for v in pod["volumes"] if "emptyDir" in v] == ["tmp"]
        assert {v["name"] for v in pod["volumes"]} <= {"tmp", "data"}
        assert not any(
            "checksum/" in key
            for key in workload["spec"]["template"]["metadata"].get("annotations", {})
        )
        for container in containers(pod):
            assert not [
                n for n in env_of(container) if n.startswith(("FRACTALQ_TLS", "FRACTALQ_TOKEN"))
            ]
    annotations = one(docs, "StatefulSet", "coordinator")["spec"]["template"]["metadata"]
    assert "prometheus.io/scheme" not in annotations["annotations"]
    [service] = [s for s in objects(docs, "Service", "coordinator") if len(s["spec"]["ports"]) == 2]
    assert {p["name"]: p["appProtocol"] for p in service["spec"]["ports"]} == {
        "grpc": "grpc",
        "http": "http",
    }
