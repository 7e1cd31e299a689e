"""Assembling band files in a process of its own, to measure the assembler alone.

Shared by tests/test_assembly.py and bench/assembly.py. Run as::

    python tests/assembly_child.py OUT WIDTH start:end BAND_FILE [start:end BAND_FILE ...]

and it prints JSON: ``seconds``, ``before_kib`` and ``peak_kib`` (VmHWM, the
process's own peak; Linux's ru_maxrss would also count the parent's pages
before exec), ``maxrss_kib``. ``fractalq/fractal/png.py`` is loaded by path so
that the process holds the assembler and numpy, not the rest of the package.
"""

from __future__ import annotations

import importlib.util
import json
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

PNG_MODULE = Path(__file__).resolve().parent.parent / "fractalq" / "fractal" / "png.py"


def synthetic(width: int, start: int, end: int) -> np.ndarray:
    """Rows start..end of a deterministic, partly compressible test image."""
    y = np.arange(start, end, dtype=np.int64)[:, np.newaxis]
    x = np.arange(width, dtype=np.int64)[np.newaxis, :]
    rgb = np.empty((end - start, width, 3), dtype=np.uint8)
    rgb[..., 0] = (x * 3 + y) & 0xFF
    rgb[..., 1] = (x ^ y) & 0xFF
    rgb[..., 2] = (((x * 2654435761) ^ (y * 40503)) >> 13) & 0xFF  # noise-like
    return rgb


def command(out: Path, width: int, bands: list[str]) -> list[str]:
    """The child's command line; ``bands`` alternates "start:end" and a band file's path."""
    return [sys.executable, __file__, str(out), str(width), *bands]


def _peak_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main() -> None:
    spec = importlib.util.spec_from_file_location("png", PNG_MODULE)
    assert spec is not None and spec.loader is not None
    png = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(png)
    out_path, width, *pairs = sys.argv[1:]
    rows = [(int(a), int(b)) for a, b in (item.split(":") for item in pairs[::2])]

    def bands() -> Iterator[bytes]:
        for path in pairs[1::2]:
            yield Path(path).read_bytes()

    before = _peak_kib()
    began = time.perf_counter()
    with open(out_path, "wb") as out:
        png.assemble(bands(), int(width), rows, out)
    seconds = time.perf_counter() - began
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "before_kib": before, "peak_kib": _peak_kib(),
                      "maxrss_kib": usage}))  # fmt: skip


if __name__ == "__main__":
    main()
