"""Upgrades rendered against a fake API server (tests/chart_tools.py) that answers
Helm's ``lookup`` of Secrets: certificates and tokens are kept, renewed or rotated as
values.yaml promises, and only the pods concerned restart."""

from __future__ import annotations

import base64
import copy
import importlib.util
import subprocess
import time
from pathlib import Path

import yaml
from chart_tools import (
    FakeKubeAPI,
)

from chart.rendering import (
    CHART,
    KUBE_VERSION,
    NAMESPACE,
    OPTIONS,
    RELEASE,
    Doc,
    Helm,
    container_of,
    flag,
    objects,
    one,
    pod_specs,
    sets,
)
from chart.security import (
    component_of,
)


def render_upgrade(chart_helm: Helm, api: FakeKubeAPI, *args: str) -> list[Doc]:
    """``helm template`` against ``api``, so that the chart's lookups see its Secrets."""
    result = subprocess.run(
        [
            str(chart_helm.binary), "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
            "--dry-run=server", "--disable-openapi-validation", *args,
        ],
        capture_output=True,
        text=True,
        env={**chart_helm.env, "KUBECONFIG": str(api.kubeconfig)},
        timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def install(api: FakeKubeAPI, docs: list[Doc]) -> None:
    """Keep the rendered Secrets in the fake cluster, as helm would have created them."""
    for secret in objects(docs, "Secret"):
        stored = copy.deepcopy(secret)
        stored["metadata"].setdefault("annotations", {}).update(
            {"meta.helm.sh/release-name": RELEASE, "meta.helm.sh/release-namespace": NAMESPACE}
        )
        api.secrets[stored["metadata"]["name"]] = stored


def pod_annotations(docs: list[Doc]) -> dict[str, dict[str, str]]:
    return {
        component_of(workload): workload["spec"]["template"]["metadata"].get("annotations", {})
        for workload, _ in pod_specs(docs)
    }


def secrets_by_name(docs: list[Doc]) -> dict[str, dict[str, str]]:
    return {s["metadata"]["name"]: s["data"] for s in objects(docs, "Secret")}


def test_upgrades_keep_certificates_and_tokens(chart_helm: Helm, tmp_path: Path) -> None:
    mutual = sets("tls.mutual=true")
    with FakeKubeAPI(tmp_path, NAMESPACE, KUBE_VERSION) as api:
        first = render_upgrade(chart_helm, api, *mutual)
        install(api, first)
        # The same values again: every Secret and every pod template unchanged, so an
        # upgrade neither breaks the clients' trust nor restarts a pod.
        second = render_upgrade(chart_helm, api, *mutual)
        assert secrets_by_name(second) == secrets_by_name(first)
        assert pod_annotations(second) == pod_annotations(first)
        assert pod_annotations(first)["coordinator"]["checksum/tls"]

        # A new name for the coordinator: a new server certificate from the same CA; the
        # coordinator restarts, the clients (same CA, same certificate) do not.
        renamed = render_upgrade(
            chart_helm, api, *mutual, *sets("tls.extraDnsNames[0]=fractalq.example.com")
        )
        before, after = secrets_by_name(first), secrets_by_name(renamed)
        assert after["fractalq-ca"] == before["fractalq-ca"]
        assert after["fractalq-client-tls"] == before["fractalq-client-tls"]
        assert (
            after["fractalq-coordinator-tls"]["tls.crt"]
            != (before["fractalq-coordinator-tls"]["tls.crt"])
        )
        names = certificate_names(after["fractalq-coordinator-tls"]["tls.crt"])
        assert names is None or "fractalq.example.com" in names  # None: no cryptography
        annotations, old = pod_annotations(renamed), pod_annotations(first)
        assert annotations["coordinator"]["checksum/tls"] != old["coordinator"]["checksum/tls"]
        assert annotations["worker"] == old["worker"]
        assert annotations["operator"] == old["operator"]

        # A certificate that expires within tls.generated.renewDays is made again.
        server = api.secrets["fractalq-coordinator-tls"]
        server["metadata"]["annotations"]["fractalq.dev/expires"] = str(int(time.time()) + 86400)
        renewed = secrets_by_name(render_upgrade(chart_helm, api, *mutual))
        assert (
            renewed["fractalq-coordinator-tls"]["tls.crt"]
            != (before["fractalq-coordinator-tls"]["tls.crt"])
        )
        assert renewed["fractalq-ca"] == before["fractalq-ca"]

        # A deleted token Secret: a new token for that role only, in the tokens file too.
        del api.secrets["fractalq-worker-token"]
        rotated = render_upgrade(chart_helm, api, *mutual)
        tokens = secrets_by_name(rotated)
        assert tokens["fractalq-worker-token"] != before["fractalq-worker-token"]
        assert tokens["fractalq-client-token"] == before["fractalq-client-token"]
        assert tokens["fractalq-reader-token"] == before["fractalq-reader-token"]
        worker_token = base64.b64decode(tokens["fractalq-worker-token"]["token"]).decode()
        assert (
            f"worker {worker_token} worker\n"
            in base64.b64decode(tokens["fractalq-auth-tokens"]["tokens"]).decode()
        )
        annotations = pod_annotations(rotated)
        assert annotations["worker"]["checksum/auth"] != old["worker"]["checksum/auth"]
        assert annotations["operator"]["checksum/auth"] == old["operator"]["checksum/auth"]

        # Rendering only reads the cluster.
        assert not [r for r in api.requests if not r.startswith("/")]
        assert "/api/v1/namespaces/render/secrets/fractalq-ca" in api.requests


def test_turning_mutual_tls_on_keeps_the_ca(chart_helm: Helm, tmp_path: Path) -> None:
    with FakeKubeAPI(tmp_path, NAMESPACE, KUBE_VERSION) as api:
        first = render_upgrade(chart_helm, api)
        install(api, first)
        mutual = render_upgrade(chart_helm, api, *sets("tls.mutual=true"))
    before, after = secrets_by_name(first), secrets_by_name(mutual)
    # The CA Helm kept signs the new client certificate, so the coordinator and the
    # clients trust each other without a new CA; the client Secret keeps its type.
    assert after["fractalq-ca"] == before["fractalq-ca"]
    assert after["fractalq-coordinator-tls"] == before["fractalq-coordinator-tls"]
    assert set(after["fractalq-client-tls"]) == {"ca.crt", "tls.crt", "tls.key"}
    assert after["fractalq-client-tls"]["ca.crt"] == before["fractalq-client-tls"]["ca.crt"]
    assert one(mutual, "Secret", "client")["type"] == one(first, "Secret", "client")["type"]
    if importlib.util.find_spec("cryptography") is not None:
        from cryptography import x509

        ca, client = (
            x509.load_pem_x509_certificate(base64.b64decode(data))
            for data in (after["fractalq-ca"]["tls.crt"], after["fractalq-client-tls"]["tls.crt"])
        )
        client.verify_directly_issued_by(ca)
    args = container_of(mutual, "StatefulSet", "coordinator")["args"]
    assert flag(args, "--tls-client-ca") == "/etc/fractalq/tls/ca.crt"


def certificate_names(data: str) -> set[str] | None:
    """The DNS names of a base64 PEM certificate; None without cryptography."""
    try:
        from cryptography import x509
    except ImportError:  # pragma: no cover - the test extra installs cryptography
        return None
    certificate = x509.load_pem_x509_certificate(base64.b64decode(data))
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(names.get_values_for_type(x509.DNSName))


def test_upgrades_keep_the_scalers_certificate(chart_helm: Helm, tmp_path: Path) -> None:
    keda = OPTIONS["keda"]
    with FakeKubeAPI(tmp_path, NAMESPACE, KUBE_VERSION) as api:
        first = render_upgrade(chart_helm, api, *keda)
        install(api, first)
        again = render_upgrade(chart_helm, api, *keda)
        assert secrets_by_name(again) == secrets_by_name(first)
        scaler = secrets_by_name(first)["fractalq-scaler-tls"]
        assert scaler["ca.crt"] == secrets_by_name(first)["fractalq-ca"]["tls.crt"]

        # Deleted: a new one from the same CA; no pod mounts it, so none restarts.
        del api.secrets["fractalq-scaler-tls"]
        renewed = render_upgrade(chart_helm, api, *keda)
        after = secrets_by_name(renewed)
        assert after["fractalq-scaler-tls"]["tls.crt"] != scaler["tls.crt"]
        assert after["fractalq-scaler-tls"]["ca.crt"] == scaler["ca.crt"]
        assert {k: v for k, v in after.items() if k != "fractalq-scaler-tls"} == {
            k: v for k, v in secrets_by_name(first).items() if k != "fractalq-scaler-tls"
        }
        assert pod_annotations(renewed) == pod_annotations(first)
