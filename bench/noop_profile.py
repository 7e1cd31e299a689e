"""Where a no-op job's time goes: CPU per job in each process, and their hottest functions.

    python bench/noop_profile.py [--jobs 2000] [--no-sampling] [--top 25] [--service-only]

Starts a coordinator (keeping its database, as deployed) and one worker
``--concurrency 2`` on 127.0.0.1, warms them up, then runs ``--jobs`` one-task
``noop`` jobs one after another, each one SubmitJob that waits for its end (as
``Client.run`` does). Prints the wall time per job (p50, p99) and the CPU each
process spent per job (user + system, from /proc: unlike wall time, it hardly
depends on what else runs on the machine). Unless ``--no-sampling`` (or without
``py-spy``), it samples the coordinator and the worker meanwhile and prints, for
each, the functions with the most samples in them (their own and what they
call), which is where to cut.

``--service-only`` runs the same jobs through the coordinator's service in this
process, with its database, a worker's long poll and its report made as the Work
stream makes them, and no gRPC at all: the CPU of the coordinator's own Python
per job, to set beside ``bench/grpc_floor.py``'s CPU per call.
"""

from __future__ import annotations

import argparse
import asyncio
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

from fractalq import config  # noqa: E402
from fractalq.client import Client  # noqa: E402
from fractalq.coordinator.server import _restore  # noqa: E402
from fractalq.coordinator.service import CoordinatorService  # noqa: E402
from fractalq.coordinator.settings import CoordinatorSettings  # noqa: E402
from fractalq.coordinator.store import GroupCommit  # noqa: E402
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


async def service_only(jobs: int) -> None:
    """One-task no-op jobs through the service, no gRPC: CPU and wall time per job."""
    with tempfile.TemporaryDirectory() as folder:
        settings = CoordinatorSettings(data_dir=Path(folder))
        journal, broker = _restore(settings)
        assert journal is not None
        commit = GroupCommit(journal, config.COMMIT_INTERVAL)
        service = CoordinatorService(broker, settings, journal, commit)
        committer = asyncio.create_task(commit.run())
        worker = broker.registry.register("bench", ("noop",), 2, "bench", time.time())
        ask = pb.GetTaskRequest(
            worker_id="bench", session=worker.session, max_tasks=3, wait_seconds=30
        )
        submit = pb.SubmitJobRequest(task_type="noop", count=1, wait_seconds=10)

        async def one() -> None:
            poll = asyncio.create_task(service.get_task(ask))  # the worker waits first
            await asyncio.sleep(0)
            submitted = asyncio.create_task(service.submit_job(submit))
            task = (await poll).tasks[0]
            ref = pb.TaskRef(job_id=task.job_id, index=task.index, attempt=task.attempt)
            report = pb.CompleteTaskRequest(
                worker_id="bench", session=worker.session, max_tasks=3,
                results=[pb.TaskResult(task=ref, seconds=0.0001)],
            )  # fmt: skip
            await service.complete_tasks(report)
            assert (await submitted).job.state == pb.SUCCEEDED

        try:
            for _ in range(200):  # warm
                await one()
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(jobs):
                await one()
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        finally:
            committer.cancel()
            commit.close()
        print(
            f"{jobs} one-task no-op jobs through the service, no gRPC: CPU"
            f" {cpu / jobs * 1e6:,.0f} us a job, wall {wall / jobs * 1e6:,.0f} us"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--no-sampling", action="store_true")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--service-only", action="store_true")
    args = parser.parse_args()
    if args.service_only:
        asyncio.run(service_only(args.jobs))
        return
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
