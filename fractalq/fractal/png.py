"""PNG for bands and for the assembled image.

Bands travel as small PNG files written by Pillow (fast compression: workers
should spend their time on the fractal). The final image is written by
:class:`PngWriter`, a streaming encoder small enough to be exact about its
bytes, which is what makes a distributed render identical to a one-band render:

* every row gets the same fixed filter (Paeth, computed with numpy from the
  unfiltered bytes, so it never depends on how rows were grouped);
* one zlib stream is fed one filtered row per call, so the compressed bytes are
  a function of the rows alone, not of the bands they came in;
* IDAT chunks are cut at fixed offsets of that stream, not when a band ends.

Memory stays bounded by a band (the caller's) plus a few rows and one chunk.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterable
from typing import BinaryIO

import numpy as np
import numpy.typing as npt
from PIL import Image, PngImagePlugin

from fractalq import config

Rgb = npt.NDArray[np.uint8]

SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Compressed bytes per IDAT chunk (the last one may be shorter).
IDAT_CHUNK_BYTES = 1 << 16
# Rows are filtered in groups of about this many bytes, to keep the int16
# temporaries of the Paeth filter small whatever the band size.
FILTER_GROUP_BYTES = 1 << 20
_PAETH = 4
_PNG_MAX_SIDE = 2**31 - 1


def encode_band(rgb: Rgb) -> bytes:
    """A band's pixels (uint8, shape (rows, width, 3)) as a PNG file."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"a band is uint8 (rows, width, 3), not {rgb.dtype} {rgb.shape}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(
        buffer, format="PNG", compress_level=config.BAND_COMPRESS_LEVEL
    )
    return buffer.getvalue()


def decode_band(data: bytes, width: int, rows: int) -> Rgb:
    """The pixels of a band PNG, checked to be 8-bit RGB of width x rows."""
    try:
        # The plugin class directly, not Image.open: Pillow's decompression-bomb
        # limit would refuse legitimately large bands, and the exact size check
        # below, made before any pixel is decoded, is the stricter guard.
        image = PngImagePlugin.PngImageFile(io.BytesIO(data))
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as error:
        raise ValueError(f"band is not a readable PNG: {_one_line(error)}") from None
    with image:
        if image.size != (width, rows):
            raise ValueError(f"band is {image.size[0]}x{image.size[1]}, expected {width}x{rows}")
        if image.mode != "RGB":
            raise ValueError(f"band is mode {image.mode}, expected RGB")
        try:
            image.load()
        except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as error:
            raise ValueError(f"band is corrupt: {_one_line(error)}") from None
        pixels = np.asarray(image, dtype=np.uint8)
    if pixels.shape != (rows, width, 3):
        raise ValueError(f"band decoded to shape {pixels.shape}, expected {(rows, width, 3)}")
    return pixels


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))
    )


def _paeth(rows: npt.NDArray[np.uint8], above: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Paeth-filter rows (shape (n, width * 3)); `above` is the row before the first.

    PNG defines the filter on the unfiltered bytes, so every predictor is known in
    advance and a whole group of rows filters at once.
    """
    x = rows.astype(np.int16)
    b = np.concatenate([above[np.newaxis].astype(np.int16), x[:-1]])  # up
    a = np.zeros_like(x)  # left: the same channel of the previous pixel
    a[:, 3:] = x[:, :-3]
    c = np.zeros_like(x)  # up-left
    c[:, 3:] = b[:, :-3]
    pa = np.abs(b - c)
    pb = np.abs(a - c)
    pc = np.abs(a + b - c - c)
    predictor = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
    return (x - predictor).astype(np.uint8)  # the wrap-around is PNG's modulo 256


class PngWriter:
    """Writes an 8-bit RGB, non-interlaced PNG of width x height rows to `out`, streaming.

    Feed rows top to bottom with :meth:`write_rows`, then :meth:`close`; also a
    context manager (on an exception, nothing more is written). The output does
    not depend on how the rows were split across calls.
    """

    def __init__(
        self,
        out: BinaryIO,
        width: int,
        height: int,
        compress_level: int = config.IMAGE_COMPRESS_LEVEL,
    ) -> None:
        if not (1 <= width <= _PNG_MAX_SIDE and 1 <= height <= _PNG_MAX_SIDE):
            raise ValueError(f"a PNG cannot be {width}x{height}")
        self.width = width
        self.height = height
        self.rows_written = 0
        self._out = out
        self._compressor = zlib.compressobj(compress_level)
        self._pending = bytearray()
        self._above = np.zeros(width * 3, dtype=np.uint8)  # the row above row 0 is zeros
        self._closed = False
        # bit depth 8, colour type 2 (RGB), deflate, adaptive filtering, no interlace
        header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
        out.write(SIGNATURE + _chunk(b"IHDR", header))

    def write_rows(self, rgb_rows: Rgb) -> None:
        """Append rows (uint8, shape (n, width, 3)) below those already written."""
        if self._closed:
            raise ValueError("the PNG is already closed")
        if rgb_rows.dtype != np.uint8 or rgb_rows.shape[1:] != (self.width, 3):
            raise ValueError(
                f"rows must be uint8 (n, {self.width}, 3), not {rgb_rows.dtype} {rgb_rows.shape}"
            )
        count = rgb_rows.shape[0]
        if self.rows_written + count > self.height:
            raise ValueError(
                f"{self.rows_written + count} rows is more than the image's {self.height}"
            )
        flat = rgb_rows.reshape(count, self.width * 3)
        group = max(1, FILTER_GROUP_BYTES // (self.width * 3))
        filter_byte = bytes([_PAETH])
        for first in range(0, count, group):
            rows = flat[first : first + group]
            for row in _paeth(rows, self._above):
                self._pending += self._compressor.compress(filter_byte + row.tobytes())
            self._above = rows[-1].copy()
            self._emit(final=False)
        self.rows_written += count

    def close(self) -> None:
        """Finish the image: the last IDAT and IEND. Refuses an image missing rows."""
        if self._closed:
            return
        if self.rows_written != self.height:
            raise ValueError(f"only {self.rows_written} of {self.height} rows were written")
        self._pending += self._compressor.flush()
        self._emit(final=True)
        self._out.write(_chunk(b"IEND", b""))
        self._closed = True

    def _emit(self, final: bool) -> None:
        while len(self._pending) >= IDAT_CHUNK_BYTES or (final and self._pending):
            data = bytes(self._pending[:IDAT_CHUNK_BYTES])
            del self._pending[:IDAT_CHUNK_BYTES]
            self._out.write(_chunk(b"IDAT", data))

    def __enter__(self) -> PngWriter:
        return self

    def __exit__(self, kind: object, error: object, traceback: object) -> None:
        if error is None:
            self.close()


def assemble(
    bands: Iterable[bytes],
    request_width: int,
    band_rows: list[tuple[int, int]],
    out: BinaryIO,
) -> None:
    """Stream band PNGs, in order, into one PNG on `out`, one band in memory at a time.

    `band_rows` are the bands' half-open row ranges (as from ``split_rows``); they
    must tile the image from row 0. On an error `out` holds a partial file: write
    to a temporary name and rename on success.
    """
    if not band_rows:
        raise ValueError("an image needs at least one band")
    expected = 0
    for start, end in band_rows:
        if start != expected or end <= start:
            raise ValueError(f"band rows {start}..{end} do not continue from row {expected}")
        expected = end
    supply = iter(bands)
    with PngWriter(out, request_width, expected) as writer:
        for index, (start, end) in enumerate(band_rows):
            data = next(supply, None)
            if data is None:
                raise ValueError(f"got {index} bands, expected {len(band_rows)}")
            try:
                writer.write_rows(decode_band(data, request_width, end - start))
            except ValueError as error:
                raise ValueError(f"band {index} (rows {start}..{end}): {error}") from None
        if next(supply, None) is not None:
            raise ValueError(f"got more than the {len(band_rows)} bands expected")
