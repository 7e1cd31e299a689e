"""The ``auto`` colour scale's range: a small render of the same view, measured.

A job's first task renders the view at :data:`~fractalq.config.PROBE_SIDE`
pixels on its longer side (the same rectangle, coarser pixels; a deep view
around the job's own reference orbit) and takes the ``PROBE_LOW`` and
``PROBE_HIGH`` quantiles of its outside pixels' smooth values as the range its
bands colour over. The range is a pure function of the request, so a band that
measures it again (its job stored none) colours to the same bytes.
"""

from __future__ import annotations

import dataclasses
import json
from collections import OrderedDict

import numpy as np

from fractalq import config
from fractalq.fractal.kernels import escape
from fractalq.fractal.palettes import ColourScale
from fractalq.fractal.reference import Reference
from fractalq.fractal.request import RenderRequest

_MEASURED: OrderedDict[str, ColourScale] = OrderedDict()
_KEEP = 16


def probe_request(request: RenderRequest) -> RenderRequest:
    """The same view at PROBE_SIDE pixels on its longer side (fewer if it is smaller)."""
    longer = max(request.width, request.height)
    side = min(config.PROBE_SIDE, longer)
    return dataclasses.replace(
        request,
        width=max(1, round(request.width * side / longer)),
        height=max(1, round(request.height * side / longer)),
    )


def colour_scale(request: RenderRequest, reference: Reference | None = None) -> ColourScale:
    """The scale ``request`` colours with; ``auto`` measured on a probe render
    (around ``reference`` for a deep view, computed when not given)."""
    if request.colour_scale != "auto":
        return ColourScale.fixed(request.colour_scale, request.max_iter)
    key = request.key()
    if key not in _MEASURED:
        _MEASURED[key] = _measure(request, reference)
        while len(_MEASURED) > _KEEP:
            _MEASURED.popitem(last=False)
    return _MEASURED[key]


def _measure(request: RenderRequest, reference: Reference | None) -> ColourScale:
    probe = probe_request(request)
    if request.deep:  # around the view's own orbit, whatever the probe's pixel size
        from fractalq.fractal import perturb  # numba, loaded on first use
        from fractalq.fractal.kernels import cached_reference

        counts, smooth = perturb.escape(
            probe, reference or cached_reference(request), 0, probe.height
        )
    else:
        counts, smooth = escape(probe, 0, probe.height)
    outside = smooth[counts < request.max_iter]
    if outside.size == 0:
        return ColourScale("log", 0.0, float(request.max_iter))
    low, high = np.quantile(outside, [config.PROBE_LOW, config.PROBE_HIGH])
    return ColourScale("log", float(low), float(high))


def to_json(scale: ColourScale) -> bytes:
    return json.dumps(dataclasses.asdict(scale), sort_keys=True).encode()


def from_json(data: bytes) -> ColourScale:
    """A stored scale read back; ValueError if it is not one."""
    try:
        fields = json.loads(data)
        scale = ColourScale(str(fields["kind"]), float(fields["low"]), float(fields["high"]))
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"not a colour scale: {error}") from None
    if scale.kind not in ("sqrt", "linear", "log") or not scale.low <= scale.high:
        raise ValueError("not a colour scale: its kind or range is wrong")
    return scale
