"""A finished render's image or zoom's video, read from storage:
``/api/jobs/{id}/image.png`` and ``/api/jobs/{id}/video``.

The coordinator reads storage only when started with ``--storage`` (the URL
its workers use). The file is copied from storage into a temporary file on a
thread and sent from there, so a large one never sits in memory; the job's
result (its final task's) names the key. A video is served with its media type
and answers range requests, as a browser's ``<video>`` asks.
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
from fractalq.video import MEDIA_TYPES


def routes(
    service: CoordinatorService,
    storage: Storage | None,
    readable: Callable[[web.Request, str], Job],
) -> web.RouteTableDef:
    """``readable(request, job_id)``: the job, if known and the caller may read it."""
    table = web.RouteTableDef()

    def stored(request: web.Request) -> str:
        """The key the job's result names; 404 when there is none the caller may read."""
        job = readable(request, request.match_info["job_id"])
        try:
            key, _ = image_of(job_message(job))
        except ValueError as error:
            raise web.HTTPNotFound(text=str(error)) from None
        if storage is None:
            raise web.HTTPNotFound(
                text="this coordinator reads no storage (start it with --storage)"
            )
        return key

    async def send(request: web.Request, key: str, media: str, what: str) -> web.StreamResponse:
        assert storage is not None
        folder = tempfile.mkdtemp(prefix="fractalq-download-")
        path = os.path.join(folder, os.path.basename(key))
        try:
            await asyncio.to_thread(storage.get_file, key, path)
            response = web.FileResponse(path, headers={"Content-Type": media})
            await response.prepare(request)  # sends the whole file before the folder goes
            return response
        except StorageError as error:
            raise web.HTTPBadGateway(text=f"cannot read the {what} from storage: {error}") from None
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    @table.get("/api/jobs/{job_id}/image.png")
    async def image(request: web.Request) -> web.StreamResponse:
        key = stored(request)
        if not key.endswith(".png"):
            raise web.HTTPNotFound(text="this job's result is not an image")
        return await send(request, key, "image/png", "image")

    @table.get("/api/jobs/{job_id}/video")
    async def video(request: web.Request) -> web.StreamResponse:
        key = stored(request)
        media = MEDIA_TYPES.get(key.rsplit(".", 1)[-1])
        if media is None:
            raise web.HTTPNotFound(text="this job's result is not a video")
        return await send(request, key, media, "video")

    return table
