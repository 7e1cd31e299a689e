"""``fractalq dead``, ``requeue`` and ``purge``: the dead letters, as an operator sees them.

A task that failed its last attempt is dead-lettered and its job fails, but
the job is held with its payloads and the error of each attempt (see the
README's "Dead letters"): ``dead`` lists them, ``requeue`` puts a job's dead
tasks back on the queue (their attempts reset, the job running again from
where it failed), ``purge`` lets them go. A client token sees and acts on its
own jobs, a reader sees every job's, an admin acts on any.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from fractalq import config
from fractalq.cli.common import (
    CommandError,
    add_endpoint_options,
    address,
    endpoint_from,
    integer,
)
from fractalq.client import Client, ClientError
from fractalq.proto import fractalq_pb2 as pb


def add_parsers(commands: Any) -> None:
    dead = commands.add_parser("dead", help="the dead-lettered tasks and why each attempt failed")
    dead.add_argument("--coordinator", type=address, required=True, metavar="HOST:PORT")
    dead.add_argument("--job", default="", metavar="JOB", help="only this job's")
    dead.add_argument(
        "--limit",
        type=integer(1, config.MAX_LIST_LIMIT),
        default=config.DEFAULT_LIST_LIMIT,
        metavar="N",
        help="at most N, the latest first",
    )
    dead.add_argument("--json", action="store_true", help="print JSON")
    add_endpoint_options(dead)
    dead.set_defaults(run=run_dead)

    requeue = commands.add_parser(
        "requeue", help="put a failed job's dead tasks back on the queue (attempts reset)"
    )
    requeue.add_argument("job_id", metavar="JOB")
    requeue.add_argument("--coordinator", type=address, required=True, metavar="HOST:PORT")
    requeue.add_argument(
        "--task",
        type=integer(0, 2**32 - 1),
        action="append",
        default=[],
        metavar="N",
        help="only this dead task (repeat for several; default: all of the job's)",
    )
    add_endpoint_options(requeue)
    requeue.set_defaults(run=run_requeue)

    purge = commands.add_parser(
        "purge", help="drop a failed job's dead letters (its cleanup job runs)"
    )
    purge.add_argument("job_id", metavar="JOB")
    purge.add_argument("--coordinator", type=address, required=True, metavar="HOST:PORT")
    add_endpoint_options(purge)
    purge.set_defaults(run=run_purge)


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
