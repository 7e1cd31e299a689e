"""Assembly without re-encoding: bands deflated by workers, copied into one PNG.

The stitched file must be exactly what :class:`PngWriter` writes in one piece,
whatever the band cut, decode to the right pixels, and be assembled in bounded
memory (a 16384-wide image, measured in a child process that only assembles).
"""

from __future__ import annotations

import io
import json
import random
import struct
import subprocess
import zlib
from pathlib import Path

import assembly_child
import numpy as np
import pytest
from assembly_child import synthetic
from PIL import Image
from reference import reference_png

from fractalq.fractal import (
    PngWriter,
    RenderRequest,
    assemble,
    decode_band,
    encode_band,
    render_rows,
    split_rows,
)
from fractalq.fractal.png import BAND_HEADER, COMPRESS_LEVELS, adler32_combine

MiB = 1 << 20


def stitched(rgb: np.ndarray, rows: list[tuple[int, int]]) -> bytes:
    out = io.BytesIO()
    bands = (encode_band(rgb[start:end], start) for start, end in rows)
    assemble(bands, rgb.shape[1], rows, out)
    return out.getvalue()


def one_piece(rgb: np.ndarray) -> bytes:
    out = io.BytesIO()
    with PngWriter(out, rgb.shape[1], rgb.shape[0]) as writer:
        writer.write_rows(rgb)
    return out.getvalue()


def pixels(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        return np.asarray(image)


@pytest.mark.parametrize("fractal", ["mandelbrot", "julia"])
def test_the_stitched_png_is_the_one_piece_render(fractal: str) -> None:
    request = RenderRequest.create(fractal, width=160, height=100, max_iter=200)
    rgb = render_rows(request, 0, request.height)
    files = {
        regions: stitched(rgb, split_rows(request.height, regions))
        for regions in (1, 2, 7, 8, request.height)  # the last: one band per row
    }
    assert len(set(files.values())) == 1
    assert files[1] == reference_png(request) == one_piece(rgb)
    assert np.array_equal(pixels(files[1]), rgb)
    with Image.open(io.BytesIO(files[1])) as image:
        assert image.size == (160, 100)


def test_odd_cuts_and_tiny_images_are_byte_identical() -> None:
    for width, height in [(1, 1), (1, 5), (5, 1), (37, 23)]:
        rgb = synthetic(width, 0, height)
        expected = one_piece(rgb)
        assert np.array_equal(pixels(expected), rgb)
        for regions in range(1, height + 1):
            assert stitched(rgb, split_rows(height, regions)) == expected, (width, regions)
        uneven = [(0, 1), (1, height)] if height > 1 else [(0, 1)]
        assert stitched(rgb, uneven) == expected


def test_rows_longer_than_the_deflate_window() -> None:
    # 12000 pixels = 36001 filtered bytes a row: the dictionary is the last 32 KiB.
    rgb = synthetic(12000, 0, 9)
    expected = one_piece(rgb)
    assert np.array_equal(pixels(expected), rgb)
    for regions in (2, 4, 9):
        assert stitched(rgb, split_rows(9, regions)) == expected


def test_idat_chunks_are_cut_at_fixed_offsets() -> None:
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, size=(40, 900, 3), dtype=np.uint8)  # noise: many chunks
    data = stitched(rgb, split_rows(40, 7))
    assert data == one_piece(rgb)
    offset, sizes = 8, []
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        if kind == b"IDAT":
            sizes.append(length)
        offset += 12 + length
    assert len(sizes) > 1 and all(size == 1 << 16 for size in sizes[:-1])


def sub_filtered(rgb: np.ndarray) -> bytes:
    """The PNG rows of `rgb` with the Sub filter, written from the PNG spec, not from png.py."""
    count = rgb.shape[0]
    flat = rgb.reshape(count, -1).astype(np.int16)
    sub = flat.copy()
    sub[:, 3:] -= flat[:, :-3]
    rows = np.concatenate([np.ones((count, 1), dtype=np.int16), sub % 256], axis=1)
    return rows.astype(np.uint8).tobytes()


def idat_stream(png: bytes) -> bytes:
    offset, stream = 8, b""
    while offset < len(png):
        (length,) = struct.unpack(">I", png[offset : offset + 4])
        if png[offset + 4 : offset + 8] == b"IDAT":
            stream += png[offset + 8 : offset + 8 + length]
        offset += 12 + length
    return stream


@pytest.mark.parametrize("level", COMPRESS_LEVELS)
def test_the_deflated_rows_inflate_with_the_standard_zlib(level: int) -> None:
    # ISA-L deflates; the standard library's zlib must read every piece exactly.
    request = RenderRequest.create("julia", width=90, height=30)
    rgb = render_rows(request, 0, request.height)
    stride = 1 + 3 * request.width
    expected = sub_filtered(rgb)
    rows = split_rows(request.height, 4)
    for start, end in rows:
        data = encode_band(rgb[start:end], start, compress_level=level)
        body = data[BAND_HEADER.size :]
        first, last, deflated = body[:stride], body[stride : 2 * stride], body[2 * stride :]
        assert first == expected[start * stride : (start + 1) * stride]
        assert last == expected[(end - 1) * stride : end * stride]
        assert deflated.endswith(b"\x00\x00\xff\xff")  # Z_SYNC_FLUSH: on a byte boundary
        inflater = zlib.decompressobj(-15, zdict=first)
        tail = inflater.decompress(deflated)
        assert tail == expected[(start + 1) * stride : end * stride]
        assert not inflater.eof and inflater.unused_data == b""  # no final block yet
        assert BAND_HEADER.unpack_from(data)[4] == zlib.adler32(tail)
    # The stitched image: one zlib stream (header, rows, final block, Adler-32).
    out = io.BytesIO()
    bands = (encode_band(rgb[a:b], a, compress_level=level) for a, b in rows)
    assemble(bands, request.width, rows, out, compress_level=level)
    inflater = zlib.decompressobj()
    assert inflater.decompress(idat_stream(out.getvalue())) == expected
    assert inflater.eof and inflater.unused_data == b""
    one = io.BytesIO()
    with PngWriter(one, request.width, request.height, compress_level=level) as writer:
        writer.write_rows(rgb)
    assert one.getvalue() == out.getvalue()
    assert np.array_equal(pixels(out.getvalue()), rgb)


@pytest.mark.parametrize("level", [-1, 3, 4, 6, 9, True])
def test_a_bad_compress_level_is_refused(level: int) -> None:
    rgb = synthetic(8, 0, 4)
    with pytest.raises(ValueError, match=r"compress_level must be an ISA-L level, 0\.\.2, not "):
        encode_band(rgb, compress_level=level)
    out = io.BytesIO()
    with pytest.raises(ValueError, match="compress_level"):
        PngWriter(out, 8, 4, compress_level=level)
    with pytest.raises(ValueError, match="compress_level"):
        assemble([encode_band(rgb)], 8, [(0, 4)], out, compress_level=level)
    assert out.getvalue() == b""  # refused before writing anything


def test_adler32_combine_matches_zlib() -> None:
    generator = random.Random(11)
    for _ in range(200):
        size = generator.choice([0, 1, 7, 1000, 65521, 70000, 200_000])
        data = generator.randbytes(size)
        cuts = sorted(generator.randrange(size + 1) for _ in range(generator.randrange(5)))
        combined = zlib.adler32(b"")
        for start, end in zip([0, *cuts], [*cuts, size], strict=True):
            piece = data[start:end]
            combined = adler32_combine(combined, zlib.adler32(piece), len(piece))
        assert combined == zlib.adler32(data)
    # All-0xFF pieces push both sums to their largest values.
    piece = b"\xff" * 100_000
    assert adler32_combine(zlib.adler32(piece), zlib.adler32(piece), len(piece)) == zlib.adler32(
        piece + piece
    )


def test_band_objects_round_trip_and_are_checked() -> None:
    rgb = synthetic(10, 3, 8)
    data = encode_band(rgb)
    assert np.array_equal(decode_band(data, 10, 5), rgb)
    assert np.array_equal(decode_band(encode_band(rgb[:1]), 10, 1), rgb[:1])
    body = bytearray(data)
    body[-3] ^= 0x40
    corrupt = bytes(body)
    truncated = data[: BAND_HEADER.size + 12]
    # A band whose CRC was recomputed over damaged deflate bytes: only inflating tells.
    *fields, _ = BAND_HEADER.unpack_from(corrupt)
    rechecked = BAND_HEADER.pack(*fields, zlib.crc32(corrupt[BAND_HEADER.size :]))
    rechecked += corrupt[BAND_HEADER.size :]
    cases = [
        (b"", "not a fractalq band"),
        (b"FQB0" + data[4:], "not a fractalq band"),
        (corrupt, "CRC-32 mismatch"),
        (truncated, "truncated"),
        (rechecked, "band is corrupt"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message) as caught:
            decode_band(bad, 10, 5)
        assert "\n" not in str(caught.value)
    with pytest.raises(ValueError, match="band is 10x5, expected 11x5"):
        decode_band(data, 11, 5)
    placed = encode_band(rgb, 3)
    assert placed[BAND_HEADER.size :] == data[BAND_HEADER.size :]  # only the header differs
    assert np.array_equal(decode_band(placed, 10, 5, 3), rgb)
    assert np.array_equal(decode_band(data, 10, 5, 3), rgb)  # position unknown: not checked
    with pytest.raises(ValueError, match=r"band holds rows 3..8, expected 4..9"):
        decode_band(placed, 10, 5, 4)
    with pytest.raises(ValueError, match="uint8"):
        encode_band(rgb.astype(np.int16))


def test_assemble_rejects_corrupt_and_mismatched_bands() -> None:
    rgb = synthetic(12, 0, 9)
    rows = split_rows(9, 3)
    bands = [encode_band(rgb[start:end], start) for start, end in rows]
    damaged = bytearray(bands[1])
    damaged[BAND_HEADER.size + 5] ^= 1
    for supplied, width, message in [
        ([bands[0], bytes(damaged), bands[2]], 12, r"band 1 \(rows 3..6\): band is corrupt"),
        ([bands[0], bands[2], bands[1]], 12, r"band 1 \(rows 3..6\): band holds rows 6..9"),
        (bands, 13, r"band 0 \(rows 0..3\): band is 12x3, expected 13x3"),
        ([bands[0], bands[1][:40], bands[2]], 12, "band 1"),
    ]:
        with pytest.raises(ValueError, match=message) as caught:
            assemble(supplied, width, rows, io.BytesIO())
        assert "\n" not in str(caught.value)
    # Bands encoded without their position (encode_band(rgb)) cannot be checked
    # for order: the caller orders them (by key); the bytes are still a valid PNG.
    unplaced = [encode_band(rgb[start:end]) for start, end in rows]
    swapped = io.BytesIO()
    assemble([unplaced[1], unplaced[0], unplaced[2]], 12, rows, swapped)
    assert np.array_equal(pixels(swapped.getvalue())[:3], rgb[3:6])


# The child (assembly_child.py) loads png.py alone: importing the fractalq.fractal
# package would also load the kernels (numba), whose footprint is not the
# assembler's. Its peak is the kernel's VmHWM (the high-water mark of this address
# space): on Linux ru_maxrss also counts the pages of the forked pytest process.
def test_a_16384_wide_image_assembles_in_bounded_memory(tmp_path: Path) -> None:
    width, height, regions = 16384, 512, 8
    rows = split_rows(height, regions)
    args: list[str] = []
    largest = 0
    for index, (start, end) in enumerate(rows):
        data = encode_band(synthetic(width, start, end), start)
        largest = max(largest, len(data))
        path = tmp_path / f"band{index}"
        path.write_bytes(data)
        args += [f"{start}:{end}", str(path)]
    out = tmp_path / "image.png"
    result = subprocess.run(
        assembly_child.command(out, width, args),
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    usage = json.loads(result.stdout)
    peak, growth = usage["peak_kib"] * 1024, (usage["peak_kib"] - usage["before_kib"]) * 1024
    assert peak < 150 * MiB, usage
    assert growth < largest + 8 * MiB, (usage, largest)  # one band, not the image
    assert np.array_equal(pixels(out.read_bytes()), synthetic(width, 0, height))
