"""A finished render's image, read from storage: ``/api/jobs/{id}/image.png``.

The coordinator reads storage only when started with ``--storage`` (the URL
its workers use). The image is copied from storage into a temporary file on a
thread and sent from there, so a large image never sits in memory; the job's
result (its assembly task's) names the key.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Callable

from aiohttp import web

from fractalq.coordinator.jobs import Job
from fractalq.coordinator.service import CoordinatorService, job_message
from fractalq.images import image_of
from fractalq.storage import Storage, StorageError


def routes(
    service: CoordinatorService,
    storage: Storage | None,
    readable: Callable[[web.Request, str], Job],
) -> web.RouteTableDef:
    """``readable(request, job_id)``: the job, if known and the caller may read it."""
    table = web.RouteTableDef()

    @table.get("/api/jobs/{job_id}/image.png")
    async def image(request: web.Request) -> web.StreamResponse:
        job = readable(request, request.match_info["job_id"])
        try:
            key, _ = image_of(job_message(job))
        except ValueError as error:
            raise web.HTTPNotFound(text=str(error)) from None
        if storage is None:
            raise web.HTTPNotFound(
                text="this coordinator reads no storage (start it with --storage)"
            )
        folder = tempfile.mkdtemp(prefix="fractalq-image-")
        path = os.path.join(folder, "image.png")
        try:
            await asyncio.to_thread(storage.get_file, key, path)
            response = web.FileResponse(path, headers={"Content-Type": "image/png"})
            await response.prepare(request)  # sends the whole file before the folder goes
            return response
        except StorageError as error:
            raise web.HTTPBadGateway(text=f"cannot read the image from storage: {error}") from None
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    return table
