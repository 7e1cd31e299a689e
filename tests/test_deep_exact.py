"""Deep zoom with skipping: exact counts on heavy views, and no outside pixel painted black.

The views here take 30,000-40,000 iterations a pixel, where the approximation
skips most of them and float64 alone gets a few pixels in a thousand wrong. The
check is the one of tests/test_deep.py: each sampled pixel's own orbit iterated
in arbitrary precision. The samples are the pixels most likely to be wrong (the
largest jumps to a neighbour's count, where the count changes over the least
distance) and random ones, and the two pixels that an earlier kernel was
found to miscount by 76 and 155 iterations.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_deep import direct_count

from fractalq.fractal import depth
from fractalq.fractal.kernels import escape
from fractalq.fractal.request import RenderRequest

SEAHORSE_X = "-0.743643887037158704752191506114774"
SEAHORSE_Y = "0.131825904205311970493132056385139"


def heavy(width: int, height: int, max_iter: int = 40_000) -> RenderRequest:
    return RenderRequest.create(
        width=width, height=height, view_width="1e-30", max_iter=max_iter,
        center_x=SEAHORSE_X, center_y=SEAHORSE_Y,
    )  # fmt: skip


def jumpiest(counts: np.ndarray, n: int) -> list[tuple[int, int]]:
    """The n pixels whose count differs most from a neighbour's."""
    c = counts.astype(np.int64)
    jump = np.zeros_like(c)
    jump[:, :-1] = np.maximum(jump[:, :-1], np.abs(c[:, 1:] - c[:, :-1]))
    jump[:-1, :] = np.maximum(jump[:-1, :], np.abs(c[1:, :] - c[:-1, :]))
    order = np.argsort(jump, axis=None)[::-1][:n]
    return [(int(i % c.shape[1]), int(i // c.shape[1])) for i in order]


@pytest.mark.parametrize(
    ("width", "height", "i", "j"),
    [(160, 90, 81, 1), (480, 270, 126, 45)],
    ids=["160x90", "480x270"],
)
def test_the_pixels_float64_miscounted(width: int, height: int, i: int, j: int) -> None:
    request = heavy(width, height)
    counts, _ = escape(request, j, j + 1)
    assert abs(int(counts[0, i]) - direct_count(request, i, j)) <= 1


def test_a_heavy_view_is_exact_where_counts_change_fastest() -> None:
    request = heavy(96, 54)
    counts, _ = escape(request, 0, request.height)
    outside = counts < request.max_iter
    assert outside.mean() > 0.5 and np.unique(counts[outside]).size > 1000
    rng = np.random.default_rng(17)
    random = [(int(rng.integers(96)), int(rng.integers(54))) for _ in range(20)]
    samples = jumpiest(counts, 30) + random
    wrong = [
        (i, j, int(counts[j, i]), exact)
        for i, j in samples
        if abs(int(counts[j, i]) - (exact := direct_count(request, i, j))) > 1
    ]
    assert wrong == []


def test_no_outside_pixel_is_painted_black() -> None:
    # The view's middle is a disc of pixels that stay within radius 2 for all
    # 40,000 iterations, most of them skipped: each is checked iteration by iteration.
    request = heavy(64, 36)
    counts, _ = escape(request, 0, request.height)
    inside = np.argwhere(counts == request.max_iter)
    assert 0.02 < inside.shape[0] / counts.size < 0.9
    rng = np.random.default_rng(3)
    for j, i in inside[rng.choice(inside.shape[0], 8, replace=False)]:
        assert direct_count(request, int(i), int(j)) == request.max_iter
    # ... and its rim, the outside pixels next to inside ones, escapes where counted.
    near = np.zeros_like(counts, dtype=bool)
    black = counts == request.max_iter
    for dj, di in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        near |= np.roll(black, (dj, di), axis=(0, 1))
    rim = [(i, j) for j, i in np.argwhere(near & ~black)]
    for k in rng.choice(len(rim), 6, replace=False):
        i, j = rim[int(k)]
        assert abs(direct_count(request, int(i), int(j)) - int(counts[j, i])) <= 1


def test_a_view_that_is_all_inside() -> None:
    request = RenderRequest.create(
        width=48, height=27, view_width="3e-59", max_iter=120_000,
        center_x=SEAHORSE_X, center_y=SEAHORSE_Y,
    )  # fmt: skip
    counts, _ = escape(request, 0, request.height)
    assert (counts == request.max_iter).all()
    assert direct_count(request, 0, 0) == request.max_iter  # a corner, farthest out


@pytest.mark.parametrize("fractal", ["mandelbrot", "julia"])
def test_double_double_past_float64s_exponent_range(fractal: str) -> None:
    # The path the most sensitive pixels take, here for every pixel of a 1e-300
    # view, whose differences start below float64's range (scaled).
    from fractalq.fractal import perturb, precise
    from fractalq.fractal import reference as orbits

    view = {"center_x": "0", "center_y": "1"} if fractal == "mandelbrot" else {
        "center_x": "0", "center_y": "0", "c_re": 0.0, "c_im": 1.0}  # fmt: skip
    request = RenderRequest.create(
        fractal,
        width=32,
        height=20,
        view_width="1e-300",
        max_iter=4000,
        **view,
    )
    reference = orbits.compute(request)
    _, exponent = perturb.pixel_scale(request)
    assert exponent < depth.SCALED_BELOW
    size_hi, size_lo = perturb._pixel_size(request, exponent)
    n = request.width * request.height
    counts, smooth, magnitude = np.empty(n, np.int32), np.empty(n), np.empty(n)
    start, base = reference.start, reference.base
    base_start, base_end = (start.size, start.size + base.size - 1) if reference.julia else (
        0, start.size - 1)  # fmt: skip
    c = (request.c_re, request.c_im) if reference.julia else (request.cx, request.cy)
    precise.escape_pixels(
        perturb._pairs(reference.orbit), perturb._pairs(reference.orbit_lo), start.size - 1,
        base_start, base_end, np.arange(32.0) + 0.5 - 16, -(np.arange(20.0) + 0.5 - 10),
        np.arange(n), size_hi, size_lo, exponent, reference.julia, *c, request.max_iter,
        counts, smooth, magnitude,
    )  # fmt: skip
    for i, j in [(0, 0), (31, 19), (16, 10), (5, 13)]:
        assert abs(int(counts[j * 32 + i]) - direct_count(request, i, j)) <= 1
    assert np.unique(counts).size > 5
