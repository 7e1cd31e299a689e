"""End-to-end render benchmark: where a render's time goes, and how it scales with workers.

    python bench/render_bench.py [--runs 3] [--width 4800] [--height 3200] [--max-iter 1000]
                                 [--regions 32] [--julia]

Three parts, medians over ``--runs``:

1. The split of the work, in this process on one thread, band by band as a worker
   does it: the escape-time kernel (the maths), colouring, encoding (filtering and
   deflating the rows), storing in a local folder; then the assembly of the PNG.
   These are CPU seconds, the sum over the bands.
2. Scaling: a coordinator (keeping its database, as deployed) and N workers
   (``--concurrency 1`` each; and one worker with ``--concurrency 2``), started as
   the tests start them, are warmed up with a small render first,
   then the image is rendered with ``fractalq render``'s code path; the time from
   submission to the PNG on disk. Configurations take turns, so a noisy machine
   slows them alike.
3. ``fractalq demo`` as a user runs it, whole command in a subprocess: wall time,
   and its own summary (the wait for the first band, which includes starting the
   processes, the bands, the assembly). Its maths share is the kernel's CPU
   seconds from part 1 divided by the workers; everything else is the rest.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from procs import ProcessGroup  # noqa: E402

from fractalq.cli.render import render_image  # noqa: E402
from fractalq.client import Client  # noqa: E402
from fractalq.fractal import RenderRequest, encode_band, split_rows  # noqa: E402
from fractalq.fractal.kernels import escape  # noqa: E402
from fractalq.fractal.palettes import colorize  # noqa: E402
from fractalq.storage import open_storage  # noqa: E402
from fractalq.tasks.assemble import write_png  # noqa: E402
from fractalq.tasks.band import band_key  # noqa: E402

PARTS = ("kernel", "colouring", "encoding", "storing", "assembly")


def work_split(request: RenderRequest, regions: int) -> dict[str, float]:
    """CPU seconds of each part of rendering the image, one band after another."""
    seconds = dict.fromkeys(PARTS, 0.0)
    with tempfile.TemporaryDirectory(prefix="fractalq-bench-") as folder:
        storage = open_storage(Path(folder).as_uri())
        for start, end in split_rows(request.height, regions):
            began = time.perf_counter()
            counts, smooth = escape(request, start, end)
            computed = time.perf_counter()
            rgb = colorize(counts, smooth, request.max_iter, request.palette)
            coloured = time.perf_counter()
            data = encode_band(rgb, start)
            encoded = time.perf_counter()
            storage.put(band_key("bench", start, end), data)
            stored = time.perf_counter()
            seconds["kernel"] += computed - began
            seconds["colouring"] += coloured - computed
            seconds["encoding"] += encoded - coloured
            seconds["storing"] += stored - encoded
        began = time.perf_counter()
        rows = split_rows(request.height, regions)
        write_png(storage, "bench", request, rows, str(Path(folder) / "out.png"))
        seconds["assembly"] = time.perf_counter() - began
    return seconds


@dataclasses.dataclass
class Cluster:
    address: str  # the coordinator's
    worker_pids: list[int]


@contextlib.contextmanager
def cluster(workers: int, concurrency: int, folder: Path, storage: str) -> Iterator[Cluster]:
    """A coordinator and workers on loopback (the tests' own)."""
    group = ProcessGroup(folder)
    try:
        coordinator = group.start_coordinator()
        started = [
            group.start_worker(storage=storage, concurrency=concurrency) for _ in range(workers)
        ]
        yield Cluster(coordinator.address, [worker.pid for worker in started])
    finally:
        group.stop()


def render_seconds(
    endpoint: str, storage: str, request: RenderRequest, regions: int | None
) -> float:
    """Submission to PNG on disk, with ``fractalq render``'s code."""
    with Client(endpoint) as client, tempfile.TemporaryDirectory() as folder:
        began = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):
            render_image(
                client, open_storage(storage), request, regions, 0, f"{folder}/out.png", False
            )
        return time.perf_counter() - began


def scaling(
    request: RenderRequest, regions: int, runs: int, setups: list[tuple[int, int]]
) -> dict[tuple[int, int], list[float]]:
    times: dict[tuple[int, int], list[float]] = {setup: [] for setup in setups}
    warm = RenderRequest.create(request.fractal, width=64, height=64)
    for _ in range(runs):
        for workers, concurrency in setups:
            with tempfile.TemporaryDirectory() as folder:
                storage = (Path(folder) / "storage").as_uri()
                with cluster(workers, concurrency, Path(folder), storage) as running:
                    endpoint = running.address
                    for _ in range(workers * concurrency):  # every process has rendered once
                        render_seconds(endpoint, storage, warm, workers * concurrency * 2)
                    times[(workers, concurrency)].append(
                        render_seconds(endpoint, storage, request, regions)
                    )
    return times


def demo(args: argparse.Namespace, workers: int) -> tuple[float, str]:
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "fractalq", "demo", "--out", f"{folder}/demo.png"]
        command += ["--width", str(args.width), "--height", str(args.height)]
        command += ["--max-iter", str(args.max_iter), "--workers", str(workers)]
        command += ["--regions", str(args.regions)] + (["--julia"] if args.julia else [])
        began = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        return time.perf_counter() - began, done.stderr.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--width", type=int, default=4800)
    parser.add_argument("--height", type=int, default=3200)
    parser.add_argument("--max-iter", type=int, default=1000)
    parser.add_argument("--regions", type=int, default=32)
    parser.add_argument("--julia", action="store_true")
    args = parser.parse_args()
    fractal = "julia" if args.julia else "mandelbrot"
    request = RenderRequest.create(
        fractal, width=args.width, height=args.height, max_iter=args.max_iter
    )
    print(
        f"{args.width}x{args.height} {fractal}, max-iter {args.max_iter}, {args.regions} bands,"
        f" medians of {args.runs} runs"
    )

    work_split(request, 2)  # warm up: numba's cache, the file system
    splits = [work_split(request, args.regions) for _ in range(args.runs)]
    split = {part: statistics.median(run[part] for run in splits) for part in PARTS}
    total = sum(split.values())
    print("\n1. work, CPU seconds on one core, summed over the bands")
    for part in PARTS:
        print(f"   {part:<10} {split[part]:7.3f} s  {split[part] / total:6.1%}")
    print(f"   {'total':<10} {total:7.3f} s")

    setups = [(1, 1), (2, 1), (1, 2)]
    times = scaling(request, args.regions, args.runs, setups)
    one = statistics.median(times[(1, 1)])
    print("\n2. render on running, warmed-up workers (submission to PNG on disk)")
    for (workers, concurrency), values in times.items():
        median = statistics.median(values)
        runs = " / ".join(f"{value:.2f}" for value in values)
        print(
            f"   {workers} worker(s) x {concurrency}  {median:6.2f} s  {one / median:5.2f}x"
            f"   ({runs})"
        )

    print("\n3. fractalq demo, the whole command")
    for workers in (2,):
        walls, summaries = zip(*(demo(args, workers) for _ in range(args.runs)), strict=True)
        wall = statistics.median(walls)
        maths = split["kernel"] / workers
        print(f"   --workers {workers}: {wall:.2f} s wall; last run said: {summaries[-1]}")
        print(
            f"   maths (kernel CPU / {workers} workers) {maths:.2f} s;"
            f" everything else {wall - maths:.2f} s"
        )


if __name__ == "__main__":
    main()
