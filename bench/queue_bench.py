"""Queue benchmark: fractalq and Celery side by side, at equal slots, in one run.

    python bench/queue_bench.py [--tasks 20000] [--concurrency 2] [--runs 3]
                                [--latency-samples 300] [--no-celery] [--secure] [--memory]

Starts, on 127.0.0.1, a fractalq coordinator (with a data folder, so every
report is committed) and one worker ``--concurrency N``; and, unless
``--no-celery`` (or without Celery or Debian's ``redis-server``), a Redis server
and one Celery worker, prefork N, with Redis as broker and result backend: what
a new user of either would run. Both are warmed up, then measured in turns, so
a noisy machine slows them alike, and medians over ``--runs`` are printed:

- throughput: ``--tasks`` no-op tasks, submitted and waited for as a client
  that only waits does it: fractalq one SubmitJob with ``wait_seconds``
  (``Client.run``), Celery ``delay()`` for each then ``get()`` for each;
- latency: one no-op task, submit to its final state, as a client sees it:
  fractalq a SubmitJob with ``wait_seconds``, Celery ``delay().get()``; the
  samples alternate between the two; p50 and p99;
- with ``--secure``, fractalq's throughput and latency again with TLS on the
  coordinator and a role token on every call (as the chart runs it);
- with ``--memory``, the coordinator's resident set with 1,000,000 queued tasks,
  as one job and as 1,000 jobs of distinct payloads.

The load average before and after is printed too: figures taken while other
work runs on the machine are only comparable within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent / "tests"), str(BENCH)]

from procs import Coordinator, Trust, Worker, free_port, wait_until  # noqa: E402

from fractalq.client import Client  # noqa: E402
from fractalq.proto import fractalq_pb2 as pb  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


class Fractalq:
    """A coordinator and one worker; a client that submits and waits in one call."""

    def __init__(self, tmp: Path, concurrency: int, trust: Trust | None = None) -> None:
        self.coordinator = Coordinator(tmp, worker_timeout=15, trust=trust)
        self.worker = Worker(tmp, self.coordinator.address, concurrency=concurrency, trust=trust)
        self.client = Client(self.coordinator.endpoint, timeout=60)
        wait_until(lambda: len(self.client.stats().workers) == 1, message="the worker")

    def run(self, count: int) -> None:
        job = self.client.run(pb.SubmitJobRequest(task_type="noop", count=count), timeout=600)
        assert job.state == pb.SUCCEEDED, job

    def close(self) -> None:
        self.client.close()
        self.worker.stop()
        self.coordinator.stop()


class Celery:
    """A Redis server and one Celery worker (prefork), Redis as broker and backend."""

    def __init__(self, tmp: Path, concurrency: int) -> None:
        port = free_port()
        url = f"redis://127.0.0.1:{port}/0"
        self.server = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(tmp)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        os.environ["BENCH_REDIS_URL"] = url  # read by celery_app on import
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "--pool", "prefork",
             "--concurrency", str(concurrency), "--loglevel", "WARNING", "-n", f"bench{port}@%h"],
            cwd=BENCH, env={**os.environ}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        import celery_app
        import redis

        wait_until(redis.Redis.from_url(url).ping, message="redis")
        self.app, self.noop = celery_app.app, celery_app.noop
        self.app.conf.broker_url = self.app.conf.result_backend = url
        wait_until(lambda: len(self.app.control.ping(timeout=0.5)) == 1, 60, "the celery worker")

    def run(self, count: int) -> None:
        results = [self.noop.delay() for _ in range(count)]
        for result in results:
            result.get(timeout=600)

    def close(self) -> None:
        for process in (self.worker, self.server):
            process.terminate()
            process.wait(30)


def timed(run: Callable[[int], None], count: int) -> float:
    began = time.perf_counter()
    run(count)
    return time.perf_counter() - began


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


@contextlib.contextmanager
def started(make: Callable[[], Fractalq | Celery]) -> Iterator[Fractalq | Celery]:
    system = make()
    try:
        yield system
    finally:
        system.close()


def load() -> str:
    return "load average " + ", ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=2, help="slots of each system")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--latency-samples", type=int, default=300)
    parser.add_argument("--no-celery", action="store_true", help="fractalq alone")
    parser.add_argument("--secure", action="store_true", help="also fractalq with TLS and tokens")
    parser.add_argument("--memory", action="store_true", help="also a deep queue's memory")
    args = parser.parse_args()
    with_celery = not args.no_celery
    if with_celery and not (importlib.util.find_spec("celery") and shutil.which("redis-server")):
        print("no Celery or redis-server: fractalq alone (pip install -e '.[bench]',"
              " apt-get install redis-server)")  # fmt: skip
        with_celery = False
    print(f"{load()} (before)")
    rates: dict[str, list[float]] = {"fractalq": [], "celery": [], "secure": []}
    latencies: dict[str, list[float]] = {"fractalq": [], "celery": [], "secure": []}
    p50s: dict[str, list[float]] = {"fractalq": [], "celery": [], "secure": []}
    p99s: dict[str, list[float]] = {"fractalq": [], "celery": [], "secure": []}
    with tempfile.TemporaryDirectory() as folder, contextlib.ExitStack() as stack:
        tmp = Path(folder)
        for name in ("fractalq", "celery", "secure", "trust", "mem1", "mem2"):
            (tmp / name).mkdir()
        systems: dict[str, Fractalq | Celery] = {
            "fractalq": stack.enter_context(
                started(lambda: Fractalq(tmp / "fractalq", args.concurrency))
            )
        }
        if with_celery:
            systems["celery"] = stack.enter_context(
                started(lambda: Celery(tmp / "celery", args.concurrency))
            )
        if args.secure:
            trust = Trust(tmp / "trust")
            systems["secure"] = stack.enter_context(
                started(lambda: Fractalq(tmp / "secure", args.concurrency, trust))
            )
        for system in systems.values():  # warm: connections, imports, caches
            for _ in range(50):
                system.run(1)
            system.run(min(args.tasks, 2000))
        for _ in range(args.runs):
            for name, system in systems.items():  # in turns, each run
                rates[name].append(args.tasks / timed(system.run, args.tasks))
            samples: dict[str, list[float]] = {name: [] for name in systems}
            for _ in range(args.latency_samples):
                for name, system in systems.items():  # alternating, sample by sample
                    samples[name].append(timed(system.run, 1) * 1000)
            for name, values in samples.items():
                latencies[name] += values
                p50s[name].append(quantile(values, 0.5))
                p99s[name].append(quantile(values, 0.99))
        memories = []
        if args.memory:
            stack.close()
            memories = [memory(tmp / "mem1", "one job"), memory(tmp / "mem2", "many")]
    print(f"{load()} (after)")
    slots = f"{args.concurrency} slots"
    for name in systems:
        runs = ", ".join(f"{rate:,.0f}" for rate in rates[name])
        label = {"fractalq": "fractalq", "celery": "celery + redis",
                 "secure": "fractalq, TLS + tokens"}[name]  # fmt: skip
        print(
            f"{label:<24} {args.tasks} no-op tasks, {slots}: median"
            f" {statistics.median(rates[name]):,.0f} tasks/s (runs: {runs});"
            f" one task submit to done: p50 {statistics.median(p50s[name]):.2f} ms,"
            f" p99 {statistics.median(p99s[name]):.2f} ms (medians of {args.runs} runs)"
        )
    if "celery" in systems:
        ratio = [f / c for f, c in zip(rates["fractalq"], rates["celery"], strict=True)]
        latency = [c / f for f, c in zip(p50s["fractalq"], p50s["celery"], strict=True)]
        print(
            f"fractalq / celery, run by run: throughput"
            f" {', '.join(f'{r:.1f}x' for r in ratio)} (median {statistics.median(ratio):.1f}x);"
            f" p50 latency celery / fractalq {', '.join(f'{r:.2f}' for r in latency)}"
        )
    if memories:
        print(
            f"coordinator RSS with 1,000,000 queued tasks: {memories[0]:,.0f} MiB as one job,"
            f" {memories[1]:,.0f} MiB as 1,000 jobs of distinct payloads"
        )


if __name__ == "__main__":
    main()
