"""Zoom movies in process: the geometry, the shared orbits, the frames, the colours, the video.

The queue's side (real workers, a real S3 server, a killed worker, cancel) is
tests/test_zoom.py; here each part on its own, where a wrong number shows.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from fractalq import config
from fractalq.cli import main
from fractalq.coordinator.jobs import Job
from fractalq.coordinator.web.preview import Previews
from fractalq.fractal import movie
from fractalq.fractal import reference as orbits
from fractalq.fractal.kernels import escape
from fractalq.fractal.palettes import ColourScale
from fractalq.fractal.render import render_rows
from fractalq.fractal.zoom import ZoomRequest
from fractalq.operator.spec import parse_zoom
from fractalq.preview import parse_keyframe
from fractalq.storage import open_storage
from fractalq.tasks import TaskContext, get
from fractalq.tasks.encode import video_key
from fractalq.tasks.sweep import orphans
from fractalq.tasks.zoom import (
    keyframe_key,
    keyframe_reference,
    orbit_class,
    orbit_key,
    shared_orbits,
    zoom_payload,
)
from fractalq.video import VideoWriter
from fractalq.zooms import zoom_job

SEAHORSE = {"center_x": "-0.743643887037158704752191506114774",
            "center_y": "0.131825904205311970493132056385139"}  # fmt: skip


def small_zoom(**changes: object) -> ZoomRequest:
    fields: dict[str, object] = {
        "to_width": "1e-20", "width": 32, "height": 18, "seconds": 2, "fps": 10,
        "max_iter": 12000, "max_iter_growth": 1.1, **SEAHORSE,
    }  # fmt: skip
    return ZoomRequest.create(**{**fields, **changes})  # type: ignore[arg-type]


# ---- geometry ---------------------------------------------------------------------


def frame_width(zoom: ZoomRequest, frame: int) -> float:
    """log2 of frame ``frame``'s view width over ``to``, from its position."""
    position = zoom.position(frame)
    return position.level + position.t


@pytest.mark.parametrize("frames", [(2, 10), (30, 30), (1, 7)])
def test_each_frame_is_a_constant_factor_deeper_than_the_last(frames: tuple[int, int]) -> None:
    seconds, fps = frames
    zoom = small_zoom(seconds=seconds, fps=fps, from_width="3.5", to_width="1e-30")
    count = zoom.frame_count
    assert count == seconds * fps
    levels = [frame_width(zoom, n) for n in range(count)]
    assert levels[0] == pytest.approx(math.log2(3.5e30), abs=1e-9)  # the first frame: --from
    assert levels[-1] == 0  # the last: exactly --to, the deepest keyframe
    steps = np.diff(levels)
    assert np.allclose(steps, steps[0], rtol=0, atol=1e-9) and steps[0] < 0
    # Every frame lies between two keyframes the job renders, deepest first.
    assert list(zoom.levels) == sorted(zoom.levels)
    for n in range(count):
        position = zoom.position(n)
        assert 0 <= position.t < 1 and position.level in zoom.levels
        assert position.t == 0 or position.level + 1 in zoom.levels


def test_a_short_movie_of_a_deep_zoom_renders_only_the_keyframes_its_frames_need() -> None:
    zoom = small_zoom()  # 20 frames over 68.2 doublings: 3.6 per frame
    needed = {z for n in range(20) for z in (zoom.position(n).level, zoom.position(n).level + 1)}
    needed.discard(zoom.position(19).level + 1)  # the last frame is keyframe 0 itself
    assert set(zoom.levels) == needed
    assert len(zoom.levels) < zoom.top_level + 1


def test_a_first_frame_at_a_power_of_two_lands_on_a_keyframe() -> None:
    zoom = small_zoom(from_width=str(Decimal("1e-20") * 2**40))
    assert zoom.position(0).t == 0 and zoom.position(0).level == 40 == zoom.top_level


def test_keyframes_are_exact_views_with_their_own_iteration_limits() -> None:
    zoom = small_zoom(max_iter=60000, max_iter_growth=1.2)
    for level in (0, 1, 17, 68):
        request = zoom.keyframe(level)
        assert Decimal(request.view_width) == Decimal("1e-20") * 2**level  # exactly, no rounding
        assert (request.center_x, request.center_y) == (SEAHORSE["center_x"], SEAHORSE["center_y"])
    limits = [zoom.max_iter_at(level) for level in range(70)]
    assert limits[0] == 60000 and limits == sorted(limits, reverse=True)
    assert min(limits) == config.ZOOM_MIN_ITER
    assert {small_zoom(max_iter_growth=1).max_iter_at(level) for level in range(70)} == {12000}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"width": 33}, "width and height must be even"),
        ({"from_width": "1e-21"}, "must be wider than to_width"),
        ({"to_width": "-1"}, "to_width must be greater than 0"),
        ({"to_width": "1e-3e"}, "to_width must be a decimal number"),
        ({"seconds": 0.1}, "a zoom needs at least 2"),
        ({"fps": 0}, "fps must be from 1 to"),
        ({"max_iter_growth": 0.5}, "max_iter_growth must be from 1 to 4"),
        ({"container": "gif"}, "unknown video container 'gif'"),
        ({"crf": 52}, "crf must be a whole number from 0 to 51"),
        ({"palette": "mauve"}, "unknown palette 'mauve'"),
    ],
)
def test_a_bad_zoom_is_one_line_naming_the_field(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        small_zoom(**changes)
    assert "\n" not in str(caught.value)


def test_the_zoom_travels_as_json() -> None:
    zoom = small_zoom(fractal="julia", c_re=-0.8, c_im=0.156, container="webm", crf=0)
    assert ZoomRequest.from_json(zoom.to_json()) == zoom
    for bad, message in [
        ("[]", "must be a JSON object"),
        ('{"fractal": "mandelbrot"}', "missing"),
        (json.dumps({**zoom.to_dict(), "extra": 1}), "unknown field"),
        (json.dumps({**zoom.to_dict(), "to_width": 1e-20}), "to_width must be a decimal string"),
        (json.dumps({**zoom.to_dict(), "fps": 10.5}), "fps must be a whole number"),
    ]:
        with pytest.raises(ValueError, match=message):
            ZoomRequest.from_json(bad)


def test_the_job_is_orbits_then_keyframes_then_encoding() -> None:
    zoom = small_zoom()
    job = zoom_job(zoom, priority=5, job_id="z1")
    assert (job.task_type, job.count, job.first.task_type) == (
        "fractal.keyframe", len(zoom.levels), "fractal.orbits"
    )  # fmt: skip
    assert (job.final.task_type, job.cleanup.task_type) == (
        "fractal.encode",
        "fractal.zoom-cleanup",
    )
    assert json.loads(job.payload)["zoom"] == zoom.to_dict()  # one payload for every keyframe
    shallow = small_zoom(to_width="1e-3", max_iter=500)
    assert not zoom_job(shallow, priority=5).HasField("first")  # nothing deep: no orbits


# ---- reference orbits: shared where they are the same numbers ---------------------


@pytest.mark.parametrize(
    "view",
    [
        {"fractal": "mandelbrot", **SEAHORSE},
        {"fractal": "julia", "c_re": -0.8, "c_im": 0.156, "center_x": "0.1", "center_y": "-0.2"},
    ],
    ids=["mandelbrot", "julia"],
)
def test_a_keyframe_is_exactly_the_render_of_its_view(
    view: dict[str, object], tmp_path: Path
) -> None:
    # Keyframes over 50 levels of depth: two classes of fixed-point orbits, and
    # iteration limits that differ (growth), all read from the first task's orbits.
    zoom = small_zoom(to_width="1e-24", from_width="2e-9", max_iter=3000, max_iter_growth=1.02,
                      seconds=3, fps=10, **view)  # fmt: skip
    deep = [level for level in zoom.levels if zoom.keyframe(level).deep]
    assert len({orbit_class(zoom.keyframe(level)) for level in deep}) >= 2
    url = tmp_path.as_uri()
    stored = json.loads(get("fractal.orbits").run(zoom_payload(zoom), TaskContext(url, "z")))
    assert stored == [orbit_key("z", name) for name in shared_orbits(zoom)]
    for level in deep[:: max(1, len(deep) // 6)] + deep[-1:]:
        request = zoom.keyframe(level)
        shared = keyframe_reference(request, TaskContext(url, "z"))
        own = orbits.compute(request)  # what `fractalq render` of the view computes
        for part in ("start", "base", "start_lo", "base_lo"):
            assert np.array_equal(getattr(shared, part), getattr(own, part)), (level, part)
        for part in ("anchors", "ends", "levels", "nodes"):
            assert np.array_equal(getattr(shared.table, part), getattr(own.table, part))
        assert shared.precision == own.precision and shared.julia == own.julia
        counts, smooth = escape(request, 0, request.height, reference=shared)
        want_counts, want_smooth = escape(request, 0, request.height, reference=own)
        assert np.array_equal(counts, want_counts) and np.array_equal(smooth, want_smooth)


def test_past_fixed_point_every_precision_is_a_class_of_its_own() -> None:
    zoom = small_zoom(to_width="1e-300", from_width="4e-300", max_iter=200, seconds=1, fps=4)
    names = [orbit_class(zoom.keyframe(level)) for level in zoom.levels]
    assert all(name.startswith("mpfr-") for name in names) and len(set(names)) == len(names)
    assert list(shared_orbits(zoom)) == [names[0]]  # the deepest only: the rest compute their own


# ---- frames: scale and blend ----------------------------------------------------


def rings(width: int, height: int, scale: float) -> movie.Rgb:
    """A test pattern sampled at the pixel centres of a view ``scale`` times the frame."""
    x = (np.arange(width) + 0.5 - width / 2) * scale
    y = (np.arange(height) + 0.5 - height / 2) * scale
    r = np.hypot(x[None, :], y[:, None])
    value = 127.5 + 127.5 * np.cos(r / 9.0) * np.cos(x[None, :] / 23.0)
    return np.repeat(np.rint(value)[:, :, None], 3, axis=2).astype(np.uint8)


def test_a_frame_is_the_crop_of_the_view_between_its_keyframes() -> None:
    width, height = 320, 180
    inner, outer = rings(width, height, 1.0), rings(width, height, 2.0)
    assert movie.compose(inner, outer, 0.0) is inner  # at a keyframe: the keyframe itself
    for t in (0.1, 0.37, 0.5, 0.8, 0.95):
        frame = movie.compose(inner, outer, t)
        want = rings(width, height, 2.0**t)  # the same pattern, sampled on the frame's grid
        error = np.abs(frame.astype(int) - want.astype(int))
        # Only resampling's blur: no shift, no scale error (either would be tens of levels).
        assert error.mean() < 3 and np.percentile(error, 99) < 16, (t, error.mean())
    # Continuous at both ends: nothing jumps when a frame passes a keyframe.
    assert np.array_equal(movie.compose(inner, outer, 1e-7), inner)
    end = movie.compose(inner, outer, 1 - 1e-7).astype(int)
    assert np.abs(end - outer.astype(int)).max() <= 2


def test_a_keyframe_coloured_is_the_render_of_its_view() -> None:
    request = small_zoom(to_width="1e-3", max_iter=500).keyframe(0)
    counts, smooth = escape(request, 0, request.height)
    values = np.where(counts >= request.max_iter, np.inf, smooth)
    for scale in (ColourScale(), ColourScale("log", 20.0, 400.0), ColourScale("linear", 0, 500)):
        keyframe = movie.Keyframe.of(values, request.max_iter)
        coloured = movie.colour(keyframe, request.palette, scale)
        assert np.array_equal(coloured, render_rows(request, 0, request.height, scale=scale))


# ---- colours across depth ---------------------------------------------------------


def test_the_auto_range_drifts_with_depth_and_never_jumps() -> None:
    zoom = small_zoom(to_width="1e-10", from_width="3.5", seconds=10, fps=10)
    # Counts growing with depth, one keyframe far off (a structure passing by)
    # and one with no outside pixel at all.
    stats = {level: movie.KeyframeStats(100, 1000.0 / (level + 1), 4000.0 / (level + 1))
             for level in zoom.levels}  # fmt: skip
    stats[10] = movie.KeyframeStats(100, 5.0, 50000.0)
    stats[20] = movie.KeyframeStats(0, None, None)
    scales = movie.movie_scales(zoom, stats)
    assert set(scales) == set(zoom.levels) and all(s.kind == "log" for s in scales.values())
    highs = [math.log1p(scales[level].high) for level in zoom.levels]
    lows = [math.log1p(scales[level].low) for level in zoom.levels]
    raw = math.log1p(50000.0) - math.log1p(4000.0 / 11)
    assert max(np.abs(np.diff(highs))) < raw / 3  # smoothed: a fraction of the outlier's jump
    assert max(np.abs(np.diff(lows))) < 1.0
    assert lows[0] > lows[-1]  # deeper keyframes (level 0) count higher
    # Frames: a keyframe's own scale at t = 0, between its neighbours' otherwise.
    frames = [movie.frame_scale(scales, zoom.position(n)) for n in range(zoom.frame_count)]
    for n, scale in enumerate(frames):
        position = zoom.position(n)
        if position.t == 0:
            assert scale == scales[position.level]
        else:
            a, b = scales[position.level].high, scales[position.level + 1].high
            assert min(a, b) <= scale.high <= max(a, b)
    # With no outside pixel anywhere, one trip over 0 .. max_iter.
    empty = movie.movie_scales(zoom, {level: movie.KeyframeStats(0, None, None)
                                      for level in zoom.levels})  # fmt: skip
    assert empty[0] == ColourScale("log", 0.0, float(zoom.max_iter_at(0)))


def test_fixed_scales_follow_each_keyframes_limit() -> None:
    zoom = small_zoom(colour_scale="linear", max_iter_growth=1.1)
    scales = movie.movie_scales(zoom, {})
    assert all(scales[level] == ColourScale.fixed("linear", zoom.max_iter_at(level))
               for level in zoom.levels)  # fmt: skip
    assert set(movie.movie_scales(small_zoom(colour_scale="sqrt"), {}).values()) == {ColourScale()}


def test_keyframe_stats_are_the_outside_pixels_range() -> None:
    values = np.concatenate([np.arange(1000, dtype=np.float64), [np.inf] * 50])
    stats = movie.keyframe_stats(values)
    assert stats.outside == 1000 and stats.low == pytest.approx(9.99)
    assert stats.high == pytest.approx(989.01)
    assert movie.stats_from_json(movie.stats_to_json(stats)) == stats
    assert movie.keyframe_stats(np.full(4, np.inf)) == movie.KeyframeStats(0, None, None)
    with pytest.raises(ValueError, match="not a keyframe's stats"):
        movie.stats_from_json(b'{"outside": 3, "low": "x", "high": 2}')


# ---- the video --------------------------------------------------------------------


def decode(path: Path) -> list[movie.Rgb]:
    with av.open(str(path)) as video:
        return [np.asarray(f.to_ndarray(format="rgb24"), np.uint8) for f in video.decode(video=0)]


@pytest.mark.parametrize("container", ["mp4", "webm"])
def test_lossless_videos_give_back_every_frame_in_order(container: str, tmp_path: Path) -> None:
    frames = [rings(64, 36, 1.0 + n / 10) for n in range(12)]
    path = tmp_path / f"v.{container}"
    with VideoWriter(str(path), container, 64, 36, 24, 0) as video:
        for frame in frames:
            video.write(frame)
    back = decode(path)
    assert len(back) == len(frames)
    assert all(np.array_equal(a, b) for a, b in zip(back, frames, strict=True))


def test_the_same_frames_give_the_same_bytes(tmp_path: Path) -> None:
    frames = [rings(160, 90, 1.0 + n / 7) for n in range(20)]
    made = []
    for name in ("a.mp4", "b.mp4"):
        with VideoWriter(str(tmp_path / name), "mp4", 160, 90, 30, 20) as video:
            for frame in frames:
                video.write(frame)
        made.append((tmp_path / name).read_bytes())
    assert made[0] == made[1]
    back = decode(tmp_path / "a.mp4")
    assert len(back) == 20 and back[0].shape == (90, 160, 3)
    assert np.abs(back[5].astype(int) - frames[5].astype(int)).mean() < 4  # H.264's loss only
    with pytest.raises(ValueError, match="a frame of"):
        VideoWriter(str(tmp_path / "c.mp4"), "mp4", 160, 90, 30, 20).write(frames[0][:10])


# ---- around the queue -------------------------------------------------------------


def test_the_orphan_sweep_keeps_videos_and_takes_keyframes() -> None:
    keys = [
        video_key("a", "mp4"),
        video_key("a", "webm"),
        keyframe_key("a", 3),
        orbit_key("a", "x"),
    ]
    assert orphans(keys, frozenset()) == keys[2:]


def test_keyframe_thumbnails_reach_the_dashboards_previews(tmp_path: Path) -> None:
    zoom = small_zoom(to_width="1e-3", max_iter=300)
    url = tmp_path.as_uri()
    result = get("fractal.keyframe").run(zoom_payload(zoom), TaskContext(url, "z", index=1))
    piece = parse_keyframe(result)
    assert piece is not None and piece["index"] == 1 and piece["level"] == zoom.levels[1]
    assert open_storage(url).exists(keyframe_key("z", zoom.levels[1]))
    job = Job(job_id="z", seq=1, task_type="fractal.keyframe", priority=10, max_attempts=3,
              total=3, fingerprint="", created_at=0.0)  # fmt: skip
    previews = Previews()
    previews.add(job, 1, result)
    previews.add(job, 2, b'{"key": "k", "preview": {"index": 9}}')  # not one: ignored
    found = previews.since("z", 0)
    assert found is not None and [p["level"] for p in found["pieces"]] == [zoom.levels[1]]
    with pytest.raises(Exception, match="not one of the zoom's keyframes"):
        get("fractal.keyframe").run(zoom_payload(zoom), TaskContext(url, "z", index=99))


def test_a_fractaljob_with_a_zoom_section_is_a_zoom() -> None:
    centre = {"x": SEAHORSE["center_x"], "y": SEAHORSE["center_y"]}
    section = {"to": "1e-20", "seconds": 2, "fps": 10, "maxIterationsGrowth": 1.1}
    spec = {"width": 160, "height": 90, "maxIterations": 12000, "center": centre, "priority": 3,
            "colourScale": "auto", "zoom": section}  # fmt: skip
    parsed = parse_zoom(spec)
    assert parsed is not None
    zoom, priority = parsed
    assert (zoom.to_width, zoom.from_width, zoom.frame_count, priority) == ("1E-20", "3.5", 20, 3)
    assert parse_zoom({"width": 100}) is None  # no zoom section: a render
    cases: list[tuple[dict[str, Any], str]] = [
        ({"zoom": {"seconds": 3}}, "spec.zoom.to is required"),
        ({"zoom": {"to": "1e-9"}, "width": 101}, "width and height must be even"),
        ({"zoom": {"to": "1e-9"}, "viewWidth": "1e-10"}, "viewWidth .* must be wider than zoom.to"),
        ({"zoom": {"to": "1e-9", "format": "gif"}}, "unknown video container"),
        ({"zoom": "fast"}, "spec.zoom must be an object"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            parse_zoom(bad)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--to", "1e-9", "--out", "zoom.gif"], "--out zoom.gif must end in .mp4 or .webm"),
        (["--to", "1e-9", "--width", "161", "--out", "z.mp4"], "width and height must be even"),
        (["--to", "5", "--out", "z.mp4"], "--from (3.5) must be wider than --to (5)"),
        (["--to", "1e-9x", "--out", "z.mp4"], "--to must be a decimal number"),
    ],
)
def test_zoom_refuses_bad_options_in_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["zoom", *args, "--coordinator", "127.0.0.1:1", "--storage", "file:///nowhere"])
    err = capsys.readouterr().err
    assert code == 1 and message in err and err.count("\n") == 1, err


def test_demo_alone_is_still_a_render(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--width", "0"]) == 1
    assert "width must be an integer" in capsys.readouterr().err
    assert main(["demo", "zoom", "--to", "1e-9", "--width", "161"]) == 1
    assert "even" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:  # out of the option's range: a usage error
        main(["demo", "zoom", "--to", "1e-9", "--fps", "0"])
    assert usage.value.code == 2
    assert "argument --fps: 0 is below the minimum 1" in capsys.readouterr().err
