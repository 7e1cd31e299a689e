"""``fractalq fetch``, ``cancel`` and ``jobs``: look after jobs already submitted.

A render's image is assembled by its job's final task and stored under a key
its result names, so any client can collect it later with ``fetch``, whatever
happened to the process that submitted it.
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
from fractalq.images import download_image
from fractalq.proto import fractalq_pb2 as pb
from fractalq.storage import StorageError


def add_parsers(commands: Any) -> None:
    fetch = commands.add_parser("fetch", help="download the image of a finished render")
    fetch.add_argument("job_id", metavar="JOB")
    fetch.add_argument("--coordinator", type=address, required=True, metavar="HOST:PORT")
    fetch.add_argument("--storage", required=True, metavar="URL")
    fetch.add_argument("--out", required=True, metavar="PATH")
    add_endpoint_options(fetch)
    fetch.set_defaults(run=run_fetch)

    cancel = commands.add_parser("cancel", help="cancel a job")
    cancel.add_argument("job_id", metavar="JOB")
    cancel.add_argument("--coordinator", type=address, required=True, metavar="HOST:PORT")
    cancel.add_argument("--reason", default="", help="recorded as the job's reason")
    add_endpoint_options(cancel)
    cancel.set_defaults(run=run_cancel)

    jobs = commands.add_parser("jobs", help="the newest jobs, one line each")
    jobs.add_argument("--coordinator", type=address, required=True, metavar="HOST:PORT")
    jobs.add_argument("--active", action="store_true", help="only jobs not finished")
    jobs.add_argument(
        "--limit",
        type=integer(1, config.MAX_LIST_LIMIT),
        default=config.DEFAULT_LIST_LIMIT,
        metavar="N",
    )
    jobs.add_argument("--json", action="store_true", help="print JSON")
    add_endpoint_options(jobs)
    jobs.set_defaults(run=run_jobs)


def run_fetch(args: argparse.Namespace) -> int:
    from fractalq.cli.render import check_output, open_checked_storage

    out = check_output(args.out)
    storage = open_checked_storage(args.storage)
    with Client(endpoint_from(args)) as client:
        try:
            job = client.job(args.job_id)
        except ClientError as error:
            raise CommandError(str(error)) from None
    if job.state != pb.SUCCEEDED:
        state = pb.JobState.Name(job.state)
        detail = f": {job.reason}" if job.reason else f" ({job.succeeded}/{job.total} done)"
        raise CommandError(f"job {job.job_id} is {state}{detail}")
    try:
        download_image(storage, job, out)
    except (StorageError, ValueError, OSError) as error:
        raise CommandError(f"fetching {out}: {error}") from None
    print(out)
    return 0


def run_cancel(args: argparse.Namespace) -> int:
    with Client(endpoint_from(args)) as client:
        try:
            job = client.cancel(args.job_id, args.reason)
        except ClientError as error:
            raise CommandError(str(error)) from None
    state = pb.JobState.Name(job.state)
    if job.state == pb.CANCELLED:
        print(f"job {job.job_id} CANCELLED: {job.reason}")
        return 0
    print(f"job {job.job_id} had already ended: {state}")
    return 0


def _age(seconds: float) -> str:
    age = max(time.time() - seconds, 0.0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if age >= size:
            return f"{age / size:.0f}{unit}"
    return f"{age:.0f}s"


def run_jobs(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    with Client(endpoint_from(args)) as client:
        try:
            found = client.jobs(active_only=args.active, limit=args.limit)
        except ClientError as error:
            raise CommandError(str(error)) from None
    if args.json:
        listed = [json_format.MessageToDict(job) for job in found]
        print(json.dumps({"jobs": listed}, indent=2))
        return 0
    rows = [("JOB", "TYPE", "STATE", "PROGRESS", "AGE", "LABELS")]
    for job in found:
        labels = ",".join(f"{key}={value}" for key, value in sorted(job.labels.items())) or "-"
        state, progress = pb.JobState.Name(job.state), f"{job.succeeded}/{job.total}"
        rows.append((job.job_id, job.task_type, state, progress, _age(job.created_at), labels))
    widths = [max(len(row[column]) for row in rows) for column in range(5)]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), end=""
        )
        print("  " + row[5])
    return 0
