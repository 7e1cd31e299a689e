"""Every escape-time kernel against the numpy reference kernel.

The kernels must agree bit for bit: the same count and the same smooth value for
every pixel, wherever the pixel sits in a band. That is what keeps an image's
bytes independent of how it was cut into bands and which kernel (or mix of
kernels across workers) rendered them. The views cover the paths where a
kernel could take a shortcut: the Mandelbrot bulbs, boundary zooms with long
orbits, max_iter at and around a kernel's internal batch sizes, Julia constants
outside |c| <= 2 (orbits that loiter before the smoothing radius), and views so
far out that the orbits overflow to inf and nan.
"""

from __future__ import annotations

import importlib.util
import io
import subprocess
import sys
import threading

import numpy as np
import pytest

from fractalq.fractal import (
    DEFAULT_KERNEL,
    KERNELS,
    RenderRequest,
    assemble,
    encode_band,
    escape,
    render_rows,
    split_rows,
)
from fractalq.fractal.kernels import numpy_escape

HAVE_NUMBA = importlib.util.find_spec("numba") is not None

VIEWS = {
    "mandelbrot default": RenderRequest.create(width=120, height=80),
    "mandelbrot boundary zoom, deep": RenderRequest.create(
        width=67, height=45, max_iter=3000, center_x=-0.745, center_y=0.113, view_width=0.01
    ),
    "cardioid cusp": RenderRequest.create(
        width=41, height=40, max_iter=700, center_x=0.252, center_y=0.0, view_width=0.004
    ),
    "period-2 bulb edge": RenderRequest.create(
        width=48, height=33, max_iter=300, center_x=-1.0, center_y=0.26, view_width=0.06
    ),
    "julia default": RenderRequest.create("julia", width=120, height=80),
    "julia zoomed, deep": RenderRequest.create(
        "julia", width=53, height=37, max_iter=2500, center_x=0.3, center_y=-0.2, view_width=0.15
    ),
    # |c| > 2: escaped orbits can come back inside radius 2 and loiter.
    "julia, c outside the disc": RenderRequest.create(
        "julia", width=60, height=41, max_iter=200, c_re=-2.05, c_im=0.31, view_width=5.0
    ),
    "max_iter 1": RenderRequest.create(width=70, height=30, max_iter=1),
    "max_iter 2, julia": RenderRequest.create("julia", width=45, height=30, max_iter=2),
    "max_iter 15": RenderRequest.create(width=50, height=33, max_iter=15),
    "max_iter 16, julia": RenderRequest.create("julia", width=50, height=33, max_iter=16),
    "max_iter 17": RenderRequest.create(width=50, height=33, max_iter=17),
    "max_iter 33, julia": RenderRequest.create("julia", width=50, height=33, max_iter=33),
    "odd size, off-centre": RenderRequest.create(
        width=37, height=23, max_iter=60, center_x=-1.0, center_y=0.3, view_width=1.7
    ),
    "one pixel": RenderRequest.create(width=1, height=1, center_x=-0.1),
    # Orbits overflow at once: |z|^2 is inf (mandelbrot), or nan (julia: inf - inf).
    "far out, overflow": RenderRequest.create(
        width=16, height=12, max_iter=50, center_x=1e160, center_y=0.0, view_width=1.6e151
    ),
    "julia far out, overflow": RenderRequest.create(
        "julia", width=16, height=12, max_iter=50, center_x=1e155, center_y=2e155, view_width=1e155
    ),
    # So far out that y*y overflows in the bulb test, which then says "inside".
    "far out, bulb test overflows": RenderRequest.create(
        width=16, height=12, max_iter=50, center_x=1e200, center_y=-1e200, view_width=1e201
    ),
}

KERNEL_NAMES = sorted(KERNELS)


@pytest.fixture(scope="module")
def references() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {name: numpy_escape(request, 0, request.height) for name, request in VIEWS.items()}


@pytest.mark.parametrize("kernel", KERNEL_NAMES)
@pytest.mark.parametrize("view", sorted(VIEWS))
def test_kernel_matches_the_reference(
    kernel: str, view: str, references: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    request = VIEWS[view]
    counts, smooth = escape(request, 0, request.height, kernel)
    expected_counts, expected_smooth = references[view]
    assert counts.dtype == np.int32 and smooth.dtype == np.float64
    assert counts.shape == smooth.shape == (request.height, request.width)
    # Inside/outside and every escape count.
    assert np.array_equal(counts, expected_counts), np.argwhere(counts != expected_counts)[:5]
    # Smooth values: equal, not merely close.
    assert np.array_equal(smooth, expected_smooth), np.argwhere(smooth != expected_smooth)[:5]


def test_the_views_reach_the_interesting_paths(
    references: dict[str, tuple[np.ndarray, np.ndarray]],
) -> None:
    # Guard the fixture: each kind of pixel the kernels treat differently occurs.
    for view, (counts, smooth) in references.items():
        max_iter = VIEWS[view].max_iter
        if view == "max_iter 1":
            assert set(np.unique(counts)) == {0, 1}
        if view in ("mandelbrot default", "julia default", "cardioid cusp", "max_iter 17"):
            assert (counts == max_iter).any() and (counts < max_iter).any()
        if view in ("far out, overflow", "julia far out, overflow"):
            assert (counts == 0).all() and (smooth == 0.0).all()
    for view in ("mandelbrot boundary zoom, deep", "julia zoomed, deep"):
        counts = references[view][0]
        assert ((counts > 1000) & (counts < VIEWS[view].max_iter)).any(), view


@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_a_band_is_the_same_rows_of_the_whole_image(kernel: str) -> None:
    for request in (
        RenderRequest.create(width=45, height=40, max_iter=300),
        RenderRequest.create("julia", width=77, height=31, max_iter=400),
    ):
        counts, smooth = escape(request, 0, request.height, kernel)
        h = request.height
        for start, end in [(0, 1), (1, 2), (3, 17), (17, h), (h - 1, h), (5, h - 5)]:
            part_counts, part_smooth = escape(request, start, end, kernel)
            assert np.array_equal(part_counts, counts[start:end]), (start, end)
            assert np.array_equal(part_smooth, smooth[start:end]), (start, end)


def render_png(request: RenderRequest, regions: int, kernel: str) -> bytes:
    rows = split_rows(request.height, regions)
    bands = [encode_band(render_rows(request, start, end, kernel)) for start, end in rows]
    out = io.BytesIO()
    assemble(iter(bands), request.width, rows, out)
    return out.getvalue()


@pytest.mark.parametrize("fractal", ["mandelbrot", "julia"])
def test_the_png_is_the_same_for_every_kernel_and_band_count(fractal: str) -> None:
    request = RenderRequest.create(fractal, width=301, height=200, max_iter=400)
    files = {
        (kernel, regions): render_png(request, regions, kernel)
        for kernel in KERNEL_NAMES
        for regions in (1, 7, 8)
    }
    assert len(set(files.values())) == 1, sorted(files)


def test_the_default_kernel_is_the_fastest_available() -> None:
    expected = "numba" if HAVE_NUMBA else "numpy"
    assert expected == DEFAULT_KERNEL
    assert DEFAULT_KERNEL in KERNELS and "numpy" in KERNELS


def test_without_numba_the_numpy_kernel_is_the_default() -> None:
    code = (
        "import sys; sys.modules['numba'] = None\n"
        "from fractalq.fractal import DEFAULT_KERNEL, KERNELS, RenderRequest, render_rows\n"
        "assert DEFAULT_KERNEL == 'numpy' and sorted(KERNELS) == ['numpy'], KERNELS\n"
        "assert render_rows(RenderRequest.create(width=8, height=4), 0, 4).shape == (4, 8, 3)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba is not installed")
def test_the_compiled_kernel_runs_in_parallel_threads() -> None:
    # nogil: bands rendered on threads at once; each still gets its own rows.
    request = RenderRequest.create("julia", width=200, height=120, max_iter=300)
    expected = escape(request, 0, request.height, "numba")
    bands = split_rows(request.height, 6)
    results: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def run(start: int, end: int) -> None:
        results[start, end] = escape(request, start, end, "numba")

    threads = [threading.Thread(target=run, args=band) for band in bands]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for start, end in bands:
        assert np.array_equal(results[start, end][0], expected[0][start:end])
        assert np.array_equal(results[start, end][1], expected[1][start:end])


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba is not installed")
@pytest.mark.parametrize("chunk", [1, 70, 150])
def test_the_compiled_kernel_does_not_depend_on_its_chunks(
    chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fractalq.fractal import fast

    request = RenderRequest.create("julia", width=61, height=23, max_iter=200)
    expected = numpy_escape(request, 0, request.height)
    monkeypatch.setattr(fast, "CHUNK_PIXELS", chunk)  # one row, one row, two rows a chunk
    counts, smooth = escape(request, 0, request.height, "numba")
    assert np.array_equal(counts, expected[0]) and np.array_equal(smooth, expected[1])
