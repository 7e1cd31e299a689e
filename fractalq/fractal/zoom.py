"""A zoom movie: what to render, its keyframes and where each frame lies between them.

A :class:`ZoomRequest` is plain immutable data, like a :class:`RenderRequest`:
it travels as the payload of every task of a zoom job, and its validation lives
here, once, for the command line, the coordinator's payload checks, the
operator and the workers.

The geometry, fixed here so that every part computes the same:

* **Keyframes** are views of the centre ``to * 2**level`` wide, ``level = 0``
  the deepest (exactly ``to``, the last frame), each the next one's double, up
  to the first level at least ``from`` wide. A keyframe is an ordinary render
  of its view (:meth:`ZoomRequest.keyframe`) at the frame's size: a frame at a
  keyframe's depth is that render.
* **Frames**: frame ``n`` of ``N`` is ``from * (to / from) ** (n / (N - 1))``
  wide, so each is a constant factor narrower than the last. Its *level*
  ``L = log2(width / to)`` lies between keyframes ``j = floor(L)`` (the deeper,
  which covers the frame's middle) and ``j + 1`` (which covers all of it);
  ``t = L - j`` says how far, 0 at keyframe ``j`` itself
  (:meth:`ZoomRequest.frames`). Only the keyframes some frame lies next to are
  rendered (:meth:`ZoomRequest.levels`): a short movie of a deep zoom skips the
  rest.
* **Iterations**: the deepest keyframe iterates up to ``max_iter``; with
  ``max_iter_growth`` G above 1, each shallower one up to the next one's
  divided by G, never below ``config.ZOOM_MIN_ITER``
  (:meth:`ZoomRequest.max_iter_at`). A keyframe's request carries its own, so
  it stays a render anyone can repeat.
"""

from __future__ import annotations

import dataclasses
import decimal
import functools
import json
import math
from decimal import Decimal
from typing import Any

from fractalq import config
from fractalq.fractal import depth
from fractalq.fractal.request import RenderRequest

CONTAINERS = ("mp4", "webm")
# A frame level this close to a whole number is that keyframe's (float64 log2
# of a ratio that is a power of two may come out a hair off).
_SNAP = 1e-9


@dataclasses.dataclass(frozen=True)
class FramePosition:
    """Where a frame lies: keyframe ``level`` (deeper) and ``level + 1``, ``t`` in
    [0, 1) between them (0: the frame is keyframe ``level``)."""

    level: int
    t: float


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclasses.dataclass(frozen=True)
class ZoomRequest:
    """A zoom movie from a view ``from_width`` wide to one ``to_width`` wide."""

    fractal: str
    width: int
    height: int
    center_x: str
    center_y: str
    c_re: float
    c_im: float
    from_width: str
    to_width: str
    max_iter: int
    max_iter_growth: float
    seconds: float
    fps: int
    palette: str
    colour_scale: str
    container: str = "mp4"
    crf: int = config.VIDEO_CRF

    @classmethod
    def create(
        cls,
        fractal: str = config.DEFAULT_FRACTAL,
        *,
        to_width: str | float,
        from_width: str | float | None = None,
        width: int = config.ZOOM_WIDTH,
        height: int = config.ZOOM_HEIGHT,
        center_x: str | float | None = None,
        center_y: str | float | None = None,
        c_re: float | None = None,
        c_im: float | None = None,
        max_iter: int = config.ZOOM_MAX_ITER,
        max_iter_growth: float = 1.0,
        seconds: float = config.ZOOM_SECONDS,
        fps: int = config.ZOOM_FPS,
        palette: str = config.DEFAULT_PALETTE,
        colour_scale: str = config.ZOOM_COLOUR_SCALE,
        container: str = "mp4",
        crf: int = config.VIDEO_CRF,
    ) -> ZoomRequest:
        """A validated zoom; the view's options left as None take the fractal's defaults
        (as a render's do). ValueError with a one-line message naming the bad field."""
        # The deepest view, checked as a render checks it: fractal, palette,
        # size, centre, Julia constant and to_width all in one place.
        try:
            deepest = RenderRequest.create(
                fractal, width=width, height=height, max_iter=max_iter, center_x=center_x,
                center_y=center_y, view_width=to_width, c_re=c_re, c_im=c_im, palette=palette,
                colour_scale=colour_scale,
            )  # fmt: skip
        except ValueError as error:
            raise ValueError(str(error).replace("view_width", "to_width")) from None
        if from_width is None:
            from_width = RenderRequest.create(fractal).view_width
        zoom = cls(
            fractal=deepest.fractal,
            width=deepest.width,
            height=deepest.height,
            center_x=deepest.center_x,
            center_y=deepest.center_y,
            c_re=deepest.c_re,
            c_im=deepest.c_im,
            from_width=_spelled("from_width", from_width),
            to_width=deepest.view_width,
            max_iter=deepest.max_iter,
            max_iter_growth=max_iter_growth,
            seconds=seconds,
            fps=fps,
            palette=deepest.palette,
            colour_scale=deepest.colour_scale,
            container=container,
            crf=crf,
        )
        zoom.validate()
        return zoom

    def validate(self) -> None:
        """Raise ValueError with a one-line message naming the first bad field."""
        self.keyframe(0)  # the deepest view: every field a render has
        if self.width % 2 or self.height % 2:
            raise ValueError(
                f"a video's width and height must be even (got {self.width}x{self.height})"
            )
        view = depth.parse_decimal("from_width", self.from_width)
        if view <= 0:
            raise ValueError(f"from_width must be greater than 0 (got {_show(self.from_width)})")
        if view <= Decimal(self.to_width):
            raise ValueError(
                f"from_width ({self.from_width}) must be wider than to_width ({self.to_width}):"
                " a zoom goes in"
            )
        growth = self.max_iter_growth
        low, high = config.ZOOM_GROWTH_RANGE
        if isinstance(growth, bool) or not isinstance(growth, float | int):
            raise ValueError(f"max_iter_growth must be a number (got {_show(growth)})")
        if not (math.isfinite(growth) and low <= growth <= high):
            raise ValueError(f"max_iter_growth must be from {low:g} to {high:g} (got {growth!r})")
        if isinstance(self.seconds, bool) or not isinstance(self.seconds, float | int):
            raise ValueError(f"seconds must be a number (got {_show(self.seconds)})")
        if not (math.isfinite(self.seconds) and 0 < self.seconds <= config.ZOOM_MAX_SECONDS):
            raise ValueError(
                f"seconds must be above 0 and at most {config.ZOOM_MAX_SECONDS:g}"
                f" (got {self.seconds!r})"
            )
        if isinstance(self.fps, bool) or not isinstance(self.fps, int):
            raise ValueError(f"fps must be a whole number (got {_show(self.fps)})")
        if not 1 <= self.fps <= config.ZOOM_MAX_FPS:
            raise ValueError(f"fps must be from 1 to {config.ZOOM_MAX_FPS} (got {self.fps})")
        if self.frame_count < 2:
            raise ValueError(
                f"{self.seconds:g} s at {self.fps} fps is {self.frame_count} frame(s):"
                " a zoom needs at least 2"
            )
        if self.container not in CONTAINERS:
            raise ValueError(
                f"unknown video container {_show(self.container)} (known: {', '.join(CONTAINERS)})"
            )
        top = config.VIDEO_MAX_CRF[self.container]
        if isinstance(self.crf, bool) or not isinstance(self.crf, int) or not 0 <= self.crf <= top:
            raise ValueError(f"crf must be a whole number from 0 to {top} (got {_show(self.crf)})")

    # ---- the geometry -------------------------------------------------------

    @property
    def frame_count(self) -> int:
        return round(self.seconds * self.fps)

    @functools.cached_property
    def depth(self) -> float:
        """log2(from_width / to_width): how many doublings the zoom goes through."""
        with depth.decimal_context():
            return depth.log2(Decimal(self.from_width) / Decimal(self.to_width))

    @property
    def top_level(self) -> int:
        """The shallowest keyframe's level: the first at least ``from_width`` wide."""
        return math.ceil(_snapped(self.depth))

    def position(self, frame: int) -> FramePosition:
        """Where frame ``frame`` (0 .. frame_count - 1) lies between keyframes."""
        last = self.frame_count - 1
        level = _snapped(self.depth * (last - frame) / last)
        whole = math.floor(level)
        return FramePosition(whole, level - whole)

    def frames(self) -> list[FramePosition]:
        """Every frame's position, first (widest) to last (``to_width``)."""
        return [self.position(n) for n in range(self.frame_count)]

    @functools.cached_property
    def levels(self) -> tuple[int, ...]:
        """The keyframes the frames need, deepest first: the zoom job's keyframe
        task ``i`` renders ``levels[i]``."""
        needed: set[int] = set()
        for frame in self.frames():
            needed.add(frame.level)
            if frame.t > 0:
                needed.add(frame.level + 1)
        return tuple(sorted(needed))

    def level_width(self, level: int) -> str:
        """Keyframe ``level``'s view width, ``to_width * 2**level``, spelled exactly."""
        to = Decimal(self.to_width)
        digits = len(to.as_tuple().digits) + math.ceil(level * math.log10(2)) + 2
        context = decimal.Context(prec=digits, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)
        return depth.canonical(context.multiply(to, Decimal(2**level)))

    def max_iter_at(self, level: int) -> int:
        """Keyframe ``level``'s iteration limit (see the module's docstring)."""
        if self.max_iter_growth == 1:
            return self.max_iter
        grown = math.ceil(self.max_iter * math.exp(-level * math.log(self.max_iter_growth)))
        return max(grown, min(self.max_iter, config.ZOOM_MIN_ITER))

    def keyframe(self, level: int) -> RenderRequest:
        """Keyframe ``level`` as the render request whose image it is."""
        return RenderRequest.create(
            self.fractal,
            width=self.width,
            height=self.height,
            max_iter=self.max_iter_at(level),
            center_x=self.center_x,
            center_y=self.center_y,
            view_width=self.level_width(level),
            c_re=self.c_re,
            c_im=self.c_im,
            palette=self.palette,
            colour_scale=self.colour_scale,
        )

    # ---- the wire form ------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> bytes:
        """Canonical JSON: sorted keys, no spaces, floats written exactly (repr)."""
        return json.dumps(
            self.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False
        ).encode()

    @classmethod
    def from_dict(cls, value: Any) -> ZoomRequest:
        """Parse and validate; ValueError with a one-line message on anything amiss."""
        if not isinstance(value, dict):
            raise ValueError("a zoom must be a JSON object")
        fields = {field.name for field in dataclasses.fields(cls)}
        missing = fields - value.keys()
        if missing:
            raise ValueError(f"the zoom is missing {', '.join(sorted(missing))}")
        unknown = value.keys() - fields
        if unknown:
            raise ValueError(f"the zoom has unknown field(s) {_show(', '.join(sorted(unknown)))}")
        for name in ("from_width", "to_width", "center_x", "center_y"):
            if not isinstance(value[name], str):
                raise ValueError(f"{name} must be a decimal string (got {_show(value[name])})")
        zoom = cls(**value)
        zoom.validate()
        return zoom

    @classmethod
    def from_json(cls, data: bytes | str) -> ZoomRequest:
        try:
            value = json.loads(data)
        except (ValueError, RecursionError):
            raise ValueError("the zoom is not valid JSON") from None
        return cls.from_dict(value)


def _spelled(name: str, value: object) -> str:
    return depth.canonical(depth.parse_decimal(name, value))


def _snapped(level: float) -> float:
    nearest = round(level)
    return float(nearest) if abs(level - nearest) < _SNAP else level
