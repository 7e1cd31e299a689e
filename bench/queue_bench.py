"""Queue benchmark: throughput and latency of ``noop`` tasks, memory of a deep queue.

    python bench/queue_bench.py [--tasks 20000] [--workers 2] [--concurrency 16] [--runs 3]
                                [--secure]

Starts a real coordinator (with a data folder, so every report is committed)
and real worker processes on 127.0.0.1, and prints medians over ``--runs``:

- throughput: one job of ``--tasks`` noop tasks, from submission to the last
  task done, with ``--workers`` worker processes;
- latency: single-task jobs submitted one after another, submit-to-done as the
  client sees it (WatchJob), p50 and p99;
- with ``--secure``, throughput and latency again right after the plain ones,
  with TLS on the coordinator and a role token on every call (as the chart runs it);
- memory: the coordinator's resident set with 1,000,000 queued tasks, as one
  job of shared payload and as 1,000 jobs of 1,000 distinct payloads.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from procs import Coordinator, Trust, Worker, free_port, wait_until

from fractalq.client import Client
from fractalq.proto import fractalq_pb2 as pb


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def throughput(
    tmp: Path, tasks: int, workers: int, concurrency: int, trust: Trust | None = None
) -> float:
    coordinator = Coordinator(tmp, worker_timeout=15, trust=trust)
    started = [
        Worker(tmp, coordinator.address, concurrency=concurrency, trust=trust)
        for _ in range(workers)
    ]
    try:
        with coordinator.client() as client:
            wait_until(lambda: len(client.stats().workers) == workers, message="workers")
            begin = time.perf_counter()
            job = client.submit(pb.SubmitJobRequest(task_type="noop", count=tasks)).job
            for state in client.watch(job.job_id):
                if state.state == pb.SUCCEEDED:
                    break
            return tasks / (time.perf_counter() - begin)
    finally:
        for process in [*started, coordinator]:
            process.stop()


def latency(tmp: Path, samples: int, trust: Trust | None = None) -> tuple[float, float]:
    coordinator = Coordinator(tmp, worker_timeout=15, trust=trust)
    worker = Worker(tmp, coordinator.address, concurrency=1, trust=trust)
    try:
        with coordinator.client() as client:
            wait_until(lambda: len(client.stats().workers) == 1, message="worker")
            times = []
            for _ in range(samples):
                begin = time.perf_counter()
                job = client.submit(pb.SubmitJobRequest(task_type="noop", count=1)).job
                for state in client.watch(job.job_id):
                    if state.state == pb.SUCCEEDED:
                        break
                times.append(time.perf_counter() - begin)
        times.sort()
        return times[len(times) // 2] * 1000, times[int(len(times) * 0.99) - 1] * 1000
    finally:
        worker.stop()
        coordinator.stop()


def memory(tmp: Path, shape: str) -> float:
    coordinator = Coordinator(tmp, worker_timeout=15)
    try:
        with Client(coordinator.address, timeout=600) as client:
            if shape == "one job":
                client.submit(pb.SubmitJobRequest(task_type="noop", count=1_000_000))
            else:
                for j in range(1000):
                    payloads = [f'{{"job": {j}, "task": {i}}}'.encode() for i in range(1000)]
                    client.submit(pb.SubmitJobRequest(task_type="noop", payloads=payloads))
            assert client.stats().queued == 1_000_000
        return rss_mib(coordinator.pid)
    finally:
        coordinator.stop()


REDIS_PORT = free_port()  # one Redis for every run: Celery's app binds its URL on import


def celery_throughput(tmp: Path, tasks: int, workers: int, concurrency: int) -> float:
    """The same measurement with Celery on a Redis broker (both started here)."""
    import redis

    url = f"redis://127.0.0.1:{REDIS_PORT}/0"
    server = subprocess.Popen(
        ["redis-server", "--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    env = {**os.environ, "BENCH_REDIS_URL": url}
    bench = str(Path(__file__).resolve().parent)
    started: list[subprocess.Popen[bytes]] = []
    try:
        counter = redis.Redis.from_url(url)
        wait_until(counter.ping, message="redis")
        for n in range(workers):
            started.append(subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "--pool", "prefork",
                 "--concurrency", str(concurrency), "--loglevel", "WARNING", "-n", f"w{n}@%h"],
                cwd=bench, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))  # fmt: skip
        sys.path.insert(0, bench)
        os.environ["BENCH_REDIS_URL"] = url
        from celery_app import app, noop

        wait_until(lambda: len(app.control.ping(timeout=0.5)) == workers, 60, "celery workers")
        begin = time.perf_counter()
        with app.producer_pool.acquire(block=True) as producer:
            for _ in range(tasks):
                noop.apply_async(producer=producer)
        wait_until(lambda: int(counter.get("bench:done") or 0) >= tasks, 600, "celery tasks")
        return tasks / (time.perf_counter() - begin)
    finally:
        for process in [*started, server]:
            process.terminate()
            process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--latency-samples", type=int, default=300)
    parser.add_argument(
        "--celery",
        type=int,
        metavar="CONCURRENCY",
        default=0,
        help="also measure Celery + Redis (needs redis-server and the bench extra),"
        " with this prefork concurrency per worker",
    )
    parser.add_argument(
        "--secure",
        action="store_true",
        help="also measure throughput and latency with TLS and role tokens on, in the same runs",
    )
    args = parser.parse_args()
    rates, p50s, p99s, celery = [], [], [], []
    secure_rates: list[float] = []
    secure_p50s: list[float] = []
    secure_p99s: list[float] = []
    with tempfile.TemporaryDirectory() as folder:

        def fresh(name: str) -> Path:
            path = Path(folder) / name
            path.mkdir()
            return path

        for run in range(args.runs):
            rates.append(
                throughput(fresh(f"rate{run}"), args.tasks, args.workers, args.concurrency)
            )
            if args.celery:
                celery.append(
                    celery_throughput(fresh(f"celery{run}"), args.tasks, args.workers, args.celery)
                )
            p50, p99 = latency(fresh(f"latency{run}"), args.latency_samples)
            p50s.append(p50)
            p99s.append(p99)
            if args.secure:  # the same measurements right after, certificates and tokens on
                trust = Trust(fresh(f"trust{run}"))
                secure_rates.append(
                    throughput(fresh(f"srate{run}"), args.tasks, args.workers, args.concurrency,
                               trust)
                )  # fmt: skip
                p50, p99 = latency(fresh(f"slatency{run}"), args.latency_samples, trust)
                secure_p50s.append(p50)
                secure_p99s.append(p99)
        one_job = memory(fresh("mem1"), "one job")
        many = memory(fresh("mem2"), "many")
    runs = ", ".join(f"{rate:,.0f}" for rate in rates)
    print(
        f"noop throughput, {args.tasks} tasks, {args.workers} workers x {args.concurrency}:"
        f" median {statistics.median(rates):,.0f} tasks/s (runs: {runs})"
    )
    if celery:
        ratio = statistics.median(r / c for r, c in zip(rates, celery, strict=True))
        print(
            f"celery + redis, same tasks, {args.workers} workers x {args.celery} (prefork):"
            f" median {statistics.median(celery):,.0f} tasks/s; fractalq/celery per run,"
            f" median: {ratio:.1f}x"
        )
    print(
        f"submit-to-done latency of one task: p50 {statistics.median(p50s):.1f} ms,"
        f" p99 {statistics.median(p99s):.1f} ms (median of {args.runs} runs)"
    )
    if secure_rates:
        runs = ", ".join(f"{rate:,.0f}" for rate in secure_rates)
        ratio = statistics.median(s / p for s, p in zip(secure_rates, rates, strict=True))
        print(
            f"with TLS and tokens: median {statistics.median(secure_rates):,.0f} tasks/s"
            f" (runs: {runs}), {ratio:.0%} of plain (per run, median); latency p50"
            f" {statistics.median(secure_p50s):.1f} ms, p99 {statistics.median(secure_p99s):.1f} ms"
        )
    print(
        f"coordinator RSS with 1,000,000 queued tasks: {one_job:,.0f} MiB as one job,"
        f" {many:,.0f} MiB as 1,000 jobs of distinct payloads"
    )


if __name__ == "__main__":
    main()
