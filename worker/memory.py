"""Large buffers go back to the system when freed: a worker's peak stays one band's.

A band's arrays (counts, smooth values, colours, filtered rows: tens of MiB
each at 4 M pixels) are made and freed once per band. glibc's malloc serves
blocks above its mmap threshold with mmap and unmaps them when freed, but by
default it raises that threshold to the size of each such block freed (up to
32 MiB), after which blocks of that size come from its heaps, where freed
memory mostly stays with the process and, spread over the arenas of the
threads that made it, fragments: a worker rendering 4 M-pixel bands one after
another grew from 250 to 450 MiB over 128 of them. A fixed threshold turns
that off, so every such array is mapped and unmapped whole (a few page faults
per band, next to half a second of rendering), and the arenas are capped.

The threshold sits above a small render's arrays, though: a mapped block
comes back as fresh pages, each zeroed by the kernel on its first touch, and
a 1200x800 render's bands (about 2 MB an array) took some 1,900 such faults,
7 MiB of fresh pages and a tenth of their CPU time, render after render.
Below 4 MiB, and with up to 8 MiB of freed heap kept rather than trimmed,
those arrays reuse the same memory band after band; a large band's pieces
(1 M pixels: 4 to 12 MiB an array) are still mapped whole.

Called once in every worker process and in each of its child processes; a
no-op where the C library is not glibc.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util

# mallopt(3) parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
# Blocks from this size on are mapped whole: a large band's arrays, never a
# small render's (nor the interpreter's small objects).
MMAP_THRESHOLD = 4 << 20
# Freed heap kept for the next band rather than given back: a small render's
# band allocates about this much, then frees it.
TRIM_THRESHOLD = 8 << 20
ARENAS = 2


def release_large_allocations() -> bool:
    """Fix glibc's mmap threshold (and cap its arenas); False where that is not possible."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        mallopt.restype = ctypes.c_int
        return bool(
            mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
            and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
            and mallopt(M_ARENA_MAX, ARENAS)
        )
    return False
