"""``fractalq fetch``, ``cancel`` and ``jobs``: look after jobs already submitted.

A render's image is assembled by its job's final task and stored under a key
its result names, so any client can collect it later with ``fetch``, whatever
happened to the process that submitted it: from storage with ``--storage``,
else from the coordinator's HTTP port, which reads storage itself
(:mod:`fractalq.download`), so the client needs no storage credentials.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from fractalq import images, options
from fractalq.cli import table as t
from fractalq.cli.common import CommandError, command, endpoint_from
from fractalq.client import Client, ClientError
from fractalq.images import image_of
from fractalq.proto import fractalq_pb2 as pb
from fractalq.storage import StorageError


def add_parsers(commands: Any) -> None:
    fetch = command(commands, "fetch", run_fetch, help="download the image of a finished render")
    fetch.add_argument("job_id", metavar="JOB")
    options.add(
        fetch,
        t.COORDINATOR,
        t.STORAGE.but(shown="none: through the coordinator's HTTP port (--http-url)"),
        t.HTTP_URL,
        t.OUT,
    )
    options.add(fetch, *t.CLIENT_TLS, title=t.CLIENT_TLS_TITLE)

    cancel = command(commands, "cancel", run_cancel, help="cancel a job")
    cancel.add_argument("job_id", metavar="JOB")
    options.add(cancel, t.COORDINATOR, t.REASON)
    options.add(cancel, *t.CLIENT_TLS, title=t.CLIENT_TLS_TITLE)

    jobs = command(commands, "jobs", run_jobs, help="the newest jobs, one line each")
    options.add(jobs, t.COORDINATOR, t.ACTIVE, t.LIMIT, t.JSON)
    options.add(jobs, *t.CLIENT_TLS, title=t.CLIENT_TLS_TITLE)


def run_fetch(args: argparse.Namespace) -> int:
    """Without --storage the image comes from the coordinator's HTTP port (which reads
    storage itself), with the token and CA the gRPC calls use."""
    from fractalq.cli.render import check_output, open_checked_storage
    from fractalq.download import DownloadError, check_url, download_image, http_url

    out = check_output(args.out)
    storage = open_checked_storage(args.storage) if args.storage else None
    endpoint = endpoint_from(args)
    base_url = args.http_url or http_url(endpoint)
    try:
        check_url(base_url)
    except ValueError as error:
        raise CommandError(f"--http-url: {error}") from None
    with Client(endpoint) as client:
        try:
            job = client.job(args.job_id)
        except ClientError as error:
            raise CommandError(str(error)) from None
    if job.state != pb.SUCCEEDED:
        state = pb.JobState.Name(job.state)
        detail = f": {job.reason}" if job.reason else f" ({job.succeeded}/{job.total} done)"
        raise CommandError(f"job {job.job_id} is {state}{detail}")
    try:
        if storage is not None:
            images.download_image(storage, job, out)
        else:
            key, _ = image_of(job)  # a job that made no image: said before any request
            resource = "image.png" if key.endswith(".png") else "video"  # a zoom's
            download_image(base_url, endpoint, job.job_id, out, resource)
    except (StorageError, DownloadError, ValueError, OSError) as error:
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
