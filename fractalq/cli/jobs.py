"""``fractalq submit``, ``wait`` and ``status``: clients of the queue."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from fractalq import config, options
from fractalq.cli import table as t
from fractalq.cli.common import CommandError, command, endpoint_from
from fractalq.cli.progress import Progress
from fractalq.client import Client, ClientError, DeadlineExceeded
from fractalq.proto import fractalq_pb2 as pb
from fractalq.states import FINISHED

STATE_NAMES = {value: name for name, value in pb.JobState.items()}
# What a job's parallel tasks are, by their type, for people reading its status.
UNITS = {"fractal.band": "bands", "fractal.keyframe": "keyframes"}


def add_parsers(commands: Any) -> None:
    submit = command(commands, "submit", run_submit, help="submit a job of generic tasks")
    options.add(
        submit, t.COORDINATOR, t.TASK, t.PAYLOAD, t.COUNT, t.PRIORITY, t.MAX_ATTEMPTS,
        t.TIME_LIMIT, t.JOB_ID, t.WAIT,
    )  # fmt: skip
    options.add(submit, *t.CLIENT_TLS, title=t.CLIENT_TLS_TITLE)

    wait = command(commands, "wait", run_wait, help="wait for a job to end")
    wait.add_argument("job_id", metavar="JOB")
    options.add(wait, t.COORDINATOR, t.WAIT_TIMEOUT)
    options.add(wait, *t.CLIENT_TLS, title=t.CLIENT_TLS_TITLE)

    status = command(
        commands, "status", run_status, help="a job's state, or the queue and its workers"
    )
    status.add_argument("job_id", nargs="?", metavar="JOB")
    options.add(status, t.COORDINATOR, t.JSON)
    options.add(status, *t.CLIENT_TLS, title=t.CLIENT_TLS_TITLE)


def run_submit(args: argparse.Namespace) -> int:
    payload = args.payload.encode()
    if args.payload:
        try:
            json.loads(args.payload)
        except json.JSONDecodeError as error:
            raise CommandError(f"--payload is not JSON: {error}") from None
        except RecursionError:
            raise CommandError("--payload is not JSON: nested too deeply") from None
    request = pb.SubmitJobRequest(
        job_id=args.job_id,
        task_type=args.task,
        payload=payload,
        count=args.count,
        priority=args.priority,
        max_attempts=args.max_attempts,
        time_limit=args.time_limit,
        # Waiting, the SubmitJob itself answers once the job has ended (one round
        # trip); a job still running by then is followed with its progress.
        wait_seconds=config.SUBMIT_WAIT if args.wait else 0.0,
    )
    with Client(endpoint_from(args)) as client:
        try:
            response = client.submit(request)
        except ClientError as error:
            raise CommandError(str(error)) from None
        job = response.job
        verb = "submitted" if response.created else "already submitted"
        print(f"{verb} {job.total} {job.task_type} task(s) as job {job.job_id}", flush=True)
        if not args.wait:
            return 0
        if job.state in FINISHED:
            Progress(job.total, "tasks").update(job.succeeded, job.leased, final=True)
            return ended(job)
        return follow(client, job.job_id, None)


def follow(client: Client, job_id: str, timeout: float | None) -> int:
    """Show a job's progress until it ends; the exit code says how it ended.

    ``timeout``: seconds to wait for the end (exit 3 if it has not come); 0
    does not wait, it says how the job stands now.
    """
    progress: Progress | None = None
    job: pb.Job | None = None
    try:
        if timeout == 0:
            job = client.job(job_id)
        else:
            for job in client.watch(job_id, timeout=timeout):
                progress = progress or Progress(job.total, "tasks")
                final = job.state in FINISHED
                progress.update(job.succeeded, job.leased, final=final)
    except ClientError as error:
        if not isinstance(error, DeadlineExceeded) or timeout is None:
            raise CommandError(str(error)) from None
        if job is None:  # the time was up before the first answer: ask once more
            try:
                job = client.job(job_id)
            except ClientError as again:
                raise CommandError(str(again)) from None
    assert job is not None
    if job.state not in FINISHED:
        waited = f"after {timeout:g}s" if timeout else "(--timeout 0: not waiting)"
        raise CommandError(
            f"job {job_id} still {STATE_NAMES[job.state]} {waited}:"
            f" {job.succeeded}/{job.total} tasks done",
            3,
        )
    return ended(job)


def ended(job: pb.Job) -> int:
    """Say how a job ended; the exit code: 0 when it succeeded, else 1."""
    if job.state == pb.SUCCEEDED:
        print(f"job {job.job_id} SUCCEEDED: {job.succeeded}/{job.total} tasks")
        return 0
    print(f"job {job.job_id} {STATE_NAMES[job.state]}: {job.reason}", file=sys.stderr)
    return 1


def run_wait(args: argparse.Namespace) -> int:
    with Client(endpoint_from(args)) as client:
        return follow(client, args.job_id, args.timeout)


def _url(result: bytes) -> str:
    try:
        url = json.loads(result).get("url", "")
    except (ValueError, AttributeError, RecursionError):
        return ""
    return url if isinstance(url, str) else ""


def _age(seconds: float) -> str:
    return f"{time.time() - seconds:.0f}s ago" if seconds else "-"


def run_status(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    with Client(endpoint_from(args)) as client:
        try:
            message = client.job(args.job_id) if args.job_id else client.stats()
        except ClientError as error:
            raise CommandError(str(error)) from None
    if args.json:
        print(json.dumps(json_format.MessageToDict(message), indent=2))
        return 0
    if isinstance(message, pb.Job):
        job = message
        print(f"job {job.job_id}: {STATE_NAMES[job.state]}")
        limit = f"{job.time_limit:g} s" if job.time_limit else "the task type's"
        print(
            f"  type {job.task_type}, priority {job.priority}, max attempts {job.max_attempts},"
            f" time limit {limit}"
        )
        print(
            f"  {UNITS.get(job.task_type, 'tasks')}: {job.total} total, {job.succeeded} succeeded,"
            f" {job.leased} running, {job.queued} queued, {job.dead} dead-lettered"
        )
        print(
            f"  created {_age(job.created_at)}, started {_age(job.started_at)},"
            f" finished {_age(job.finished_at)}"
        )
        if job.reason:
            print(f"  reason: {job.reason}")
        if job.state == pb.SUCCEEDED and _url(job.result):
            print(f"  result: {_url(job.result)}")  # a render's image, a zoom's video
        if job.owner:
            print(f"  owner: {job.owner}")
        if job.dead_letters_held:
            print(
                f"  its dead letters are held: fractalq dead --job {job.job_id};"
                f" then requeue or purge {job.job_id}"
            )
        return 0
    stats = message
    print(
        f"queue: {stats.queued} queued, {stats.delayed} waiting to retry, {stats.leased} running,"
        f" {stats.jobs_active} active job(s)"
    )
    for depth in stats.by_priority:
        print(f"  priority {depth.priority}: {depth.queued} queued, {depth.leased} running")
    print(f"workers: {len(stats.workers)}")
    for worker in stats.workers:
        state = "draining" if worker.draining else "ready"
        if worker.storage_error:
            state += f", storage unavailable ({worker.storage_error})"
        print(
            f"  {worker.worker_id}: {state}, {worker.leased}/{worker.concurrency} busy,"
            f" {worker.completed} done, {worker.failed} failed,"
            f" seen {worker.last_seen_seconds_ago:.1f}s ago"
        )
    return 0
