"""Validators for the objects of other projects' CRDs that the chart can render.

kubernetes-validate knows the built-in kinds only. The ServiceMonitor's and KEDA's
schemas are their CRDs' own openAPIV3Schema, vendored verbatim under tests/chart/crds/
(each file says where from), turned into JSON Schema by chart_tools; cert-manager's
are the fields chart_tools lists. An object's metadata must name it and its namespace.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from chart_tools import CERT_MANAGER_SCHEMAS, openapi_to_json_schema

CRDS = Path(__file__).parent / "crds"

# (apiVersion, kind) -> the vendored schema file.
VENDORED = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.yaml",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject.yaml",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "triggerauthentication.yaml",
}

_METADATA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"},
        "namespace": {"type": "string", "minLength": 1},
    },
    "required": ["name", "namespace"],
}


@functools.cache
def validator(api_version: str, kind: str) -> jsonschema.protocols.Validator | None:
    """The validator of a custom resource, or None for a kind of Kubernetes itself."""
    schema: dict[str, Any]
    if api_version.startswith("cert-manager.io/"):
        schema = CERT_MANAGER_SCHEMAS[kind]
    elif (api_version, kind) in VENDORED:
        crd = yaml.safe_load((CRDS / VENDORED[api_version, kind]).read_text())
        schema = {
            "allOf": [
                openapi_to_json_schema(crd),
                {
                    "properties": {
                        "apiVersion": {"const": api_version},
                        "kind": {"const": kind},
                        "metadata": _METADATA,
                    },
                    "required": ["apiVersion", "kind", "metadata", "spec"],
                },
            ]
        }
    else:
        return None
    jsonschema.Draft202012Validator.check_schema(schema)
    found: jsonschema.protocols.Validator = jsonschema.Draft202012Validator(schema)
    return found


def is_custom(api_version: str) -> bool:
    """Whether objects of this API group come from a CRD the chart does not install."""
    group = api_version.split("/")[0] if "/" in api_version else ""
    return group in ("cert-manager.io", "monitoring.coreos.com", "keda.sh")
