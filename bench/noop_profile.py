"""Where a no-op job's time goes: CPU per job in each process, and their hottest functions.

    python bench/noop_profile.py [--jobs 2000] [--no-sampling] [--top 25]

Starts a coordinator (keeping its database, as deployed) and one worker
``--concurrency 2`` on 127.0.0.1, warms them up, then runs ``--jobs`` one-task
``noop`` jobs one after another, each one SubmitJob that waits for its end (as
``Client.run`` does). Prints the wall time per job (p50, p99) and the CPU each
process spent per job (user + system, from /proc: unlike wall time, it hardly
depends on what else runs on the machine). Unless ``--no-sampling`` (or without
``py-spy``), it samples the coordinator and the worker meanwhile and prints, for
each, the functions with the most samples in them (their own and what they
call), which is where to cut.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent / "tests")]

from proc_usage import cpu_seconds  # noqa: E402
from procs import Coordinator, Worker, wait_until  # noqa: E402

from fractalq.client import Client  # noqa: E402
from fractalq.proto import fractalq_pb2 as pb  # noqa: E402


def hottest(raw: Path, top: int) -> list[tuple[float, str]]:
    """The frames in the most samples (inclusive), from py-spy's collapsed stacks."""
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        samples = int(count)
        total += samples
        # A frame counts once per sample however deep its recursion.
        for frame in {frame.split(" (")[0] + " " + _file(frame) for frame in stack.split(";")}:
            inclusive[frame] += samples
    return [(100 * n / max(total, 1), frame) for frame, n in inclusive.most_common(top)]


def _file(frame: str) -> str:
    where = frame.partition(" (")[2].rstrip(")")
    path, _, line = where.partition(":")
    return f"({'/'.join(path.split('/')[-2:])}:{line})" if path else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--no-sampling", action="store_true")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    sampling = not args.no_sampling and shutil.which("py-spy") is not None
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        coordinator = Coordinator(tmp, worker_timeout=15)
        worker = Worker(tmp, coordinator.address, concurrency=2)
        spies: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        try:
            with Client(coordinator.endpoint, timeout=60) as client:
                wait_until(lambda: len(client.stats().workers) == 1, message="the worker")
                request = pb.SubmitJobRequest(task_type="noop", count=1, wait_seconds=10)
                for _ in range(200):  # warm: connections, caches
                    client.submit(request)
                if sampling:
                    for name, pid in (("coordinator", coordinator.pid), ("worker", worker.pid)):
                        raw = tmp / f"{name}.txt"
                        spy = subprocess.Popen(
                            ["py-spy", "record", "--pid", str(pid), "--format", "raw",
                             "--rate", "500", "--output", str(raw), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                        )  # fmt: skip
                        spies.append((name, spy, raw))
                    time.sleep(1.0)  # py-spy attaches
                pids = {"coordinator": coordinator.pid, "worker": worker.pid, "client": os.getpid()}
                cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
                walls = []
                for _ in range(args.jobs):
                    began = time.perf_counter()
                    job = client.submit(request).job
                    walls.append(time.perf_counter() - began)
                    assert job.state == pb.SUCCEEDED, job
                used = {name: cpu_seconds(pid) - cpu[name] for name, pid in pids.items()}
        finally:
            for _, spy, _ in spies:
                spy.send_signal(2)  # SIGINT: py-spy writes what it has
                spy.wait(30)
            worker.stop()
            coordinator.stop()
        walls.sort()
        print(f"load average {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
        print(
            f"{args.jobs} one-task no-op jobs, one SubmitJob each: p50"
            f" {statistics.median(walls) * 1000:.2f} ms,"
            f" p99 {walls[int(len(walls) * 0.99)] * 1000:.2f} ms"
        )
        per_job = ", ".join(f"{name} {cpu / args.jobs * 1e6:,.0f} us" for name, cpu in used.items())
        print(f"CPU per job: {per_job}")
        for name, _, raw in spies:
            if not raw.exists():
                continue
            print(f"\n{name}: functions by share of samples (inclusive)")
            for share, frame in hottest(raw, args.top):
                print(f"  {share:5.1f}%  {frame}")


if __name__ == "__main__":
    main()
