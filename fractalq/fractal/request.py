"""What to render: one image's request, and how its rows are cut into bands.

A :class:`RenderRequest` is plain immutable data. It travels as a task payload
(:meth:`~RenderRequest.to_json` / :meth:`~RenderRequest.from_json`), and its
canonical JSON is hashed into :meth:`~RenderRequest.key`, so the same image always
has the same name in storage: that is what makes re-rendering a band idempotent.

The view's centre and width are decimal strings (:mod:`.depth`): a deep view
keeps every digit. Floats given for them are spelled exactly (``repr``), so a
view given in floats renders as it always did; :attr:`~RenderRequest.cx`,
:attr:`~RenderRequest.cy` and :attr:`~RenderRequest.span` are their float64 values.

Validation lives here, once, so the command line, the coordinator's payload check
and the workers all refuse the same requests with the same one-line messages.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from decimal import Decimal
from fractions import Fraction
from typing import Any

from fractalq import config
from fractalq.fractal import depth, symmetry
from fractalq.fractal.palettes import COLOUR_SCALES, DEFAULT_COLOUR_SCALE, PALETTES

# Each fractal's default view: (center x, center y, view width).
FRACTALS: dict[str, tuple[float, float, float]] = {
    "mandelbrot": config.DEFAULT_MANDELBROT_VIEW,
    "julia": config.DEFAULT_JULIA_VIEW,
}

_INT_FIELDS = ("width", "height", "max_iter")
_DECIMAL_FIELDS = ("center_x", "center_y", "view_width")
_FLOAT_FIELDS = ("c_re", "c_im")
_STR_FIELDS = ("fractal", "palette", "colour_scale")
# Fields a request's JSON may leave out, with the value it then has; left out
# of the JSON when they have it, so that older requests keep their keys.
_OPTIONAL = {"colour_scale": DEFAULT_COLOUR_SCALE}


def _show(value: object) -> str:
    """A value for an error message: repr keeps it on one line, the cut keeps it short."""
    try:
        text = repr(value)
    except ValueError:  # an int too long to print
        return f"<{type(value).__name__} too long to show>"
    return text if len(text) <= 40 else text[:37] + "..."


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float range
        return False


def _known(names: Any) -> str:
    return ", ".join(sorted(names))


@dataclasses.dataclass(frozen=True)
class RenderRequest:
    """One image: what to draw, at what size, and how to colour it."""

    fractal: str
    width: int
    height: int
    max_iter: int
    center_x: str
    center_y: str
    view_width: str
    c_re: float
    c_im: float
    palette: str
    colour_scale: str = DEFAULT_COLOUR_SCALE

    def __post_init__(self) -> None:
        # Equal requests must have equal JSON (and so equal keys): store floats as
        # floats even when given ints, and fold -0.0 into 0.0.
        for name in _FLOAT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool):
                try:
                    value = float(value)
                except OverflowError:
                    continue  # left as is for validate() to report
            if isinstance(value, float):
                object.__setattr__(self, name, value + 0.0)
        for name in _DECIMAL_FIELDS:
            try:
                spelled = depth.canonical(depth.parse_decimal(name, getattr(self, name)))
            except ValueError:
                continue  # left as is for validate() to report
            object.__setattr__(self, name, spelled)

    @classmethod
    def create(
        cls,
        fractal: str = config.DEFAULT_FRACTAL,
        *,
        width: int | None = None,
        height: int | None = None,
        max_iter: int | None = None,
        center_x: str | float | Fraction | Decimal | None = None,
        center_y: str | float | Fraction | Decimal | None = None,
        view_width: str | float | Fraction | Decimal | None = None,
        c_re: float | None = None,
        c_im: float | None = None,
        palette: str | None = None,
        colour_scale: str | None = None,
    ) -> RenderRequest:
        """A validated request; every option left as None takes its fractal's default."""
        if fractal not in FRACTALS:
            raise ValueError(f"unknown fractal {_show(fractal)} (known: {_known(FRACTALS)})")
        default_x, default_y, default_view = FRACTALS[fractal]
        default_re, default_im = config.DEFAULT_JULIA_C
        request = cls(  # the decimal fields are spelled canonically by __post_init__
            fractal=fractal,
            width=config.DEFAULT_WIDTH if width is None else width,
            height=config.DEFAULT_HEIGHT if height is None else height,
            max_iter=config.DEFAULT_MAX_ITER if max_iter is None else max_iter,
            center_x=default_x if center_x is None else center_x,  # type: ignore[arg-type]
            center_y=default_y if center_y is None else center_y,  # type: ignore[arg-type]
            view_width=default_view if view_width is None else view_width,  # type: ignore[arg-type]
            c_re=default_re if c_re is None else c_re,
            c_im=default_im if c_im is None else c_im,
            palette=config.DEFAULT_PALETTE if palette is None else palette,
            colour_scale=DEFAULT_COLOUR_SCALE if colour_scale is None else colour_scale,
        )
        request.validate()
        return request

    def validate(self) -> None:
        """Raise ValueError with a one-line message naming the first bad field."""
        if not isinstance(self.fractal, str) or self.fractal not in FRACTALS:
            raise ValueError(f"unknown fractal {_show(self.fractal)} (known: {_known(FRACTALS)})")
        for name in _INT_FIELDS:
            value = getattr(self, name)
            limit = config.MAX_ITERATIONS if name == "max_iter" else config.MAX_DIMENSION
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
                raise ValueError(
                    f"{name} must be an integer from 1 to {limit} (got {_show(value)})"
                )
        pixels = self.width * self.height
        if pixels > config.MAX_PIXELS:
            raise ValueError(
                f"image of {self.width}x{self.height} = {pixels} pixels exceeds "
                f"the cap of {config.MAX_PIXELS} pixels"
            )
        for name in _FLOAT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, float | int) or not _finite(value):
                raise ValueError(f"{name} must be a finite number (got {_show(value)})")
        for name in _DECIMAL_FIELDS:
            depth.parse_decimal(name, getattr(self, name))
        view = depth.parse_decimal("view_width", self.view_width)
        if view <= 0:
            raise ValueError(f"view_width must be greater than 0 (got {_show(self.view_width)})")
        if view.adjusted() < -config.MAX_ZOOM_DIGITS:
            raise ValueError(
                f"view_width must be at least 1e-{config.MAX_ZOOM_DIGITS} "
                f"(got {_show(self.view_width)})"
            )
        if not isinstance(self.palette, str) or self.palette not in PALETTES:
            raise ValueError(f"unknown palette {_show(self.palette)} (known: {_known(PALETTES)})")
        if not isinstance(self.colour_scale, str) or self.colour_scale not in COLOUR_SCALES:
            raise ValueError(
                f"unknown colour scale {_show(self.colour_scale)} "
                f"(known: {', '.join(COLOUR_SCALES)})"
            )

    @property
    def cx(self) -> float:
        """The centre's real part as a float64."""
        return float(self.center_x)

    @property
    def cy(self) -> float:
        """The centre's imaginary part as a float64."""
        return float(self.center_y)

    @property
    def span(self) -> float:
        """The view's width as a float64 (0.0 for views deeper than 1e-308)."""
        return float(self.view_width)

    @property
    def pixel_size(self) -> float:
        """The distance between neighbouring pixel centres, in the complex plane."""
        return self.span / self.width

    @property
    def deep(self) -> bool:
        """Whether float64 is too coarse: the view renders by perturbation."""
        return depth.is_deep(self.center_x, self.center_y, self.view_width, self.width)

    @property
    def precision(self) -> int:
        """Mantissa bits of a deep view's reference orbit."""
        return depth.precision_bits(self.center_x, self.center_y, self.view_width, self.width)

    def to_json(self) -> bytes:
        """Canonical JSON: sorted keys, no spaces, floats written exactly (repr)."""
        fields = dataclasses.asdict(self)
        for name, default in _OPTIONAL.items():
            if fields[name] == default:
                del fields[name]
        return json.dumps(fields, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> RenderRequest:
        """Parse and validate; ValueError with a one-line message on anything amiss.

        Every payload of a render carries its request, and the coordinator and the
        workers read each payload more than once, so a text read before gives the
        request read then (a request is immutable: sharing it is safe).
        """
        if cls is RenderRequest and len(data) <= READ_CACHE_TEXT:
            return _read_cached(data)
        return cls._read(data)

    @classmethod
    def _read(cls, data: bytes | str) -> RenderRequest:
        try:
            value = json.loads(data)
        except ValueError as error:  # JSONDecodeError, UnicodeDecodeError, huge ints
            first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ValueError(f"render request is not valid JSON: {first_line}") from None
        except RecursionError:
            raise ValueError("render request is not valid JSON: nested too deeply") from None
        if not isinstance(value, dict):
            raise ValueError("render request must be a JSON object")
        fields = {field.name for field in dataclasses.fields(cls)}
        value = {**_OPTIONAL, **value}
        missing = fields - value.keys()
        if missing:
            raise ValueError(f"render request is missing {_known(missing)}")
        unknown = value.keys() - fields
        if unknown:
            raise ValueError(f"render request has unknown field(s) {_show(_known(unknown))}")
        for name in _INT_FIELDS:
            if isinstance(value[name], bool) or not isinstance(value[name], int):
                raise ValueError(f"{name} must be an integer (got {_show(value[name])})")
        for name in _FLOAT_FIELDS:
            if isinstance(value[name], bool) or not isinstance(value[name], int | float):
                raise ValueError(f"{name} must be a number (got {_show(value[name])})")
        for name in _DECIMAL_FIELDS:  # strings; numbers from older clients are read too
            if isinstance(value[name], bool) or not isinstance(value[name], str | int | float):
                raise ValueError(f"{name} must be a decimal string (got {_show(value[name])})")
        for name in _STR_FIELDS:
            if not isinstance(value[name], str):
                raise ValueError(f"{name} must be a string (got {_show(value[name])})")
        request = cls(**value)
        request.validate()
        return request

    def key(self) -> str:
        """A short stable name for the image: 16 hex digits of the canonical JSON's SHA-256."""
        return hashlib.sha256(self.to_json()).hexdigest()[:16]


# Requests read from texts up to this long are kept, the last READ_CACHE_SIZE of
# them: a few hundred bytes each (a deep view's decimals make some longer), so
# what the cache holds stays small whatever a client sends.
READ_CACHE_TEXT = 16 * 1024
READ_CACHE_SIZE = 64


@functools.lru_cache(maxsize=READ_CACHE_SIZE)
def _read_cached(data: bytes | str) -> RenderRequest:
    return RenderRequest._read(data)  # a refusal raises: nothing is kept for it


@dataclasses.dataclass(frozen=True)
class BandPlan:
    """How a render's rows are cut: its band tasks' rows, and the strips stored.

    A mirrored plan (:mod:`.symmetry`) cuts the top half into the tasks, and each
    task also stores its rows' mirror below the middle.
    """

    height: int
    tasks: list[tuple[int, int]]
    mirror: symmetry.Kind | None = None

    @classmethod
    def cut(cls, height: int, tasks: int, mirror: symmetry.Kind | None) -> BandPlan:
        """``tasks`` band tasks over an image of ``height`` rows, or over its top half
        when mirrored; ValueError (from :func:`split_rows`) when they cannot be."""
        rows = height if mirror is None else symmetry.top_half(height)
        return cls(height, split_rows(rows, tasks), mirror)

    @property
    def strips(self) -> list[tuple[int, int]]:
        """Every stored strip of rows, top to bottom: they tile the image."""
        if self.mirror is None:
            return list(self.tasks)
        below = (symmetry.mirror_rows(self.height, start, end) for start, end in self.tasks)
        return self.tasks + sorted(rows for rows in below if rows is not None)


def band_plan(request: RenderRequest, regions: int | None = None) -> BandPlan:
    """The bands of a render asked for in ``regions`` bands: that many, and more when a
    band would exceed ``config.MAX_BAND_PIXELS`` (bounded memory).

    ``regions`` None asks for the default, ``config.DEFAULT_REGIONS``, or fewer for
    a small image: one band per ``config.MIN_BAND_WORK`` of its most work (pixels
    x max_iter), since a band's own costs (a lease, a report, storing it, reading
    it back) outweigh what a small band gains by running beside the others. A view
    that mirrors onto itself (:mod:`.symmetry`) gets as many bands, over its top
    half: each does half the work. A pure function of the request and ``regions``.
    """
    pixels = request.width * request.height
    if regions is None:
        worth = -(-pixels * request.max_iter // config.MIN_BAND_WORK)  # ceilings
        regions = min(config.DEFAULT_REGIONS, max(1, worth))
    mirror = symmetry.kind(request)
    if mirror is not None and regions > symmetry.top_half(request.height):
        mirror = None  # more bands asked for than the top half has rows
    rows = request.height if mirror is None else symmetry.top_half(request.height)
    needed = -(-request.width * rows // config.MAX_BAND_PIXELS)
    return BandPlan.cut(request.height, min(max(regions, needed), rows), mirror)


def is_small(request: RenderRequest) -> bool:
    """Whether the image is made in memory: its pixels are at most ``config.SMALL_IMAGE_BYTES``."""
    return 3 * request.width * request.height <= config.SMALL_IMAGE_BYTES


def band_rows(request: RenderRequest, regions: int | None = None) -> list[tuple[int, int]]:
    """The rows of a render's band tasks (:func:`band_plan`)."""
    return band_plan(request, regions).tasks


def split_rows(height: int, regions: int) -> list[tuple[int, int]]:
    """Cut rows 0..height into `regions` contiguous half-open bands.

    Sizes differ by at most one row; the first ``height % regions`` bands take
    the extra rows, so the cut is a pure function of the two numbers.
    """
    if isinstance(height, bool) or not isinstance(height, int) or height < 1:
        raise ValueError(f"height must be at least 1 (got {_show(height)})")
    if isinstance(regions, bool) or not isinstance(regions, int) or regions < 1:
        raise ValueError(f"regions must be at least 1 (got {_show(regions)})")
    if regions > height:
        raise ValueError(
            f"regions ({regions}) cannot exceed the image height ({height} rows): "
            "every band needs at least one row"
        )
    size, extra = divmod(height, regions)
    bands = []
    start = 0
    for index in range(regions):
        end = start + size + (1 if index < extra else 0)
        bands.append((start, end))
        start = end
    return bands
