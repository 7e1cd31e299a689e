"""Deep zoom: views past float64, rendered by perturbation around one reference orbit.

The check is independent of the kernel: sampled pixels' own orbits are iterated
directly in arbitrary precision (gmpy2, at twice the view's precision: a Julia
view at the critical point squares its offsets) and their escape counts compared
with the render's. Then the pieces users meet: the request's decimal strings,
the stored orbit, a deep render on the queue (reference task first, the same
bytes as one band rendered here), the command line and a FractalJob's spec.
"""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import gmpy2
import numpy as np
import pytest
import yaml
from chart_tools import openapi_to_json_schema
from jsonschema import Draft202012Validator, ValidationError
from procs import ProcessGroup, run_cli, wait_until
from reference import reference_png

from fractalq.fractal import reference as orbits
from fractalq.fractal.kernels import escape, numba_escape
from fractalq.fractal.perturb import escape as perturb_escape
from fractalq.fractal.request import RenderRequest
from fractalq.operator.spec import parse_spec
from fractalq.proto import fractalq_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
DEPTHS = ["1e-30", "1e-100", "1e-300"]
# Boundary views where escape counts vary from pixel to pixel: the Misiurewicz
# point c = i of the Mandelbrot set, and the dendrite Julia set of c = i at its
# critical point 0.
MANDELBROT = {"center_x": "0", "center_y": "1", "max_iter": 4000}
JULIA = {"center_x": "0", "center_y": "0", "c_re": 0.0, "c_im": 1.0, "max_iter": 3000}
SAMPLES = 120


def direct_count(request: RenderRequest, i: int, j: int) -> int:
    """Pixel (i, j)'s escape count, its own orbit iterated in arbitrary precision."""
    bits = 2 * request.precision + 64
    with gmpy2.context(gmpy2.get_context(), precision=bits, real_prec=bits, imag_prec=bits):
        s = gmpy2.mpfr(request.view_width) / request.width
        x = gmpy2.mpfr(request.center_x) + (i + gmpy2.mpfr(0.5) - request.width / 2) * s
        y = gmpy2.mpfr(request.center_y) - (j + gmpy2.mpfr(0.5) - request.height / 2) * s
        if request.fractal == "mandelbrot":
            z, c = gmpy2.mpc(0), gmpy2.mpc(x, y)
        else:
            z, c = gmpy2.mpc(x, y), gmpy2.mpc(request.c_re, request.c_im)
        for k in range(1, request.max_iter + 1):
            z = z * z + c
            point = complex(z)
            if point.real * point.real + point.imag * point.imag > 4.0:
                return k - 1
    return request.max_iter


def agreement(request: RenderRequest, counts: np.ndarray, samples: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    agree = 0
    for _ in range(samples):
        i, j = int(rng.integers(request.width)), int(rng.integers(request.height))
        agree += abs(direct_count(request, i, j) - int(counts[j, i])) <= 1
    return agree / samples


@pytest.mark.parametrize("view", [MANDELBROT, JULIA], ids=["mandelbrot", "julia"])
@pytest.mark.parametrize("width", DEPTHS)
def test_deep_counts_match_each_pixels_own_orbit(view: dict[str, object], width: str) -> None:
    fractal = "julia" if "c_re" in view else "mandelbrot"
    request = RenderRequest.create(fractal, width=96, height=64, view_width=width, **view)  # type: ignore[arg-type]
    assert request.deep
    counts, smooth = escape(request, 0, request.height)
    assert np.unique(counts).size > 10  # a boundary: counts vary
    assert agreement(request, counts, SAMPLES, seed=len(width)) >= 0.995
    # No blocks: neighbouring pixels never share a smooth value (float64 gives
    # one value to the whole view, see below).
    outside = counts < request.max_iter
    same = (smooth[:, 1:] == smooth[:, :-1]) & outside[:, 1:] & outside[:, :-1]
    assert not same.any()


def test_far_past_float64s_exponent_range() -> None:
    request = RenderRequest.create(
        width=48, height=32, max_iter=6000, center_x="0", center_y="1", view_width="1e-1000"
    )
    counts, _ = escape(request, 0, request.height)
    assert np.unique(counts).size > 10
    assert agreement(request, counts, 10, seed=1000) == 1.0


def test_float64_makes_blocks_where_perturbation_does_not() -> None:
    request = RenderRequest.create(width=64, height=32, view_width="1e-30", **MANDELBROT)  # type: ignore[arg-type]
    blocky, _ = numba_escape(request, 0, request.height)
    assert np.unique(blocky).size == 1
    assert np.unique(escape(request, 0, request.height)[0]).size > 10


def test_a_shallow_view_agrees_both_ways() -> None:
    request = RenderRequest.create(
        width=160, height=100, max_iter=3000, center_x=-0.7435, center_y=0.1314, view_width=0.002
    )
    assert not request.deep
    plain, _ = escape(request, 0, request.height)
    perturbed, _ = perturb_escape(request, orbits.compute(request), 0, request.height)
    assert np.unique(plain).size > 100
    assert np.mean(np.abs(plain.astype(int) - perturbed) <= 1) >= 0.995


def test_any_band_split_gives_the_same_pixels() -> None:
    request = RenderRequest.create(width=50, height=30, view_width="1e-300", **MANDELBROT)  # type: ignore[arg-type]
    reference = orbits.compute(request)
    whole = perturb_escape(request, reference, 0, 30)
    for start, end in [(0, 7), (7, 8), (8, 30)]:
        part = perturb_escape(request, reference, start, end)
        assert np.array_equal(part[0], whole[0][start:end])
        assert np.array_equal(part[1], whole[1][start:end])


def test_views_are_decimal_strings() -> None:
    digits = "-1.7400623825793399052369923433623477207683099" + "1" * 300
    request = RenderRequest.create(center_x=digits, view_width="1.5E-320", width=100)
    data = json.loads(request.to_json())
    assert data["center_x"] == digits and data["view_width"] == "1.5E-320"
    assert RenderRequest.from_json(request.to_json()) == request
    assert request.deep and request.precision > 1060
    # Floats are spelled exactly and render as before; equal values, equal keys.
    assert RenderRequest.create(center_x=-0.75, view_width=0.5).center_x == "-0.75"
    assert RenderRequest.create(view_width="3.50").key() == RenderRequest.create().key()
    assert RenderRequest.create(center_y="-0.0").key() == RenderRequest.create().key()
    assert not RenderRequest.create(view_width="1e-8").deep
    assert RenderRequest.create(view_width="1e-10").deep
    # A map tile's view, exact fractions with a power of two below, keeps every digit.
    tile = RenderRequest.create(
        center_x=Fraction(-1, 2) + Fraction(7, 2**80), view_width=Fraction(7, 2**100)
    )
    assert (
        tile.center_x
        == "-0.49999999999999999999999420973571212880627590013915551026002503931522369384765625"
    )
    assert Fraction(tile.view_width) == Fraction(7, 2**100)
    bad: list[tuple[str | Fraction, str]] = [
        (Fraction(1, 3), "view_width has no exact decimal spelling"),
        ("1e-3e", "view_width must be a decimal number"),
        ("0x10", "view_width must be a decimal number"),
        ("0", "view_width must be greater than 0"),
        ("1e-10001", "at least 1e-10000"),
        ("1" * 13000, "more than the 12000 allowed"),
    ]
    for value, message in bad:
        with pytest.raises(ValueError, match=message):
            RenderRequest.create(view_width=value)


def test_the_stored_orbit_round_trips_and_refuses_garbage() -> None:
    for fractal, view in (("mandelbrot", MANDELBROT), ("julia", JULIA)):
        request = RenderRequest.create(fractal, view_width="1e-50", **view)  # type: ignore[arg-type]
        reference = orbits.compute(request)
        back = orbits.from_bytes(orbits.to_bytes(reference))
        assert np.array_equal(back.start, reference.start)
        assert np.array_equal(back.base, reference.base)
        assert back.julia == (fractal == "julia")
    data = orbits.to_bytes(reference)
    for bad in (b"", b"nonsense", data[:-8], b"FQORBIT9" + data[8:]):
        with pytest.raises(ValueError, match="not a reference orbit"):
            orbits.from_bytes(bad)


def test_a_deep_render_on_the_queue(cluster: ProcessGroup, tmp_path: Path) -> None:
    """The job's first task stores the orbit; the bands read it; the image is the
    one a single band renders here; the orbit is removed with the bands."""
    storage = tmp_path / "store"
    coordinator = cluster.start_coordinator()
    workers = [cluster.start_worker(storage=storage.as_uri()) for _ in range(2)]
    out = tmp_path / "deep.png"
    args = ["--width", "160", "--height", "100", "--max-iter", "3000", "--regions", "5",
            "--center-x", "0", "--center-y", "1", "--view-width", "1e-100"]  # fmt: skip
    result = run_cli("render", "--coordinator", coordinator.address, "--storage",
                     storage.as_uri(), "--out", str(out), *args, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    request = RenderRequest.create(
        width=160, height=100, max_iter=3000, center_x="0", center_y="1", view_width="1e-100"
    )
    assert out.read_bytes() == reference_png(request)
    with coordinator.client() as client:
        [job] = client.jobs()
        assert job.first.task_type == "fractal.reference"
        assert job.first.state == pb.TASK_SUCCEEDED
        assert job.state == pb.SUCCEEDED
    wait_until(lambda: not list(storage.rglob("reference.orbit")), message="orbit removed")
    assert not any("reference orbit" in worker.log() for worker in workers)  # all read it


def test_malformed_numbers_are_refused_with_one_line(tmp_path: Path) -> None:
    result = run_cli("demo", "--view-width", "1e-3e", "--out", str(tmp_path / "x.png"))
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "fractalq demo: error: view_width must be a decimal number such as -0.75 or 1.5e-300 "
        "(got '1e-3e')"
    ]


def test_the_deep_fractaljob_example() -> None:
    crd = yaml.safe_load((ROOT / "charts/fractalq/crds/fractaljob.yaml").read_text())
    schema = openapi_to_json_schema(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    validator = Draft202012Validator(schema)
    job = yaml.safe_load((ROOT / "deploy/examples/fractaljob-deep.yaml").read_text())
    validator.validate(job)
    request, _, _ = parse_spec(job["spec"])
    assert request.deep and request.view_width == job["spec"]["viewWidth"].upper()
    for bad in ({"x": "1e-3e", "y": 0}, {"x": "left", "y": "0"}):
        job["spec"]["center"] = bad
        with pytest.raises(ValidationError):
            validator.validate(job)
        with pytest.raises(ValueError, match="center_x must be a decimal number"):
            parse_spec(job["spec"])


@pytest.mark.parametrize(
    ("z", "c", "max_iter"),
    [
        (
            ("0", "0"),
            ("-0.743643887037158704752191506114774", "0.131825904205311970493132056385139"),
            3000,
        ),
        (("0.1", "-0.6"), (-0.8, 0.156), 2000),  # a Julia start orbit, float constant
        (("0", "0"), ("0.3", "0.5"), 2000),  # escapes early
        (("-1e-30", "3.999"), ("-2", "0"), 50),  # negative, tiny and large numbers
    ],
)
def test_the_fixed_point_orbit_is_mpfrs(
    z: tuple[str | float, str | float], c: tuple[str | float, str | float], max_iter: int
) -> None:
    from fractalq.fractal import fixedpoint

    bits = 200
    high, low = fixedpoint.orbit(z, c, bits, max_iter)
    with gmpy2.context(gmpy2.get_context(), precision=bits):
        zr, zi, cr, ci = (gmpy2.mpfr(value) for value in (*z, *c))
        want_high, want_low = orbits._mpfr_orbit(zr, zi, cr, ci, max_iter)
    assert high.size == want_high.size
    # Both carry 200 bits; a chaotic orbit may part at the last of them after a
    # few hundred iterations, so compare where neither has lost digits yet.
    first = min(high.size, 200)
    size = np.maximum(np.abs(want_high[:first]), 1e-300)
    assert np.all(np.abs(high[:first] - want_high[:first]) <= 2e-16 * size)
    total = (high[:first] - want_high[:first]) + (low[:first] - want_low[:first])
    assert np.all(np.abs(total) <= 1e-30 * size)
    assert fixedpoint.usable(bits, *z, *c)
    assert not fixedpoint.usable(bits, "5", "0") and not fixedpoint.usable(5000, "0", "0")


def test_the_approximation_table_compiles_once_when_threads_race_for_it() -> None:
    # A worker's warm-ups and its first tasks ask for the table's builder at once.
    script = (
        "import threading\n"
        "from fractalq.fractal import bla\n"
        "start, errors = threading.Barrier(4), []\n"
        "def ask():\n"
        "    start.wait()\n"
        "    try:\n"
        "        bla.compiled_build()\n"
        "    except Exception as error:\n"
        "        errors.append(repr(error))\n"
        "threads = [threading.Thread(target=ask) for _ in range(4)]\n"
        "[t.start() for t in threads]\n"
        "[t.join() for t in threads]\n"
        "assert not errors, errors\n"
        "assert len({id(bla.compiled_build()) for _ in range(3)}) == 1\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
