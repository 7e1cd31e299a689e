"""Dashboard costs: live previews on a render, and the event stream's per watcher.

    python bench/dashboard_bench.py [--runs 5] [--watchers 50] [--seconds 10]

Previews, side by side in one run: a band task's work (kernel, colouring,
encoding, storing in a local folder) with and without its preview piece
(:func:`fractalq.preview.band_preview`: sampling the band's pixels and JPEG
coding them), alternated run by run, medians of ``--runs``, for a cheap view
(1200x800, max-iter 256, where a preview weighs most), docs/performance.md's 4800x3200
render, a one-band render (the whole preview in one piece) and one band of a
32768-square image.

End to end, side by side: two coordinators, each with two workers (one slot
each), one set's band tasks with previews and the other's without (the bench
replaces the preview function in those workers' processes); ``--renders``
1200x800 renders (max-iter 256, 8 bands) alternate between the two, each timed
from submission to the image stored; medians.

Event stream: a real coordinator with two workers running a stream of short
jobs (50 in the jobs table); its CPU time per second (from /proc) with 0, 1
and ``--watchers`` browsers' worth of event-stream connections open, each
reading every event, and the bytes a watcher receives per tick.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from proc_usage import cpu_seconds
from procs import Coordinator, Process, Worker, wait_until

from fractalq.client import Client
from fractalq.fractal.png import encode_band
from fractalq.fractal.render import render_rows
from fractalq.fractal.request import RenderRequest, band_rows
from fractalq.images import submit_render
from fractalq.preview import band_preview, band_result
from fractalq.proto import fractalq_pb2 as pb
from fractalq.storage import open_storage
from fractalq.tasks import band
from fractalq.tasks.registry import TaskContext

CASES = [
    ("1200x800, max-iter 256, 8 bands", 1200, 800, 256, 8, None),
    ("4800x3200, max-iter 1000, 32 bands", 4800, 3200, 1000, 32, None),
    ("1200x800, max-iter 256, 1 band", 1200, 800, 256, 1, None),
    ("32768x32768, max-iter 1000, 1 band of 128 rows", 32768, 32768, 1000, 256, 100),
]


def band_work(
    request: RenderRequest, rows: list[tuple[int, int]], folder: str
) -> tuple[float, float]:
    """Seconds of the bands' own work (render, encode, store) and of their previews' CPU."""
    storage = open_storage(Path(folder).as_uri())
    work = preview = 0.0
    for start, end in rows:
        begin = time.perf_counter()
        rgb = render_rows(request, start, end)
        storage.put(f"b/{start}", encode_band(rgb, start))
        middle = time.perf_counter()
        band_result(["b"], [band_preview(rgb, request.width, request.height, start)])
        preview += time.perf_counter() - middle
        work += middle - begin
    return work, preview


def task_time(request: RenderRequest, rows: list[tuple[int, int]], folder: str) -> float:
    """Seconds of the band task itself (``fractal.band``), over ``rows``."""
    context = TaskContext(storage_url=Path(folder).as_uri(), job_id="bench")
    begin = time.perf_counter()
    for start, end in rows:
        band.render_band(band.band_payload(request, start, end), context)
    return time.perf_counter() - begin


def previews(runs: int) -> None:
    print("preview cost per band, medians of the runs: the previews' CPU next to the bands'")
    print("own work, and the band task's time with and without them (the task makes its")
    print("preview while the band is stored, so storage's wait hides some or all of it)")
    real = band.band_preview
    for name, width, height, max_iter, regions, only in CASES:
        request = RenderRequest.create("mandelbrot", width=width, height=height, max_iter=max_iter)
        rows = band_rows(request, regions)
        if only is not None:
            rows = rows[only : only + 1]
        with tempfile.TemporaryDirectory() as folder:
            band_work(request, rows[:1], folder)  # compile and warm up
            timings = [band_work(request, rows, folder) for _ in range(runs)]
            plain, with_preview = [], []
            for _ in range(runs):  # alternated, side by side
                band.band_preview = lambda *args, **kwargs: None
                plain.append(task_time(request, rows, folder))
                band.band_preview = real
                with_preview.append(task_time(request, rows, folder))
        work = statistics.median(w for w, _ in timings)
        extra = statistics.median(p for _, p in timings)
        share = statistics.median(p / w for w, p in timings)
        a, b = statistics.median(plain), statistics.median(with_preview)
        print(f"  {name}: bands {work * 1000:.1f} ms, previews' CPU {extra * 1000:.2f} ms"
              f" (+{share * 100:.1f}%); task {a * 1000:.1f} ms without,"
              f" {b * 1000:.1f} ms with ({(b / a - 1) * 100:+.1f}%)")  # fmt: skip


# A worker whose bands carry no preview: the band module's preview function
# replaced before the worker starts (bands run in-process with one slot).
NO_PREVIEW = (
    "import sys, fractalq.tasks.band as band; band.band_preview = lambda *a, **k: None;"
    " from fractalq.cli import main; sys.exit(main())"
)


def _render_once(client: Client, request: RenderRequest) -> float:
    begin = time.perf_counter()
    job = submit_render(client, request, 8, 10).job
    for state in client.watch(job.job_id):
        if state.state == pb.SUCCEEDED:
            return time.perf_counter() - begin
        if state.state in (pb.FAILED, pb.CANCELLED):
            raise RuntimeError(f"render {job.job_id} ended {state.state}: {state.reason}")
    raise RuntimeError("the watch ended early")


def end_to_end(renders: int) -> None:
    print("preview cost end to end: 1200x800 renders on 2 warm workers, with and without")
    request = RenderRequest.create("mandelbrot", width=1200, height=800, max_iter=256)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        storage = (folder / "storage").as_uri()
        started: list[Process] = []
        try:
            sides = {}
            for name in ("with", "without"):
                (folder / name).mkdir()
                coordinator = Coordinator(folder / name, worker_timeout=15, name=name)
                started.append(coordinator)
                for n in range(2):
                    args = ["worker", "--coordinator", coordinator.address, "--storage", storage]
                    if name == "with":
                        command = [sys.executable, "-m", "fractalq", *args]
                    else:
                        command = [sys.executable, "-c", NO_PREVIEW, *args]
                    started.append(Process(command, folder / name / f"worker{n}.log"))
                client = coordinator.client()
                wait_until(lambda c=client: len(c.stats().workers) == 2, message="workers")
                _render_once(client, request)  # warm
                sides[name] = (client, [])
            for _ in range(renders):
                for client, times in sides.values():
                    times.append(_render_once(client, request))
            a = statistics.median(sides["without"][1])
            b = statistics.median(sides["with"][1])
            print(f"  without previews {a * 1000:.1f} ms, with {b * 1000:.1f} ms:"
                  f" {(b / a - 1) * 100:+.1f}%")  # fmt: skip
        finally:
            for process in reversed(started):
                process.stop()


async def _watch(url: str, count: int, stop: asyncio.Event, received: list[int]) -> None:
    async with aiohttp.ClientSession() as session:

        async def one(n: int) -> None:
            async with session.get(url) as response:
                async for chunk in response.content.iter_any():
                    received[n] += len(chunk)
                    if stop.is_set():
                        return

        tasks = [asyncio.create_task(one(n)) for n in range(count)]
        await stop.wait()
        await asyncio.sleep(1.5)  # one more tick ends every reader
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _measure(pid: int, url: str, count: int, seconds: float) -> tuple[float, list[int]]:
    """The coordinator's CPU seconds over ``seconds`` with ``count`` watchers reading."""
    received = [0] * count
    stop = asyncio.Event()
    watching = asyncio.create_task(_watch(url, count, stop, received))
    await asyncio.sleep(2)  # connected, first events read
    before = cpu_seconds(pid)
    await asyncio.sleep(seconds)
    used = cpu_seconds(pid) - before
    stop.set()
    await watching
    return used, received


def events(watchers: int, seconds: float) -> None:
    print(f"event stream: coordinator CPU per second over {seconds:g} s, two workers busy")
    with tempfile.TemporaryDirectory() as tmp:
        coordinator = Coordinator(Path(tmp), worker_timeout=15)
        workers = [Worker(Path(tmp), coordinator.address) for _ in range(2)]
        feeding = threading.Event()
        try:
            client = coordinator.client()
            wait_until(lambda: len(client.stats().workers) == 2, message="workers")

            def feed() -> None:  # a steady stream of small jobs: the table stays full
                while not feeding.is_set():
                    client.submit(
                        pb.SubmitJobRequest(
                            task_type="sleep", payload=b'{"seconds": 0.05}', count=4
                        )
                    )
                    time.sleep(0.1)

            feeder = threading.Thread(target=feed, daemon=True)
            feeder.start()
            time.sleep(3)
            url = f"http://127.0.0.1:{coordinator.http_port}/api/events"
            for count in (0, 1, watchers, 0, 1, watchers):
                used, received = asyncio.run(_measure(coordinator.pid, url, count, seconds))
                per_second = sum(received) / count / (seconds + 3.5) if count else 0
                print(f"  {count:3d} watcher(s): {used / seconds * 1000:.0f} ms CPU/s"
                      f"{f', {per_second / 1024:.1f} KiB/s to each' if count else ''}")  # fmt: skip
        finally:
            feeding.set()
            for worker in workers:
                worker.stop()
            coordinator.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--watchers", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--renders", type=int, default=30)
    args = parser.parse_args()
    previews(args.runs)
    end_to_end(args.renders)
    events(args.watchers, args.seconds)


if __name__ == "__main__":
    main()
