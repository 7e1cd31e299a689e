"""``fractal.encode`` and ``fractal.zoom-cleanup``: a zoom movie's final and cleanup task.

Payload: ``{"zoom": <ZoomRequest>, "keep_keyframes": bool}``. The encoder runs
once every keyframe is stored. It reads the keyframes' ranges first and sets
the movie's colour scale (:func:`fractalq.fractal.movie.movie_scales`), then
makes the frames in order, each from the two keyframes around it
(:func:`fractalq.fractal.movie.compose`), and encodes them (:mod:`fractalq.video`)
into a temporary file, which is then stored under :func:`video_key` (S3: a
multipart upload). Only the two keyframes around the current frame are in
memory (and a few frames being made ahead, on two threads, while the encoder
works on the last). Then the keyframes and orbits are removed unless asked to
keep them. The key is a pure function of the job, and the same keyframes give
the same bytes, so a retried encoding rewrites the same video. The result,
the job's, is JSON: ``{"key", "url", "bytes"}`` as a render's image, with the
movie's ``frames``, ``keyframes``, ``width``, ``height``, ``fps`` and ``container``.

``fractal.zoom-cleanup`` (same payload) runs as a job of its own when a zoom
fails or is cancelled, once no keyframe is being written any more: it removes
the keyframes, the orbits and any video.
"""

from __future__ import annotations

import collections
import json
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from fractalq import config
from fractalq.fractal import movie
from fractalq.fractal.palettes import ColourScale
from fractalq.fractal.zoom import FramePosition, ZoomRequest
from fractalq.storage import Storage, shared_storage
from fractalq.tasks.registry import InvalidPayload, TaskContext, task_type
from fractalq.tasks.zoom import keyframe_key, orbit_key, orbit_names, parse_payload, stats_key
from fractalq.video import VideoWriter

ENCODE = "fractal.encode"
CLEANUP = "fractal.zoom-cleanup"
# Frames made ahead of the encoder (each a few MB): enough to keep both threads busy.
AHEAD = 4


def video_key(job_id: str, container: str) -> str:
    return f"jobs/{job_id}/zoom.{container}"


def video_keys(job_id: str) -> list[str]:
    """Every key a zoom's video may have (the orphan sweep keeps them)."""
    return [video_key(job_id, container) for container in ("mp4", "webm")]


def parse(payload: bytes) -> tuple[ZoomRequest, bool]:
    zoom, flags = parse_payload(payload)
    keep = flags.get("keep_keyframes", False)
    if not isinstance(keep, bool):
        raise InvalidPayload("keep_keyframes must be true or false")
    return zoom, keep


def _check(payload: bytes) -> None:
    parse(payload)


def load_keyframe(storage: Storage, job_id: str, zoom: ZoomRequest, level: int) -> movie.Keyframe:
    data = storage.get(keyframe_key(job_id, level))
    if len(data) != 8 * zoom.width * zoom.height:
        raise ValueError(f"keyframe {level} of job {job_id} is not {zoom.width}x{zoom.height}")
    values = np.frombuffer(data, dtype="<f8").reshape(zoom.height, zoom.width)
    logs = zoom.colour_scale in ("log", "auto")
    return movie.Keyframe.of(values.astype(np.float64), zoom.max_iter_at(level), logs)


def _frame(
    inner: movie.Keyframe,
    outer: movie.Keyframe | None,
    t: float,
    palette: str,
    scale: ColourScale,
) -> movie.Rgb:
    coloured = movie.colour(inner, palette, scale)
    return movie.compose(coloured, movie.colour(outer, palette, scale) if outer else None, t)


def write_video(
    zoom: ZoomRequest,
    load: Callable[[int], movie.Keyframe],
    scales: dict[int, ColourScale],
    path: str,
) -> int:
    """Make and encode every frame into ``path``; the number of frames."""
    kept: dict[int, movie.Keyframe] = {}

    def keyframe(level: int) -> movie.Keyframe:
        if level not in kept:
            kept[level] = load(level)
        return kept[level]

    pending: collections.deque[Future[movie.Rgb]] = collections.deque()
    with (
        VideoWriter(path, zoom.container, zoom.width, zoom.height, zoom.fps, zoom.crf) as video,
        ThreadPoolExecutor(2, thread_name_prefix="frames") as pool,
    ):
        for position in zoom.frames():
            wanted = _around(position)
            for level in [level for level in kept if level not in wanted]:
                del kept[level]  # frames being made still hold what they need
            outer = keyframe(position.level + 1) if position.t > 0 else None
            pending.append(
                pool.submit(
                    _frame, keyframe(position.level), outer, position.t, zoom.palette,
                    movie.frame_scale(scales, position),
                )
            )  # fmt: skip
            if len(pending) >= AHEAD:
                video.write(pending.popleft().result())
        while pending:
            video.write(pending.popleft().result())
        return video.frames


def _around(position: FramePosition) -> set[int]:
    return {position.level, position.level + 1} if position.t > 0 else {position.level}


def remove_zoom_objects(storage: Storage, job_id: str, zoom: ZoomRequest) -> None:
    """The keyframes, their stats and the orbits of a zoom job."""
    keys = [key for level in zoom.levels for key in (keyframe_key(job_id, level),
            stats_key(job_id, level))]  # fmt: skip
    keys += [orbit_key(job_id, name) for name in sorted(orbit_names(zoom))]
    storage.delete(keys)


@task_type(
    ENCODE, check=_check, cpu_bound=True, needs_storage=True, time_limit=config.ENCODE_TIME_LIMIT
)
def encode(payload: bytes, context: TaskContext) -> bytes:
    if not context.storage_url:
        raise RuntimeError("this worker has no --storage to read keyframes from")
    zoom, keep = parse(payload)
    job_id = context.job_id
    storage = shared_storage(context.storage_url)
    stats = {
        level: movie.stats_from_json(storage.get(stats_key(job_id, level))) for level in zoom.levels
    }
    scales = movie.movie_scales(zoom, stats)
    key = video_key(job_id, zoom.container)
    with tempfile.TemporaryDirectory(prefix="fractalq-encode-") as folder:
        path = os.path.join(folder, f"zoom.{zoom.container}")
        frames = write_video(
            zoom, lambda level: load_keyframe(storage, job_id, zoom, level), scales, path
        )
        size = storage.put_file(key, path)
    if not keep:
        remove_zoom_objects(storage, job_id, zoom)
    return json.dumps(
        {
            "key": key,
            "url": storage.url(key),
            "bytes": size,
            "frames": frames,
            "keyframes": len(zoom.levels),
            "width": zoom.width,
            "height": zoom.height,
            "fps": zoom.fps,
            "container": zoom.container,
        }
    ).encode()


@task_type(CLEANUP, check=_check, needs_storage=True)
def clean_up(payload: bytes, context: TaskContext) -> bytes:
    if not context.storage_url:
        raise RuntimeError("this worker has no --storage to clean up")
    zoom, _ = parse(payload)
    job_id = context.job_id.removesuffix(config.CLEANUP_SUFFIX)
    storage = shared_storage(context.storage_url)
    remove_zoom_objects(storage, job_id, zoom)
    storage.delete(video_keys(job_id))
    return b""
