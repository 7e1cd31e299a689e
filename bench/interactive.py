"""Interactive latency: small renders and one-task jobs on a warm 2-worker cluster.

    python bench/interactive.py [--samples 40] [--width 1200] [--height 800]

Starts a real coordinator (keeping its database, as deployed) and two workers
(``--concurrency 1``) on 127.0.0.1 with a local storage folder, warms them up,
then prints p50 and p90 over ``--samples``:

- a default render (bands, the assembly task, the PNG downloaded) from submission
  to the PNG on disk, with ``fractalq render``'s code path, at the given size and
  at half of it;
- a one-task ``noop`` job from submission to the watch's final message, split into
  the SubmitJob call, the watch's first message and the rest.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from render_bench import cluster, render_seconds

from fractalq.client import Client
from fractalq.fractal import RenderRequest
from fractalq.proto import fractalq_pb2 as pb


def quantiles(values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    return f"p50 {statistics.median(ordered) * 1000:7.2f} ms   p90 {p90 * 1000:7.2f} ms"


def noop_split(address: str, samples: int) -> dict[str, list[float]]:
    parts: dict[str, list[float]] = {"submit": [], "first message": [], "rest": [], "total": []}
    with Client(address) as client:
        for _ in range(samples + 5):
            began = time.perf_counter()
            job = client.submit(pb.SubmitJobRequest(task_type="noop", count=1)).job
            submitted = time.perf_counter()
            stream = client.watch(job.job_id)
            next(stream)
            first = time.perf_counter()
            for _ in stream:
                pass
            done = time.perf_counter()
            for name, value in (("submit", submitted - began), ("first message", first - submitted),
                                ("rest", done - first), ("total", done - began)):  # fmt: skip
                parts[name].append(value)
    return {name: values[5:] for name, values in parts.items()}  # the first few warm up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=800)
    args = parser.parse_args()
    sizes = [(args.width, args.height), (args.width // 2, args.height // 2)]
    with tempfile.TemporaryDirectory() as folder:
        storage = (Path(folder) / "storage").as_uri()
        with cluster(2, 1, Path(folder), storage) as address:
            warm = RenderRequest.create("mandelbrot", width=64, height=64)
            for _ in range(4):
                render_seconds(address, storage, warm, 8)
            times: dict[tuple[int, int], list[float]] = {size: [] for size in sizes}
            for _ in range(args.samples):  # sizes take turns: noise slows them alike
                for width, height in sizes:
                    request = RenderRequest.create("mandelbrot", width=width, height=height)
                    times[(width, height)].append(render_seconds(address, storage, request, 8))
            for (width, height), values in times.items():
                print(f"render {width}x{height} submit to PNG   {quantiles(values)}")
            for name, values in noop_split(address, args.samples * 5).items():
                print(f"noop job {name:<14}          {quantiles(values)}")


if __name__ == "__main__":
    main()
