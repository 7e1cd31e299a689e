"""Assembly benchmark: time and peak memory to stitch stored bands into one PNG.

    python bench/assembly.py [--runs 3] [--sizes 4096,16384] [--bands 8]

For each size (a square image), synthetic bands are encoded as workers would
(``encode_band``) and written to a temporary folder first; then each run starts
a fresh process that only assembles: it reads the band files one at a time,
calls ``assemble`` and writes the PNG to disk. Only ``assemble`` is timed: it
copies the groups of rows the bands deflated and deflates the few that a band
boundary cuts, from the raw rows the bands carry (see ``png.py``). The
child loads ``png.py`` by itself (not the ``fractalq.fractal`` package, which
would also load numba), and its peak memory is its VmHWM from /proc (on Linux,
``ru_maxrss`` after a fork also counts the parent's pages); ``ru_maxrss`` is
printed too. Medians over ``--runs``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import assembly_child  # noqa: E402
from assembly_child import synthetic  # noqa: E402

from fractalq.fractal import encode_band, split_rows  # noqa: E402


def write_bands(folder: Path, size: int, regions: int) -> tuple[list[str], int]:
    args: list[str] = []
    total = 0
    for index, (start, end) in enumerate(split_rows(size, regions)):
        data = encode_band(synthetic(size, start, end), start)
        total += len(data)
        path = folder / f"band{index:04d}"
        path.write_bytes(data)
        args += [f"{start}:{end}", str(path)]
    return args, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes", default="4096,16384", help="square image sides, comma-separated")
    parser.add_argument("--bands", type=int, default=8)
    args = parser.parse_args()
    print(
        f"{'image':>12} {'bands':>6} {'band MiB':>9} {'PNG MiB':>8} {'assemble s':>11} "
        f"{'MiB/s':>7} {'peak MiB':>9} {'base MiB':>9} {'maxrss MiB':>11}"
    )
    for size in (int(item) for item in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="fractalq-bench-") as name:
            folder = Path(name)
            started = time.perf_counter()
            band_args, total = write_bands(folder, size, args.bands)
            encode_seconds = time.perf_counter() - started
            out = folder / "image.png"
            results = []
            for _ in range(args.runs):
                child = subprocess.run(
                    assembly_child.command(out, size, band_args),
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                results.append(json.loads(child.stdout))
            seconds = statistics.median(r["seconds"] for r in results)
            peak = statistics.median(r["peak_kib"] for r in results) / 1024
            base = statistics.median(r["before_kib"] for r in results) / 1024
            maxrss = statistics.median(r["maxrss_kib"] for r in results) / 1024
            png_mib = out.stat().st_size / 2**20
            largest = max(Path(p).stat().st_size for p in band_args[1::2]) / 2**20
            print(
                f"{f'{size}x{size}':>12} {args.bands:>6} {total / 2**20:>9.1f} {png_mib:>8.1f} "
                f"{seconds:>11.3f} {png_mib / seconds:>7.0f} {peak:>9.1f} {base:>9.1f} "
                f"{maxrss:>11.1f}"
            )
            print(
                f"{'':>12} (bands encoded in {encode_seconds:.1f} s, "
                f"largest band {largest:.1f} MiB)"
            )


if __name__ == "__main__":
    main()
