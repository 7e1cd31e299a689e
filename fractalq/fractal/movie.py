"""A zoom movie's frames, made from its keyframes: one colour scale across depth, scale and blend.

**Keyframes** (:mod:`.zoom`) are the frame's size and hold each pixel's smooth
iteration value as float64, ``inf`` inside: the numbers a render colours, so a
keyframe coloured here has a render's very bytes.

**Colours** follow the counts. Each frame is coloured with one scale
(:func:`frame_scale`) for both keyframes it is made of, so they never disagree:

* ``sqrt`` is the same scale at every depth; ``linear`` and ``log`` run over
  ``0 .. max_iter`` of the keyframe (with ``--max-iter-growth``, a frame
  between two keyframes over the limit between theirs);
* ``auto`` takes each keyframe's own range, the 1st to 99th percentile of its
  outside pixels' values (:func:`keyframe_stats`, as a render's probe
  measures a view), smooths the ranges over depth with a Gaussian of
  ``config.ZOOM_COLOUR_SMOOTHING`` keyframes (:func:`movie_scales`), and
  interpolates them between keyframes. Deep zooms' counts grow from tens to
  tens of thousands; one range for the whole movie would wash the deep end out
  into one colour, a range per keyframe would flicker; a smoothed one drifts.

At a keyframe's depth (``t = 0``) a frame is the keyframe coloured with its own
scale, exactly.

**Frames** (:func:`compose`), as zoomasm makes them: a frame between keyframe
``j`` (deeper, ``t = 0`` its own depth) and ``j + 1`` is keyframe ``j + 1``,
cropped to the frame's view and scaled up by ``2**(1 - t)``, with keyframe
``j``, scaled down by ``2**t``, laid over the middle it covers. Inside that
middle the two are blended ``1 - t`` to ``t``: trilinear filtering, as a GPU
blends two levels of a mipmap, so the middle fades smoothly from one keyframe's
pixels to the next instead of switching once per keyframe; at the inner
keyframe's edge the blend fades out over up to ``FEATHER`` of the frame's width
(less while the edge is still near the frame's own, so that nothing jumps at
``t = 0``). Scaling is Pillow's (bilinear, with the filter widened when it
shrinks, so nothing aliases), on 8-bit colours, deterministic: the same
keyframes give the same frames on every machine.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
from PIL import Image

from fractalq import config
from fractalq.fractal.palettes import ColourScale, colorize, log_values
from fractalq.fractal.zoom import FramePosition, ZoomRequest

Values = npt.NDArray[np.float64]
Rgb = npt.NDArray[np.uint8]
# The inner keyframe's edge fades out over at most this fraction of the frame's width.
FEATHER = 1 / 32


# ---- colours across depth ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class KeyframeStats:
    """A keyframe's outside pixels: how many, and their values' 1st and 99th
    percentiles (None when all are inside)."""

    outside: int
    low: float | None
    high: float | None


def keyframe_stats(values: Values) -> KeyframeStats:
    outside = values[np.isfinite(values)]
    if outside.size == 0:
        return KeyframeStats(0, None, None)
    low, high = np.quantile(outside, [config.PROBE_LOW, config.PROBE_HIGH])
    return KeyframeStats(int(outside.size), float(low), float(high))


def stats_to_json(stats: KeyframeStats) -> bytes:
    return json.dumps(dataclasses.asdict(stats), sort_keys=True).encode()


def stats_from_json(data: bytes) -> KeyframeStats:
    """Stored stats read back; ValueError if they are not."""
    try:
        fields = json.loads(data)
        stats = KeyframeStats(int(fields["outside"]), fields["low"], fields["high"])
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"not a keyframe's stats: {error}") from None
    numbers = [stats.low, stats.high]
    if stats.outside > 0 and not all(
        isinstance(n, float | int) and math.isfinite(n) and n >= 0 for n in numbers
    ):
        raise ValueError("not a keyframe's stats: its range is not two numbers")
    return stats


def movie_scales(zoom: ZoomRequest, stats: Mapping[int, KeyframeStats]) -> dict[int, ColourScale]:
    """Each keyframe level's colour scale (see the module's docstring); ``stats``
    by level, needed for ``auto`` only."""
    kind = zoom.colour_scale
    if kind == "sqrt":
        return {level: ColourScale() for level in zoom.levels}
    if kind != "auto":
        return {level: ColourScale.fixed(kind, zoom.max_iter_at(level)) for level in zoom.levels}
    measured = [
        (level, math.log1p(s.low), math.log1p(s.high))
        for level, s in sorted(stats.items())
        if s.outside and s.low is not None and s.high is not None
    ]
    scales = {}
    sigma = config.ZOOM_COLOUR_SMOOTHING
    for level in zoom.levels:
        if not measured:  # every keyframe all inside: nothing to measure
            scales[level] = ColourScale("log", 0.0, float(zoom.max_iter_at(level)))
            continue
        weights = [math.exp(-(((level - x) / sigma) ** 2) / 2) for x, _, _ in measured]
        total = sum(weights)
        if total < 1e-300:  # far from every measured keyframe: the nearest one's
            nearest = min(measured, key=lambda item: abs(item[0] - level))
            low, high = nearest[1], nearest[2]
        else:
            low = sum(w * m[1] for w, m in zip(weights, measured, strict=True)) / total
            high = sum(w * m[2] for w, m in zip(weights, measured, strict=True)) / total
        scales[level] = ColourScale("log", math.expm1(low), math.expm1(high))
    return scales


def frame_scale(scales: Mapping[int, ColourScale], position: FramePosition) -> ColourScale:
    """The scale of a frame at ``position``: its keyframe's at ``t = 0``, else
    between the two keyframes' (their ranges interpolated on a log scale)."""
    inner = scales[position.level]
    if position.t == 0 or inner.kind == "sqrt":
        return inner
    outer = scales[position.level + 1]
    t = position.t

    def between(a: float, b: float) -> float:
        return math.expm1((1 - t) * math.log1p(a) + t * math.log1p(b))

    return ColourScale(inner.kind, between(inner.low, outer.low), between(inner.high, outer.high))


@dataclasses.dataclass(frozen=True, eq=False)  # arrays: compared by identity
class Keyframe:
    """A keyframe prepared for colouring many times: its pixels' counts as the
    colouring reads them (``max_iter`` inside, 0 outside), their values (0
    inside) and, for the log scales, the values' logarithms."""

    counts: npt.NDArray[np.int32]
    smooth: Values
    logs: Values | None
    max_iter: int

    @classmethod
    def of(cls, values: Values, max_iter: int, logs: bool = True) -> Keyframe:
        inside = np.isinf(values)
        smooth = np.where(inside, 0.0, values)
        counts = np.where(inside, max_iter, 0).astype(np.int32)
        return cls(counts, smooth, log_values(smooth) if logs else None, max_iter)


def colour(keyframe: Keyframe, palette: str, scale: ColourScale) -> Rgb:
    """A keyframe's pixels in colour: the bytes a render of its view with ``scale`` has."""
    logs = keyframe.logs if scale.kind in ("log", "auto") else None
    return colorize(keyframe.counts, keyframe.smooth, keyframe.max_iter, palette, scale, logs)


# ---- scale and blend --------------------------------------------------------------


def compose(inner: Rgb, outer: Rgb | None, t: float) -> Rgb:
    """The frame ``t`` of the way from keyframe ``inner`` (deeper) to ``outer``
    (twice as wide), both of the frame's size; ``outer`` may be None at ``t = 0``."""
    if t == 0:
        return inner
    if outer is None or not 0 < t < 1 or inner.shape != outer.shape:
        raise ValueError("a frame between keyframes needs both, of one size, and 0 <= t < 1")
    height, width = inner.shape[:2]
    # The outer keyframe, cropped to the frame's view: 2**(t - 1) of its size.
    half_w, half_h = width / 2 * math.pow(2.0, t - 1), height / 2 * math.pow(2.0, t - 1)
    box = (width / 2 - half_w, height / 2 - half_h, width / 2 + half_w, height / 2 + half_h)
    frame = Image.fromarray(outer).resize((width, height), Image.Resampling.BILINEAR, box)
    # The inner keyframe covers the frame's middle, 2**-t of its size: the pixels
    # whose centres it covers, [x0, x1) x [y0, y1). It is padded with a copy of
    # its edge, so that the pixels at the edge may sample a little beyond it.
    shrink = math.pow(2.0, t)
    x0, x1, mask_x = _footprint(width, shrink)
    y0, y1, mask_y = _footprint(height, shrink)

    def inner_at(x: float, size: int) -> float:  # frame coordinate -> the padded keyframe's
        return min(max((x - size / 2) * shrink + size / 2 + 1, 0.0), size + 2.0)

    padded = np.pad(inner, ((1, 1), (1, 1), (0, 0)), mode="edge")
    piece = Image.fromarray(padded).resize(
        (x1 - x0, y1 - y0),
        Image.Resampling.BILINEAR,
        (inner_at(x0, width), inner_at(y0, height), inner_at(x1, width), inner_at(y1, height)),
    )
    weight = np.rint(np.outer(mask_y, mask_x) * (255.0 * (1.0 - t))).astype(np.uint8)
    frame.paste(piece, (x0, y0), Image.fromarray(weight))
    return np.asarray(frame)


def _footprint(size: int, shrink: float) -> tuple[int, int, npt.NDArray[np.float64]]:
    """The pixels ``[first, end)`` of a frame ``size`` wide whose centres a keyframe
    shrunk by ``shrink`` covers, and the weight of each: 1 inside, falling to 0
    at the edge over the feather, which narrows to nothing as the edge nears the
    frame's own (at ``shrink = 1`` every pixel has weight 1)."""
    half = size / 2 / shrink
    first = math.floor(size / 2 - half - 0.5) + 1
    end = math.ceil(size / 2 + half - 0.5)
    centres = np.arange(first, end, dtype=np.float64) + 0.5 - size / 2
    inside = half - np.abs(centres)  # from the pixel's centre to the edge
    feather = min(FEATHER * size, size / 2 - half)
    return first, end, np.clip((inside + 0.5) / (feather + 1), 0.0, 1.0)
