"""The compiled colouring against the numpy reference: the same bytes for every input.

A worker with numba colours with :mod:`fractalq.fractal.fast_colour`, one without
with :func:`colorize_numpy`; an image's bytes must not depend on which did. The
inputs are the reference kernel's real output for several views, and then
values chosen to break a careless copy of the arithmetic: non-finite and
negative smooth values, positions landing exactly on a palette stop or on 0,
levels exactly halfway between two bytes (numpy rounds those to even), palettes
that round to black, and millions of random values.
"""

from __future__ import annotations

import importlib.util
import math
import platform
import subprocess
import sys

import numpy as np
import numpy.typing as npt
import pytest

from fractalq.fractal import PALETTES, Palette, RenderRequest, colorize
from fractalq.fractal.kernels import numpy_escape
from fractalq.fractal.palettes import COMPILED, colorize_numpy, gradient

HAVE_NUMBA = importlib.util.find_spec("numba") is not None
needs_numba = pytest.mark.skipif(not HAVE_NUMBA, reason="numba is not installed")

Counts = npt.NDArray[np.int32]
Floats = npt.NDArray[np.float64]
Rgb = npt.NDArray[np.uint8]

PALETTE_NAMES = sorted(PALETTES)
# Extra palettes (patched into PALETTES by the tests that use them): levels that
# fall exactly halfway between two bytes, a gradient through black at a stop, and
# more segments than any built-in palette.
TEST_PALETTES = {
    "ties": Palette(stops=((0.0, (0, 0, 0)), (0.5, (1, 3, 5))), cycle=1.0),
    "through black": Palette(
        stops=((0.0, (0, 0, 0)), (0.3, (0, 0, 2)), (0.6, (3, 0, 0))), cycle=2.5, offset=0.25
    ),
    "many stops": Palette(
        stops=tuple(
            (k / 12, ((37 * k) % 256, (101 * k + 7) % 256, (59 * k + 200) % 256)) for k in range(12)
        ),
        cycle=3.0,
        offset=0.45,
    ),
    # sqrt(value) / cycle overflows to inf for large values: the position is nan.
    "tiny cycle": Palette(stops=((0.0, (10, 20, 30)), (0.5, (200, 100, 50))), cycle=1e-300),
}
ALL_PALETTES = [*PALETTE_NAMES, "many stops", "through black", "ties"]

VIEWS = {
    "mandelbrot default": RenderRequest.create(width=120, height=80),
    "julia default": RenderRequest.create("julia", width=120, height=80),
    "mandelbrot, max_iter 1000": RenderRequest.create(width=301, height=200, max_iter=1000),
    "julia, max_iter 1000": RenderRequest.create("julia", width=200, height=133, max_iter=1000),
    "mandelbrot, max_iter 20": RenderRequest.create(width=64, height=48, max_iter=20),
    "seahorse valley": RenderRequest.create(
        width=90, height=60, max_iter=2000, center_x=-0.745, center_y=0.113, view_width=0.01
    ),
}


@pytest.fixture(autouse=True)
def extra_palettes(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, palette in TEST_PALETTES.items():
        monkeypatch.setitem(PALETTES, name, palette)


@pytest.fixture(scope="module")
def escapes() -> dict[str, tuple[Counts, Floats]]:
    return {name: numpy_escape(request, 0, request.height) for name, request in VIEWS.items()}


def compiled(counts: Counts, smooth: Floats, max_iter: int, palette: str) -> Rgb:
    from fractalq.fractal import fast_colour

    return fast_colour.colorize(counts, smooth, max_iter, gradient(PALETTES[palette]))


def assert_same(counts: Counts, smooth: Floats, max_iter: int, palette: str) -> Rgb:
    """Both paths' colours, checked equal and black exactly where inside; returns them."""
    expected = colorize_numpy(counts, smooth, max_iter, palette)
    got = compiled(counts, smooth, max_iter, palette)
    assert got.dtype == expected.dtype == np.uint8
    assert got.shape == expected.shape == (*counts.shape, 3)
    different = np.argwhere((got != expected).any(axis=-1))
    assert different.size == 0, [
        (smooth[tuple(at)], got[tuple(at)], expected[tuple(at)]) for at in different[:5]
    ]
    inside = counts >= max_iter
    black = ~expected.any(axis=-1)
    assert np.array_equal(black, inside), "black must mean inside, and only inside"
    return got


def special_values(palette: Palette) -> Floats:
    """Smooth values that put the gradient position on each stop, on 0 and next to 1."""
    targets = [position for position, _ in palette.stops] + [1.0]
    found: list[float] = []
    for target in targets:
        for turn in range(4):
            # where = sqrt(value) / cycle + offset, with where - floor(where) = target.
            root = (target + turn - palette.offset) * palette.cycle
            if root < 0:
                continue
            value = root * root
            for step in range(-3, 4):
                candidate = value
                for _ in range(abs(step)):
                    candidate = math.nextafter(candidate, math.copysign(math.inf, step))
                if candidate >= 0:
                    found.append(candidate)
    return np.array(found, dtype=np.float64)


def where_of(values: Floats, palette: Palette) -> Floats:
    """The gradient position, as both paths compute it (for finite positive values)."""
    where: Floats = np.sqrt(values) / palette.cycle + palette.offset
    return where - np.floor(where)


ODD_VALUES = [
    0.0,
    -0.0,
    5e-324,
    1e-300,
    1e-12,
    0.5,
    1.0,
    255.5,
    1e6,
    1e100,
    1e300,
    float(np.finfo(np.float64).max),
    math.inf,
    -math.inf,
    math.nan,
    -math.nan,
    -1.0,
    -1e-300,
    -1e300,
]


# ---- the reference kernel's real output ------------------------------------


@needs_numba
@pytest.mark.parametrize("palette", PALETTE_NAMES)
@pytest.mark.parametrize("view", sorted(VIEWS))
def test_the_views_colour_the_same(
    view: str, palette: str, escapes: dict[str, tuple[Counts, Floats]]
) -> None:
    counts, smooth = escapes[view]
    max_iter = VIEWS[view].max_iter
    assert (counts == max_iter).any() and (counts < max_iter).any()
    rgb = assert_same(counts, smooth, max_iter, palette)
    # And colorize itself takes the compiled path.
    assert COMPILED
    assert np.array_equal(colorize(counts, smooth, max_iter, palette), rgb)


@needs_numba
def test_bands_and_odd_layouts_colour_the_same(escapes: dict[str, tuple[Counts, Floats]]) -> None:
    counts, smooth = escapes["mandelbrot, max_iter 1000"]
    whole = colorize_numpy(counts, smooth, 1000, "fire")
    # Bands, strided views, reversed rows, one row, Fortran order, nothing, one pixel.
    for part in (np.s_[0:1], np.s_[5:17], np.s_[:, ::3], np.s_[::-2, 7:50:2], np.s_[3]):
        rgb = assert_same(counts[part], smooth[part], 1000, "fire")
        assert np.array_equal(rgb, whole[part])
    fortran = assert_same(np.asfortranarray(counts), np.asfortranarray(smooth), 1000, "fire")
    assert np.array_equal(fortran, whole)
    assert assert_same(counts[:0], smooth[:0], 1000, "fire").shape == (0, 301, 3)
    for row, column in [(0, 0), (100, 150)]:  # one pixel, as 0-d arrays
        one = assert_same(counts[row, column, ...], smooth[row, column, ...], 1000, "fire")
        assert np.array_equal(one, whole[row, column])


# ---- adversarial values ----------------------------------------------------


@needs_numba
@pytest.mark.parametrize("palette", ALL_PALETTES)
def test_odd_smooth_values_colour_the_same(palette: str) -> None:
    values = np.array(ODD_VALUES, dtype=np.float64)
    counts = np.zeros(values.size, dtype=np.int32)
    rgb = assert_same(counts, values, 100, palette)
    # Every value that is not positive and finite takes the colour of 0.
    zero = rgb[0]
    for index, value in enumerate(ODD_VALUES):
        if not 0 < value < math.inf:
            assert np.array_equal(rgb[index], zero), value
    # The same values as inside pixels are black, whatever they are.
    assert not assert_same(counts + 100, values, 100, palette).any()


@needs_numba
@pytest.mark.parametrize("palette", ALL_PALETTES)
def test_positions_on_the_stops_colour_the_same(palette: str) -> None:
    chosen = PALETTES[palette]
    values = special_values(chosen)
    where = where_of(values, chosen)
    # The values land on each stop, or on the floats right beside it where the
    # stop is not a possible fraction (0.16 is not a multiple of 2**-52), and on 0.
    for position, _ in chosen.stops:
        near = where[np.abs(where - position) <= 4e-16]
        assert (near == position).any() or ((near < position).any() and (near > position).any())
    assert (where == 0.0).any()
    assert where.max() > 1.0 - 1e-15
    counts = np.zeros(values.size, dtype=np.int32)
    assert_same(counts, values, 10, palette)


@needs_numba
def test_levels_halfway_between_bytes_round_to_even() -> None:
    # "ties": slopes 2, 6, 10 per unit of position; at position 0.25 and 0.75 the
    # levels are exactly 0.5, 1.5 and 2.5, which numpy rounds to 0, 2 and 2.
    values = np.array([0.25**2, 1.25**2, 2.25**2, 0.75**2, 1.75**2], dtype=np.float64)
    counts = np.zeros(values.size, dtype=np.int32)
    rgb = assert_same(counts, values, 10, "ties")
    assert rgb.tolist() == [[0, 2, 2]] * 5


@needs_numba
def test_a_gradient_through_black_is_nudged_off_black_in_both() -> None:
    chosen = PALETTES["through black"]
    values = np.concatenate([special_values(chosen), np.linspace(0.0, 40.0, 100_001)])
    counts = np.zeros(values.size, dtype=np.int32)
    rgb = assert_same(counts, values, 10, "through black")
    assert (rgb == (0, 0, 1)).all(axis=-1).sum() > 1000


@needs_numba
@pytest.mark.parametrize("palette", ALL_PALETTES)
def test_millions_of_random_values_colour_the_same(palette: str) -> None:
    rng = np.random.default_rng(20240611)
    size = 2_000_000
    values = np.concatenate(
        [
            rng.uniform(0.0, 1e6, size),
            rng.uniform(0.0, 300.0, size // 4),
            10.0 ** rng.uniform(-300, 300, size // 4),
            -rng.uniform(0.0, 1e6, 1000),
        ]
    )
    counts = rng.integers(0, 1000, values.size, dtype=np.int32)
    assert_same(counts.reshape(-1, 500), values.reshape(-1, 500), 990, palette)


@needs_numba
def test_an_overflowing_position_takes_the_colour_of_zero() -> None:
    chosen = PALETTES["tiny cycle"]
    values = np.array([0.0, *ODD_VALUES, 1.0, 1e-10, 1e10, 1e280, 1e290], dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        overflowing = np.isnan(where_of(np.maximum(values, 0.0), chosen))
    assert overflowing.sum() >= 4
    counts = np.zeros(values.size, dtype=np.int32)
    rgb = assert_same(counts, values, 10, "tiny cycle")
    assert (rgb[overflowing] == rgb[0]).all()


# ---- the reference, and the path without numba -----------------------------


@pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"),
    reason="np.interp's C may fuse its multiply-add elsewhere",
)
@pytest.mark.parametrize("palette", ALL_PALETTES)
def test_the_reference_gives_the_colours_np_interp_gave(palette: str) -> None:
    rng = np.random.default_rng(7)
    chosen = PALETTES[palette]
    values = np.concatenate([rng.uniform(0.0, 1e5, 500_000), special_values(chosen)])
    counts = np.zeros(values.size, dtype=np.int32)
    table = gradient(chosen)
    where = where_of(values, chosen)
    levels = [np.interp(where, table.positions, table.colours[:, c]) for c in range(3)]
    expected = np.stack([np.rint(level).astype(np.uint8) for level in levels], axis=-1)
    expected[~expected.any(axis=-1)] = (0, 0, 1)
    assert np.array_equal(colorize_numpy(counts, values, 10, palette), expected)


def test_palette_colours_must_be_bytes() -> None:
    with pytest.raises(ValueError, match="bytes"):
        Palette(stops=((0.0, (0, 256, 0)),))
    with pytest.raises(ValueError, match="bytes"):
        Palette(stops=((0.0, (0, 0, 0)), (0.5, (-1, 0, 0))))


def test_without_numba_colorize_is_the_numpy_path() -> None:
    code = (
        "import sys; sys.modules['numba'] = None\n"
        "import numpy as np\n"
        "from fractalq.fractal.palettes import COMPILED, colorize, colorize_numpy\n"
        "assert not COMPILED\n"
        "counts = np.array([[0, 5, 9]], dtype=np.int32)\n"
        "smooth = np.array([[0.5, 5.5, 9.0]])\n"
        "rgb = colorize(counts, smooth, 9, 'classic')\n"
        "assert np.array_equal(rgb, colorize_numpy(counts, smooth, 9, 'classic'))\n"
        "assert 'fractalq.fractal.fast_colour' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_numba_is_not_imported_until_a_band_is_coloured() -> None:
    code = (
        "import sys\n"
        "import numpy as np\n"
        "from fractalq.fractal import colorize\n"
        "assert 'numba' not in sys.modules\n"
        "colorize(np.zeros((1, 1), dtype=np.int32), np.zeros((1, 1)), 5, 'classic')\n"
        f"assert ('numba' in sys.modules) == {HAVE_NUMBA}\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
