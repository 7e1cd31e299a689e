"""Every benchmark, one after another: the figures of docs/performance.md.

    python bench/all.py [--quick]

Runs, each printing its own table: the kernels (``kernels.py``), the end-to-end
render of the default Mandelbrot and Julia views at 4800x3200 (``render_bench.py``),
assembly time and memory (``assembly.py``), gigapixel demos (``gigapixel.py``) and
the queue (``queue_bench.py``; with
the Celery comparison when the ``bench`` extra and ``redis-server`` are
installed, and with TLS and tokens on against off), interactive latency
(``interactive.py``), then deep zoom (``deep.py``).
``--quick`` takes one run
of each instead of several, to check that they all work. Takes about ten minutes on two cores.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one run of each")
    args = parser.parse_args()
    runs = ["--runs", "1"] if args.quick else []
    celery = importlib.util.find_spec("celery") is not None and shutil.which("redis-server")
    celery_args = ["--celery", "2"] if celery else []
    commands = [
        ["kernels.py", *(runs or ["--runs", "5"]), *(["--masked-runs", "0"] if args.quick else [])],
        ["render_bench.py", *(runs or ["--runs", "3"])],
        ["render_bench.py", "--julia", *(runs or ["--runs", "3"])],
        ["assembly.py", *(runs or ["--runs", "3"])],
        ["gigapixel.py", *(["--sizes", "4096", "16384"] if args.quick else [])],
        ["queue_bench.py", *(runs or ["--runs", "3"]), "--secure", *celery_args],
        ["interactive.py", *(["--samples", "5"] if args.quick else [])],
        ["deep.py", *(runs or ["--runs", "3"])],
    ]
    failed = []
    for command in commands:
        print(f"\n$ python bench/{' '.join(command)}", flush=True)
        if subprocess.run([sys.executable, str(HERE / command[0]), *command[1:]]).returncode:
            failed.append(command[0])
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
