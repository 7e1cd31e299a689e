"""``fractalq dead``, ``requeue`` and ``purge``: the dead letters, as an operator sees them.

A task that failed its last attempt is dead-lettered and its job fails, but
the job is held with its payloads and the error of each attempt (see
docs/queue.md, "Dead letters"): ``dead`` lists them, ``requeue`` puts a job's dead
tasks back on the queue (their attempts reset, the job running again from
where it failed), ``purge`` lets them go. A client token sees and acts on its
own jobs, a reader sees every job's, an admin acts on any.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from fractalq import options
from fractalq.cli import table as t
from fractalq.cli.common import CommandError, command, endpoint_from
from fractalq.client import Client, ClientError
from fractalq.proto import fractalq_pb2 as pb


def add_parsers(commands: Any) -> None:
    dead = command(
        commands, "dead", run_dead, help="the dead-lettered tasks and why each attempt failed"
    )
    options.add(dead, t.COORDINATOR, t.DEAD_JOB, t.LIMIT, t.JSON)
    options.add(dead, *t.CLIENT_TLS, title=t.CLIENT_TLS_TITLE)

    requeue = command(
        commands,
        "requeue",
        run_requeue,
        help="put a failed job's dead tasks back on the queue (attempts reset)",
    )
    requeue.add_argument("job_id", metavar="JOB")
    options.add(requeue, t.COORDINATOR, t.REQUEUE_TASKS)
    options.add(requeue, *t.CLIENT_TLS, title=t.CLIENT_TLS_TITLE)

    purge = command(
        commands, "purge", run_purge, help="drop a failed job's dead letters (its cleanup job runs)"
    )
    purge.add_argument("job_id", metavar="JOB")
    options.add(purge, t.COORDINATOR)
    options.add(purge, *t.CLIENT_TLS, title=t.CLIENT_TLS_TITLE)


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def _task(letter: pb.DeadLetter) -> str:
    stage = f", the {letter.stage} task" if letter.stage else ""
    return f"task {letter.index} ({letter.task_type}{stage})"


def run_dead(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    with Client(endpoint_from(args)) as client:
        try:
            found = client.dead_letters(args.job, args.limit)
        except ClientError as error:
            raise CommandError(str(error)) from None
    if args.json:
        listed = [json_format.MessageToDict(letter) for letter in found]
        print(json.dumps({"deadLetters": listed}, indent=2))
        return 0
    if not found:
        print(f"job {args.job} holds no dead letters" if args.job else "no dead letters")
        return 0
    for letter in found:
        owner = f", owner {letter.owner}" if letter.owner else ""
        print(
            f"job {letter.job_id} {_task(letter)}: {letter.attempts} attempt(s),"
            f" failed {_when(letter.failed_at)}{owner}"
        )
        for attempt in letter.errors:
            worker = f" on {attempt.worker_id}" if attempt.worker_id else ""
            print(f"  attempt {attempt.attempt} at {_when(attempt.at)}{worker}: {attempt.message}")
        if not letter.errors:
            print(f"  {letter.reason}")
    return 0


def run_requeue(args: argparse.Namespace) -> int:
    with Client(endpoint_from(args)) as client:
        try:
            job = client.requeue(args.job_id, args.task)
        except ClientError as error:
            raise CommandError(str(error)) from None
    what = f"task(s) {', '.join(map(str, args.task))}" if args.task else "its dead tasks"
    state = pb.JobState.Name(job.state)
    print(f"job {job.job_id} {state}: {what} requeued ({job.succeeded}/{job.total} done)")
    return 0


def run_purge(args: argparse.Namespace) -> int:
    with Client(endpoint_from(args)) as client:
        try:
            done = client.purge(args.job_id)
        except ClientError as error:
            raise CommandError(str(error)) from None
    cleanup = f"; its cleanup runs as job {done.job.cleanup_job}" if done.job.cleanup_job else ""
    print(f"job {done.job.job_id}: {done.purged} dead letter(s) purged{cleanup}")
    return 0
