"""Deep-zoom benchmark: the perturbation kernel, the reference orbit, a deep render on the queue.

    python bench/deep.py [--runs 3] [--skip-render] [--width 1920] [--height 1080]
                         [--view-width 1e-100] [--max-iter 20000] [--workers 2]

Three parts, medians over ``--runs``:

1. Kernels, one thread: giga pixel-iterations per second of the float64 kernel
   (numba) and of the perturbation kernel on the *same* shallow views, so the
   same escape counts (pixel-iterations: the sum of the float64 counts), side by
   side with their ratio, and how many pixels' counts agree within one.
2. The reference orbit at 1e-300 (1,100 bits), 100,000 iterations (a point of the
   period-2 bulb, so no early escape): gmpy2 (MPFR), as the task computes it,
   and mpmath for comparison.
3. A deep render on the queue: a coordinator and ``--workers`` workers on
   loopback (the tests' own processes), warmed up with a small deep render, then
   the view at ``--view-width`` around the Misiurewicz point c = i (or another
   ``--center-x`` / ``--center-y``): time from
   submission to the PNG on disk, split into the reference task, the bands and
   the assembly from the job's state changes.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from procs import ProcessGroup  # noqa: E402

from fractalq.client import Client  # noqa: E402
from fractalq.fractal import perturb  # noqa: E402
from fractalq.fractal import reference as orbits  # noqa: E402
from fractalq.fractal.kernels import numba_escape  # noqa: E402
from fractalq.fractal.request import RenderRequest  # noqa: E402
from fractalq.images import download_image, submit_render  # noqa: E402
from fractalq.proto import fractalq_pb2 as pb  # noqa: E402
from fractalq.storage import open_storage  # noqa: E402


def median_seconds(function: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        function()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def kernels(runs: int) -> None:
    size = {"width": 400, "height": 300}
    views = {
        "bulb": RenderRequest.create(
            center_x=-0.1226, center_y=0.7449, view_width=0.04, max_iter=1000, **size
        ),
        "seahorse": RenderRequest.create(
            center_x=-0.7435, center_y=0.1314, view_width=0.002, max_iter=3000, **size
        ),
        "c = i": RenderRequest.create(
            center_x=0.0, center_y=1.0, view_width=1e-6, max_iter=3000, **size
        ),
    }
    print("kernels, one thread, 400x300, medians of", runs)
    print(f"{'view':10} {'max_iter':>8} {'float64 G it/s':>15} {'perturb G it/s':>15} "
          f"{'ratio':>6} {'agree':>7}")  # fmt: skip
    for name, request in views.items():
        reference = orbits.compute(request)
        plain, _ = numba_escape(request, 0, request.height)
        perturbed, _ = perturb.escape(request, reference, 0, request.height)
        work = float(plain.astype(np.int64).sum())
        t_plain = median_seconds(lambda r=request: numba_escape(r, 0, r.height), runs)
        t_perturb = median_seconds(
            lambda r=request, o=reference: perturb.escape(r, o, 0, r.height), runs
        )
        agree = float(np.mean(np.abs(plain.astype(np.int64) - perturbed) <= 1))
        rates = work / t_plain / 1e9, work / t_perturb / 1e9
        print(f"{name:10} {request.max_iter:>8} {rates[0]:>15.3f} {rates[1]:>15.3f} "
              f"{t_plain / t_perturb:>6.2f} {agree:>7.2%}")  # fmt: skip


def _mpmath_orbit(request: RenderRequest) -> int:
    import mpmath

    mpmath.mp.prec = request.precision
    c = mpmath.mpc(mpmath.mpf(request.center_x), mpmath.mpf(request.center_y))
    z = mpmath.mpc(0)
    points = []
    for _ in range(request.max_iter):
        z = z * z + c
        points.append(complex(z))
    return len(points)


def reference_orbit(runs: int) -> None:
    request = RenderRequest.create(
        center_x="-1.0000000000000000000000000000123", center_y="0.1",
        view_width="1e-300", width=1920, height=1080, max_iter=100_000,
    )  # fmt: skip
    gmpy2_s = median_seconds(lambda: orbits.compute(request), runs)
    mpmath_s = median_seconds(lambda: _mpmath_orbit(request), max(1, runs // 2))
    size = orbits.compute(request).start.size
    print(f"\nreference orbit at 1e-300 ({request.precision} bits), {size - 1} iterations:")
    print(f"  gmpy2 (MPFR) {gmpy2_s:.3f} s   mpmath {mpmath_s:.3f} s   "
          f"(gmpy2 x{mpmath_s / gmpy2_s:.1f})")  # fmt: skip


@contextlib.contextmanager
def cluster(workers: int, folder: Path, storage: str) -> Iterator[str]:
    group = ProcessGroup(folder)
    try:
        coordinator = group.start_coordinator()
        for _ in range(workers):
            group.start_worker(storage=storage)
        yield coordinator.address
    finally:
        group.stop()


def deep_render(
    endpoint: str, storage: str, request: RenderRequest, regions: int
) -> dict[str, float]:
    """Seconds from submission: to the bands' release, to the assembly, to the PNG."""
    marks: dict[str, float] = {}
    with Client(endpoint) as client, tempfile.TemporaryDirectory() as folder:
        began = time.perf_counter()
        job_id = submit_render(client, request, regions, 0).job.job_id
        for job in client.watch(job_id):
            now = time.perf_counter() - began
            if job.first.state == pb.TASK_SUCCEEDED:
                marks.setdefault("reference", now)
            if job.state == pb.FINISHING or job.state == pb.SUCCEEDED:
                marks.setdefault("bands", now)
            if job.state == pb.SUCCEEDED:
                marks["assembly"] = now
                break
            if job.state in (pb.FAILED, pb.CANCELLED):
                raise RuntimeError(f"render failed: {job.reason}")
        download_image(open_storage(storage), client.job(job_id), f"{folder}/out.png")
        marks["png"] = time.perf_counter() - began
    return marks


def render(args: argparse.Namespace) -> None:
    request = RenderRequest.create(
        center_x=args.center_x, center_y=args.center_y, view_width=args.view_width,
        width=args.width, height=args.height, max_iter=args.max_iter, palette="ocean",
    )  # fmt: skip
    warm = RenderRequest.create(center_x="0", center_y="1", view_width="1e-60", width=64,
                                height=64, max_iter=500)  # fmt: skip
    results: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as folder:
        storage = (Path(folder) / "storage").as_uri()
        with cluster(args.workers, Path(folder), storage) as endpoint:
            for _ in range(args.workers):
                deep_render(endpoint, storage, warm, args.workers * 2)
            for _ in range(args.runs):
                results.append(deep_render(endpoint, storage, request, args.regions))
    split = {key: statistics.median(r[key] for r in results) for key in results[0]}
    print(f"\n{args.width}x{args.height} at {request.view_width}, max-iter {args.max_iter}, "
          f"{args.regions} bands, {args.workers} workers, medians of {args.runs}:")  # fmt: skip
    print(f"  total {split['png']:.2f} s: reference {split['reference']:.2f} s, "
          f"bands {split['bands'] - split['reference']:.2f} s, "
          f"assembly {split['assembly'] - split['bands']:.2f} s, "
          f"download {split['png'] - split['assembly']:.2f} s")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-render", action="store_true")
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--center-x", default="0")
    parser.add_argument("--center-y", default="1")
    parser.add_argument("--view-width", default="1e-100")
    parser.add_argument("--max-iter", type=int, default=20_000)
    parser.add_argument("--regions", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    kernels(args.runs)
    reference_orbit(args.runs)
    if not args.skip_render:
        render(args)


if __name__ == "__main__":
    main()
