"""The previews of recent renders, as bands complete: bounded memory, served as JSON.

The broker hands every accepted task result to :meth:`Previews.add`; a band's
result carries its piece of the job's preview (:mod:`fractalq.preview`), a zoom
keyframe's its thumbnail; they are kept here in arrival order. At most
``config.PREVIEW_JOBS`` jobs and ``config.PREVIEW_MEMORY`` bytes are kept, the
job changed longest ago going first. The page learns from the event stream how
many pieces a job has and asks ``/api/jobs/{id}/preview?since=N`` for the ones
it has not drawn yet.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from aiohttp import web

from fractalq import config
from fractalq.coordinator.errors import BrokerError
from fractalq.coordinator.jobs import Job
from fractalq.coordinator.listeners import Listener
from fractalq.coordinator.validation import check_job_id
from fractalq.preview import parse_keyframe, parse_pieces

BAND_TASK = "fractal.band"
KEYFRAME_TASK = "fractal.keyframe"


class _JobPreview:
    def __init__(self, size: list[int]) -> None:
        self.size = size
        self.pieces: list[dict[str, Any]] = []
        self.bytes = 0


class Previews(Listener):
    """The latest preview pieces of recent jobs' bands, in bounded memory."""

    def __init__(
        self, max_jobs: int = config.PREVIEW_JOBS, max_bytes: int = config.PREVIEW_MEMORY
    ) -> None:
        self.max_jobs = max_jobs
        self.max_bytes = max_bytes
        self.bytes = 0
        self._jobs: OrderedDict[str, _JobPreview] = OrderedDict()

    def task_result(self, job: Job, index: int, result: bytes) -> None:
        self.add(job, index, result)

    def add(self, job: Job, index: int, result: bytes) -> None:
        """Keep the preview piece in a band's result, or the thumbnail in a zoom
        keyframe's (anything else is ignored)."""
        if index >= job.total:  # a stage task's result
            return
        if job.task_type == BAND_TASK:
            pieces = parse_pieces(result)
        elif job.task_type == KEYFRAME_TASK:
            keyframe = parse_keyframe(result)
            pieces = [] if keyframe is None else [keyframe]
        else:
            return
        for piece in pieces:
            self._keep(job.job_id, piece)

    def _keep(self, job_id: str, piece: dict[str, Any]) -> None:
        kept = self._jobs.get(job_id)
        if kept is None or kept.size != piece["size"]:
            if kept is not None:
                self.bytes -= kept.bytes
            kept = self._jobs[job_id] = _JobPreview(piece["size"])
        self._jobs.move_to_end(job_id)
        size = len(piece["jpeg"])
        kept.pieces.append({key: value for key, value in piece.items() if key != "size"})
        kept.bytes += size
        self.bytes += size
        while len(self._jobs) > self.max_jobs or self.bytes > self.max_bytes:
            _, dropped = self._jobs.popitem(last=False)
            self.bytes -= dropped.bytes

    def count(self, job_id: str) -> int:
        kept = self._jobs.get(job_id)
        return len(kept.pieces) if kept is not None else 0

    def since(self, job_id: str, start: int) -> dict[str, Any] | None:
        """The job's preview size and its pieces from the ``start``-th on; None if none."""
        kept = self._jobs.get(job_id)
        if kept is None:
            return None
        start = min(max(start, 0), len(kept.pieces))
        return {"size": kept.size, "next": len(kept.pieces), "pieces": kept.pieces[start:]}


def routes(previews: Previews, readable: Callable[[web.Request, str], Job]) -> web.RouteTableDef:
    """``readable(request, job_id)``: the job, if it is known and the caller may
    read it (an HTTP error otherwise)."""
    table = web.RouteTableDef()

    @table.get("/api/jobs/{job_id}/preview")
    async def preview(request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        try:
            check_job_id(job_id)
            since = int(request.query.get("since", "0"))
        except ValueError:
            raise web.HTTPBadRequest(text="a job id and a whole number since=N, please") from None
        except BrokerError as error:  # a malformed job id
            raise web.HTTPBadRequest(text=str(error)) from None
        readable(request, job_id)
        found = previews.since(job_id, since) or {"size": None, "next": 0, "pieces": []}
        return web.json_response(found)

    return table
