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
import sys
import zlib
from pathlib import Path

import assembly_child
import numpy as np
import pytest
from assembly_child import synthetic
from isal import isal_zlib
from PIL import Image
from reference import reference_png
from s3server import SeaweedS3

from fractalq.fractal import (
    PngWriter,
    RenderRequest,
    assemble,
    decode_band,
    encode_band,
    png,
    render_rows,
    split_rows,
)
from fractalq.fractal.png import (
    BAND_HEADER,
    COMPRESS_LEVELS,
    UNKNOWN_START,
    adler32_combine,
    rows_per_group,
)
from fractalq.fractal.request import band_plan
from fractalq.storage import open_storage
from fractalq.tasks.assemble import assemble_payload
from fractalq.tasks.band import band_key, image_key

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


def layout(start: int, end: int, group: int) -> tuple[int, int, int]:
    """The band layout, from the format's description: (h, t, middle rows)."""
    head_end = 0 if start == 0 else min(end, (start // group + 1) * group)
    middle_end = end // group * group
    return head_end, middle_end, max(0, middle_end - head_end)


def expected_stream(rgb: np.ndarray, level: int = 1) -> bytes:
    """The image's zlib stream, written from the format's description with ISA-L."""
    filtered = sub_filtered(rgb)
    height, stride = rgb.shape[0], 1 + 3 * rgb.shape[1]
    group = rows_per_group(rgb.shape[1])
    flg = (0 if level == 0 else 1) << 6
    stream = bytes([0x78, flg | -(0x78 << 8 | flg) % 31])
    for first in range(0, height, group):
        rows = filtered[first * stride : min(height, first + group) * stride]
        if first == 0:
            compressor = isal_zlib.compressobj(level, isal_zlib.DEFLATED, -15)
        else:
            above = filtered[(first - 1) * stride : first * stride][-(1 << 15) :]
            compressor = isal_zlib.compressobj(level, isal_zlib.DEFLATED, -15, zdict=above)
        stream += compressor.compress(rows) + compressor.flush(isal_zlib.Z_SYNC_FLUSH)
    return stream + b"\x03\x00" + struct.pack(">I", zlib.adler32(filtered))


@pytest.mark.parametrize("level", COMPRESS_LEVELS)
def test_the_deflated_groups_inflate_with_the_standard_zlib(level: int) -> None:
    # ISA-L deflates; the standard library's zlib must read every piece exactly.
    request = RenderRequest.create("julia", width=90, height=70)
    rgb = render_rows(request, 0, request.height)
    stride, group = 1 + 3 * request.width, rows_per_group(request.width)
    assert group == png.ROWS_PER_GROUP == 16
    expected = sub_filtered(rgb)

    def rows(first: int, last: int) -> bytes:
        return expected[first * stride : last * stride]

    cuts = [(0, 5), (5, 16), (16, 50), (50, 51), (51, 64), (64, 70)]
    for start, end in [*cuts, (0, 70), (0, 40), (3, 67), (17, 18), (20, 31), (32, 48)]:
        data = encode_band(rgb[start:end], start, compress_level=level)
        magic, width, count, position, group_rows, adler, crc = BAND_HEADER.unpack_from(data)
        assert (magic, width, count, position, group_rows) == (b"FQB2", 90, end - start, start, 16)
        body = data[BAND_HEADER.size :]
        assert crc == zlib.crc32(body)
        h, t, middle = layout(start, end, group)
        raw = rows(start, h) + (rows(t - 1, t) if middle else b"") + rows(max(h, t), end)
        assert body[: len(raw)] == raw, (start, end)
        deflated = body[len(raw) :]
        if not middle:
            assert deflated == b"" and adler == zlib.adler32(b"")
            continue
        assert deflated.endswith(b"\x00\x00\xff\xff")  # Z_SYNC_FLUSH: on a byte boundary
        above = rows(h - 1, h) if h else None
        inflater = zlib.decompressobj(-15, zdict=above) if above else zlib.decompressobj(-15)
        assert inflater.decompress(deflated) == rows(h, t)
        assert not inflater.eof and inflater.unused_data == b""  # no final block yet
        assert adler == zlib.adler32(rows(h, t))
    # The stitched image: one zlib stream (header, groups, final block, Adler-32).
    out = io.BytesIO()
    bands = (encode_band(rgb[a:b], a, compress_level=level) for a, b in cuts)
    assemble(bands, request.width, cuts, out, compress_level=level)
    stream = idat_stream(out.getvalue())
    assert stream == expected_stream(rgb, level)
    inflater = zlib.decompressobj()
    assert inflater.decompress(stream) == expected
    assert inflater.eof and inflater.unused_data == b""
    one = io.BytesIO()
    with PngWriter(one, request.width, request.height, compress_level=level) as writer:
        writer.write_rows(rgb)
    assert one.getvalue() == out.getvalue()
    assert np.array_equal(pixels(out.getvalue()), rgb)


def cuts_around(height: int, group: int, seed: int) -> list[list[tuple[int, int]]]:
    """Band cuts that cross groups every way: off the group grid, smaller than a
    group, spanning several groups, one band, one row per band, random."""
    generator = random.Random(seed)
    sizes: list[list[int]] = [
        [height],
        [group] * (height // group) + ([height % group] if height % group else []),
        [1] + [group] * ((height - 1) // group),
        [group - 1, 2, 3 * group + 1],
        [3 * group + 2, 1, 1, group // 2],
        [1] * height,
    ]
    for _ in range(4):
        sizes.append([generator.randint(1, 3 * group) for _ in range(height)])
        sizes.append([generator.randint(1, max(1, group - 1)) for _ in range(height)])
    cuts = []
    for plan in sizes:
        bands, start = [], 0
        for size in plan:
            if start >= height:
                break
            end = min(height, start + max(1, size))
            bands.append((start, end))
            start = end
        if start < height:
            bands.append((start, height))
        cuts.append(bands)
    return cuts


@pytest.mark.parametrize("group", [16, 3, 1])
@pytest.mark.parametrize(
    "height_in_groups", [(0, 1), (0, 2), (1, -1), (1, 0), (1, 1), (3, 5), (4, 0)]
)
def test_band_cuts_off_the_groups_are_byte_identical(
    group: int, height_in_groups: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(png, "ROWS_PER_GROUP", group)
    groups, extra = height_in_groups
    height = max(1, groups * group + extra)  # (1, -1) in groups of 1: one row again
    width = 29
    rgb = synthetic(width, 0, height)
    expected = one_piece(rgb)
    assert idat_stream(expected) == expected_stream(rgb)
    assert np.array_equal(pixels(expected), rgb)
    for seed, cut in enumerate(cuts_around(height, group, seed=group * 100 + height)):
        assert stitched(rgb, cut) == expected, (seed, cut)
        writer_out = io.BytesIO()  # PngWriter fed in the same pieces
        with PngWriter(writer_out, width, height) as writer:
            for start, end in cut:
                writer.write_rows(rgb[start:end])
        assert writer_out.getvalue() == expected, cut
    # Bands encoded without their first row are all raw, and assemble the same.
    cut = cuts_around(height, group, seed=1)[-1]
    out = io.BytesIO()
    assemble((encode_band(rgb[a:b]) for a, b in cut), width, cut, out)
    assert out.getvalue() == expected


def test_rows_too_wide_for_a_whole_group() -> None:
    # 30000 pixels = 90001 filtered bytes a row: groups of 11 rows stay within 1 MiB.
    assert rows_per_group(30000) == 11 and rows_per_group(21845) == 16
    rgb = synthetic(30000, 0, 25)
    expected = one_piece(rgb)
    assert idat_stream(expected) == expected_stream(rgb)
    for cut in ([(0, 25)], [(0, 11), (11, 25)], [(0, 3), (3, 14), (14, 24), (24, 25)]):
        assert stitched(rgb, cut) == expected
    assert np.array_equal(pixels(expected), rgb)


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


def rebuilt(data: bytes, body: bytes | None = None, **fields: int) -> bytes:
    """A band with another body or header fields, its CRC-32 recomputed: only
    the checks past the CRC can tell."""
    names = ("magic", "width", "rows", "start", "group", "adler", "crc")
    header = dict(zip(names, BAND_HEADER.unpack_from(data), strict=True))
    body = data[BAND_HEADER.size :] if body is None else body
    header.update(fields, crc=zlib.crc32(body))
    return BAND_HEADER.pack(*header.values()) + body


def test_band_objects_round_trip_and_are_checked() -> None:
    rgb = synthetic(10, 3, 40)  # head 3..16, middle 16..32, tail 32..40
    stride = 31
    raw_size = (13 + 1 + 8) * stride
    data = encode_band(rgb, 3)
    body = data[BAND_HEADER.size :]
    assert np.array_equal(decode_band(data, 10, 37, 3), rgb)
    assert np.array_equal(decode_band(data, 10, 37), rgb)
    assert np.array_equal(decode_band(encode_band(rgb[:1]), 10, 1), rgb[:1])
    assert np.array_equal(decode_band(encode_band(rgb[:1], 7), 10, 1, 7), rgb[:1])
    unplaced = encode_band(rgb)  # all raw: nothing to deflate without the position
    assert len(unplaced) == BAND_HEADER.size + 37 * stride
    assert BAND_HEADER.unpack_from(unplaced)[3] == UNKNOWN_START
    assert np.array_equal(decode_band(unplaced, 10, 37, 3), rgb)  # position unknown: not checked
    first = encode_band(rgb[13:37], 0)  # at row 0 no head: groups 0..16 deflated
    assert np.array_equal(decode_band(first, 10, 24, 0), rgb[13:37])
    assert len(first) < BAND_HEADER.size + 10 * stride + len(data) - raw_size

    def flipped(offset: int) -> bytes:
        return body[:offset] + bytes([body[offset] ^ 0x40]) + body[offset + 1 :]

    deflated = body[raw_size:]
    cases = [
        (b"", "not a fractalq band"),
        (b"FQB0" + data[4:], "not a fractalq band"),
        (b"FQB1" + data[4:], r"band is in an older format \(FQB1: one deflated piece per row\)"),
        (data[:10], "truncated"),
        (data[: BAND_HEADER.size + 12], "truncated"),
        (data[: BAND_HEADER.size + raw_size], "CRC-32 mismatch"),
        (rebuilt(data, body[:raw_size]), "truncated: its deflated rows are missing"),
        (data[:-3] + bytes([data[-3] ^ 0x40]) + data[-2:], "CRC-32 mismatch"),
        (rebuilt(data, flipped(len(body) - 9)), "band is corrupt"),  # inside the deflate bytes
        (rebuilt(data, flipped(5 * stride)), "not Sub-filtered"),  # a head row's filter byte
        (rebuilt(data, flipped(13 * stride + 4)), "not the ones it declares"),  # the last row
        (rebuilt(data, adler=12345), "do not inflate to their checksum"),
        (rebuilt(data, body[:-4]), "do not end on a sync flush"),
        (rebuilt(data, body + b"\x00"), "do not end on a sync flush"),
        (rebuilt(data, group=8), "band is deflated in groups of 8 rows, expected 16"),
        (rebuilt(data, start=4), "band is corrupt"),  # rows 4..16 raw, not 3..16
        (rebuilt(data, start=UNKNOWN_START), "band is truncated"),  # all rows raw
        (rebuilt(unplaced, unplaced[BAND_HEADER.size :] + deflated), "without whole groups"),
        (rebuilt(unplaced, adler=7), "without whole groups"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message) as caught:
            decode_band(bad, 10, 37)
        assert "\n" not in str(caught.value)
    with pytest.raises(ValueError, match="band is 10x37, expected 11x37"):
        decode_band(data, 11, 37)
    with pytest.raises(ValueError, match=r"band holds rows 3..40, expected 4..41"):
        decode_band(data, 10, 37, 4)
    with pytest.raises(ValueError, match="uint8"):
        encode_band(rgb.astype(np.int16))


def test_a_band_deflated_in_other_groups_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    rgb = synthetic(10, 0, 40)
    monkeypatch.setattr(png, "ROWS_PER_GROUP", 8)
    band = encode_band(rgb[20:40], 20)
    monkeypatch.setattr(png, "ROWS_PER_GROUP", 16)
    bands = [encode_band(rgb[:20], 0), band]
    with pytest.raises(
        ValueError, match=r"band 1 \(rows 20..40\): .* groups of 8 rows, expected 16"
    ):
        assemble(bands, 10, [(0, 20), (20, 40)], io.BytesIO())


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
        ([bands[0], b"FQB1" + bands[1][4:], bands[2]], 12, r"band 1 .*older format \(FQB1"),
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
    width, height = 16384, 512
    # Off the groups of 16 rows, one band inside a group: raw rows wait across bands.
    rows = [(0, 77), (77, 85), (85, 90), (90, 300), (300, 512)]
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
    assert peak < 64 * MiB, usage
    assert growth < largest + 8 * MiB, (usage, largest)  # one band, not the image
    assert np.array_equal(pixels(out.read_bytes()), synthetic(width, 0, height))


TASK_CHILD = Path(__file__).resolve().parent / "task_child.py"


@pytest.mark.parametrize("backend", ["folder", "s3"])
def test_the_assembly_task_at_16384_wide_runs_in_bounded_memory(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The whole task as a worker runs it: bands read from storage one at a
    # time, the PNG streamed to a file, stored (S3: a multipart upload of 8 MiB
    # parts), bands removed. The image is 192 MiB of pixels.
    width, height, regions = 16384, 4096, 16
    if backend == "s3":
        server: SeaweedS3 = request.getfixturevalue("s3_server")
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        url = f"s3://{server.make_bucket()}/images"
    else:
        url = (tmp_path / "storage").as_uri()
    render = RenderRequest.create("mandelbrot", width=width, height=height)
    plan = band_plan(render, regions)  # the default view: 16 tasks, 32 bands stored
    assert len(plan.tasks) == regions and plan.mirror == "rows"
    rows = plan.strips
    storage, job, largest = open_storage(url), "big", 0
    for start, end in rows:
        data = encode_band(synthetic(width, start, end), start)
        largest = max(largest, len(data))
        storage.put(band_key(job, start, end), data)
    payload = tmp_path / "payload.json"
    payload.write_bytes(assemble_payload(render, regions))
    result = subprocess.run(
        [sys.executable, str(TASK_CHILD), "fractal.assemble", str(payload), url, job],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    usage = json.loads(result.stdout)
    growth = (usage["peak_kib"] - usage["before_kib"]) * 1024
    # One band read, one PNG group being deflated and (S3) four parts in flight.
    assert growth < largest + 48 * MiB, (usage, largest)
    assert growth < width * height * 3 // 3, usage
    image = json.loads(usage["result"])
    assert image["key"] == image_key(job) and storage.exists(image["key"])
    head = storage.get(image["key"])[:24] if backend == "folder" else None
    if head is not None:
        assert struct.unpack(">II", head[16:24]) == (width, height)
    assert not any(storage.exists(band_key(job, start, end)) for start, end in rows)
