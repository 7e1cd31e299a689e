"""``fractalq zoom`` and ``fractalq demo zoom``: a zoom movie on the queue.

``demo zoom`` is a sub-command of ``demo`` rather than a flag of it: it takes
the zoom's options, not a render's (``--to``, ``--seconds``, ``--fps``, no
``--view-width`` or ``--regions``), so it parses them as ``zoom`` does, and
``fractalq demo`` alone stays the render it always was.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from typing import Any

from fractalq import config, options
from fractalq.cli import table as t
from fractalq.cli.common import CommandError, command, endpoint_from
from fractalq.cli.progress import Progress
from fractalq.cli.render import _say_lost, check_output, local_cluster, open_checked_storage
from fractalq.client import Client, ClientError
from fractalq.fractal.zoom import CONTAINERS, ZoomRequest
from fractalq.proto import fractalq_pb2 as pb
from fractalq.states import FINISHED
from fractalq.storage import Storage, StorageError
from fractalq.zooms import download_video, submit_zoom


def add_zoom_options(parser: argparse.ArgumentParser) -> None:
    options.add(parser, t.FRACTAL, *t.ZOOM, title=t.ZOOM_TITLE)


def add_parsers(commands: Any) -> None:
    zoom = command(
        commands,
        "zoom",
        run_zoom,
        help="render a zoom movie (MP4 or WebM) with a running coordinator",
    )
    add_zoom_options(zoom)
    options.add(zoom, t.COORDINATOR, t.STORAGE.but(required=True), t.VIDEO_OUT, t.RECONNECT_TIMEOUT)
    options.add(zoom, *t.CLIENT_TLS, title=t.CLIENT_TLS_TITLE)


def add_demo_parser(demo: argparse.ArgumentParser) -> None:
    """``demo zoom``: the demo's local processes, making a zoom movie."""
    kinds = demo.add_subparsers(dest="demo", metavar="[zoom]", required=False)
    zoom = command(kinds, "zoom", run_demo_zoom, help="a zoom movie with local processes")
    add_zoom_options(zoom)
    options.add(zoom, t.WORKERS, t.DEMO_VIDEO_OUT)


def zoom_from(args: argparse.Namespace) -> ZoomRequest:
    """The validated zoom, or a one-line CommandError."""
    container = os.path.splitext(args.out)[1].lower().lstrip(".")
    if container not in CONTAINERS:
        raise CommandError(f"--out {args.out} must end in .mp4 or .webm")
    try:
        return ZoomRequest.create(
            args.fractal,
            to_width=args.to,
            from_width=getattr(args, "from"),  # a keyword: --from's dest
            width=args.width,
            height=args.height,
            center_x=args.center_x,
            center_y=args.center_y,
            c_re=args.c_re,
            c_im=args.c_im,
            max_iter=args.max_iter,
            max_iter_growth=args.max_iter_growth,
            seconds=args.seconds,
            fps=args.fps,
            palette=args.palette,
            colour_scale=args.colour_scale,
            container=container,
            crf=args.crf,
        )
    except ValueError as error:
        message = str(error).replace("to_width", "--to").replace("from_width", "--from")
        raise CommandError(message) from None


def make_zoom(
    client: Client,
    storage: Storage,
    zoom: ZoomRequest,
    priority: int,
    out: str,
    keep_keyframes: bool,
    began: float | None = None,
    reconnect_timeout: float = config.RENDER_RECONNECT_TIMEOUT,
) -> None:
    """Submit, show progress per keyframe, download the video to ``out``; a failed
    job is a CommandError. The closing summary splits the time since ``began``
    into the reference orbits, the keyframes, the encoding and the download."""
    began = time.monotonic() if began is None else began
    orbits = first_keyframe = encoding = None
    try:
        submitted = submit_zoom(client, zoom, priority, keep_keyframes=keep_keyframes).job
        # First line: the id, so that a caller can fetch the video later whatever happens.
        print(
            f"submitted {submitted.total} keyframes of a {zoom.frame_count}-frame zoom"
            f" as job {submitted.job_id}",
            flush=True,
        )
        progress = Progress(submitted.total, "keyframes")
        job = submitted
        lost = functools.partial(_say_lost, client.address, reconnect_timeout)
        for job in client.follow(submitted.job_id, reconnect_timeout, lost):
            now = time.monotonic()
            if orbits is None and job.state not in (pb.QUEUED, pb.PREPARING):
                orbits = now
            if first_keyframe is None and job.succeeded:
                first_keyframe = now
            if encoding is None and job.state in (pb.FINISHING, pb.SUCCEEDED):
                encoding = now
                progress.update(job.succeeded, job.leased, final=True)
                print(f"encoding {zoom.frame_count} frames", file=sys.stderr, flush=True)
            elif encoding is None:
                progress.update(job.succeeded, job.leased, final=job.state in FINISHED)
    except ClientError as error:
        raise CommandError(str(error)) from None
    if job.state != pb.SUCCEEDED:
        raise CommandError(f"zoom job {job.job_id} {pb.JobState.Name(job.state)}: {job.reason}")
    encoded = time.monotonic()
    try:
        download_video(storage, job, out)
    except (StorageError, ValueError, OSError) as error:
        raise CommandError(f"downloading the video to {out}: {error}") from None
    done = time.monotonic()
    orbits = encoded if orbits is None else orbits
    encoding = encoded if encoding is None else encoding
    print(
        f"{zoom.width}x{zoom.height} zoom, {zoom.frame_count} frames ({zoom.seconds:g} s at"
        f" {zoom.fps} fps), {submitted.total} keyframes, in {done - began:.2f}s (reference"
        f" orbits after {orbits - began:.2f}s, keyframes {encoding - orbits:.2f}s, encoding"
        f" {encoded - encoding:.2f}s, download {done - encoded:.2f}s)",
        file=sys.stderr,
    )


def run_zoom(args: argparse.Namespace) -> int:
    zoom = zoom_from(args)
    out = check_output(args.out)
    storage = open_checked_storage(args.storage)
    with Client(endpoint_from(args)) as client:
        make_zoom(
            client, storage, zoom, args.priority, out, args.keep_keyframes,
            reconnect_timeout=args.reconnect_timeout,
        )  # fmt: skip
    print(out)
    return 0


def run_demo_zoom(args: argparse.Namespace) -> int:
    began = time.monotonic()
    zoom = zoom_from(args)
    out = check_output(args.out)
    with local_cluster(args.workers) as (endpoint, storage), Client(endpoint) as client:
        make_zoom(client, storage, zoom, args.priority, out, args.keep_keyframes, began)
    print(out)
    return 0
