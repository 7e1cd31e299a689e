"""PNG for bands and for the assembled image, assembled without re-encoding.

The final image's zlib stream is a concatenation of independently deflated
groups of rows, so workers do most of the compressing and the assembler mostly
copies bytes:

* every row gets the Sub filter (type 1), which looks at no other row, so a
  worker filters its band alone;
* the image's rows are cut in groups at fixed rows: group k is rows
  ``k * G .. (k + 1) * G`` (the last may be shorter), ``G = rows_per_group(width)``:
  ``ROWS_PER_GROUP`` (16), fewer only when a group would pass ``GROUP_BYTES``
  (1 MiB, rows wider than 21845 pixels), so G is a function of the width alone;
* every group is deflated on its own (raw deflate, a fresh compressor ended with
  ``Z_SYNC_FLUSH``, so it ends on a byte boundary), primed with the filtered row
  just above it as its dictionary (at most its last 32 KiB: the deflate window;
  none for group 0). The compressed bytes of a group are thus a function of
  G + 1 rows, never of the band cut, which keeps "same request, same bytes
  whatever the bands";
* a band ``[s, e)`` deflates the groups it holds whole and can prime: its
  *middle*, the whole groups from ``h`` to ``t = e // G * G``, where its *head*
  ``s .. h`` is the rest of the group holding ``s`` (``h`` the next multiple of
  G, at most ``e``): that group's dictionary, or its first rows, are in another
  band (at row 0 there is no head: group 0 needs no dictionary). Its head and
  its *tail* ``max(h, t) .. e`` (a group the next band continues, or the
  image's last) travel raw, with the middle's last row (the dictionary of the
  group after the middle);
* the assembler keeps the raw rows of the group in progress and the row above
  it: it appends a band's head, deflates the group once complete (at a multiple
  of G, or the image's end), copies the middle's bytes, and keeps the tail for
  the next band. A group may gather rows from several bands smaller than G;
* the stream is the zlib header, the groups, a final empty block, and the
  Adler-32 of all filtered bytes: the assembler's raw groups' combined with the
  bands' middles' (:func:`adler32_combine`);
* IDAT chunks are cut at fixed offsets of that stream, not when a band ends.

:class:`PngWriter` (one-piece images) writes exactly the same stream, so a
distributed render is byte-identical to one rendered in one piece.

Band object: a header ``>4sIIIIII`` (magic ``FQB2``, width, rows, first image
row or 0xFFFFFFFF if the encoder was not told, rows per group, Adler-32 of the
middle's filtered bytes, CRC-32 of everything after the header), then the raw
filtered rows in row order (the head, the middle's last row if there is a
middle, the tail; each ``1 + 3 * width`` bytes), then the middle's deflated
groups. The layout follows from the first row, the rows and G; a band encoded
without its first row is all raw (the assembler deflates it all: the same
image). The CRC lets the assembler reject a corrupt band without inflating it;
``FQB1`` bands (one deflated piece per row) are refused.

Assembly memory is bounded by one band object, one group (``GROUP_BYTES`` or
one row) and one IDAT chunk.

What compresses: ISA-L (Intel's deflate, through the ``isal`` package's
``isal_zlib``), at ``config.IMAGE_COMPRESS_LEVEL`` (ISA-L's 0..3, default 1),
because deflating dominated a band: for a 1200x800 Mandelbrot band zlib level 6
took about 150 ms (530 kB) against a 25 ms escape-time kernel. Why groups: the
cost of ISA-L is mostly per deflate block, each with its own Huffman tables.
Rows 0..800 of a 1200x800 image at ``max_iter=1000``, ``encode_band`` (medians
of 7): one piece per row took 21 ms (693 kB) for Mandelbrot, 25 ms (1438 kB)
for Julia; groups of 8 rows 9.7 ms (640 kB) and 11.6 ms (1380 kB); of 16, 8.5 ms
(634 kB) and 10.7 ms (1377 kB); of 32, 7.8 ms and 10.1 ms; of 64, 7.3 ms and
9.6 ms. Past 16 little is left to win, and the price grows with G: a band
carries about G + 1 raw rows (head, tail, one dictionary row) and the assembler
deflates them. That image as 8 bands of 100 rows: 737 kB of Mandelbrot bands
per row, 966 kB with G = 16, 1279 kB with 32, 1992 kB with 64; assembling took
0.7, 1.9, 3.2 and 5.1 ms. Very wide rows are large blocks already: 16384-wide
Mandelbrot rows, 54 ms per 512 rows one by one, 35 ms in groups of 5 or 8,
33 ms of 16 or 32, hence a cap in bytes that costs nothing up to 21845 pixels.
ISA-L honours the dictionary and ``Z_SYNC_FLUSH`` as zlib does (each group ends
with the empty stored block ``00 00 ff ff``); any inflater reads the stream, and
this module reads bands back with the standard library's zlib. The checksums
(CRC-32 of the chunks and bands, Adler-32 of the rows) are ISA-L's too: the same
values as zlib's, in about a fifth of the time (0.5 of a 200-row band's 2.2 ms).

Byte-identity holds for one compressor build: the deflated bytes are a function
of the pinned ``isal`` (its bundled ISA-L) and of the code path ISA-L picks for
the CPU, so the file is the same whatever the band count when every worker and
the assembler run that pin (and the same G: a band records it, and one deflated
in other groups is refused). Checked on x86-64 (under QEMU for the older CPUs),
row by row and again in groups of 16: levels 0..2 give the same bytes on SSE4.2,
AVX, AVX2 and AVX-512 machines; level 3 does not (AVX-512, AVX2 and older CPUs
each give their own), so it is refused. A CPU without SSE4.2 would run ISA-L's
C fallback, another hash, other bytes at every level, but numpy 2.4 refuses
such a CPU anyway (x86-64-v2). ARM64 (ISA-L's own assembly) is not checked.
Bands deflated on different paths still assemble into a valid PNG of the same
pixels, only not the same file: the pixels never depend on the compressor.
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
# Filtered rows: bytes, or a view of filtered rows (deflated without a copy).
Rows = bytes | bytearray | memoryview

SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Compressed bytes per IDAT chunk (the last one may be shorter).
IDAT_CHUNK_BYTES = 1 << 16
# Rows deflated as one piece: group k is rows k * G .. (k + 1) * G of the image.
ROWS_PER_GROUP = 16
# ...fewer for rows so wide that a group would pass this many bytes (one row at least).
GROUP_BYTES = 1 << 20
# Rows are filtered in groups of about this many bytes, to bound the temporaries
# of PngWriter whatever the size of the rows it is given.
FILTER_GROUP_BYTES = 1 << 20
BAND_MAGIC = b"FQB2"
_OLD_MAGICS = {b"FQB1": "one deflated piece per row"}
BAND_HEADER = struct.Struct(">4sIIIIII")
UNKNOWN_START = 0xFFFFFFFF  # a band encoded without its position in the image
_SUB = 1
_WINDOW = 1 << 15  # deflate's window: the most of a dictionary that can be referenced
_BASE = 65521  # Adler-32's modulus
# A final fixed-Huffman block holding only its end code: ends the deflate stream.
_FINAL_BLOCK = b"\x03\x00"
# What Z_SYNC_FLUSH ends with: an empty stored block (after a byte boundary).
_SYNC_MARK = b"\x00\x00\xff\xff"
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


def rows_per_group(width: int) -> int:
    """Rows per deflated group in an image this wide: a function of the width alone."""
    return max(1, min(ROWS_PER_GROUP, GROUP_BYTES // (1 + 3 * width)))


def _layout(start: int | None, rows: int, group: int) -> tuple[int, int]:
    """How a band cuts its rows: (head, middle), the raw rows before its deflated
    groups and the rows in them; the rest (its tail) is raw too. Unplaced: all raw."""
    if start is None:
        return rows, 0
    end = start + rows
    # The group holding `start` needs the row above it, which is in another band
    # (except the image's first group, which has none).
    head_end = 0 if start == 0 else min(end, (start // group + 1) * group)
    middle_end = end // group * group
    return head_end - start, max(0, middle_end - head_end)


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


def _dictionary(rows: Rows, stride: int) -> bytes:
    """What primes the next group: the last row of `rows`, its last 32 KiB (the window)."""
    return bytes(rows[len(rows) - min(stride, _WINDOW) :])


def _deflate_group(rows: Rows, dictionary: Rows | None, level: int) -> bytes:
    """A group of filtered rows as raw deflate ending on a byte boundary, primed with
    `dictionary` (from the row above the group; None for the image's first group)."""
    if dictionary is None:
        compressor = isal_zlib.compressobj(level, isal_zlib.DEFLATED, -15)
    else:
        compressor = isal_zlib.compressobj(level, isal_zlib.DEFLATED, -15, zdict=dictionary)
    return compressor.compress(rows) + compressor.flush(isal_zlib.Z_SYNC_FLUSH)


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
        self.adler = isal_zlib.adler32(b"")

    def add(self, piece: bytes | memoryview, adler: int, length: int) -> None:
        """Append deflated bytes whose uncompressed data has this Adler-32 and length."""
        self.adler = adler32_combine(self.adler, adler, length)
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
        crc = isal_zlib.crc32(data, isal_zlib.crc32(b"IDAT"))
        self._out.write(struct.pack(">I", len(data)) + b"IDAT")
        self._out.write(data)
        self._out.write(struct.pack(">I", crc))


class _Groups:
    """Takes an image's filtered rows in order and writes them deflated, group by group.

    Rows arrive raw (:meth:`add_rows`, in any pieces) or as complete groups that a
    worker deflated (:meth:`add_deflated`). Raw rows wait in a buffer until their
    group is complete (its end is a multiple of the group size, or the image's
    end); then it is deflated, primed with the row above it, and written.
    Holds at most one group and one dictionary.
    """

    def __init__(self, stream: _ZlibIdat, width: int, height: int, level: int) -> None:
        self._stream = stream
        self._stride = 1 + 3 * width
        self._group = rows_per_group(width)
        self._height = height
        self._level = level
        self.rows = 0  # rows taken so far
        self._dictionary: bytes | None = None  # from the row above the pending group
        self._pending = bytearray()  # the rows taken of a group not yet complete

    def add_rows(self, rows: memoryview) -> None:
        """Append filtered rows (a whole number of them) below those taken."""
        stride, group = self._stride, self._group
        count = len(rows) // stride
        if count * stride != len(rows) or self.rows + count > self._height:
            raise ValueError(f"{len(rows)} bytes are not rows that fit in the image")
        offset = 0
        while offset < count:
            group_end = min(self._height, (self.rows // group + 1) * group)
            take = min(count - offset, group_end - self.rows)
            piece = rows[offset * stride : (offset + take) * stride]
            offset += take
            self.rows += take
            if self.rows < group_end:
                self._pending += piece
            elif self._pending:
                self._pending += piece
                self._emit(self._pending)
                self._pending = bytearray()
            else:  # a whole group in one piece: deflated without a copy
                self._emit(piece)

    def add_deflated(self, deflated: memoryview, adler: int, count: int, last: Rows) -> None:
        """Append `count` rows that are whole groups, deflated (with the right
        dictionaries), whose data has this Adler-32; `last` is their last row."""
        if self._pending or self.rows % self._group or self.rows + count > self._height:
            raise ValueError(f"deflated rows cannot start at row {self.rows}")
        self._stream.add(deflated, adler, count * self._stride)
        self.rows += count
        self._dictionary = _dictionary(last, self._stride)

    def finish(self) -> None:
        if self.rows != self._height:
            raise ValueError(f"only {self.rows} of {self._height} rows were written")
        self._stream.finish()

    def _emit(self, rows: Rows) -> None:
        deflated = _deflate_group(rows, self._dictionary, self._level)
        self._stream.add(deflated, isal_zlib.adler32(rows), len(rows))
        self._dictionary = _dictionary(rows, self._stride)


def _check_rgb(rgb: Rgb) -> None:
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"a band is uint8 (rows, width, 3), not {rgb.dtype} {rgb.shape}")
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ValueError(f"a band has at least one row and column, not {rgb.shape}")


def encode_band(
    rgb: Rgb, start: int | None = None, compress_level: int = config.IMAGE_COMPRESS_LEVEL
) -> bytes:
    """A band's pixels (uint8, shape (rows, width, 3)) as a band object (see the module).

    `start` is the band's first row in the image: it says which of the band's
    rows make whole groups the worker can deflate, and lets the assembler refuse
    a band put in the wrong place. Without it every row is stored raw (the
    assembler deflates them all: the same image, assembled more slowly).
    """
    _check_rgb(rgb)
    _check_level(compress_level)
    if start is not None and not 0 <= start < UNKNOWN_START:
        raise ValueError(f"a band cannot start at row {start}")
    count, width = rgb.shape[0], rgb.shape[1]
    group = rows_per_group(width)
    filtered = _filter_rows(np.ascontiguousarray(rgb))
    head, middle = _layout(start, count, group)
    raw = [_flat(filtered[:head])]
    if middle:
        raw.append(_flat(filtered[head + middle - 1]))
    raw.append(_flat(filtered[head + middle :]))
    pieces = []
    dictionary = _flat(filtered[head - 1])[-_WINDOW:] if head else None
    for first in range(head, head + middle, group):
        pieces.append(
            _deflate_group(_flat(filtered[first : first + group]), dictionary, compress_level)
        )
        dictionary = _flat(filtered[first + group - 1])[-_WINDOW:]
    adler = isal_zlib.adler32(_flat(filtered[head : head + middle]))
    crc = 0
    for part in raw:
        crc = isal_zlib.crc32(part, crc)
    for piece in pieces:
        crc = isal_zlib.crc32(piece, crc)
    position = UNKNOWN_START if start is None else start
    header = BAND_HEADER.pack(BAND_MAGIC, width, count, position, group, adler, crc)
    return b"".join([header, *raw, *pieces])  # one copy of the band, not two


class _Band:
    """A checked band object: its raw rows (head, the middle's last row, tail) and
    its middle deflated."""

    def __init__(self, data: bytes, width: int, rows: int, start: int | None) -> None:
        magic = bytes(data[:4])
        if magic != BAND_MAGIC:
            if magic in _OLD_MAGICS:
                raise ValueError(
                    f"band is in an older format ({magic.decode()}: {_OLD_MAGICS[magic]}), "
                    f"not {BAND_MAGIC.decode()}: render it again"
                )
            raise ValueError("band is not a fractalq band (bad magic)")
        if len(data) < BAND_HEADER.size:
            raise ValueError(f"band is truncated: {len(data)} bytes")
        _, band_width, band_rows, band_start, group, adler, crc = BAND_HEADER.unpack_from(data)
        if (band_width, band_rows) != (width, rows):
            raise ValueError(f"band is {band_width}x{band_rows}, expected {width}x{rows}")
        if start is not None and band_start not in (UNKNOWN_START, start):
            raise ValueError(
                f"band holds rows {band_start}..{band_start + rows}, "
                f"expected {start}..{start + rows}"
            )
        if group != rows_per_group(width):
            raise ValueError(
                f"band is deflated in groups of {group} rows, expected {rows_per_group(width)}"
            )
        head, middle = _layout(None if band_start == UNKNOWN_START else band_start, rows, group)
        stride = 1 + 3 * width
        raw_rows = rows - middle + (1 if middle else 0)
        view = memoryview(data)[BAND_HEADER.size :]
        if len(view) < raw_rows * stride:
            raise ValueError(f"band is truncated: {len(data)} bytes")
        if isal_zlib.crc32(view) != crc:
            raise ValueError("band is corrupt: CRC-32 mismatch")
        raw = view[: raw_rows * stride]
        if raw[::stride] != bytes([_SUB]) * raw_rows:
            raise ValueError("band is corrupt: a row is not Sub-filtered")
        self.stride = stride
        self.head = raw[: head * stride]
        self.last = raw[head * stride : (head + 1) * stride] if middle else None
        self.tail = raw[(head + (1 if middle else 0)) * stride :]
        self.deflated = view[raw_rows * stride :]
        self.middle_rows = middle
        self.adler = adler
        if middle and not self.deflated:
            raise ValueError("band is truncated: its deflated rows are missing")
        if middle and self.deflated[-4:] != _SYNC_MARK:
            raise ValueError("band is corrupt: its deflated rows do not end on a sync flush")
        if not middle and (self.deflated or adler != isal_zlib.adler32(b"")):
            raise ValueError("band is corrupt: deflated bytes in a band without whole groups")


def decode_band(data: bytes, width: int, rows: int, start: int | None = None) -> Rgb:
    """The pixels of a band object, checked to be width x rows (from `start`) and intact."""
    band = _Band(data, width, rows, start)
    middle = b""
    if band.middle_rows:
        # The middle's first group is primed with the head's last row (none at row 0).
        if band.head:
            inflater = zlib.decompressobj(-15, zdict=_dictionary(band.head, band.stride))
        else:
            inflater = zlib.decompressobj(-15)
        length = band.middle_rows * band.stride
        try:
            middle = inflater.decompress(band.deflated, length + 1)
        except zlib.error as error:
            raise ValueError(f"band is corrupt: {_one_line(error)}") from None
        if len(middle) != length or isal_zlib.adler32(middle) != band.adler:
            raise ValueError("band is corrupt: its rows do not inflate to their checksum")
        if band.last is None or middle[-band.stride :] != band.last:
            raise ValueError("band is corrupt: its rows are not the ones it declares")
    filtered = b"".join([band.head, middle, band.tail])
    array = np.frombuffer(filtered, dtype=np.uint8).reshape(rows, band.stride)
    if (array[:, 0] != _SUB).any():
        raise ValueError("band is corrupt: a row is not Sub-filtered")
    return np.cumsum(array[:, 1:].reshape(rows, width, 3), axis=1, dtype=np.uint8)


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", isal_zlib.crc32(data, isal_zlib.crc32(kind)))
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
        self._groups = _Groups(_ZlibIdat(out, compress_level), width, height, compress_level)
        # Rows filtered at a time: whole groups, about FILTER_GROUP_BYTES.
        group = rows_per_group(width)
        self._chunk = max(1, FILTER_GROUP_BYTES // (group * (1 + 3 * width))) * group
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
        first = 0
        while first < count:  # cut at multiples of self._chunk in the image: whole groups
            row = self.rows_written + first
            end = first + min(count - first, (row // self._chunk + 1) * self._chunk - row)
            filtered = _filter_rows(np.ascontiguousarray(rgb_rows[first:end]))
            self._groups.add_rows(_flat(filtered))
            first = end
        self.rows_written += count

    def close(self) -> None:
        """Finish the image: the last IDAT and IEND. Refuses an image missing rows."""
        if self._closed:
            return
        if self.rows_written != self.height:
            raise ValueError(f"only {self.rows_written} of {self.height} rows were written")
        self._groups.finish()
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

    Nothing is inflated or re-encoded: each band's deflated groups are copied, and
    only the groups cut by a band boundary are deflated here, from the raw rows
    the bands carry. `band_rows` are the bands' half-open row ranges (as from
    ``split_rows``); they must tile the image from row 0. On an error `out` holds
    a partial file: write to a temporary name and rename on success.
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
    groups = _Groups(_ZlibIdat(out, compress_level), request_width, expected, compress_level)
    supply = iter(bands)
    for index, (start, end) in enumerate(band_rows):
        data = next(supply, None)
        if data is None:
            raise ValueError(f"got {index} bands, expected {len(band_rows)}")
        try:
            band = _Band(data, request_width, end - start, start)
        except ValueError as error:
            raise ValueError(f"band {index} (rows {start}..{end}): {error}") from None
        groups.add_rows(band.head)
        if band.last is not None:
            groups.add_deflated(band.deflated, band.adler, band.middle_rows, band.last)
        groups.add_rows(band.tail)
        del data, band
    if next(supply, None) is not None:
        raise ValueError(f"got more than the {len(band_rows)} bands expected")
    groups.finish()
