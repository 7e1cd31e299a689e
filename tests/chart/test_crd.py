"""The FractalJob CRD: its contract, its schema against the configuration, and example
resources, valid and invalid, checked against the schema as the API server would."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from chart_tools import openapi_to_json_schema as to_json_schema

from chart.rendering import (
    CHART,
    CRD_FILE,
    EXAMPLE,
    KUBE_VERSION,
    NAMESPACE,
    RELEASE,
    Doc,
    Helm,
    one,
)
from fractalq import config
from fractalq.fractal.palettes import COLOUR_SCALES, PALETTES
from fractalq.fractal.request import FRACTALS
from fractalq.fractal.zoom import CONTAINERS


def crd() -> Doc:
    doc: Doc = yaml.safe_load(CRD_FILE.read_text())
    return doc


def crd_schema() -> Doc:
    schema: Doc = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def test_crd_contract() -> None:
    doc = crd()
    kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    spec = doc["spec"]
    assert doc["metadata"]["name"] == "fractaljobs.fractalq.dev"
    assert spec["group"] == "fractalq.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "FractalJob"
    assert spec["names"]["plural"] == "fractaljobs"
    assert "fj" in spec["names"]["shortNames"]
    [version] = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: (c["jsonPath"], c["type"]) for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Fractal": (".spec.fractal", "string"),
        "Size": (".status.size", "string"),
        "Progress": (".status.progress", "string"),
        "Phase": (".status.phase", "string"),
        "URL": (".status.url", "string"),
        "Age": (".metadata.creationTimestamp", "date"),
    }
    schema = version["schema"]["openAPIV3Schema"]
    assert schema["required"] == ["spec"]
    fields = schema["properties"]["spec"]["properties"]
    assert set(fields) == {
        "fractal",
        "width",
        "height",
        "regions",
        "maxIterations",
        "center",
        "viewWidth",
        "julia",
        "palette",
        "colourScale",
        "priority",
        "zoom",
    }
    assert set(fields["center"]["properties"]) == {"x", "y"}
    zoom = fields["zoom"]
    assert zoom["required"] == ["to"]
    assert set(zoom["properties"]) == {"to", "seconds", "fps", "maxIterationsGrowth", "format",
                                       "crf"}  # fmt: skip
    assert zoom["properties"]["format"]["enum"] == list(CONTAINERS)
    assert zoom["properties"]["seconds"]["default"] == config.ZOOM_SECONDS
    assert zoom["properties"]["fps"]["default"] == config.ZOOM_FPS
    assert zoom["properties"]["fps"]["maximum"] == config.ZOOM_MAX_FPS
    assert zoom["properties"]["crf"]["default"] == config.VIDEO_CRF
    assert zoom["properties"]["crf"]["maximum"] == max(config.VIDEO_MAX_CRF.values())
    assert set(fields["julia"]["properties"]) == {"cRe", "cIm"}
    status = schema["properties"]["status"]["properties"]
    for field in ("phase", "size", "progress", "url", "presignedUrl", "message", "jobId"):
        assert status[field]["type"] == "string", field
    for field in ("bandsTotal", "bandsDone", "observedGeneration"):
        assert status[field]["type"] == "integer", field
    for field in ("startTime", "completionTime"):
        assert status[field]["format"] == "date-time", field
    assert status["phase"]["enum"] == [
        "Pending",
        "Queued",
        "Running",
        "Assembling",
        "Succeeded",
        "Failed",
    ]
    condition = status["conditions"]["items"]["properties"]
    assert set(condition) == {
        "type",
        "status",
        "reason",
        "message",
        "lastTransitionTime",
        "observedGeneration",
    }


def test_crd_preserves_unknown_fields_only_in_status() -> None:
    found: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if node.get("x-kubernetes-preserve-unknown-fields"):
                found.append(path)
            for key, value in node.items():
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{path}[{index}]")

    walk(crd_schema(), "")
    # The view's numbers may be decimal strings (deep views): their type is open,
    # a validation rule admits numbers and strings only.
    spec = ".properties.spec.properties"
    assert found == [
        f"{spec}.center.properties.x",
        f"{spec}.center.properties.y",
        f"{spec}.viewWidth",
        f"{spec}.zoom.properties.to",
        ".properties.status",
    ]


def test_crd_mirrors_the_configuration() -> None:
    spec = crd_schema()["properties"]["spec"]["properties"]
    assert set(spec["fractal"]["enum"]) == set(FRACTALS)
    assert spec["fractal"]["default"] == config.DEFAULT_FRACTAL
    assert set(spec["palette"]["enum"]) == set(PALETTES)
    assert spec["palette"]["default"] == config.DEFAULT_PALETTE
    assert spec["colourScale"]["enum"] == list(COLOUR_SCALES)
    assert spec["colourScale"]["default"] == config.DEFAULT_COLOUR_SCALE
    for field, default in (("width", config.DEFAULT_WIDTH), ("height", config.DEFAULT_HEIGHT)):
        assert (spec[field]["minimum"], spec[field]["maximum"]) == (1, config.MAX_DIMENSION)
        assert spec[field]["default"] == default
    assert (spec["regions"]["minimum"], spec["regions"]["default"]) == (1, config.DEFAULT_REGIONS)
    assert spec["maxIterations"]["maximum"] == config.MAX_ITERATIONS
    assert spec["maxIterations"]["default"] == config.DEFAULT_MAX_ITER
    priority = spec["priority"]
    assert (priority["minimum"], priority["maximum"]) == config.PRIORITY_RANGE
    assert priority["default"] == config.DEFAULT_PRIORITY
    julia = spec["julia"]["properties"]
    assert (julia["cRe"]["default"], julia["cIm"]["default"]) == config.DEFAULT_JULIA_C
    rules = " ".join(
        r["rule"] for r in crd_schema()["properties"]["spec"]["x-kubernetes-validations"]
    )
    assert str(config.MAX_PIXELS) in rules and "self.regions <= self.height" in rules


def test_helm_installs_the_crd_file_unchanged(chart_helm: Helm) -> None:
    assert one(chart_helm.template(), "CustomResourceDefinition") == crd()
    without = chart_helm.run("template", RELEASE, str(CHART), "--namespace", NAMESPACE)
    assert without.returncode == 0, without.stderr
    assert "CustomResourceDefinition" not in without.stdout


def fractaljob_validator() -> jsonschema.protocols.Validator:
    schema = to_json_schema(crd_schema())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator: jsonschema.protocols.Validator = jsonschema.Draft202012Validator(schema)
    return validator


def test_example_fractaljob_is_valid() -> None:
    example = yaml.safe_load(EXAMPLE.read_text())
    fractaljob_validator().validate(example)
    assert (example["apiVersion"], example["kind"]) == ("fractalq.dev/v1alpha1", "FractalJob")
    spec = example["spec"]
    assert (spec["fractal"], spec["width"], spec["height"], spec["regions"]) == (
        "mandelbrot",
        1200,
        800,
        8,
    )


@pytest.mark.parametrize(
    "spec",
    [
        {},
        {"fractal": "julia", "julia": {"cRe": -0.8, "cIm": 0.156}, "palette": "ocean"},
        {"viewWidth": "1e-30", "center": {"x": "0", "y": "1"}, "colourScale": "auto"},
        {"width": 32768, "height": 1, "regions": 1, "viewWidth": 1e-12, "priority": -1000000},
        {"center": {"x": -0.743643887, "y": 0.131825904}, "maxIterations": 1000000},
        {"zoom": {"to": "1e-30", "seconds": 2.5, "fps": 24, "format": "webm"}},
    ],
    ids=["defaults", "julia", "auto colours", "limits", "deep zoom", "zoom movie"],
)
def test_other_valid_fractaljobs(spec: Doc) -> None:
    job: Doc = {"apiVersion": "fractalq.dev/v1alpha1", "kind": "FractalJob", "metadata": {}}
    fractaljob_validator().validate({**job, "spec": spec})


def _without_spec(job: Doc) -> None:
    del job["spec"]


INVALID_FRACTALJOBS: dict[str, Callable[[Doc], None]] = {
    "width 0": lambda job: job["spec"].update(width=0),
    "width too large": lambda job: job["spec"].update(width=config.MAX_DIMENSION + 1),
    "width not an integer": lambda job: job["spec"].update(width=12.5),
    "fractal nope": lambda job: job["spec"].update(fractal="nope"),
    "palette mauve": lambda job: job["spec"].update(palette="mauve"),
    "colour scale hsv": lambda job: job["spec"].update(colourScale="hsv"),
    "regions 0": lambda job: job["spec"].update(regions=0),
    "maxIterations too large": lambda job: job["spec"].update(maxIterations=10**6 + 1),
    "viewWidth 0": lambda job: job["spec"].update(viewWidth=0),
    "priority out of range": lambda job: job["spec"].update(priority=10**6 + 1),
    "center not numbers": lambda job: job["spec"].update(center={"x": "left", "y": 0}),
    "unknown spec field": lambda job: job["spec"].update(widht=100),
    "missing spec": _without_spec,
    "unknown status phase": lambda job: job.update(status={"phase": "Done"}),
    "zoom without to": lambda job: job["spec"].update(zoom={"seconds": 10}),
    "zoom to negative": lambda job: job["spec"].update(zoom={"to": "-1e-9"}),
    "zoom fps 0": lambda job: job["spec"].update(zoom={"to": 1e-9, "fps": 0}),
    "zoom format gif": lambda job: job["spec"].update(zoom={"to": 1e-9, "format": "gif"}),
    "zoom unknown field": lambda job: job["spec"].update(zoom={"to": 1e-9, "length": 3}),
}


@pytest.mark.parametrize("case", INVALID_FRACTALJOBS)
def test_invalid_fractaljobs_are_rejected(case: str) -> None:
    job = yaml.safe_load(EXAMPLE.read_text())
    INVALID_FRACTALJOBS[case](job)
    with pytest.raises(jsonschema.ValidationError):
        fractaljob_validator().validate(job)


def test_operator_status_fields_are_valid() -> None:
    job = yaml.safe_load(EXAMPLE.read_text())
    job["status"] = {
        "phase": "Succeeded",
        "size": "1200x800",
        "bandsTotal": 8,
        "bandsDone": 8,
        "progress": "8/8",
        "url": "s3://fractalq/renders/default/mandelbrot.png",
        "presignedUrl": "http://minio:9000/fractalq/renders/default/mandelbrot.png?X-Amz-Expires=60",
        "jobId": "fj-1234-g1",
        "observedGeneration": 1,
        "startTime": "2025-01-01T00:00:00Z",
        "completionTime": "2025-01-01T00:00:09Z",
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Succeeded",
                "message": "done",
                "lastTransitionTime": "2025-01-01T00:00:09Z",
                "observedGeneration": 1,
            }
        ],
        "kopf": {"progress": {}},  # kopf's own bookkeeping is kept
    }
    fractaljob_validator().validate(job)
