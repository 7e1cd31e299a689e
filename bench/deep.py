"""Deep-zoom benchmark: fractalq against fractalshades on the same views, and the kernels.

    python bench/deep.py [--fractalshades PYTHON] [--runs 3] [--samples 200]
                         [--views seahorse,i100,inside,i300] [--workers 2] [--skip-kernels]

1. The four views of the deep-speed issue, 480x270, side by side in one run:
   fractalq on a warm local cluster (a coordinator and ``--workers`` workers
   on loopback, the tests' own processes; time from submission to the PNG on
   disk, split into the first task, the bands and the assembly) and
   fractalshades 1.2.1 (its default, BLA 1e-6, escape radius 2, the same
   pixel grid; time of its reference orbit and iterations, in its own
   process, warmed up), alternating, medians of ``--runs``. fractalshades
   needs a venv of its own: ``bench/peers/setup_fractalshades.sh``; without
   ``--fractalshades`` only fractalq runs.
2. Accuracy: ``--samples`` random pixels of each view recounted in arbitrary
   precision (each pixel's own orbit, gmpy2), against both renderers' counts.
3. Kernels, one thread: the float64 and perturbation kernels on the same
   shallow views (G pixel-iterations/s), and the reference orbit's cost.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from procs import ProcessGroup  # noqa: E402
from test_deep import direct_count  # noqa: E402

from fractalq.client import Client  # noqa: E402
from fractalq.fractal import perturb  # noqa: E402
from fractalq.fractal import reference as orbits  # noqa: E402
from fractalq.fractal.kernels import escape, numba_escape  # noqa: E402
from fractalq.fractal.request import RenderRequest  # noqa: E402
from fractalq.images import download_image, submit_render  # noqa: E402
from fractalq.proto import fractalq_pb2 as pb  # noqa: E402
from fractalq.storage import open_storage  # noqa: E402

SEAHORSE = ("-0.743643887037158704752191506114774", "0.131825904205311970493132056385139")
# The deep-speed issue's views: (centre x, centre y, width, max-iter).
VIEWS = {
    "seahorse": (*SEAHORSE, "1e-30", 40_000),
    "i100": ("0", "1", "1e-100", 20_000),
    "inside": (*SEAHORSE, "3e-59", 120_000),
    "i300": ("0", "1", "1e-300", 50_000),
}
WIDTH, HEIGHT = 480, 270
PEER = ROOT / "bench" / "peers" / "fractalshades_view.py"


def median_seconds(function: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        function()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def request_for(view: str) -> RenderRequest:
    x, y, width, max_iter = VIEWS[view]
    return RenderRequest.create(
        width=WIDTH, height=HEIGHT, center_x=x, center_y=y, view_width=width, max_iter=max_iter
    )


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


def fractalq_render(endpoint: str, storage: str, request: RenderRequest) -> dict[str, float]:
    """Seconds from submission: to the first task's end, to the assembly, to the PNG."""
    marks: dict[str, float] = {}
    with Client(endpoint) as client, tempfile.TemporaryDirectory() as folder:
        began = time.perf_counter()
        job_id = submit_render(client, request, 8, 0).job.job_id
        for job in client.watch(job_id):
            now = time.perf_counter() - began
            if job.first.state == pb.TASK_SUCCEEDED:
                marks.setdefault("first", now)
            if job.state == pb.FINISHING or job.state == pb.SUCCEEDED:
                marks.setdefault("bands", now)
            if job.state == pb.SUCCEEDED:
                marks["assembly"] = now
                break
            if job.state in (pb.FAILED, pb.CANCELLED):
                raise RuntimeError(f"render failed: {job.reason}")
        download_image(open_storage(storage), client.job(job_id), f"{folder}/out.png")
        marks["png"] = time.perf_counter() - began
    marks.setdefault("first", 0.0)
    return marks


def fractalshades_render(
    python: str, view: str, runs: int, counts_out: Path | None = None
) -> list[float]:
    x, y, width, max_iter = VIEWS[view]
    args = [python, str(PEER), x, y, width, str(WIDTH), str(HEIGHT), str(max_iter)]
    args += ["--runs", str(runs)]
    if counts_out:
        args += ["--counts-out", str(counts_out)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=3600, check=True)
    seconds: list[float] = json.loads(done.stdout.strip().splitlines()[-1])["seconds"]
    return seconds[1:]  # the first one compiled its numba code


def race(args: argparse.Namespace) -> None:
    print(f"{WIDTH}x{HEIGHT}, {args.workers} workers, medians of {args.runs}, alternating:")
    print(f"{'view':9} {'fractalq s':>10} {'(first':>7} {'bands':>6} {'asm)':>5} "
          f"{'fractalshades s':>16} {'fq / fs':>8}")  # fmt: skip
    warm = RenderRequest.create(center_x="0", center_y="1", view_width="1e-60", width=64,
                                height=64, max_iter=500)  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        storage = (Path(folder) / "storage").as_uri()
        with cluster(args.workers, Path(folder), storage) as endpoint:
            for _ in range(args.workers):
                fractalq_render(endpoint, storage, warm)
            for view in args.views:
                request = request_for(view)
                fractalq_render(endpoint, storage, request)  # its numba code and caches
                ours: list[dict[str, float]] = []
                theirs: list[float] = []
                for _ in range(args.runs):
                    ours.append(fractalq_render(endpoint, storage, request))
                    if args.fractalshades:
                        theirs += fractalshades_render(args.fractalshades, view, 1)
                split = {key: statistics.median(run[key] for run in ours) for key in ours[0]}
                peer = statistics.median(theirs) if theirs else float("nan")
                print(f"{view:9} {split['png']:>10.2f} {split['first']:>7.2f} "
                      f"{split['bands'] - split['first']:>6.2f} "
                      f"{split['assembly'] - split['bands']:>5.2f} {peer:>16.2f} "
                      f"{split['png'] / peer:>8.2f}")  # fmt: skip


def accuracy(args: argparse.Namespace) -> None:
    print(f"\naccuracy: {args.samples} random pixels a view recounted in arbitrary precision")
    print(f"{'view':9} {'fractalq within 1':>18} {'fractalshades within 1':>23}")
    rng = np.random.default_rng(2026)
    for view in args.views:
        request = request_for(view)
        ours, _ = escape(request, 0, HEIGHT)
        theirs = None
        if args.fractalshades:
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "counts.npy"
                fractalshades_render(args.fractalshades, view, 1, path)
                theirs = np.load(path)
        agree = [0, 0]
        for _ in range(args.samples):
            i, j = int(rng.integers(WIDTH)), int(rng.integers(HEIGHT))
            exact = direct_count(request, i, j)
            agree[0] += abs(int(ours[j, i]) - exact) <= 1
            if theirs is not None:
                agree[1] += abs(int(theirs[j, i]) - exact) <= 1
        peer = f"{agree[1] / args.samples:.1%}" if theirs is not None else "-"
        print(f"{view:9} {agree[0] / args.samples:>18.1%} {peer:>23}")


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
    print(f"\nkernels, one thread, 400x300 shallow views, medians of {runs}")
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
    for view in VIEWS:
        request = request_for(view)
        seconds = median_seconds(lambda r=request: orbits.compute(r), runs)
        print(f"reference orbit and table of {view}: {request.precision} bits, "
              f"{request.max_iter} iterations, {seconds:.3f} s")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fractalshades", metavar="PYTHON", help="fractalshades' venv's python")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--views", type=lambda text: text.split(","), default=list(VIEWS))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skip-kernels", action="store_true")
    args = parser.parse_args()
    race(args)
    if args.samples:
        accuracy(args)
    if not args.skip_kernels:
        kernels(args.runs)


if __name__ == "__main__":
    main()
