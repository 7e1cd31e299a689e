"""PNG for bands and for the assembled image, assembled without re-encoding.

The final image's zlib stream is a concatenation of independently deflated rows,
so workers do the compressing and the assembler only copies bytes:

* every row gets the Sub filter (type 1), which looks at no other row, so a
  worker filters its band alone;
* every row is deflated on its own (raw deflate, a fresh compressor ended with
  ``Z_SYNC_FLUSH``, so it ends on a byte boundary), primed with the previous
  row's filtered bytes as its dictionary (at most the last 32 KiB: the deflate
  window, which holds exactly those bytes when the rows are concatenated). The
  compressed bytes of a row are thus a function of two rows alone, never of the
  band cut, which keeps "same request, same bytes whatever the bands";
* a band object carries its rows 1.. deflated, plus its first and last filtered
  rows raw: the assembler deflates each band's first row itself, primed with the
  previous band's last row (a few KiB of work per band), and copies the rest;
* the stream is the zlib header, the rows, a final empty block, and the Adler-32
  of all filtered bytes, combined from the bands' (:func:`adler32_combine`);
* IDAT chunks are cut at fixed offsets of that stream, not when a band ends.

:class:`PngWriter` (one-piece images) writes exactly the same stream, so a
distributed render is byte-identical to one rendered in one piece.

Band object: a header ``>4sIIIII`` (magic ``FQB1``, width, rows, first image
row or 0xFFFFFFFF if the encoder was not told, Adler-32 of the filtered bytes of
rows 1.., CRC-32 of everything after the header), then the
first filtered row, the last filtered row (each ``1 + 3 * width`` bytes), then
the raw deflate bytes of rows 1... The CRC lets the assembler reject a corrupt
band without inflating it.

Assembly memory is bounded by one band object plus one IDAT chunk.

What compresses: ISA-L (Intel's deflate, through the ``isal`` package's
``isal_zlib``), at ``config.IMAGE_COMPRESS_LEVEL`` (ISA-L's 0..3, default 1),
because deflating dominated a band: for a 1200x800 Mandelbrot band zlib level 6
took about 150 ms (530 kB) against a 25 ms escape-time kernel; ISA-L level 1
takes 20 to 25 ms (690 kB), level 0 about 10 ms (870 kB). That is mostly a cost
per row, a deflate block of its own with its own Huffman tables: the same rows
as one stream take 8 ms, and Python around the calls about 2 ms. ISA-L
honours the dictionary and ``Z_SYNC_FLUSH`` as zlib does (each row ends with the
empty stored block ``00 00 ff ff``); any inflater reads the stream, and this
module reads bands back with the standard library's zlib.

Byte-identity holds for one compressor build: the deflated bytes are a function
of the pinned ``isal`` (its bundled ISA-L) and of the code path ISA-L picks for
the CPU, so the file is the same whatever the band count when every worker and
the assembler run that pin. Checked on x86-64 (under QEMU for the older CPUs):
levels 0..2 give the same bytes on SSE4.2, AVX, AVX2 and AVX-512 machines;
level 3 does not (AVX-512, AVX2 and older CPUs each give their own), so it
is refused. A CPU
without SSE4.2 would run ISA-L's C fallback, another hash, other bytes at every
level, but numpy 2.4 refuses such a CPU anyway (x86-64-v2). ARM64 (ISA-L's own
assembly) is not checked. Bands deflated on different paths still assemble into
a valid PNG of the same pixels, only not the same file: the pixels never depend
on the compressor.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from typing import BinaryIO

import numpy as np
import numpy.typing as npt
from isal import isal_zlib

from fractalq import config

Rgb = npt.NDArray[np.uint8]
# A filtered row: bytes, or a view of a row of filtered rows (deflated without a copy).
Row = bytes | memoryview

SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Compressed bytes per IDAT chunk (the last one may be shorter).
IDAT_CHUNK_BYTES = 1 << 16
# Rows are filtered in groups of about this many bytes, to bound the temporaries
# of PngWriter whatever the size of the rows it is given.
FILTER_GROUP_BYTES = 1 << 20
BAND_MAGIC = b"FQB1"
BAND_HEADER = struct.Struct(">4sIIIII")
UNKNOWN_START = 0xFFFFFFFF  # a band encoded without its position in the image
_SUB = 1
_WINDOW = 1 << 15  # deflate's window: the most of a dictionary that can be referenced
_BASE = 65521  # Adler-32's modulus
# A final fixed-Huffman block holding only its end code: ends the deflate stream.
_FINAL_BLOCK = b"\x03\x00"
_PNG_MAX_SIDE = 2**31 - 1
# ISA-L's levels whose bytes do not depend on the CPU (its level 3's do, see above).
COMPRESS_LEVELS = range(isal_zlib.ISAL_BEST_SPEED, 3)


def adler32_combine(adler1: int, adler2: int, length2: int) -> int:
    """The Adler-32 of A + B from that of A, that of B and B's length (zlib's, in Python)."""
    a1, b1 = adler1 & 0xFFFF, adler1 >> 16
    a2, b2 = adler2 & 0xFFFF, adler2 >> 16
    a = (a1 + a2 - 1) % _BASE
    b = (b1 + b2 + (length2 % _BASE) * (a1 - 1)) % _BASE
    return (b << 16) | a


def _filter_rows(rgb: Rgb) -> npt.NDArray[np.uint8]:
    """Rows (n, width, 3) as PNG rows with the Sub filter: shape (n, 1 + 3 * width)."""
    count, width = rgb.shape[0], rgb.shape[1]
    flat = rgb.reshape(count, width * 3)
    filtered = np.empty((count, 1 + width * 3), dtype=np.uint8)
    filtered[:, 0] = _SUB
    filtered[:, 1:4] = flat[:, :3]
    np.subtract(flat[:, 3:], flat[:, :-3], out=filtered[:, 4:])  # wraps: PNG's modulo 256
    return filtered


def _check_level(level: int) -> None:
    if isinstance(level, bool) or not isinstance(level, int) or level not in COMPRESS_LEVELS:
        raise ValueError(
            f"compress_level must be an ISA-L level, {COMPRESS_LEVELS.start}.."
            f"{COMPRESS_LEVELS.stop - 1}, not {level!r}"
        )


def _flat(array: npt.NDArray[np.uint8]) -> memoryview:
    """The bytes of a C-contiguous uint8 array, as a flat view (no copy)."""
    return array.reshape(-1).data


def _deflate_row(row: Row, previous: Row | None, level: int) -> bytes:
    """One filtered row as raw deflate ending on a byte boundary, primed with the row above."""
    if previous is None:
        compressor = isal_zlib.compressobj(level, isal_zlib.DEFLATED, -15)
    else:
        window = previous[-_WINDOW:]
        compressor = isal_zlib.compressobj(level, isal_zlib.DEFLATED, -15, zdict=window)
    return compressor.compress(row) + compressor.flush(isal_zlib.Z_SYNC_FLUSH)


def _deflate_rows(filtered: npt.NDArray[np.uint8], previous: Row | None, level: int) -> list[bytes]:
    """Filtered rows (n, stride) deflated one by one, the first primed with `previous`."""
    stride = filtered.shape[1]
    view = _flat(filtered)
    pieces = []
    for offset in range(0, len(view), stride):
        row = view[offset : offset + stride]
        pieces.append(_deflate_row(row, previous, level))
        previous = row
    return pieces


def _zlib_header(level: int) -> bytes:
    """The zlib header: deflate, 32 KiB window, FLEVEL as ISA-L writes it (advisory)."""
    cmf = 0x78
    flg = (0 if level == 0 else 1) << 6  # 0: fastest; 1: fast
    flg |= -(cmf << 8 | flg) % 31  # FCHECK: the header, big-endian, is a multiple of 31
    return bytes([cmf, flg])


class _ZlibIdat:
    """Writes a zlib stream made of deflated pieces as IDAT chunks cut at fixed offsets."""

    def __init__(self, out: BinaryIO, level: int) -> None:
        self._out = out
        self._pending = bytearray(_zlib_header(level))
        self.adler = zlib.adler32(b"")

    def add(self, piece: bytes | memoryview, adler: int, length: int) -> None:
        """Append deflated bytes whose uncompressed data has this Adler-32 and length."""
        self.checksum(adler, length)
        self.write(piece)

    def checksum(self, adler: int, length: int) -> None:
        """Account for uncompressed data of this Adler-32 and length (its bytes: `write`)."""
        self.adler = adler32_combine(self.adler, adler, length)

    def write(self, piece: bytes | memoryview) -> None:
        """Append deflated bytes (their uncompressed data: `checksum`)."""
        view = memoryview(piece)
        if self._pending:
            take = IDAT_CHUNK_BYTES - len(self._pending)
            self._pending += view[:take]
            view = view[take:]
            if len(self._pending) < IDAT_CHUNK_BYTES:
                return
            self._write(memoryview(self._pending))
            self._pending = bytearray()
        while len(view) >= IDAT_CHUNK_BYTES:  # whole chunks straight from the piece
            self._write(view[:IDAT_CHUNK_BYTES])
            view = view[IDAT_CHUNK_BYTES:]
        self._pending += view

    def finish(self) -> None:
        self._pending += _FINAL_BLOCK + struct.pack(">I", self.adler)
        view = memoryview(self._pending)
        while view:
            self._write(view[:IDAT_CHUNK_BYTES])
            view = view[IDAT_CHUNK_BYTES:]
        self._pending = bytearray()
        self._out.write(_chunk(b"IEND", b""))

    def _write(self, data: memoryview) -> None:
        crc = zlib.crc32(data, zlib.crc32(b"IDAT"))
        self._out.write(struct.pack(">I", len(data)) + b"IDAT")
        self._out.write(data)
        self._out.write(struct.pack(">I", crc))


def _check_rgb(rgb: Rgb) -> None:
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"a band is uint8 (rows, width, 3), not {rgb.dtype} {rgb.shape}")
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ValueError(f"a band has at least one row and column, not {rgb.shape}")


def encode_band(
    rgb: Rgb, start: int | None = None, compress_level: int = config.IMAGE_COMPRESS_LEVEL
) -> bytes:
    """A band's pixels (uint8, shape (rows, width, 3)) as a band object (see the module).

    `start`, the band's first row in the image, is recorded so that the assembler
    can refuse a band put in the wrong place; the bytes otherwise do not depend on it.
    """
    _check_rgb(rgb)
    _check_level(compress_level)
    if start is not None and not 0 <= start < UNKNOWN_START:
        raise ValueError(f"a band cannot start at row {start}")
    count, width = rgb.shape[0], rgb.shape[1]
    filtered = _filter_rows(np.ascontiguousarray(rgb))
    first, last = filtered[0].tobytes(), filtered[-1].tobytes()
    pieces = _deflate_rows(filtered[1:], first, compress_level)
    adler = zlib.adler32(_flat(filtered[1:]))
    body = b"".join([first, last, *pieces])
    position = UNKNOWN_START if start is None else start
    header = BAND_HEADER.pack(BAND_MAGIC, width, count, position, adler, zlib.crc32(body))
    return header + body


class _Band:
    """A checked band object: its first and last filtered rows and the deflated rest."""

    def __init__(self, data: bytes, width: int, rows: int, start: int | None) -> None:
        if len(data) < BAND_HEADER.size or data[:4] != BAND_MAGIC:
            raise ValueError("band is not a fractalq band (bad magic)")
        _, band_width, band_rows, band_start, adler, crc = BAND_HEADER.unpack_from(data)
        if (band_width, band_rows) != (width, rows):
            raise ValueError(f"band is {band_width}x{band_rows}, expected {width}x{rows}")
        if start is not None and band_start not in (UNKNOWN_START, start):
            raise ValueError(
                f"band holds rows {band_start}..{band_start + rows}, "
                f"expected {start}..{start + rows}"
            )
        stride = 1 + 3 * width
        view = memoryview(data)[BAND_HEADER.size :]
        if len(view) < 2 * stride:
            raise ValueError(f"band is truncated: {len(data)} bytes")
        if zlib.crc32(view) != crc:
            raise ValueError("band is corrupt: CRC-32 mismatch")
        self.first = bytes(view[:stride])
        self.last = bytes(view[stride : 2 * stride])
        self.deflated = view[2 * stride :]
        self.adler = adler
        self.tail_length = (rows - 1) * stride
        if self.first[0] != _SUB or self.last[0] != _SUB:
            raise ValueError("band is corrupt: a row is not Sub-filtered")
        if rows == 1 and self.first != self.last:
            raise ValueError("band is corrupt: its one row is stored two ways")
        if rows == 1 and self.deflated:
            raise ValueError("band is corrupt: trailing bytes after its one row")


def decode_band(data: bytes, width: int, rows: int, start: int | None = None) -> Rgb:
    """The pixels of a band object, checked to be width x rows (from `start`) and intact."""
    band = _Band(data, width, rows, start)
    tail = b""
    if rows > 1:
        inflater = zlib.decompressobj(-15, zdict=band.first[-_WINDOW:])
        try:
            tail = inflater.decompress(band.deflated, band.tail_length + 1)
        except zlib.error as error:
            raise ValueError(f"band is corrupt: {_one_line(error)}") from None
        if len(tail) != band.tail_length or zlib.adler32(tail) != band.adler:
            raise ValueError("band is corrupt: its rows do not inflate to their checksum")
    filtered = np.frombuffer(band.first + tail, dtype=np.uint8).reshape(rows, 1 + 3 * width)
    if (filtered[:, 0] != _SUB).any() or filtered[-1].tobytes() != band.last:
        raise ValueError("band is corrupt: its rows are not the ones it declares")
    return np.cumsum(filtered[:, 1:].reshape(rows, width, 3), axis=1, dtype=np.uint8)


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


def _header(out: BinaryIO, width: int, height: int) -> None:
    if not (1 <= width <= _PNG_MAX_SIDE and 1 <= height <= _PNG_MAX_SIDE):
        raise ValueError(f"a PNG cannot be {width}x{height}")
    # bit depth 8, colour type 2 (RGB), deflate, adaptive filtering, no interlace
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    out.write(SIGNATURE + _chunk(b"IHDR", header))


class PngWriter:
    """Writes an 8-bit RGB, non-interlaced PNG of width x height rows to `out`, streaming.

    Feed rows top to bottom with :meth:`write_rows`, then :meth:`close`; also a
    context manager (on an exception, nothing more is written). The output does
    not depend on how the rows were split across calls, and equals what
    :func:`assemble` writes from bands of the same rows.
    """

    def __init__(
        self,
        out: BinaryIO,
        width: int,
        height: int,
        compress_level: int = config.IMAGE_COMPRESS_LEVEL,
    ) -> None:
        _check_level(compress_level)
        _header(out, width, height)
        self.width = width
        self.height = height
        self.rows_written = 0
        self._level = compress_level
        self._stream = _ZlibIdat(out, compress_level)
        self._previous: bytes | None = None  # the filtered row above, if any
        self._closed = False

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
        group = max(1, FILTER_GROUP_BYTES // (self.width * 3))
        for first in range(0, count, group):
            filtered = _filter_rows(np.ascontiguousarray(rgb_rows[first : first + group]))
            for piece in _deflate_rows(filtered, self._previous, self._level):
                self._stream.write(piece)
            self._stream.checksum(zlib.adler32(_flat(filtered)), filtered.size)
            self._previous = filtered[-1].tobytes()
        self.rows_written += count

    def close(self) -> None:
        """Finish the image: the last IDAT and IEND. Refuses an image missing rows."""
        if self._closed:
            return
        if self.rows_written != self.height:
            raise ValueError(f"only {self.rows_written} of {self.height} rows were written")
        self._stream.finish()
        self._closed = True

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
    compress_level: int = config.IMAGE_COMPRESS_LEVEL,
) -> None:
    """Stream band objects, in order, into one PNG on `out`, one band in memory at a time.

    Nothing is inflated or re-encoded: each band's deflated rows are copied, and
    only its first row is deflated here (it needs the previous band's last row).
    `band_rows` are the bands' half-open row ranges (as from ``split_rows``); they
    must tile the image from row 0. On an error `out` holds a partial file: write
    to a temporary name and rename on success.
    """
    _check_level(compress_level)
    if not band_rows:
        raise ValueError("an image needs at least one band")
    expected = 0
    for start, end in band_rows:
        if start != expected or end <= start:
            raise ValueError(f"band rows {start}..{end} do not continue from row {expected}")
        expected = end
    _header(out, request_width, expected)
    stream = _ZlibIdat(out, compress_level)
    previous: bytes | None = None
    supply = iter(bands)
    for index, (start, end) in enumerate(band_rows):
        data = next(supply, None)
        if data is None:
            raise ValueError(f"got {index} bands, expected {len(band_rows)}")
        try:
            band = _Band(data, request_width, end - start, start)
        except ValueError as error:
            raise ValueError(f"band {index} (rows {start}..{end}): {error}") from None
        first = band.first
        stream.add(_deflate_row(first, previous, compress_level), zlib.adler32(first), len(first))
        stream.add(band.deflated, band.adler, band.tail_length)
        previous = band.last
        del data, band
    if next(supply, None) is not None:
        raise ValueError(f"got more than the {len(band_rows)} bands expected")
    stream.finish()
