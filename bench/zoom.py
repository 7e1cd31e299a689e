"""A zoom movie: the issue's 30 s, 1280x720, 30 fps zoom from 3.5 to 1e-30 into the seahorse valley.

Runs ``fractalq demo zoom`` (a coordinator, workers, a storage folder, all
local processes), prints its split (reference orbits, keyframes, encoding,
download) as the command reports it, the load of the machine before and after,
every process's peak resident memory (``VmHWM``, read from ``/proc`` while it
runs) and the CPU time each kind of process used (which, unlike the wall time,
does not depend on what else the machine is running). ``--scaling`` also
times a smaller zoom (320x180 to 1e-16) with 1 and with 2 workers: the
keyframes are independent, so their stage should take about half as long.

``--sample STEP`` runs no cluster: it renders every STEP-th keyframe of the zoom
at a quarter of its width and height in this process, times each in CPU seconds,
and projects the keyframes' total at full size (16 times the pixels) and the
encoding's (colouring, composing and H.264 of 30 frames at full size), which is
what the full run costs on a quiet machine whatever the load when it is measured.
With ``--scaling`` it then renders the same sampled keyframes in a pool of 1 and
of 2 processes, warmed first, deepest first as a zoom job hands them out: wall
clock and CPU time side by side (how the keyframes scale with workers, without
the cluster's start-up).

    python bench/zoom.py [--workers 2] [--size 1280x720] [--seconds 30] [--fps 30]
                         [--to 1e-30] [--max-iter 100000] [--growth 1.03] [--scaling]
                         [--sample STEP]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gigapixel import descendants, peak_kib
from proc_usage import cpu_seconds

SEAHORSE = ("-0.743643887037158704752191506114774", "0.131825904205311970493132056385139")
SPLIT = re.compile(
    r"in (?P<total>[\d.]+)s \(reference orbits after (?P<orbits>[\d.]+)s, keyframes "
    r"(?P<keyframes_time>[\d.]+)s, encoding (?P<encoding>[\d.]+)s, download (?P<download>[\d.]+)s\)"
)


def zoom(
    args: argparse.Namespace, workers: int, size: str, seconds: float, fps: int
) -> dict[str, Any]:
    width, height = size.split("x")
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "zoom.mp4"
        command = [
            sys.executable, "-m", "fractalq", "demo", "zoom", "--center-x", SEAHORSE[0],
            "--center-y", SEAHORSE[1], "--to", args.to, "--width", width, "--height", height,
            "--seconds", str(seconds), "--fps", str(fps), "--max-iter", str(args.max_iter),
            "--max-iter-growth", str(args.growth), "--workers", str(workers), "--out", str(out),
        ]  # fmt: skip
        began = time.monotonic()
        demo = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        lines: list[str] = []
        reader = threading.Thread(target=lines.extend, args=(demo.stderr,), daemon=True)
        reader.start()
        peaks: dict[int, tuple[str, int]] = {}
        cpu: dict[int, float] = {}
        said, last_said = 0, 0.0
        while demo.poll() is None:
            for pid in descendants(demo.pid):
                found = peak_kib(pid)
                if found is not None and found[1] >= peaks.get(pid, ("", 0))[1]:
                    peaks[pid] = found
                cpu[pid] = max(cpu.get(pid, 0.0), cpu_seconds(pid))
            # A long run on a busy machine may not be let finish: say how it goes as it
            # goes (each new line of the command's, at most once a minute otherwise).
            now = time.monotonic()
            if len(lines) > said or now - last_said >= 60:
                said, last_said = len(lines), now
                progress(now - began, lines[-1] if lines else "", peaks, cpu, demo.pid)
            time.sleep(0.2)
        reader.join()
        elapsed = time.monotonic() - began
        stderr = "".join(lines)
        if demo.returncode != 0:
            raise SystemExit(f"demo zoom failed: {stderr.strip().splitlines()[-1:]}")
        split = SPLIT.search(stderr)
        if split is None:
            raise SystemExit(f"no summary in the demo's output:\n{stderr}")
        memory: dict[str, int] = {}
        used: dict[str, float] = {}
        for pid, (role, kib) in peaks.items():
            role = "client (demo)" if pid == demo.pid else role
            memory[role] = max(memory.get(role, 0), kib)
            used[role] = used.get(role, 0.0) + cpu.get(pid, 0.0)
        return {
            "wall": elapsed,
            "bytes": out.stat().st_size,
            "keyframes": int(re.findall(r"(\d+) keyframes", stderr)[-1]),
            **{name: float(value) for name, value in split.groupdict().items()},
            "memory": memory,
            "cpu": used,
        }


def sampled_zoom(args: argparse.Namespace) -> Any:
    """The zoom ``--sample`` samples (a ZoomRequest)."""
    from fractalq.fractal.zoom import ZoomRequest

    width, height = (int(n) for n in args.size.split("x"))
    return ZoomRequest.create(
        center_x=SEAHORSE[0], center_y=SEAHORSE[1], to_width=args.to, width=width,
        height=height, seconds=args.seconds, fps=args.fps, max_iter=args.max_iter,
        max_iter_growth=args.growth,
    )  # fmt: skip


def warm_up() -> None:
    """Load the compiled kernels as a worker does before its first task."""
    from fractalq import tasks

    warm = tasks.get("fractal.keyframe").warm
    if warm is not None:
        warm()


def render_quarter(zoom: Any, level: int) -> tuple[float, float]:
    """Keyframe ``level`` at a quarter of its width and height, as a keyframe task
    renders it: (CPU seconds, median count)."""
    import dataclasses

    import numpy as np

    from fractalq.fractal import kernels
    from fractalq.fractal import reference as orbits

    full = zoom.keyframe(level)
    quarter = dataclasses.replace(full, width=full.width // 4, height=full.height // 4)
    began = time.process_time()
    reference = orbits.compute(quarter) if quarter.deep else None
    counts, _ = kernels.escape(quarter, 0, quarter.height, reference=reference)
    return time.process_time() - began, float(np.median(counts))


_POOL_ZOOM: Any = None


def _pool_start(args: argparse.Namespace, ready: Any) -> None:
    global _POOL_ZOOM
    _POOL_ZOOM = sampled_zoom(args)
    warm_up()
    ready.put(os.getpid())


def _pool_render(level: int) -> float:
    return render_quarter(_POOL_ZOOM, level)[0]


def sample_scaling(args: argparse.Namespace, levels: list[int]) -> None:
    """The sampled keyframes rendered by a pool of 1, then of 2 processes (deepest,
    hence longest, first, as a zoom job hands them out): wall clock and CPU time
    side by side, the processes warmed before the clock starts."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    walls = {}
    for processes in (1, 2):
        ready = context.Manager().Queue()
        with context.Pool(processes, _pool_start, (args, ready)) as pool:
            for _ in range(processes):
                ready.get()
            began = time.monotonic()
            spent = sum(pool.imap_unordered(_pool_render, levels, chunksize=1))
            walls[processes] = time.monotonic() - began
        print(f"  {processes} process(es): wall {walls[processes]:.1f} s, CPU {spent:.1f} s"
              f" ({spent / walls[processes]:.2f} cores busy); {load()}", flush=True)  # fmt: skip
    print(f"  2 processes vs 1: {walls[1] / walls[2]:.2f}x the keyframes' speed")


def sample(args: argparse.Namespace) -> None:
    """Every ``args.sample``-th keyframe at a quarter size, in CPU seconds; projections."""
    import numpy as np

    from fractalq.fractal import movie
    from fractalq.fractal.palettes import ColourScale
    from fractalq.video import VideoWriter

    width, height = (int(n) for n in args.size.split("x"))
    zoom = sampled_zoom(args)
    warm_up()
    levels = list(zoom.levels)
    print(f"{len(levels)} keyframes, {zoom.frame_count} frames; every {args.sample}th keyframe"
          f" at {width // 4}x{height // 4}:")  # fmt: skip
    total = 0.0
    for i in range(0, len(levels), args.sample):
        spent, median = render_quarter(zoom, levels[i])
        total += 16 * spent * min(args.sample, len(levels) - i)
        print(f"  keyframe {levels[i]:3d}, {float(zoom.keyframe(levels[i]).view_width):.2g} wide,"
              f" max-iter {zoom.max_iter_at(levels[i])}: {spent:.2f} CPU s (median count"
              f" {median:.0f})", flush=True)  # fmt: skip
    # The encoding: 30 frames of two keyframes' values at full size, coloured, composed, H.264.
    values = np.cumsum(np.random.default_rng(1).random((height, width)), axis=1) + 1000.0
    inner = movie.Keyframe.of(values, args.max_iter)
    outer = movie.Keyframe.of(values[::-1].copy(), args.max_iter)
    scale = ColourScale("log", 500.0, float(args.max_iter))
    movie.compose(movie.colour(inner, "classic", scale), None, 0.0)  # compiled code loaded
    began = time.process_time()
    frames = [
        movie.compose(movie.colour(inner, "classic", scale), movie.colour(outer, "classic", scale),
                      (n + 0.5) / 30)
        for n in range(30)
    ]  # fmt: skip
    made = time.process_time()
    with (
        tempfile.TemporaryDirectory() as folder,
        VideoWriter(str(Path(folder) / "x.mp4"), "mp4", width, height, args.fps, 20) as video,
    ):
        for frame in frames:
            video.write(frame)
    encoded = time.process_time()
    per_frame = (encoded - began) / 30
    make, encode = (made - began) / 30 * 1000, (encoded - made) / 30 * 1000
    print(f"projected at {args.size}: keyframes {total:.0f} CPU s; encoding"
          f" {per_frame * zoom.frame_count:.0f} CPU s ({make:.0f} ms a frame to make,"
          f" {encode:.0f} ms to encode); {load()}")  # fmt: skip
    if args.scaling:
        print("the sampled keyframes, by 1 and by 2 processes:")
        sample_scaling(args, levels[:: args.sample])


def progress(
    elapsed: float,
    line: str,
    peaks: dict[int, tuple[str, int]],
    cpu: dict[int, float],
    demo: int,
) -> None:
    """One line: time so far, the command's last line, CPU time and peak memory so far."""
    used: dict[str, float] = {}
    memory: dict[str, int] = {}
    for pid, (role, kib) in peaks.items():
        role = "client" if pid == demo else role
        used[role] = used.get(role, 0.0) + cpu.get(pid, 0.0)
        memory[role] = max(memory.get(role, 0), kib)
    spent = ", ".join(f"{role} {seconds:.0f}" for role, seconds in sorted(used.items()))
    most = ", ".join(f"{role} {kib / 1024:.0f}" for role, kib in sorted(memory.items()))
    print(
        f"  [{elapsed:6.0f} s] {line.strip()} | CPU s: {spent} | peak MiB: {most} | {load()}",
        flush=True,
    )


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--to", default="1e-30")
    parser.add_argument("--max-iter", type=int, default=100_000)
    parser.add_argument("--growth", type=float, default=1.03)
    parser.add_argument(
        "--scaling", action="store_true",
        help="also 1 vs 2 workers, smaller (with --sample: the sample by 1 and by 2 processes)",
    )  # fmt: skip
    parser.add_argument(
        "--sample", type=int, default=0, metavar="STEP",
        help="no cluster: every STEP-th keyframe at a quarter size, projected",
    )  # fmt: skip
    args = parser.parse_args()
    if args.sample:
        sample(args)
        return

    print(f"before: {load()}", flush=True)
    got = zoom(args, args.workers, args.size, args.seconds, args.fps)
    print(
        f"{args.size}, {args.seconds:g} s at {args.fps} fps, 3.5 to {args.to}, max-iter"
        f" {args.max_iter} (growth {args.growth:g}), {args.workers} workers:"
        f" {got['keyframes']} keyframes, {got['bytes'] / 2**20:.1f} MiB of video"
    )
    print(
        f"  wall {got['wall']:.1f} s (the command's own {got['total']:.1f} s):"
        f" reference orbits after {got['orbits']:.1f} s (start-up included),"
        f" keyframes {got['keyframes_time']:.1f} s, encoding {got['encoding']:.1f} s,"
        f" download {got['download']:.1f} s"
    )
    for role, kib in sorted(got["memory"].items()):
        print(f"  peak resident memory, {role}: {kib / 1024:.0f} MiB")
    # CPU time does not depend on what else the machine runs: on a quiet machine the
    # workers' share is what their cores would take, shared between them.
    for role, seconds in sorted(got["cpu"].items()):
        print(f"  CPU time, {role} (all of them): {seconds:.0f} s")
    print(f"after: {load()}", flush=True)
    if args.scaling:
        # A smaller zoom (to 1e-16, 320x180, 10 s at 10 fps): the keyframes' stage with
        # one worker and with two.
        small = argparse.Namespace(**{**vars(args), "to": "1e-16"})
        times = {}
        for workers in (1, 2):
            times[workers] = zoom(small, workers, "320x180", 10.0, 10)["keyframes_time"]
            print(f"320x180 to 1e-16, {workers} worker(s): keyframes {times[workers]:.1f} s")
        print(f"  2 workers vs 1: {times[1] / times[2]:.2f}x ({load()})")


if __name__ == "__main__":
    main()
