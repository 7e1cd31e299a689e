"""``fractal.orbits`` and ``fractal.keyframe``: a zoom movie's first task and its keyframes.

Payload of both: ``{"zoom": <ZoomRequest>}`` (:mod:`fractalq.fractal.zoom`).
A zoom job has one keyframe task per level the frames need, all with the same
payload: task ``i`` renders ``zoom.levels[i]`` (deepest first, the longest
renders first), so a zoom of a thousand keyframes sends its request once.

**Reference orbits.** Every keyframe shares the centre, so one orbit could serve
them all, a prefix of it for those with fewer iterations. But a render iterates
its orbit at its own view's precision (:attr:`RenderRequest.precision`), and an
orbit at other bits is other float64 numbers in its last places: a keyframe
around the deepest view's orbit would not be the render of its view (about 0.3%
of its pixels' values differ). So the orbits are shared where they are
the same numbers: in fixed point (:mod:`fractalq.fractal.fixedpoint`, up to
about 900 bits) an orbit depends on the precision only through its count of
28-bit limbs, so the keyframes of one count, 28 levels of depth, share one
orbit, its prefixes exactly those their own renders iterate
(:func:`orbit_class`). The first task computes the orbit of each such class
and of the deepest keyframe's, stores them under :func:`orbit_key`, and the
keyframes read theirs; a keyframe whose orbit is nobody else's (MPFR's
precisions, past about 1e-250) computes its own. Each keyframe builds its own
table of skips from its prefix (the table depends on the view's size: a few
milliseconds), so a keyframe is exactly ``fractalq render`` of its view
(``tests/test_zoom_units.py`` holds the two equal).

**Keyframes** store their pixels' smooth values under :func:`keyframe_key` as
raw little-endian float64 (``inf`` inside: what the colouring reads, to the
bit), and their outside values' range under :func:`stats_key` for the encoder's
colour scale. Keys are pure functions of the job and the level, so a retry
rewrites the same bytes. The result is JSON: the key and a thumbnail for the
dashboard (:func:`fractalq.preview.keyframe_preview`).
"""

from __future__ import annotations

import functools
import json
import logging

import numpy as np
import numpy.typing as npt

from fractalq import config
from fractalq.fractal import movie
from fractalq.fractal import reference as orbits
from fractalq.fractal.kernels import escape
from fractalq.fractal.palettes import ColourScale
from fractalq.fractal.reference import Reference
from fractalq.fractal.request import RenderRequest
from fractalq.fractal.zoom import ZoomRequest
from fractalq.preview import keyframe_preview
from fractalq.storage import ObjectNotFoundError, shared_storage
from fractalq.tasks.registry import InvalidPayload, TaskContext, task_type

ORBITS = "fractal.orbits"
KEYFRAME = "fractal.keyframe"
log = logging.getLogger(__name__)


def orbit_key(job_id: str, name: str) -> str:
    return f"jobs/{job_id}/orbits/{name}.orbit"


def keyframe_key(job_id: str, level: int) -> str:
    return f"jobs/{job_id}/keyframes/{level:06d}.f64"


def stats_key(job_id: str, level: int) -> str:
    return f"jobs/{job_id}/keyframes/{level:06d}.json"


def zoom_payload(zoom: ZoomRequest, **flags: bool) -> bytes:
    return json.dumps({"zoom": zoom.to_dict(), **flags}, sort_keys=True).encode()


def parse_payload(payload: bytes) -> tuple[ZoomRequest, dict[str, object]]:
    """The zoom, and the payload's other fields."""
    try:
        data = json.loads(payload)
        zoom = ZoomRequest.from_dict(data.pop("zoom"))
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise InvalidPayload(f"not a zoom payload: {e}") from None
    except ValueError as error:
        raise InvalidPayload(f"not a zoom payload: {error}") from None
    except RecursionError:
        raise InvalidPayload("not a zoom payload: nested too deeply") from None
    return zoom, data


# ---- reference orbits ---------------------------------------------------------


def orbit_class(request: RenderRequest) -> str:
    """A name shared by exactly the deep requests whose reference orbits (of the same
    centre, fractal and constant) are the same numbers, up to the shorter's end:
    ``fixed-<limbs>`` for orbits iterated in fixed point, ``mpfr-<bits>`` otherwise.

    It follows :func:`fractalq.fractal.reference.compute`, which iterates in fixed
    point when :func:`fixedpoint.usable` says so for every orbit it computes.
    """
    from fractalq.fractal import fixedpoint  # numba: loaded by the processes that render

    bits = request.precision
    centre = (request.center_x, request.center_y)
    if request.fractal == "mandelbrot":
        values: tuple[str | float, ...] = ("0", "0", *centre)
    else:
        constant = (request.c_re, request.c_im)
        values = (*centre, *constant, "0", "0", *constant)
    if fixedpoint.usable(bits, *values):
        return f"fixed-{fixedpoint.limbs_for(bits)}"
    return f"mpfr-{bits}"


def shared_orbits(zoom: ZoomRequest) -> dict[str, RenderRequest]:
    """The orbits the first task computes, by class: one per fixed-point class
    and the deepest keyframe's, each for its deepest keyframe (whose limit is
    its class's highest)."""
    classes: dict[str, RenderRequest] = {}
    deepest = True
    for level in zoom.levels:  # deepest first
        request = zoom.keyframe(level)
        if not request.deep:
            continue
        name = orbit_class(request)
        if name not in classes and (deepest or name.startswith("fixed-")):
            classes[name] = request
        deepest = False
    return classes


def orbit_names(zoom: ZoomRequest) -> set[str]:
    """Every class of the zoom's deep keyframes (what cleanup may find stored)."""
    return {orbit_class(r) for r in map(zoom.keyframe, zoom.levels) if r.deep}


def truncated(orbit: Reference, request: RenderRequest) -> Reference:
    """``request``'s reference from a longer orbit of its class: the prefix it
    iterates, and a table of skips built for its own view."""
    end = request.max_iter + 1
    start, start_lo = orbit.start[:end], orbit.start_lo[:end]
    if orbit.julia:
        base, base_lo = orbit.base[:end], orbit.base_lo[:end]
    else:
        base, base_lo = start, start_lo  # one orbit: the table tells them apart by identity
    table = orbits.table(request, start, base)
    return Reference(start, base, start_lo, base_lo, request.precision, table)


@functools.lru_cache(maxsize=2)
def _stored_orbit(url: str, key: str) -> Reference:
    # A job's orbit never changes under its key, so the cache needs no expiry.
    return orbits.from_bytes(shared_storage(url).get(key))


def keyframe_reference(request: RenderRequest, context: TaskContext) -> Reference:
    """The reference a deep keyframe renders around: its class's stored orbit, or
    its own when its class has none stored (the same numbers either way)."""
    if context.storage_url:
        try:
            stored = _stored_orbit(
                context.storage_url, orbit_key(context.job_id, orbit_class(request))
            )
        except ObjectNotFoundError:
            pass
        else:
            return truncated(stored, request)
    return orbits.compute(request)


def _check(payload: bytes) -> None:
    parse_payload(payload)


def needs_orbits(zoom: ZoomRequest) -> bool:
    return zoom.keyframe(zoom.levels[0]).deep  # the deepest: if it is not, none is


def _check_orbits(payload: bytes) -> None:
    zoom, _ = parse_payload(payload)
    if not needs_orbits(zoom):
        raise InvalidPayload("none of the zoom's keyframes is deep: it has no orbit to share")


def _warm() -> None:
    """A tiny deep keyframe: loads gmpy2, the kernels' and the table's compiled code."""
    tiny = ZoomRequest.create(
        to_width="1e-20", from_width="4e-20", width=8, height=2, center_x="0", center_y="1",
        max_iter=50, seconds=1, fps=2,
    )  # fmt: skip
    request = tiny.keyframe(0)
    escape(request, 0, request.height, reference=truncated(orbits.compute(request), request))


@task_type(ORBITS, check=_check_orbits, cpu_bound=True, needs_storage=True, warm=_warm)
def compute_orbits(payload: bytes, context: TaskContext) -> bytes:
    if not context.storage_url:
        raise RuntimeError("this worker has no --storage to put the reference orbits in")
    zoom, _ = parse_payload(payload)
    storage = shared_storage(context.storage_url)
    stored = []
    for name, request in shared_orbits(zoom).items():
        key = orbit_key(context.job_id, name)
        storage.put(key, orbits.to_bytes(orbits.compute(request)))
        stored.append(key)
    return json.dumps(stored).encode()


# ---- keyframes ------------------------------------------------------------------


def render_keyframe(request: RenderRequest, reference: Reference | None) -> npt.NDArray[np.float64]:
    """A keyframe's smooth values (float64, ``inf`` inside), rendered in pieces of
    at most ``config.KEYFRAME_PIECE_PIXELS`` pixels (bounded memory, same pixels)."""
    values = np.empty((request.height, request.width), dtype=np.float64)
    rows = max(1, config.KEYFRAME_PIECE_PIXELS // request.width)
    for top in range(0, request.height, rows):
        bottom = min(top + rows, request.height)
        counts, smooth = escape(request, top, bottom, reference=reference)
        values[top:bottom] = smooth
        values[top:bottom][counts >= request.max_iter] = np.inf
    return values


def preview_scale(zoom: ZoomRequest, level: int, stats: movie.KeyframeStats) -> ColourScale:
    """A keyframe's thumbnail's scale: the movie's, or for ``auto`` its own range."""
    if zoom.colour_scale != "auto":
        return movie.movie_scales(zoom, {})[level]
    return movie.movie_scales(zoom, {level: stats})[level]


@task_type(KEYFRAME, check=_check, cpu_bound=True, needs_storage=True, warm=_warm)
def make_keyframe(payload: bytes, context: TaskContext) -> bytes:
    if not context.storage_url:
        raise RuntimeError("this worker has no --storage to put keyframes in")
    zoom, _ = parse_payload(payload)
    if not 0 <= context.index < len(zoom.levels):
        raise InvalidPayload(f"task {context.index} is not one of the zoom's keyframes")
    level = zoom.levels[context.index]
    request = zoom.keyframe(level)
    reference = keyframe_reference(request, context) if request.deep else None
    values = render_keyframe(request, reference)
    stats = movie.keyframe_stats(values)
    storage = shared_storage(context.storage_url)
    key = keyframe_key(context.job_id, level)
    storage.put(stats_key(context.job_id, level), movie.stats_to_json(stats))
    storage.put(key, values.astype("<f8").tobytes())  # last: the encoder reads both
    result: dict[str, object] = {"key": key, "level": level}
    try:
        coloured = movie.Keyframe.of(values, request.max_iter)
        rgb = movie.colour(coloured, zoom.palette, preview_scale(zoom, level, stats))
        result["preview"] = keyframe_preview(rgb, context.index, len(zoom.levels), level)
    except Exception as error:  # a thumbnail is a nicety: never worth failing a keyframe for
        log.warning("no thumbnail for keyframe %d of job %s: %s", level, context.job_id, error)
    return json.dumps(result).encode()
