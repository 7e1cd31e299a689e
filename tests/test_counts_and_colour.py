"""Smooth counts out (``--counts-out``) and the colour scales, on the queue and in process.

On the queue: a real coordinator and two workers render a deep view on the
``auto`` scale with its counts; the counts are the numbers a one-band render
here gives, the image is the one it gives whatever the band split, and the
image's colours come back from the counts. In process: the scales themselves,
the probe's range and its stored form.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from procs import ProcessGroup, run_cli, wait_until
from reference import reference_png

from fractalq.fractal import probe
from fractalq.fractal.palettes import COLOUR_SCALES, ColourScale, colorize
from fractalq.fractal.render import render_rows, render_rows_and_counts
from fractalq.fractal.request import RenderRequest
from fractalq.images import render_job
from fractalq.proto import fractalq_pb2 as pb

# A spiral 1.5e-12 wide: deep at this size, a few inside pixels among the others.
VIEW = {"center_x": "-0.7746806106269039", "center_y": "-0.1374168856037867",
        "view_width": "1.5e-12"}  # fmt: skip
DEEP = ("--width", "120", "--height", "72", "--max-iter", "2000", "--colour-scale", "auto",
        "--center-x", VIEW["center_x"], "--center-y", VIEW["center_y"],
        "--view-width", VIEW["view_width"])  # fmt: skip
DEEP_REQUEST = RenderRequest.create(
    width=120, height=72, max_iter=2000, colour_scale="auto", center_x=VIEW["center_x"],
    center_y=VIEW["center_y"], view_width=VIEW["view_width"],
)  # fmt: skip


def render(coordinator: str, storage: Path, out: Path, *args: str) -> str:
    """The job id of a render made with ``fractalq render``."""
    result = run_cli("render", "--coordinator", coordinator, "--storage", storage.as_uri(),
                     "--out", str(out), *args, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.split()[result.stdout.split().index("job") + 1]


def test_counts_out_and_auto_colours_on_the_queue(cluster: ProcessGroup, tmp_path: Path) -> None:
    storage = tmp_path / "store"
    coordinator = cluster.start_coordinator()
    for _ in range(2):
        cluster.start_worker(storage=storage.as_uri())
    counts_path = tmp_path / "counts.npy"
    five = render(coordinator.address, storage, tmp_path / "five.png", *DEEP, "--regions", "5",
                  "--counts-out", str(counts_path))  # fmt: skip
    render(coordinator.address, storage, tmp_path / "one.png", *DEEP, "--regions", "1")

    # The image: the same bytes whatever the band split, and a one-band render's here.
    png = (tmp_path / "five.png").read_bytes()
    assert png == (tmp_path / "one.png").read_bytes() == reference_png(DEEP_REQUEST)

    # The counts: a one-band render's numbers, float32, inf exactly where it is black.
    values = np.load(counts_path)
    assert values.dtype == np.float32 and values.shape == (72, 120)
    rgb, expected = render_rows_and_counts(DEEP_REQUEST, 0, 72, with_counts=True)
    assert expected is not None and np.array_equal(values, expected)
    assert np.isinf(values).any() and np.isfinite(values).mean() > 0.5
    with Image.open(io.BytesIO(png)) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert np.array_equal(pixels, rgb)
    assert np.array_equal(np.isinf(values), (pixels == 0).all(axis=2))

    # Recoloured from the counts alone (float32: a level may round the other way).
    scale = probe.colour_scale(DEEP_REQUEST)
    inside = np.isinf(values)
    again = colorize(
        np.where(inside, DEEP_REQUEST.max_iter, 0).astype(np.int32),
        np.where(inside, 0.0, values).astype(np.float64),
        DEEP_REQUEST.max_iter, DEEP_REQUEST.palette, scale,
    )  # fmt: skip
    assert np.abs(again.astype(int) - pixels).max() <= 1

    # The first task measured the range and kept it with the orbit; all of it
    # goes with the bands, the image and counts stay.
    with coordinator.client() as client:
        job = client.job(five)
        assert job.first.task_type == "fractal.reference"
        result = json.loads(job.result)
    assert result["counts"]["key"].endswith("/counts.npy")
    assert result["counts"]["bytes"] == counts_path.stat().st_size
    wait_until(
        lambda: (
            sorted(p.name for p in storage.rglob("*") if p.is_file())
            == ["counts.npy", "image.png", "image.png"]
        ),
        message="only the images and the counts left",
    )


def test_a_shallow_auto_render_measures_its_range_first() -> None:
    request = RenderRequest.create(colour_scale="auto", width=90, height=60)
    job = render_job(request, 3, 10)
    assert job.first.task_type == "fractal.reference"
    assert not render_job(RenderRequest.create(), 3, 10).HasField("first")
    assert not render_job(RenderRequest.create(colour_scale="log"), 3, 10).HasField("first")
    assert pb.SubmitJobRequest.FromString(job.SerializeToString()) == job


def test_the_colour_scales() -> None:
    images = {
        scale: render_rows(RenderRequest.create(width=96, height=64, colour_scale=scale), 0, 64)
        for scale in COLOUR_SCALES
    }
    # The default is today's colouring: the request's JSON and bytes are unchanged.
    assert "colour_scale" not in json.loads(RenderRequest.create().to_json())
    assert np.array_equal(
        images["sqrt"], render_rows(RenderRequest.create(width=96, height=64), 0, 64)
    )
    for a in COLOUR_SCALES:
        for b in COLOUR_SCALES:
            assert a == b or not np.array_equal(images[a], images[b]), (a, b)
    # Inside stays black and nothing outside is.
    for rgb in images.values():
        assert np.array_equal((rgb == 0).all(axis=2), (images["sqrt"] == 0).all(axis=2))


def test_auto_spans_the_views_own_range() -> None:
    scale = probe.colour_scale(DEEP_REQUEST)
    _, values = render_rows_and_counts(DEEP_REQUEST, 0, 72, with_counts=True)
    assert values is not None
    outside = values[np.isfinite(values)]
    assert scale.kind == "log" and scale.low < np.median(outside) < scale.high
    assert np.mean((outside >= scale.low) & (outside <= scale.high)) > 0.9
    assert probe.from_json(probe.to_json(scale)) == scale
    for bad in (b"", b"{}", b'{"kind": "hsv", "low": 0, "high": 1}',
                b'{"kind": "log", "low": 5, "high": 1}'):  # fmt: skip
        with pytest.raises(ValueError, match="not a colour scale"):
            probe.from_json(bad)
    with pytest.raises(ValueError, match="probe"):
        ColourScale.fixed("auto", 100)


def test_bad_colour_scales_and_counts_paths_are_refused(tmp_path: Path) -> None:
    result = run_cli("demo", "--colour-scale", "hsv", "--out", str(tmp_path / "x.png"))
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "fractalq demo: error: unknown colour scale 'hsv' (known: sqrt, linear, log, auto)"
    ]
    result = run_cli("demo", "--counts-out", str(tmp_path), "--out", str(tmp_path / "x.png"))
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"fractalq demo: error: --counts-out {tmp_path} is a folder"
    ]
