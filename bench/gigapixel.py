"""Gigapixel renders: wall time and each process's peak memory, by image size.

Runs ``fractalq demo`` (coordinator, workers, assembly as a task, download) for
square Mandelbrot images of the default view at max-iter 1000, and reads every
process's peak resident memory (``VmHWM``) from ``/proc`` while it runs.

    python bench/gigapixel.py [--sizes 4096 16384 32768] [--workers 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def peak_kib(pid: int) -> tuple[str, int] | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if len(cmdline) < 4:
        return None  # exiting: its last reading stands
    role = cmdline[3].decode()  # python -m fractalq ROLE ...
    hwm = next((line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")), "0")
    return role, int(hwm)


def run(size: int, workers: int) -> tuple[float, dict[str, int]]:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "image.png"
        command = [
            *(sys.executable, "-m", "fractalq", "demo", "--width", str(size)),
            *("--height", str(size), "--max-iter", "1000", "--workers", str(workers)),
            *("--out", str(out)),
        ]
        began = time.monotonic()
        demo = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        peaks: dict[int, tuple[str, int]] = {}
        while demo.poll() is None:
            for pid in descendants(demo.pid):
                found = peak_kib(pid)
                if found is not None and found[1] >= peaks.get(pid, ("", 0))[1]:
                    peaks[pid] = found
            time.sleep(0.1)
        elapsed = time.monotonic() - began
        if demo.returncode != 0:
            raise SystemExit(f"demo {size}: {demo.stderr.read().decode() if demo.stderr else ''}")
        by_role: dict[str, int] = {}
        for pid, (role, kib) in peaks.items():
            role = "demo" if pid == demo.pid else role
            by_role[role] = max(by_role.get(role, 0), kib)
        return elapsed, by_role


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384, 32768])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    print(
        f"| size | wall | ns per pixel | peak MiB: {', '.join(['demo', 'coordinator', 'worker'])} |"
    )
    print("| --- | --- | --- | --- |")
    for size in args.sizes:
        elapsed, peaks = run(size, args.workers)
        mib = ", ".join(
            f"{peaks.get(role, 0) / 1024:.0f}" for role in ("demo", "coordinator", "worker")
        )
        print(
            f"| {size}x{size} | {elapsed:.1f} s | {elapsed / size**2 * 1e9:.1f} | {mib} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
