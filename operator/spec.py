"""A FractalJob's spec, checked again and turned into a render request or a zoom movie.

The CRD's schema already rejects nonsense, but a cluster may run without it
(or with an older copy), so the operator checks every field itself and turns
a bad spec into ``Failed`` with a message, never a crash.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fractalq import config
from fractalq.fractal.request import RenderRequest, split_rows
from fractalq.fractal.zoom import ZoomRequest


def _field(spec: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path, None when absent."""
    value: Any = spec
    for part in path.split("."):
        if not isinstance(value, Mapping):
            raise ValueError(f"spec.{path.rsplit('.', 1)[0]} must be an object")
        value = value.get(part)
        if value is None:
            return None
    return value


def _number(spec: Mapping[str, Any], path: str, kind: type[int] | type[float]) -> Any:
    value = _field(spec, path)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"spec.{path} must be a number (got {value!r:.40})")
    if kind is int and not float(value).is_integer():
        raise ValueError(f"spec.{path} must be a whole number (got {value!r:.40})")
    return kind(value)


def _decimal(spec: Mapping[str, Any], path: str) -> Any:
    """A view coordinate: a number, or a decimal string of any length (deep views)."""
    value = _field(spec, path)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float | str)):
        raise ValueError(f"spec.{path} must be a number or a decimal string (got {value!r:.40})")
    return value


def parse_spec(spec: Mapping[str, Any]) -> tuple[RenderRequest, int, int]:
    """(request, regions, priority), or ValueError with a one-line message."""
    if not isinstance(spec, Mapping):
        raise ValueError("spec must be an object")
    fractal = spec.get("fractal", config.DEFAULT_FRACTAL)
    palette = spec.get("palette", config.DEFAULT_PALETTE)
    scale = spec.get("colourScale", config.DEFAULT_COLOUR_SCALE)
    if not all(isinstance(value, str) for value in (fractal, palette, scale)):
        raise ValueError("spec.fractal, spec.palette and spec.colourScale must be strings")
    regions = _number(spec, "regions", int)
    try:
        request = RenderRequest.create(
            fractal,
            width=_number(spec, "width", int),
            height=_number(spec, "height", int),
            max_iter=_number(spec, "maxIterations", int),
            center_x=_decimal(spec, "center.x"),
            center_y=_decimal(spec, "center.y"),
            view_width=_decimal(spec, "viewWidth"),
            c_re=_number(spec, "julia.cRe", float),
            c_im=_number(spec, "julia.cIm", float),
            palette=palette,
            colour_scale=scale,
        )
    except ValueError as error:
        raise ValueError(f"spec: {error}") from None
    regions = config.DEFAULT_REGIONS if regions is None else regions
    split_rows(request.height, regions)  # raises for 0 regions or more than rows
    return request, regions, _priority(spec)


def job_id_for(uid: str, generation: int) -> str:
    """The coordinator job of one generation of a resource: resubmitting is a no-op."""
    return f"fj-{uid}-g{generation}"


def parse_zoom(spec: Mapping[str, Any]) -> tuple[ZoomRequest, int] | None:
    """(zoom, priority) when the spec has a ``zoom`` section, else None; ValueError
    with a one-line message for a bad one.

    A zoom takes the spec's view and image fields as a render does: ``viewWidth``
    is its first frame's width, ``width`` and ``height`` its frames', and
    ``maxIterations`` its deepest keyframe's limit (``regions`` does not apply).
    """
    if not isinstance(spec, Mapping):
        raise ValueError("spec must be an object")
    section = spec.get("zoom")
    if section is None:
        return None
    if not isinstance(section, Mapping):
        raise ValueError("spec.zoom must be an object")
    fractal = spec.get("fractal", config.DEFAULT_FRACTAL)
    palette = spec.get("palette", config.DEFAULT_PALETTE)
    scale = spec.get("colourScale", config.ZOOM_COLOUR_SCALE)
    container = section.get("format", "mp4")
    if not all(isinstance(value, str) for value in (fractal, palette, scale, container)):
        raise ValueError(
            "spec.fractal, spec.palette, spec.colourScale and spec.zoom.format must be strings"
        )
    if _decimal(spec, "zoom.to") is None:
        raise ValueError("spec.zoom.to is required: the view width of the last frame")
    options = {
        "width": _number(spec, "width", int),
        "height": _number(spec, "height", int),
        "max_iter": _number(spec, "maxIterations", int),
        "max_iter_growth": _number(spec, "zoom.maxIterationsGrowth", float),
        "seconds": _number(spec, "zoom.seconds", float),
        "fps": _number(spec, "zoom.fps", int),
        "crf": _number(spec, "zoom.crf", int),
    }
    try:
        zoom = ZoomRequest.create(
            fractal,
            to_width=_decimal(spec, "zoom.to"),
            from_width=_decimal(spec, "viewWidth"),
            center_x=_decimal(spec, "center.x"),
            center_y=_decimal(spec, "center.y"),
            c_re=_number(spec, "julia.cRe", float),
            c_im=_number(spec, "julia.cIm", float),
            palette=palette,
            colour_scale=scale,
            container=container,
            **{name: value for name, value in options.items() if value is not None},
        )
    except ValueError as error:
        message = str(error).replace("to_width", "zoom.to").replace("from_width", "viewWidth")
        raise ValueError(f"spec: {message}") from None
    return zoom, _priority(spec)


def _priority(spec: Mapping[str, Any]) -> int:
    priority = _number(spec, "priority", int)
    priority = config.DEFAULT_PRIORITY if priority is None else priority
    low, high = config.PRIORITY_RANGE
    if not low <= priority <= high:
        raise ValueError(f"spec.priority must be between {low} and {high}")
    return int(priority)
