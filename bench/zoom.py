"""A zoom movie: the issue's 30 s, 1280x720, 30 fps zoom from 3.5 to 1e-30 into the seahorse valley.

Runs ``fractalq demo zoom`` (a coordinator, workers, a storage folder, all
local processes), prints its split (reference orbits, keyframes, encoding,
download) as the command reports it, the load of the machine before and after,
every process's peak resident memory (``VmHWM``, read from ``/proc`` while it
runs) and the CPU time each kind of process used (which, unlike the wall time,
does not depend on what else the machine is running). ``--scaling`` also
times a smaller zoom (320x180 to 1e-16) with 1 and with 2 workers: the
keyframes are independent, so their stage should take about half as long.

    python bench/zoom.py [--workers 2] [--size 1280x720] [--seconds 30] [--fps 30]
                         [--to 1e-30] [--max-iter 100000] [--growth 1.03] [--scaling]
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gigapixel import descendants, peak_kib

SEAHORSE = ("-0.743643887037158704752191506114774", "0.131825904205311970493132056385139")
SPLIT = re.compile(
    r"in (?P<total>[\d.]+)s \(reference orbits after (?P<orbits>[\d.]+)s, keyframes "
    r"(?P<keyframes_time>[\d.]+)s, encoding (?P<encoding>[\d.]+)s, download (?P<download>[\d.]+)s\)"
)


def zoom(args: argparse.Namespace, workers: int, size: str, seconds: float, fps: int) -> dict:
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


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
    parser.add_argument("--scaling", action="store_true", help="also 1 vs 2 workers, smaller")
    args = parser.parse_args()

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
