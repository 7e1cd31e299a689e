"""Kernel benchmark: giga pixel-iterations per second per core, every kernel side by side.

    python bench/kernels.py [--runs 5] [--max-iter 1000] [--width 1200] [--height 800]

Renders three views as one band, on one thread, with every registered kernel in
turn (interleaved, so a noisy machine slows them all alike) and prints medians
over ``--runs`` of the calling thread's CPU time (every kernel here runs on it),
which other work on a shared machine disturbs far less than the wall clock.
Each kernel is called once first, so numba's compilation (or loading from its
cache) is not timed. The views: the default Mandelbrot and
Julia ones, and ``bulb``, a Mandelbrot view inside the period-3 bulb, where every
pixel is inside, no shortcut applies and every pixel runs all ``max_iter``
iterations: the kernel's iteration speed with nothing else to do.

Pixel-iterations, one definition for every kernel: the sum over the pixels of
the reference kernel's counts, that is the escape count of an outside pixel and
``max_iter`` for an inside one. That is the work of the plain escape-time loop;
a kernel that skips some of it (both skip the Mandelbrot main cardioid and
period-2 bulb, whose points are known to be inside) gets the credit in
``G it/s``; ``run/s`` counts only the iterations actually run.

Then, for the default kernel, the whole ``render_rows`` (kernel + colouring) and
``encode_band`` (the band's deflated rows, as a worker stores them), so the split of a
band's time is visible.
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fractalq.fractal import DEFAULT_KERNEL, KERNELS, RenderRequest, encode_band, render_rows
from fractalq.fractal.kernels import _in_main_bulbs, numpy_escape, pixel_columns, pixel_rows


def timed(function: Callable[[], object], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.thread_time()
        function()
        times.append(time.thread_time() - start)
    return times


def pixel_iterations(request: RenderRequest) -> tuple[int, int]:
    """The benchmark's work measure, and how much of it the bulb shortcut skips."""
    counts, _ = numpy_escape(request, 0, request.height)
    total = int(counts.sum(dtype=np.int64))
    if request.fractal != "mandelbrot":
        return total, 0
    x = np.tile(pixel_columns(request), request.height)
    y = np.repeat(pixel_rows(request, 0, request.height), request.width)
    return total, int(np.count_nonzero(_in_main_bulbs(x, y))) * request.max_iter


def masked_loop(request: RenderRequest, start: int, end: int) -> np.ndarray:
    """What simple renderers do: iterate the whole array under a mask, every iteration.

    Only for the ratio the speed goal is stated against; counts match the reference.
    """
    x = pixel_columns(request)[np.newaxis, :]
    y = pixel_rows(request, start, end)[:, np.newaxis]
    points = x + 1j * y
    if request.fractal == "julia":
        z, c = points.copy(), np.full_like(points, complex(request.c_re, request.c_im))
    else:
        z, c = np.zeros_like(points), points
    counts = np.full(points.shape, request.max_iter, dtype=np.int32)
    for n in range(request.max_iter):
        alive = counts == request.max_iter
        z[alive] = z[alive] * z[alive] + c[alive]
        counts[alive & (z.real * z.real + z.imag * z.imag > 4.0)] = n
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-iter", type=int, default=1000)
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument(
        "--masked-runs",
        type=int,
        default=1,
        help="runs of the (slow) whole-array masked loop; 0 leaves it out",
    )
    args = parser.parse_args()
    names = sorted(KERNELS, key=lambda name: name != "numpy")  # the reference first

    print(
        f"{args.width}x{args.height}, max-iter {args.max_iter}, medians of {args.runs} runs, "
        f"one thread; kernels: {', '.join(names)} (default {DEFAULT_KERNEL})"
    )
    print(
        f"{'view':<11} {'kernel':<7} {'ms':>9} {'G it/s':>8} {'run/s':>7} {'x numpy':>8}"
        f" {'x masked':>9}   {'pixel-iterations (skipped by the bulb test)'}"
    )
    size = {"width": args.width, "height": args.height, "max_iter": args.max_iter}
    requests = {
        "mandelbrot": RenderRequest.create("mandelbrot", **size),
        "julia": RenderRequest.create("julia", **size),
        "bulb": RenderRequest.create(
            "mandelbrot", center_x=-0.1226, center_y=0.7449, view_width=0.04, **size
        ),
    }
    for view, request in requests.items():
        work, skipped = pixel_iterations(request)
        for name in names:  # warm up: compile or load numba's cache
            KERNELS[name](request, 0, 1)
        times: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(args.runs):
            for name in names:
                run = functools.partial(KERNELS[name], request, 0, request.height)
                times[name] += timed(run, 1)
        reference = statistics.median(times["numpy"])
        masked = math.nan
        if args.masked_runs > 0:
            run = functools.partial(masked_loop, request, 0, request.height)
            masked = statistics.median(timed(run, args.masked_runs))
            print(
                f"{view:<11} {'masked':<7} {masked * 1e3:9.1f} {work / masked / 1e9:8.3f}"
                f" {work / masked / 1e9:7.3f} {reference / masked:8.2f} {1:9.0f}"
                "   the whole-array numpy loop"
            )
        for name in names:
            seconds = statistics.median(times[name])
            shown = f"{work / 1e6:.1f} M ({skipped / 1e6:.1f} M)" if name == names[0] else ""
            print(
                f"{view:<11} {name:<7} {seconds * 1e3:9.1f} {work / seconds / 1e9:8.3f}"
                f" {(work - skipped) / seconds / 1e9:7.3f} {reference / seconds:8.1f}"
                f" {masked / seconds:9.0f}   {shown}"
            )

    print()
    print(f"one {args.width}x{args.height} band with the default kernel ({DEFAULT_KERNEL}), ms:")
    print(f"{'view':<11} {'kernel':>8} {'colouring':>10} {'render_rows':>12} {'encode_band':>12}")
    for fractal, request in list(requests.items())[:2]:
        kernel = functools.partial(KERNELS[DEFAULT_KERNEL], request, 0, request.height)
        render = functools.partial(render_rows, request, 0, request.height)
        encode = functools.partial(encode_band, render(), 0)  # at row 0: deflated as a worker does
        kernel_times: list[float] = []
        render_times: list[float] = []
        encode_times: list[float] = []
        for _ in range(args.runs):
            kernel_times += timed(kernel, 1)
            render_times += timed(render, 1)
            encode_times += timed(encode, 1)
        kernel_ms = statistics.median(kernel_times) * 1e3
        render_ms = statistics.median(render_times) * 1e3
        encode_ms = statistics.median(encode_times) * 1e3
        print(
            f"{fractal:<11} {kernel_ms:8.1f} {render_ms - kernel_ms:10.1f} {render_ms:12.1f}"
            f" {encode_ms:12.1f}"
        )


if __name__ == "__main__":
    main()
