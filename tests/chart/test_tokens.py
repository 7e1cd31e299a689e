"""TLS and role tokens in the pods: each component mounts only its own Secrets, its
flags and variables name the files it mounts, and the probes need no token."""

from __future__ import annotations

import re

import pytest

from chart.rendering import (
    OPTIONS,
    Helm,
    container_of,
    env_of,
    env_value,
    flag,
    objects,
    one,
    pod_specs,
    sets,
)
from chart.security import (
    TOKEN_SECRET,
    component_of,
    mounted_files,
    provided,
    secret_data,
    secrets_referenced,
)
from fractalq import config
from fractalq.cli import build_parser

# The Secrets the default values render, by name: (type, keys).
SECURITY_SECRETS = {
    "fractalq-ca": ("kubernetes.io/tls", {"tls.crt", "tls.key"}),
    "fractalq-coordinator-tls": ("kubernetes.io/tls", {"tls.crt", "tls.key", "ca.crt"}),
    "fractalq-client-tls": ("Opaque", {"ca.crt"}),
    "fractalq-auth-tokens": ("Opaque", {"tokens"}),
    "fractalq-worker-token": ("Opaque", {"token"}),
    "fractalq-client-token": ("Opaque", {"token"}),
    "fractalq-reader-token": ("Opaque", {"token"}),
    "fractalq-admin-token": ("Opaque", {"token"}),
}


def test_default_values_render_the_tls_and_token_secrets(chart_helm: Helm) -> None:
    docs = chart_helm.template()
    rendered = {
        s["metadata"]["name"]: (s["type"], set(s["data"]))
        for s in objects(docs, "Secret")
        if s["metadata"]["name"] != "fractalq-storage"
    }
    assert rendered == SECURITY_SECRETS
    assert not objects(docs, "Certificate") and not objects(docs, "Issuer")
    # (test_rendered_objects_match_the_kubernetes_api validates each against the API.)


@pytest.mark.parametrize("option", ["defaults", "mutual-tls", "name-override", "tokens-only"])
def test_tokens_file_and_role_secrets_agree(chart_helm: Helm, option: str) -> None:
    from fractalq.security.tokens import Role, TokenTable

    docs = chart_helm.template(*OPTIONS[option])
    prefix = "fractalq-fq" if option == "name-override" else "fractalq"
    text = secret_data(docs, f"{prefix}-auth-tokens")["tokens"].decode()
    table = TokenTable.parse(text)  # the coordinator's own parser accepts the file
    assert len(table) == len(Role)
    tokens = {}
    for role in Role:
        token = secret_data(docs, f"{prefix}-{role.value}-token")["token"].decode()
        assert table.role(token) is role
        assert config.MIN_TOKEN_LENGTH <= len(token) <= config.MAX_TOKEN_LENGTH
        assert re.fullmatch(r"[A-Za-z0-9]+", token)
        tokens[role] = token
    assert len(set(tokens.values())) == len(Role)
    # Random per install (helm template has no cluster to look the old ones up in).
    again = chart_helm.template(*OPTIONS[option], *sets("commonLabels.x=y"))
    assert secret_data(again, f"{prefix}-worker-token")["token"].decode() != tokens[Role.WORKER]


# Every way of setting up TLS and tokens the chart offers.
SECURITY_VARIANTS = [
    "defaults",
    "mutual-tls",
    "cert-manager",
    "cert-manager-issuer-mutual",
    "existing-tls",
    "existing-tls-mutual",
    "tokens-only",
    "tls-only",
    "plaintext",
]


@pytest.mark.parametrize("option", SECURITY_VARIANTS)
def test_each_component_reads_only_its_own_secrets(chart_helm: Helm, option: str) -> None:
    docs = chart_helm.template(*OPTIONS[option])
    auth = "auth.enabled=false" not in OPTIONS[option]
    coordinator_pod = one(docs, "StatefulSet", "coordinator")["spec"]["template"]["spec"]
    [coordinator] = coordinator_pod["containers"]
    coordinator_files = mounted_files(coordinator_pod, coordinator)
    server_secret = None
    if "--tls-cert" in coordinator["args"]:
        server_secret = coordinator_files[flag(coordinator["args"], "--tls-cert")][0]
    seen = set()
    for workload, pod in pod_specs(docs):
        component = component_of(workload)
        referenced = secrets_referenced(pod)
        tokens = {name for name in referenced if name.endswith(("-token", "-auth-tokens"))}
        expected = {TOKEN_SECRET[component]} if auth and component in TOKEN_SECRET else set()
        assert tokens == expected, component
        # The CA's key is Helm's alone; the coordinator's key is the coordinator's alone.
        assert "fractalq-ca" not in referenced, component
        if component != "coordinator":
            for container in pod["containers"]:
                for secret, key in mounted_files(pod, container).values():
                    assert key != "tls.key" or secret != server_secret, component
        if option in ("defaults", "mutual-tls") and component != "coordinator":
            # Helm's own certificates: clients never even reference the coordinator's Secret.
            assert "fractalq-coordinator-tls" not in referenced, component
        seen.add(component)
    assert seen == {"coordinator", "worker", "operator", "minio"}
    for _, pod in pod_specs(docs):
        for people in ("fractalq-reader-token", "fractalq-admin-token"):  # for people only
            assert people not in secrets_referenced(pod)


@pytest.mark.parametrize("option", SECURITY_VARIANTS)
def test_security_flags_and_variables_name_mounted_files(chart_helm: Helm, option: str) -> None:
    from fractalq import endpoint

    docs = chart_helm.template(*OPTIONS[option])
    tls = "tls.enabled=false" not in OPTIONS[option]
    auth = "auth.enabled=false" not in OPTIONS[option]
    mutual = "tls.mutual=true" in OPTIONS[option]

    def check(files: dict[str, tuple[str, str]], path: str | None, key: str) -> str:
        assert path is not None and path in files, (path, sorted(files))
        secret, mounted_key = files[path]
        assert mounted_key == key, path
        assert provided(docs, secret, key), (secret, key)
        return secret

    statefulset = one(docs, "StatefulSet", "coordinator")
    pod = statefulset["spec"]["template"]["spec"]
    container = pod["containers"][0]
    files = mounted_files(pod, container)
    args = build_parser().parse_args(container["args"])
    assert args.host == "0.0.0.0"  # the coordinator's own default is 127.0.0.1
    assert (args.tls_cert is not None, args.tls_key is not None) == (tls, tls)
    assert (args.tls_client_ca is not None) == mutual
    assert (args.auth_tokens is not None) == auth
    if tls:
        server = check(files, args.tls_cert, "tls.crt")
        assert check(files, args.tls_key, "tls.key") == server
        if mutual:
            check(files, args.tls_client_ca, "ca.crt")
    if auth:
        assert check(files, args.auth_tokens, "tokens") == TOKEN_SECRET["coordinator"]
    assert not any(name.startswith("FRACTALQ_") for name in env_of(container))

    for component in ("worker", "operator"):
        pod = one(docs, "Deployment", component)["spec"]["template"]["spec"]
        [container] = pod["containers"]
        files = mounted_files(pod, container)
        variables = {
            name: env_value(container, name)
            for name in env_of(container)
            if name.startswith("FRACTALQ_TLS_") or name.startswith("FRACTALQ_TOKEN")
        }
        expected = set()
        if tls:
            expected.add(endpoint.ENV_TLS_CA)
            check(files, variables.get(endpoint.ENV_TLS_CA), "ca.crt")
        if mutual:
            expected |= {endpoint.ENV_TLS_CERT, endpoint.ENV_TLS_KEY}
            client = check(files, variables.get(endpoint.ENV_TLS_CERT), "tls.crt")
            assert check(files, variables.get(endpoint.ENV_TLS_KEY), "tls.key") == client
        if auth:
            expected.add(endpoint.ENV_TOKEN_FILE)
            secret = check(files, variables.get(endpoint.ENV_TOKEN_FILE), "token")
            assert secret == TOKEN_SECRET[component]
        assert set(variables) == expected, component
        # Everything mounted is used: no stray certificate or token in the pod.
        assert set(files) == set(variables.values()), component
        assert all(path.startswith("/etc/fractalq/") for path in files)


@pytest.mark.parametrize("option", ["defaults", "mutual-tls", "cert-manager", "plaintext"])
def test_probes_reach_what_answers_without_a_token(chart_helm: Helm, option: str) -> None:
    from fractalq.coordinator.access import OPEN_PATHS, OPEN_SERVICES

    docs = chart_helm.template(*OPTIONS[option])
    container = container_of(docs, "StatefulSet", "coordinator")
    args = container["args"]
    tls = "--tls-cert" in args
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container[kind]
        if "grpc" in probe:
            # The kubelet's gRPC probe has no TLS and no token: only for plaintext, where
            # the standard health service answers everybody.
            assert not tls, kind
            assert probe["grpc"]["port"] == int(flag(args, "--port"))
            assert "service" not in probe["grpc"]
            assert "grpc.health.v1.Health" in OPEN_SERVICES
        else:
            get = probe["httpGet"]
            port = ports[get["port"]] if isinstance(get["port"], str) else get["port"]
            assert port == int(flag(args, "--http-port")), kind
            assert get["path"] in OPEN_PATHS, kind
            assert get.get("scheme", "HTTP") == ("HTTPS" if tls else "HTTP"), kind
            assert "httpHeaders" not in get, kind  # no token
    if tls:
        assert all("grpc" not in container[kind] for kind in ("startupProbe", "readinessProbe"))
    # The Service says what its HTTP port speaks.
    [service] = [s for s in objects(docs, "Service", "coordinator") if len(s["spec"]["ports"]) == 2]
    http = next(p for p in service["spec"]["ports"] if p["name"] == "http")
    assert http["appProtocol"] == ("https" if tls else "http")
