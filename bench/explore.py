"""Explorer benchmark: time from a zoom step to every visible tile loaded, in a real browser.

    python bench/explore.py [--workers 2] [--max-iter 500] [--steps 10] [--paths 3]
    python bench/explore.py --tile-sizes     # work per screen by tile size, in-process
    python bench/explore.py --no-browser     # the same steps' tiles fetched by the script

A coordinator (keeping its database, as deployed) and ``--workers`` workers
(``--concurrency 1`` each) are started as the tests start them, and Debian's
headless Chromium opens ``/explore`` at 1600 x 1000. The workers are warmed by a
first screen of tiles. Then, for each of ``--paths`` points of the Mandelbrot
boundary, the map is centred on the point at zoom 5 (not timed) and zoomed in
``--steps`` times with Leaflet's own zoom-in (a user's click on "+"):
every step shows tiles nobody rendered before. A step's time is from the
zoom call to the layer's ``load`` event (every tile on screen fetched and
decoded), measured in the page with ``performance.now()``.

Where the time goes: the page records when its tile requests go out, are read
and their tiles decoded; the coordinator's ``/api/explore/stats``, read
between steps, gives its own time per request, the tile job's (submitted to
last result) and the workers' rendering and encoding time per tile (summed,
divided by the workers). The legend printed with the figures says which part
is which.

``--no-browser`` fetches the same steps' tiles from this script instead (one
request a step, as the page makes), for the time without a browser on the
machine. ``--tile-sizes`` compares, on one thread here, the CPU time to render and
encode the tiles that cover the page's map at the same zoom steps with 128-,
256- and 512-pixel tiles, and how many pixels each renders per pixel shown.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from browser import launch  # noqa: E402
from procs import ProcessGroup, wait_until  # noqa: E402

from fractalq import config  # noqa: E402

# Points on the Mandelbrot set's boundary: every zoom step keeps detail on screen.
PATHS = [
    (-0.743643887037151, 0.131825904205330),  # seahorse valley
    (-1.2487099, 0.0708345),  # between the period-2 disc and the antenna
    (0.2869025, 0.0142605),  # elephant valley
    (-0.1011, 0.9563),  # the top of the period-3 bulb
]

GO_TO = """([lat, lng, zoom]) => new Promise((resolve) => {
  const s = window.fractalqExplorer;
  s.layer.once("load", resolve);
  s.map.setView([lat, lng], zoom, { animate: false });
})"""

ZOOM_IN = """() => new Promise((resolve) => {
  const s = window.fractalqExplorer;
  const started = performance.now();
  s.layer.once("load", () => {
    const total = performance.now() - started;
    const batches = s.batches.filter((b) => b.sent >= started);
    const last = (key) => Math.max(...batches.map((b) => b[key] || 0)) - started;
    resolve({
      total,
      sent: Math.min(...batches.map((b) => b.sent)) - started,
      headers: last("headers"),
      read: last("read"),
      decoded: last("decoded"),
      batches: batches.length,
    });
  });
  s.map.zoomIn();
})"""

SET_MAX_ITER = """(maxIter) => new Promise((resolve) => {
  const form = document.getElementById("controls");
  form.max_iter.value = String(maxIter);
  form.requestSubmit();
  window.fractalqExplorer.layer.once("load", resolve);
})"""


def stats(http: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{http}/api/explore/stats", timeout=10) as response:
        data: dict[str, int] = json.load(response)
    return data


def latlng(x: float, y: float) -> tuple[float, float]:
    """The map position of the complex point (x, y) (coordinator/web/tiles.py's mapping)."""
    center_x, center_y, width = config.DEFAULT_MANDELBROT_VIEW
    unit = width / config.TILE_SIZE
    return (y - (center_y + width / 2)) / unit, (x - (center_x - width / 2)) / unit


PARTS = {
    "total": "the zoom call to the layer's load event",
    "to request": "the zoom call to the tile request sent (Leaflet)",
    "request": "sent to the last tile read (the coordinator and HTTP)",
    "answered": "  of which until the answer's headers (the request's way in)",
    "server": "  of which in the coordinator (arrival to last tile written)",
    "job": "    of which the tile job (submitted to last result)",
    "queue": "      of which leasing, reporting, waiting (job - render - encode)",
    "render": "      of which rendering, per worker",
    "encode": "      of which PNG encoding, per worker",
    "render CPU": "the workers' CPU time rendering, per worker (wall above, when busy)",
    "encode CPU": "the workers' CPU time encoding, per worker",
    "last decode": "the last tile read to the last tile decoded",
    "to load": "the last tile decoded to the load event (Leaflet)",
}


def process_cpu() -> dict[str, float]:
    """CPU seconds so far of this script's descendants (Linux /proc), by kind."""
    ticks = os.sysconf("SC_CLK_TCK")
    parent, seconds, kind = {}, {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat, open(f"/proc/{entry}/cmdline") as line:
                fields, command = stat.read().rsplit(")", 1)[1].split(), line.read()
        except OSError:  # gone meanwhile
            continue
        pid = int(entry)
        parent[pid] = int(fields[1])
        seconds[pid] = (int(fields[11]) + int(fields[12])) / ticks
        words = command.split("\0")
        kind[pid] = next(
            (name for name in ("coordinator", "worker") if name in words[:4]),
            "browser" if "chrom" in command else "other",
        )
    totals: dict[str, float] = {}
    for pid, used in seconds.items():
        ancestor, hops = parent.get(pid, 0), 0
        while ancestor not in (0, 1, os.getpid()) and hops < 64:
            ancestor, hops = parent.get(ancestor, 0), hops + 1
        if ancestor == os.getpid():
            totals[kind[pid]] = totals.get(kind[pid], 0.0) + used
    return totals


BROWSER_ONLY = ("to request", "answered", "last decode", "to load")


def screen_tiles(x: float, y: float, zoom: int, tile_size: int) -> list[tuple[int, int, int]]:
    """The tiles (zoom, column, row) of ``tile_size`` pixels, on the map's grid, that
    cover the page's 1600 x 946 map (under its header) centred on (x, y) at ``zoom``."""
    center_x, center_y, width = config.DEFAULT_MANDELBROT_VIEW
    left, top = center_x - width / 2, center_y + width / 2
    pixel = width / config.TILE_SIZE / 2**zoom  # the map's pixel at this zoom
    tile = pixel * tile_size
    columns = range(
        math.floor((x - 800 * pixel - left) / tile), math.ceil((x + 800 * pixel - left) / tile)
    )
    rows = range(
        math.floor((top - y - 473 * pixel) / tile), math.ceil((top - y + 473 * pixel) / tile)
    )
    return [(zoom, column, row) for column in columns for row in rows]


def screen_work(tile_size: int, zooms: range, paths: int, max_iter: int) -> tuple[float, float]:
    """One thread's seconds to render and encode the tiles covering the page's map at
    the views of the zoom steps, tiles of ``tile_size`` pixels on the same grid; and
    the pixels rendered per pixel shown."""
    from fractalq.fractal.request import RenderRequest
    from fractalq.tasks.tile import render_tile

    center_x, center_y, width = config.DEFAULT_MANDELBROT_VIEW
    left, top = center_x - width / 2, center_y + width / 2
    seconds, rendered, shown = 0.0, 0, 0
    for x, y in PATHS[:paths]:
        for zoom in zooms:
            tile = width / config.TILE_SIZE / 2**zoom * tile_size
            for _, i, j in screen_tiles(x, y, zoom, tile_size):
                request = RenderRequest.create(
                    "mandelbrot",
                    width=tile_size,
                    height=tile_size,
                    max_iter=max_iter,
                    center_x=left + (i + 0.5) * tile,
                    center_y=top - (j + 0.5) * tile,
                    view_width=tile,
                )
                started = time.thread_time()
                render_tile(request)
                seconds += time.thread_time() - started
                rendered += tile_size * tile_size
            shown += 1600 * 946
    return seconds / (paths * len(zooms)), rendered / shown


def without_browser(http: str, args: argparse.Namespace) -> list[dict[str, float]]:
    """The same steps' tiles fetched by this script: the time with no browser here."""
    rows = []
    for x, y in PATHS[: args.paths]:
        for zoom in range(args.start_zoom, args.start_zoom + 1 + args.steps):
            tiles = ",".join(f"{z}/{i}/{j}" for z, i, j in screen_tiles(x, y, zoom, 256))
            url = f"{http}/api/explore/tiles?max_iter={args.max_iter}&tiles={tiles}"
            before = stats(http)
            started = time.perf_counter()
            with urllib.request.urlopen(url, timeout=60) as response:
                response.read()
            total = (time.perf_counter() - started) * 1000
            delta = {key: value - before[key] for key, value in stats(http).items()}
            if zoom > args.start_zoom:  # the first screen of a path only sets it up
                times = {"total": total, "sent": 0, "headers": 0, "read": total, "decoded": 0}
                rows.append(step({**times, "batches": 1}, delta, args.workers))
    return rows


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-iter", type=int, default=500)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--paths", type=int, default=3)
    parser.add_argument("--start-zoom", type=int, default=5)
    parser.add_argument(
        "--tile-sizes", action="store_true", help="only compare the work per screen by tile size"
    )
    parser.add_argument(
        "--no-browser", action="store_true", help="fetch the steps' tiles from this script"
    )
    args = parser.parse_args()
    if args.tile_sizes:
        zooms = range(args.start_zoom + 1, args.start_zoom + 1 + args.steps)
        screen_work(64, range(1), 1, 16)  # loads numba's compiled code first
        for size in (128, 256, 512):
            seconds, waste = screen_work(size, zooms, args.paths, args.max_iter)
            print(
                f"{size}-px tiles: {seconds * 1000:.0f} ms of one thread per screen, "
                f"{waste:.2f} pixels rendered per pixel shown"
            )
        return

    load_before = os.getloadavg()[0]
    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="fractalq-bench-") as folder:
        group = ProcessGroup(Path(folder))
        try:
            coordinator = group.start_coordinator()
            for _ in range(args.workers):
                group.start_worker()
            client = coordinator.client()
            wait_until(lambda: len(client.stats().workers) == args.workers, 30, "workers")
            http = f"http://127.0.0.1:{coordinator.http_port}"
            if args.no_browser:
                rows = without_browser(http, args)
            else:
                rows = with_browser(http, args, errors)
        finally:
            group.stop()
    report(rows, args)
    cores = os.cpu_count()
    print(f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after ({cores} cores)")
    if errors:
        print("console errors:", *errors, sep="\n  ")


def with_browser(http: str, args: argparse.Namespace, errors: list[str]) -> list[dict[str, float]]:
    rows = []
    with launch() as browser:
        context = browser.new_context(viewport={"width": 1600, "height": 1000})
        page = context.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(f"{http}/explore")
        page.wait_for_function("window.fractalqExplorer && window.fractalqExplorer.layer")
        page.evaluate(SET_MAX_ITER, args.max_iter)  # also warms the workers
        used: dict[str, float] = {}
        for x, y in PATHS[: args.paths]:
            lat, lng = latlng(x, y)
            page.evaluate(GO_TO, [lat, lng, args.start_zoom])
            cpu_before = process_cpu()
            for _ in range(args.steps):
                before = stats(http)
                times = page.evaluate(ZOOM_IN)
                after = stats(http)
                delta = {key: after[key] - before[key] for key in after}
                rows.append(step(times, delta, args.workers))
            for kind, seconds in process_cpu().items():
                used[kind] = used.get(kind, 0.0) + seconds - cpu_before.get(kind, 0.0)
        context.close()
    steps = args.paths * args.steps
    shares = [f"{kind} {seconds * 1000 / steps:.0f}" for kind, seconds in sorted(used.items())]
    print("CPU per step (ms, all processes of a kind):", ", ".join(shares))
    return rows


def step(times: dict[str, float], delta: dict[str, int], workers: int) -> dict[str, float]:
    server = delta["request_us"] / 1000 / max(delta["requests"], 1)
    job = delta["job_us"] / 1000 / max(delta["jobs"], 1)
    render = delta["render_us"] / 1000 / workers
    encode = delta["encode_us"] / 1000 / workers
    return {
        "total": times["total"],
        "to request": times["sent"],
        "request": times["read"] - times["sent"],
        "answered": times["headers"] - times["sent"],
        "server": server,
        "job": job,
        "queue": job - render - encode,
        "render": render,
        "encode": encode,
        "render CPU": delta["render_cpu_us"] / 1000 / workers,
        "encode CPU": delta["encode_cpu_us"] / 1000 / workers,
        "last decode": times["decoded"] - times["read"],
        "to load": times["total"] - max(times["decoded"], times["read"]),
        "tiles": delta["tiles"],
        "rendered": delta["rendered"],
        "requests": times["batches"],
    }


def report(rows: list[dict[str, float]], args: argparse.Namespace) -> None:
    totals = [row["total"] for row in rows]
    print(
        f"explorer: {len(rows)} zoom steps, 1600x1000, {config.TILE_SIZE}-px tiles, "
        f"max-iter {args.max_iter}, {args.workers} workers (--concurrency 1)"
    )
    what = "a step's tiles fetched (no browser)" if args.no_browser else "zoom to all tiles loaded"
    print(
        f"{what}: p50 {percentile(totals, 0.5):.0f} ms, "
        f"p90 {percentile(totals, 0.9):.0f} ms (min {min(totals):.0f}, max {max(totals):.0f})"
    )
    print("medians per step (ms; work is per worker):")
    for key in PARTS:
        if args.no_browser and key in BROWSER_ONLY:
            continue
        print(f"  {key:12s} {statistics.median(row[key] for row in rows):7.1f}  {PARTS[key]}")
    for key in ("tiles", "rendered", "requests"):
        print(f"  {key:12s} {statistics.median(row[key] for row in rows):7.0f}")


if __name__ == "__main__":
    main()
