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
