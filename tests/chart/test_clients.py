"""The chart's files in use: a real coordinator and worker run with the chart's flags,
variables and Secret files; the notes and the operator's settings."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
import yaml
from procs import Process, ProcessGroup, fractalq, run_cli, wait_until

from chart.rendering import (
    CHART,
    NAMESPACE,
    OPTIONS,
    RELEASE,
    VALUES_FILE,
    Helm,
    container_of,
    env_value,
)
from chart.security import (
    client_environment,
    materialise,
    provided,
    secret_data,
)
from fractalq import config
from fractalq.cli import build_parser


@pytest.mark.parametrize("option", ["defaults", "mutual-tls"])
def test_the_chart_files_secure_a_real_coordinator(
    chart_helm: Helm, cluster: ProcessGroup, tmp_path: Path, option: str
) -> None:
    """The coordinator started with the chart's flags and its Secrets' files: the probe
    path answers over HTTPS without a token, for the names the pods use; the operator's
    client token reads the queue, the worker token may not; a worker with the worker
    pod's variables registers."""
    import http.client
    import ssl

    docs = chart_helm.template(*OPTIONS[option])
    files = materialise(docs, "StatefulSet", "coordinator", tmp_path / "coordinator")
    chart_args = container_of(docs, "StatefulSet", "coordinator")["args"]
    security = chart_args[chart_args.index("--tls-cert") :]  # after the plain flags
    assert set(security[::2]) >= {"--tls-cert", "--tls-key", "--auth-tokens"}
    coordinator = cluster.start_coordinator(extra=tuple(files.get(a, a) for a in security))

    operator = client_environment(docs, "operator", tmp_path / "operator")
    worker = client_environment(docs, "worker", tmp_path / "worker")
    context = ssl.create_default_context(cafile=operator["FRACTALQ_TLS_CA"])
    # The names the workers and the operator dial, and the port-forward's, all verify.
    service = env_value(container_of(docs, "Deployment", "operator"), "FRACTALQ_COORDINATOR")
    for name in (service.rsplit(":", 1)[0], "localhost"):
        with (
            socket.create_connection(("127.0.0.1", coordinator.http_port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=name) as tls,
        ):
            assert tls.version() in ("TLSv1.2", "TLSv1.3")

    def get(path: str, token: str | None = None) -> int:
        connection = http.client.HTTPSConnection(
            "127.0.0.1", coordinator.http_port, context=context, timeout=10
        )
        try:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            connection.request("GET", path, headers=headers)
            return connection.getresponse().status
        finally:
            connection.close()

    probe = container_of(docs, "StatefulSet", "coordinator")["readinessProbe"]["httpGet"]
    assert get(probe["path"]) == 200  # the kubelet's probe: no token
    assert get("/api/stats") == 401
    reader = secret_data(docs, "fractalq-reader-token")["token"].decode()
    assert get("/api/stats", reader) == 200

    address = f"127.0.0.1:{coordinator.port}"
    status = run_cli("status", "--coordinator", address, env=operator)
    assert status.returncode == 0, status.stderr
    refused = run_cli("status", "--coordinator", address, env=worker)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    plain = {k: v for k, v in operator.items() if not k.startswith("FRACTALQ_TLS_")}
    assert run_cli("status", "--coordinator", address, env=plain).returncode != 0

    storage = tmp_path / "store"
    storage.mkdir()
    cluster.processes.append(
        Process(
            fractalq("worker", "--coordinator", address, "--storage", storage.as_uri()),
            tmp_path / "worker.log",
            env=worker,
        )
    )

    def one_worker() -> bool:
        result = run_cli("status", "--coordinator", address, env=operator)
        return "workers: 1" in result.stdout

    wait_until(one_worker, message="the worker to register with the worker token")


@pytest.mark.parametrize("option", ["defaults", "mutual-tls", "cert-manager", "plaintext"])
def test_notes_say_how_to_reach_the_coordinator(chart_helm: Helm, option: str) -> None:
    import shlex

    result = chart_helm.run(
        "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client",
        *OPTIONS[option],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    docs = chart_helm.template(*OPTIONS[option])
    tls = "tls.enabled=false" not in OPTIONS[option]
    # Every Secret key the notes read is one the release provides.
    reads = re.findall(r"kubectl get secret -n (\S+) (\S+) -o jsonpath='\{\.data\.(\S+)\}'", notes)
    for namespace, secret, key in reads:
        assert namespace == NAMESPACE
        assert provided(docs, secret, key.replace("\\.", ".")), (secret, key)
    read = {(secret, key.replace("\\.", ".")) for _, secret, key in reads}
    if tls:
        assert any(key == "ca.crt" for _, key in read)
    else:
        assert "https://" not in notes
    if option != "plaintext":
        assert ("fractalq-reader-token", "token") in read
    # The status command parses, with the files the notes just wrote.
    [line] = [line for line in notes.splitlines() if line.strip().startswith("fractalq status")]
    command = build_parser().parse_args(shlex.split(line)[1:])
    assert command.coordinator == f"127.0.0.1:{config.DEFAULT_PORT}"
    assert command.tls_ca == ("ca.crt" if tls else None)
    assert (command.tls_cert, command.tls_key) == (
        ("client.crt", "client.key") if option == "mutual-tls" else (None, None)
    )
    assert command.token_file == (None if option == "plaintext" else "reader.token")
    assert f"svc/fractalq-coordinator {config.DEFAULT_PORT}:{config.DEFAULT_PORT}" in notes


@pytest.mark.parametrize("option", ["defaults", "mutual-tls", "plaintext"])
def test_the_operator_loads_its_settings_from_the_charts_environment(
    chart_helm: Helm, tmp_path: Path, option: str
) -> None:
    from fractalq.operator.settings import OperatorSettings

    docs = chart_helm.template(*OPTIONS[option])
    env = client_environment(docs, "operator", tmp_path)
    container = container_of(docs, "Deployment", "operator")
    plain = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    settings = OperatorSettings.from_env({**plain, **env})
    if option == "plaintext":
        assert settings.tls is None and settings.token is None
        return
    assert settings.tls is not None
    assert settings.tls.ca_file == env["FRACTALQ_TLS_CA"]
    assert (settings.tls.cert_file is not None) == (option == "mutual-tls")
    assert settings.token == secret_data(docs, "fractalq-client-token")["token"].decode()


def test_values_mirror_the_security_configuration() -> None:
    values = yaml.safe_load(VALUES_FILE.read_text())
    assert values["tls"]["generated"]["validityDays"] == config.CERT_DAYS
    assert values["tls"]["generated"]["caValidityDays"] == config.CA_DAYS
    assert values["tls"]["enabled"] is True and values["auth"]["enabled"] is True
    assert values["networkPolicy"]["enabled"] is True
    # The chart's tokens: 40 random letters and digits, within the coordinator's limits.
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    [length] = re.findall(r"randAlphaNum (\d+)", helpers)
    assert config.MIN_TOKEN_LENGTH <= int(length) <= config.MAX_TOKEN_LENGTH
