"""Interactive latency: small renders and one-task jobs on a warm 2-worker cluster.

    python bench/interactive.py [--samples 40] [--width 1200] [--height 800]

Starts a real coordinator (keeping its database, as deployed) and two workers
(``--concurrency 1``) on 127.0.0.1 with a local storage folder, warms them up,
then prints p50 and p90 over ``--samples``:

- a default render (its bands, as many as ``fractalq render`` makes of that size
  by default, the assembly task, the PNG downloaded) from submission to the PNG
  on disk, with ``fractalq render``'s code path, at the given size and at half of it;
- the same renders and a 64x64 one through one client kept open (a dashboard's
  or a library's: no connection made per render), with the CPU time and the minor
  page faults (fresh memory pages) the two workers spent per render: the faults do
  not depend on what else runs on the machine; on a shared virtual machine even CPU
  time grows with the load, so compare runs made in turns;
- a one-task ``noop`` job from submission to its final state, in one SubmitJob
  that waits for the end (as ``Client.run`` and ``submit --wait`` do).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proc_usage import cpu_seconds, minor_faults
from render_bench import cluster, render_seconds

from fractalq.cli.render import render_image
from fractalq.client import Client
from fractalq.fractal import RenderRequest
from fractalq.proto import fractalq_pb2 as pb
from fractalq.storage import open_storage


def quantiles(values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    return f"p50 {statistics.median(ordered) * 1000:7.2f} ms   p90 {p90 * 1000:7.2f} ms"


def noop_jobs(address: str, samples: int) -> list[float]:
    times = []
    with Client(address) as client:
        for _ in range(samples + 5):
            began = time.perf_counter()
            job = client.submit(pb.SubmitJobRequest(task_type="noop", count=1, wait_seconds=10)).job
            times.append(time.perf_counter() - began)
            assert job.state == pb.SUCCEEDED
    return times[5:]  # the first few warm up


def faults_and_cpu(pids: list[int]) -> tuple[int, float]:
    """Minor page faults and CPU seconds of ``pids``, summed."""
    return sum(map(minor_faults, pids)), sum(map(cpu_seconds, pids))


def kept_client_renders(
    address: str, storage: str, sizes: list[tuple[int, int]], samples: int, workers: list[int]
) -> tuple[dict[tuple[int, int], list[float]], dict[tuple[int, int], tuple[float, float]]]:
    """Submission to PNG on disk with ``fractalq render``'s code, through one client;
    and, by size, the page faults and CPU seconds of the ``workers`` per render."""
    times: dict[tuple[int, int], list[float]] = {size: [] for size in sizes}
    spent = dict.fromkeys(sizes, (0.0, 0.0))
    with Client(address) as client, tempfile.TemporaryDirectory() as folder:
        for _ in range(samples):
            for width, height in sizes:
                request = RenderRequest.create("mandelbrot", width=width, height=height)
                faults, cpu = faults_and_cpu(workers)
                began = time.perf_counter()
                with (
                    contextlib.redirect_stdout(io.StringIO()),
                    contextlib.redirect_stderr(io.StringIO()),
                ):
                    render_image(
                        client, open_storage(storage), request, None, 0, f"{folder}/out.png", False
                    )
                times[(width, height)].append(time.perf_counter() - began)
                after = faults_and_cpu(workers)
                total = spent[(width, height)]
                spent[(width, height)] = (
                    total[0] + (after[0] - faults) / samples,
                    total[1] + (after[1] - cpu) / samples,
                )
    return times, spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=800)
    args = parser.parse_args()
    sizes = [(args.width, args.height), (args.width // 2, args.height // 2)]
    with tempfile.TemporaryDirectory() as folder:
        storage = (Path(folder) / "storage").as_uri()
        with cluster(2, 1, Path(folder), storage) as group:
            address = group.address
            workers = group.worker_pids
            warm = RenderRequest.create("mandelbrot", width=64, height=64)
            for _ in range(4):
                render_seconds(address, storage, warm, 2)
            times: dict[tuple[int, int], list[float]] = {size: [] for size in sizes}
            for _ in range(args.samples):  # sizes take turns: noise slows them alike
                for width, height in sizes:
                    request = RenderRequest.create("mandelbrot", width=width, height=height)
                    times[(width, height)].append(render_seconds(address, storage, request, None))
            for (width, height), values in times.items():
                print(f"render {width}x{height} submit to PNG   {quantiles(values)}")
            kept, spent = kept_client_renders(
                address, storage, [*sizes, (64, 64)], args.samples, workers
            )
            for (width, height), values in kept.items():
                faults, cpu = spent[(width, height)]
                print(
                    f"  one client kept, {width}x{height}  {quantiles(values)}"
                    f"   workers per render: {cpu * 1000:5.1f} ms CPU, {faults:5.0f} page faults"
                )
            print(
                f"noop job, one SubmitJob         {quantiles(noop_jobs(address, args.samples * 5))}"
            )


if __name__ == "__main__":
    main()
