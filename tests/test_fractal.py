"""The image contract (docs/images.md, "The image"), checked against an independent reference.

The reference below is plain Python complex arithmetic, written from the contract's
words, not from the kernel: if the two agree on which pixels are inside, the pixel
mapping and the escape rule are right.
"""

from __future__ import annotations

import io
import itertools
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from fractalq import config
from fractalq.fractal import (
    KERNELS,
    PALETTES,
    Palette,
    PngWriter,
    RenderRequest,
    assemble,
    band_plan,
    band_rows,
    colorize,
    decode_band,
    encode_band,
    escape,
    render_rows,
    split_rows,
)
from fractalq.fractal.kernels import pixel_columns, pixel_rows
from fractalq.fractal.request import READ_CACHE_TEXT


def reference_counts(request: RenderRequest) -> list[list[int]]:
    """Iterations each pixel stays within |z| <= 2; max_iter means inside."""
    w, h = request.width, request.height
    s = request.span / w
    result = []
    for j in range(h):
        y = request.cy - (j + 0.5 - h / 2) * s
        row = []
        for i in range(w):
            x = request.cx + (i + 0.5 - w / 2) * s
            if request.fractal == "mandelbrot":
                z, c = 0j, complex(x, y)
            else:
                z, c = complex(x, y), complex(request.c_re, request.c_im)
            n = request.max_iter
            for k in range(request.max_iter):
                z = z * z + c
                if abs(z) > 2:
                    n = k
                    break
            row.append(n)
        result.append(row)
    return result


VIEWS = {
    "mandelbrot": RenderRequest.create(width=96, height=64, max_iter=100),
    "julia": RenderRequest.create("julia", width=96, height=64, max_iter=100),
    "seahorse valley": RenderRequest.create(
        width=64, height=48, max_iter=300, center_x=-0.745, center_y=0.113, view_width=0.02
    ),
    "cardioid cusp": RenderRequest.create(
        width=48, height=48, max_iter=400, center_x=0.252, center_y=0.0, view_width=0.004
    ),
    "period-2 bulb edge": RenderRequest.create(
        width=48, height=32, max_iter=300, center_x=-1.0, center_y=0.26, view_width=0.06
    ),
    "julia zoomed": RenderRequest.create(
        "julia", width=64, height=48, max_iter=200, center_x=0.3, center_y=-0.2, view_width=0.15
    ),
    "odd size, off-centre": RenderRequest.create(
        width=37, height=23, max_iter=60, center_x=-1.0, center_y=0.3, view_width=1.7
    ),
}


@pytest.mark.parametrize("name", sorted(VIEWS))
def test_inside_pixels_match_the_reference(name: str) -> None:
    request = VIEWS[name]
    expected = np.array(reference_counts(request))
    rgb = render_rows(request, 0, request.height)
    black = ~rgb.any(axis=-1)
    inside = expected == request.max_iter
    # Only |z| = 2 ties (hypot against x*x + y*y) may differ: a handful at most.
    assert np.count_nonzero(black != inside) <= 2, name
    assert np.count_nonzero(inside) > 0 or name == "odd size, off-centre"
    counts, _ = escape(request, 0, request.height)
    assert np.count_nonzero(counts != expected) <= 2, name


def test_pixel_mapping_is_the_contract_formula() -> None:
    request = RenderRequest.create(width=7, height=5, center_x=0.125, center_y=-0.5, view_width=0.7)
    s = 0.7 / 7
    assert list(pixel_columns(request)) == [0.125 + (i + 0.5 - 3.5) * s for i in range(7)]
    assert list(pixel_rows(request, 1, 4)) == [-0.5 - (j + 0.5 - 2.5) * s for j in (1, 2, 3)]


def test_one_pixel_samples_the_view_centre() -> None:
    # The centre of a 1x1 Mandelbrot image is c = cx + i*cy: inside at 0, outside at 1.
    assert not render_rows(RenderRequest.create(width=1, height=1, center_x=0.0), 0, 1).any()
    assert render_rows(RenderRequest.create(width=1, height=1, center_x=1.0), 0, 1).any()


def test_counts_and_smooth_values_do_not_depend_on_the_band() -> None:
    request = RenderRequest.create("julia", width=50, height=40, max_iter=150)
    counts, smooth = escape(request, 0, 40)
    assert counts.dtype == np.int32 and smooth.dtype == np.float64
    assert counts.shape == smooth.shape == (40, 50)
    for start, end in [(0, 1), (3, 17), (17, 40), (39, 40)]:
        part_counts, part_smooth = escape(request, start, end)
        assert np.array_equal(part_counts, counts[start:end])
        assert np.array_equal(part_smooth, smooth[start:end])


def test_smooth_values_are_finite_and_continuous() -> None:
    request = RenderRequest.create(width=300, height=200)
    counts, smooth = escape(request, 0, request.height)
    assert np.isfinite(smooth).all()
    # Where the integer count steps between neighbours, the smooth value changes
    # about as much as between the neighbouring pairs on either side: no banding.
    # (Integer colouring would jump by ~1 there against ~0.01 around it.)
    jump = np.abs(np.diff(smooth, axis=1))
    steps = np.diff(counts, axis=1)[:, 1:-1] != 0
    low = (counts[:, :-3] < 8) & (counts[:, 1:-2] < 8) & (counts[:, 2:-1] < 8) & (counts[:, 3:] < 8)
    chosen = steps & low
    assert chosen.sum() > 1000
    around = np.maximum(jump[:, :-2], jump[:, 2:])[chosen]
    ratio = jump[:, 1:-1][chosen] / np.maximum(around, 1e-12)
    assert np.percentile(ratio, 99) < 2.0 and ratio.max() < 10.0


@pytest.mark.parametrize("palette", sorted(PALETTES))
def test_no_outside_pixel_is_black(palette: str) -> None:
    for fractal in ("mandelbrot", "julia"):
        request = RenderRequest.create(fractal, width=120, height=80, palette=palette)
        counts, smooth = escape(request, 0, request.height)
        rgb = colorize(counts, smooth, request.max_iter, palette)
        assert rgb.dtype == np.uint8 and rgb.shape == (80, 120, 3)
        inside = counts == request.max_iter
        assert inside.any() and (~inside).any()
        assert not rgb[inside].any()
        assert rgb[~inside].any(axis=-1).all()


def test_a_black_palette_is_nudged_off_black(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(PALETTES, "night", Palette(stops=((0.0, (0, 0, 0)),)))
    counts = np.array([[0, 5, 9]], dtype=np.int32)
    smooth = np.array([[0.5, 5.5, 9.0]])
    rgb = colorize(counts, smooth, 9, "night")
    assert rgb.tolist() == [[[0, 0, 1], [0, 0, 1], [0, 0, 0]]]


def test_colour_depends_only_on_the_pixel() -> None:
    counts = np.array([[3, 3, 255], [10, 40, 256]], dtype=np.int32)
    smooth = np.array([[3.4, 3.4, 255.5], [10.9, 40.2, 256.0]])
    rgb = colorize(counts, smooth, 256, "classic")
    assert np.array_equal(rgb[0, 0], rgb[0, 1])
    for i in range(2):
        for j in range(3):
            one = (slice(i, i + 1), slice(j, j + 1))
            single = colorize(counts[one], smooth[one], 256, "classic")
            assert np.array_equal(single[0, 0], rgb[i, j])


def test_unknown_palette_and_kernel_are_refused() -> None:
    counts = np.zeros((1, 1), dtype=np.int32)
    with pytest.raises(ValueError, match="unknown palette 'nope'"):
        colorize(counts, np.zeros((1, 1)), 10, "nope")
    request = RenderRequest.create(width=4, height=4)
    with pytest.raises(ValueError, match="unknown kernel"):
        escape(request, 0, 4, kernel="cuda")
    assert "numpy" in KERNELS
    with pytest.raises(ValueError, match="rows"):
        render_rows(request, 2, 5)


# ---- bands -----------------------------------------------------------------


def test_split_rows_spreads_the_remainder_over_the_first_bands() -> None:
    assert split_rows(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert split_rows(800, 8) == [(k * 100, k * 100 + 100) for k in range(8)]
    assert split_rows(5, 5) == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]
    assert split_rows(7, 1) == [(0, 7)]
    for height, regions in [(800, 7), (13, 4), (1000, 999), (1, 1)]:
        bands = split_rows(height, regions)
        assert len(bands) == regions
        assert bands[0][0] == 0 and bands[-1][1] == height
        assert all(a[1] == b[0] for a, b in itertools.pairwise(bands))
        sizes = [end - start for start, end in bands]
        assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize(
    ("height", "regions", "message"),
    [(10, 0, "regions must be at least 1"), (10, -2, "regions"), (10, 11, "cannot exceed")],
)
def test_split_rows_refuses_bad_regions(height: int, regions: int, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        split_rows(height, regions)
    assert "\n" not in str(caught.value)


def render_png(request: RenderRequest, regions: int) -> bytes:
    rows = split_rows(request.height, regions)
    bands = [encode_band(render_rows(request, start, end)) for start, end in rows]
    out = io.BytesIO()
    assemble(iter(bands), request.width, rows, out)
    return out.getvalue()


@pytest.mark.parametrize("fractal", ["mandelbrot", "julia"])
def test_the_png_does_not_depend_on_the_bands(fractal: str) -> None:
    request = RenderRequest.create(fractal, width=300, height=200)
    files = {regions: render_png(request, regions) for regions in (1, 7, 8)}
    assert files[1] == files[7] == files[8]
    image = Image.open(io.BytesIO(files[1]))
    assert image.format == "PNG" and image.mode == "RGB" and image.size == (300, 200)
    assert np.array_equal(np.asarray(image), render_rows(request, 0, request.height))


def chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    found = []
    offset = 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        found.append((kind, body))
        offset += 12 + length
    return found


def test_png_writer_is_exact_whatever_the_grouping() -> None:
    rng = np.random.default_rng(7)
    # Noise, so the compressed stream spans several IDAT chunks.
    pixels = rng.integers(0, 256, size=(61, 700, 3), dtype=np.uint8)
    outputs = []
    for cuts in ([61], [1] * 61, [30, 1, 29, 1], [5, 56]):
        out = io.BytesIO()
        with PngWriter(out, 700, 61) as writer:
            start = 0
            for size in cuts:
                writer.write_rows(pixels[start : start + size])
                start += size
        outputs.append(out.getvalue())
    assert all(output == outputs[0] for output in outputs)
    found = chunks(outputs[0])
    kinds = [kind for kind, _ in found]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and kinds.count(b"IDAT") > 1
    assert set(kinds[1:-1]) == {b"IDAT"}
    assert found[0][1] == struct.pack(">IIBBBBB", 700, 61, 8, 2, 0, 0, 0)
    assert all(len(body) <= 1 << 16 for kind, body in found if kind == b"IDAT")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(outputs[0]))), pixels)


def test_png_writer_refuses_wrong_rows() -> None:
    writer = PngWriter(io.BytesIO(), 4, 2)
    with pytest.raises(ValueError, match="uint8"):
        writer.write_rows(np.zeros((1, 5, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="more than"):
        writer.write_rows(np.zeros((3, 4, 3), dtype=np.uint8))
    writer.write_rows(np.zeros((1, 4, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="only 1 of 2 rows"):
        writer.close()


def test_decode_band_round_trip_and_refusals() -> None:
    rgb = render_rows(RenderRequest.create(width=10, height=6), 1, 6)
    data = encode_band(rgb)
    assert np.array_equal(decode_band(data, 10, 5), rgb)
    with pytest.raises(ValueError, match="band is 10x5, expected 10x6"):
        decode_band(data, 10, 6)
    with pytest.raises(ValueError, match="band is 10x5, expected 9x5"):
        decode_band(data, 9, 5)
    old_format = io.BytesIO()  # bands used to be PNG files: refused, not misread
    Image.new("RGB", (10, 5)).save(old_format, format="PNG")
    with pytest.raises(ValueError, match="not a fractalq band"):
        decode_band(old_format.getvalue(), 10, 5)
    for bad in (b"", b"not a png", data[: len(data) // 2]):
        with pytest.raises(ValueError, match="band") as caught:
            decode_band(bad, 10, 5)
        assert "\n" not in str(caught.value)


def test_assemble_refuses_missing_extra_and_wrong_bands() -> None:
    request = RenderRequest.create(width=8, height=6)
    rows = split_rows(6, 2)
    bands = [encode_band(render_rows(request, start, end)) for start, end in rows]
    with pytest.raises(ValueError, match="got 1 bands, expected 2"):
        assemble(bands[:1], 8, rows, io.BytesIO())
    with pytest.raises(ValueError, match="more than the 2 bands"):
        assemble([*bands, bands[0]], 8, rows, io.BytesIO())
    with pytest.raises(ValueError, match=r"band 1 \(rows 3..5\): band is 8x3, expected 8x2"):
        assemble(bands, 8, [(0, 3), (3, 5)], io.BytesIO())
    with pytest.raises(ValueError, match="do not continue"):
        assemble(bands, 8, [(0, 3), (4, 6)], io.BytesIO())


# ---- requests ----------------------------------------------------------------


def test_defaults_per_fractal() -> None:
    mandelbrot = RenderRequest.create()
    assert (mandelbrot.fractal, mandelbrot.width, mandelbrot.height) == ("mandelbrot", 1200, 800)
    assert (mandelbrot.center_x, mandelbrot.center_y, mandelbrot.view_width) == ("-0.5", "0", "3.5")
    assert mandelbrot.max_iter == config.DEFAULT_MAX_ITER == 256
    assert mandelbrot.palette == "classic"
    julia = RenderRequest.create("julia")
    assert (julia.center_x, julia.center_y, julia.view_width) == ("0", "0", "3")
    assert (julia.c_re, julia.c_im) == (-0.7, 0.27015)
    custom = RenderRequest.create("julia", center_x=0.5, c_im=0.1, palette="fire", width=10)
    assert (custom.center_x, custom.c_re, custom.c_im, custom.width) == ("0.5", -0.7, 0.1, 10)


BAD_FIELDS = [
    ({"fractal": "burning ship"}, "fractal"),
    ({"width": 0}, "width"),
    ({"width": config.MAX_DIMENSION + 1}, "width"),
    ({"height": -5}, "height"),
    ({"max_iter": 0}, "max_iter"),
    ({"max_iter": config.MAX_ITERATIONS + 1}, "max_iter"),
    ({"view_width": 0.0}, "view_width"),
    ({"view_width": -1.0}, "view_width"),
    ({"view_width": float("inf")}, "view_width"),
    ({"center_x": float("nan")}, "center_x"),
    ({"center_y": float("-inf")}, "center_y"),
    ({"c_re": float("nan")}, "c_re"),
    ({"c_im": float("inf")}, "c_im"),
    ({"palette": "nope"}, "palette 'nope' (known: classic, fire, grayscale, ocean)"),
]


@pytest.mark.parametrize(("change", "named"), BAD_FIELDS)
def test_validation_names_the_bad_field(change: dict[str, object], named: str) -> None:
    with pytest.raises(ValueError) as caught:
        RenderRequest.create(**change)  # type: ignore[arg-type]
    message = str(caught.value)
    assert named in message and "\n" not in message


def test_the_largest_image_is_allowed_and_a_pixel_cap_is_stated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    largest = RenderRequest.create(width=config.MAX_DIMENSION, height=config.MAX_DIMENSION)
    assert largest.width * largest.height == config.MAX_PIXELS == 65536**2
    monkeypatch.setattr(config, "MAX_PIXELS", 1000)
    with pytest.raises(ValueError, match="cap of 1000 pixels"):
        RenderRequest.create(width=100, height=100)


def test_large_images_get_bands_of_bounded_size() -> None:
    off_axis = RenderRequest.create(width=1200, height=800, center_y="0.5")
    assert band_rows(off_axis, 8) == split_rows(800, 8)
    huge = RenderRequest.create(width=32768, height=32768, center_y="0.5")
    rows = band_rows(huge, 8)
    assert len(rows) == 256 and all(end - start == 128 for start, end in rows)
    widest = RenderRequest.create(width=65536, height=200, center_y="0.5")  # 13 M pixels
    assert band_rows(widest, 1) == split_rows(200, 4)  # 4 bands, not 1
    assert band_rows(widest, 10) == split_rows(200, 10)  # more asked for: as asked


def test_a_view_that_mirrors_onto_itself_gets_its_bands_over_the_top_half() -> None:
    # The default views: Mandelbrot on the real axis, Julia centred on 0.
    for fractal, mirror in (("mandelbrot", "rows"), ("julia", "point")):
        plan = band_plan(RenderRequest.create(fractal, width=1200, height=801), 8)
        assert plan.mirror == mirror and plan.tasks == split_rows(401, 8)
        # Row 400 is the middle (its own mirror): the mirrors of the tasks' rows below it.
        below = sorted((max(801 - end, 401), 801 - start) for start, end in plan.tasks)
        assert plan.strips == plan.tasks + below and below[0] == (401, 450)
        assert all(a[1] == b[0] for a, b in itertools.pairwise(plan.strips))
        assert plan.strips[-1][1] == 801
    # Still bounded: 128 tasks of 128 rows, each storing its mirror too.
    huge = band_plan(RenderRequest.create(width=32768, height=32768), 8)
    assert len(huge.tasks) == 128 and len(huge.strips) == 256
    assert all(end - start == 128 for start, end in huge.strips)
    assert huge.strips == split_rows(32768, 256)
    # Not mirrored: off the axis, a Julia set off 0, a deep view, more bands than half the rows.
    for request, regions in [
        (RenderRequest.create(width=1200, height=800, center_y="1e-9"), 8),
        (RenderRequest.create("julia", width=1200, height=800, center_x="0.1"), 8),
        (RenderRequest.create(width=640, height=360, center_x="-0.75", view_width="1e-20"), 8),
        (RenderRequest.create(width=64, height=5), 4),
    ]:
        plan = band_plan(request, regions)
        assert plan.mirror is None and plan.strips == plan.tasks == band_rows(request, regions)


def test_json_round_trip_and_key() -> None:
    request = RenderRequest.create(
        "julia", width=640, height=480, center_x=0.1, c_re=-0.8, c_im=0.156, palette="ocean"
    )
    data = request.to_json()
    assert json.loads(data)["palette"] == "ocean"
    assert RenderRequest.from_json(data) == request
    assert RenderRequest.from_json(data.decode()) == request
    key = request.key()
    assert len(key) == 16 and int(key, 16) >= 0
    assert RenderRequest.from_json(data).key() == key
    assert RenderRequest.create("julia").key() != RenderRequest.create().key()
    # Equal images, equal keys: ints and -0.0 are normalised.
    assert RenderRequest.create(center_y=-0.0).key() == RenderRequest.create(center_y=0).key()
    assert RenderRequest.create(center_x=-0.5).key() == RenderRequest.create().key()


def good_fields() -> dict[str, object]:
    loaded: dict[str, object] = json.loads(RenderRequest.create().to_json())
    return loaded


def with_field(name: str, value: object) -> bytes:
    fields = good_fields()
    fields[name] = value
    return json.dumps(fields).encode()


def without_field(name: str) -> bytes:
    fields = good_fields()
    del fields[name]
    return json.dumps(fields).encode()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not json", "not valid JSON"),
        (b"\xff\xfe\x00", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b"{}", "missing"),
        (without_field("c_im"), "missing c_im"),
        (with_field("colour", "red"), "unknown field"),
        (with_field("width", "1200"), "width must be an integer"),
        (with_field("width", 1200.0), "width must be an integer"),
        (with_field("height", True), "height must be an integer"),
        (with_field("center_x", "zero"), "center_x must be a decimal number"),
        (with_field("center_x", "1e5e5"), "center_x must be a decimal number"),
        (with_field("view_width", None), "view_width must be a decimal string"),
        (with_field("view_width", "-1e-300"), "view_width must be greater than 0"),
        (with_field("view_width", "1e-10001"), "view_width must be at least 1e-10000"),
        (with_field("palette", 3), "palette must be a string"),
        (with_field("fractal", "newton"), "unknown fractal"),
        (with_field("width", -1), "width"),
        (with_field("center_y", 10**400), "center_y must be a finite number"),
        (with_field("c_re", float("nan")), "c_re must be a finite number"),
        (b'{"width": ' + b"9" * 5000 + b"}", "not valid JSON"),
    ],
)
def test_from_json_refuses_malformed_requests(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        RenderRequest.from_json(data)
    assert "\n" not in str(caught.value)
    with pytest.raises(ValueError, match=message):  # a refusal is not remembered as a read
        RenderRequest.from_json(data)


def test_a_request_text_read_again_reads_the_same_and_long_texts_read_too() -> None:
    data = RenderRequest.create("julia", width=64, height=48).to_json()
    assert RenderRequest.from_json(data) is RenderRequest.from_json(data)  # read once
    # A deep centre longer than the texts kept is still read, every time.
    digits = "0." + "3" * (READ_CACHE_TEXT // 2)
    long = json.dumps({**good_fields(), "center_x": digits, "center_y": digits}).encode()
    assert len(long) > READ_CACHE_TEXT
    read = RenderRequest.from_json(long)
    assert read.center_x.startswith("0.333") and RenderRequest.from_json(long) == read
