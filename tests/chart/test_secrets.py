"""Storage credentials only through Secret references; the bundled MinIO."""

from __future__ import annotations

import base64
import json

import pytest

from chart.rendering import (
    CHART,
    NAMESPACE,
    OPTIONS,
    RELEASE,
    Doc,
    Helm,
    containers,
    objects,
    one,
    pod_specs,
    sets,
)
from fractalq import config

# What no object but a Secret may hold: S3 credentials, tokens, private keys.
SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "token", "tokens", "tls.key")


def secret_values(docs: list[Doc]) -> list[str]:
    values = []
    for secret in objects(docs, "Secret"):
        assert "stringData" not in secret  # base64 in data, as the API server keeps it
        for key in SECRET_KEYS:
            if key in secret["data"]:
                values.append(base64.b64decode(secret["data"][key]).decode())
    return values


@pytest.mark.parametrize("option", OPTIONS)
def test_credentials_only_through_secret_references(chart_helm: Helm, option: str) -> None:
    docs = chart_helm.template(*OPTIONS[option])
    secrets = secret_values(docs)
    expected_secret = {
        "external-s3": "my-s3",
        "minio-existing-secret": "my-minio-keys",
    }.get(option)
    seen = 0
    for _, pod in pod_specs(docs):
        for container in containers(pod):
            for entry in container.get("env", []):
                name = entry["name"]
                if name.startswith(("AWS_", "MINIO_ROOT_")):
                    seen += 1
                    assert "value" not in entry, f"{name} is a literal in {container['name']}"
                    reference = entry["valueFrom"]["secretKeyRef"]
                    if expected_secret:
                        assert reference["name"] == expected_secret
                    else:
                        generated = one(docs, "Secret", "storage")
                        assert reference["name"] == generated["metadata"]["name"]
                        assert reference["key"] in generated["data"]
    assert seen >= 8  # operator and worker, four AWS_* variables each
    for doc in docs:
        if doc["kind"] == "Secret":
            continue
        text = json.dumps(doc)
        for value in secrets:
            for line in value.splitlines():  # a token file or a PEM key, line by line
                if len(line) >= 16 and not line.startswith(("-----", "#")):
                    assert line not in text, f"a secret value appears in {doc['kind']}"
    assert not objects(docs, "ConfigMap")


@pytest.mark.parametrize("option", ["defaults", "minio-existing-secret"])
def test_bundled_minio(chart_helm: Helm, option: str) -> None:
    docs = chart_helm.template(*OPTIONS[option])
    service = one(docs, "Service", "minio")
    port = service["spec"]["ports"][0]["port"]
    deployment = one(docs, "Deployment", "minio")
    pod = deployment["spec"]["template"]["spec"]
    [init] = pod["initContainers"]
    assert init["command"] == ["mkdir", "-p", "/data/fractalq"]
    [minio] = pod["containers"]
    assert minio["image"].startswith("minio/minio:RELEASE.")  # pinned, never latest
    assert init["image"] == minio["image"]
    assert minio["args"][:2] == ["server", "/data"]
    claim = pod["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert claim == one(docs, "PersistentVolumeClaim", "minio")["metadata"]["name"]
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    if option == "defaults":
        secret = one(docs, "Secret", "storage")
        data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
        assert data["AWS_ENDPOINT_URL"] == (
            f"http://{service['metadata']['name']}.{NAMESPACE}.svc:{port}"
        )
        assert data["AWS_DEFAULT_REGION"] == config.S3_DEFAULT_REGION
        assert len(data["AWS_ACCESS_KEY_ID"]) >= 16 and len(data["AWS_SECRET_ACCESS_KEY"]) >= 32
        # Random per install (helm template has no cluster to look the old ones up in).
        again = one(chart_helm.template(*sets("commonLabels.x=y")), "Secret", "storage")
        assert again["data"]["AWS_SECRET_ACCESS_KEY"] != secret["data"]["AWS_SECRET_ACCESS_KEY"]
    else:
        assert not objects(docs, "Secret", "storage")


def test_external_storage_renders_no_minio(chart_helm: Helm) -> None:
    docs = chart_helm.template(*OPTIONS["external-s3"])
    assert not objects(docs, "Secret", "storage")
    assert not objects(docs, "PersistentVolumeClaim")
    for doc in docs:
        labels = doc["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/component") != "minio", doc["metadata"]["name"]
        assert "minio" not in json.dumps(doc), doc["metadata"]["name"]
    # External storage without a Secret to read it from is refused.
    result = chart_helm.run("template", RELEASE, str(CHART), *sets("storage.external.enabled=true"))
    assert result.returncode != 0
    assert "existingSecret" in result.stderr
