"""Submit, cancel, requeue and purge from the dashboard: the command line's checks.

The render form's fields are named like ``fractalq render``'s options without
the dashes. :func:`render_request` checks them with the same code the command
line uses (:meth:`RenderRequest.create`, :func:`split_rows`, the priority's
range) and says which field is wrong; the job is the one ``fractalq render``
submits (:func:`fractalq.images.render_job`), submitted in-process through the
service's own checks. A refusal is ``{"error", "field"}`` with the status
of :mod:`.errors` (400 for a bad field) and changes nothing. Which jobs a
session may change is the policy's (:mod:`..policy`), as over gRPC.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from aiohttp import web

from fractalq import config
from fractalq import tasks as task_types
from fractalq.coordinator.auth import caller_of
from fractalq.coordinator.errors import BrokerError
from fractalq.coordinator.service import CoordinatorService
from fractalq.coordinator.web import errors
from fractalq.fractal.palettes import COLOUR_SCALES, PALETTES
from fractalq.fractal.request import FRACTALS, RenderRequest, split_rows
from fractalq.images import render_job
from fractalq.proto import fractalq_pb2 as pb

INTS = ("width", "height", "regions", "max-iter", "priority")
FLOATS = ("center-x", "center-y", "view-width", "c-re", "c-im")
FIELDS = ("fractal", "palette", "colour-scale", *INTS, *FLOATS)
# The view's centre and width are decimal strings of any length (deep zoom),
# kept digit for digit and checked by RenderRequest.create like the command line's.
VIEW = ("center-x", "center-y", "view-width")
# The request's own names (in its error messages) -> the form's.
_FORM_NAMES = {name.replace("-", "_"): name for name in FIELDS}


class FieldError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _field_of(message: str) -> str:
    """The form field a RenderRequest error message is about."""
    if message.startswith("unknown fractal"):
        return "fractal"
    if message.startswith("unknown palette"):
        return "palette"
    if message.startswith("unknown colour scale"):
        return "colour-scale"
    if message.startswith("image of"):
        return "width"
    first = message.split(" ", 1)[0]
    return _FORM_NAMES.get(first, "")


def _text(form: dict[str, Any], name: str) -> str | None:
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise FieldError(name, f"{name} must be text or a number")
    text = str(value).strip()
    return text or None  # empty: the default, as when the option is left out


def render_request(form: dict[str, Any]) -> tuple[RenderRequest, int, int]:
    """The request, band count and priority of a render form; FieldError when bad."""
    ints: dict[str, int | None] = {}
    for name in INTS:
        text = _text(form, name)
        if text is not None and not re.fullmatch(r"[+-]?\d{1,12}", text):
            raise FieldError(name, f"{name} must be a whole number (got {text[:20]!r})")
        ints[name] = int(text) if text is not None else None
    floats: dict[str, Any] = {}
    for name in FLOATS:
        text = _text(form, name)
        if text is not None and name in VIEW:
            floats[name] = text
            continue
        try:
            value = float(text) if text is not None and len(text) <= 100 else None
        except ValueError:
            value = math.nan
        if text is not None and (value is None or not math.isfinite(value)):
            raise FieldError(name, f"{name} must be a finite number (got {text[:20]!r})")
        floats[name] = value
    try:
        request = RenderRequest.create(
            _text(form, "fractal") or config.DEFAULT_FRACTAL,
            width=ints["width"],
            height=ints["height"],
            max_iter=ints["max-iter"],
            center_x=floats["center-x"],
            center_y=floats["center-y"],
            view_width=floats["view-width"],
            c_re=floats["c-re"],
            c_im=floats["c-im"],
            palette=_text(form, "palette"),
            colour_scale=_text(form, "colour-scale"),
        )
    except ValueError as error:
        raise FieldError(_field_of(str(error)), str(error)) from None
    regions = ints["regions"] if ints["regions"] is not None else config.DEFAULT_REGIONS
    try:
        split_rows(request.height, regions)
    except ValueError as error:
        raise FieldError("regions", str(error)) from None
    priority = ints["priority"] if ints["priority"] is not None else config.DEFAULT_PRIORITY
    low, high = config.PRIORITY_RANGE
    if not low <= priority <= high:
        raise FieldError("priority", f"priority must be from {low} to {high} (got {priority})")
    return request, regions, priority


def task_job(form: dict[str, Any]) -> pb.SubmitJobRequest:
    """A generic job from the task form (type, JSON payload, count, priority)."""
    task_type = _text(form, "task") or ""
    if not task_type:
        raise FieldError("task", "task: name a task type")
    payload = _text(form, "payload") or ""
    if payload:
        try:
            json.loads(payload)
        except ValueError as error:
            raise FieldError("payload", f"payload is not JSON: {error}") from None
    numbers = {}
    for name, default in (("count", 1), ("priority", config.DEFAULT_PRIORITY)):
        text = _text(form, name)
        if text is not None and not re.fullmatch(r"[+-]?\d{1,12}", text):
            raise FieldError(name, f"{name} must be a whole number (got {text[:20]!r})")
        numbers[name] = int(text) if text is not None else default
    if not 1 <= numbers["count"] <= config.MAX_TASKS_PER_JOB:
        raise FieldError("count", f"count must be from 1 to {config.MAX_TASKS_PER_JOB}")
    low, high = config.PRIORITY_RANGE
    if not low <= numbers["priority"] <= high:
        raise FieldError("priority", f"priority must be from {low} to {high}")
    return pb.SubmitJobRequest(
        task_type=task_type,
        payload=payload.encode(),
        count=numbers["count"],
        priority=numbers["priority"],
    )


def _refusal(field: str, message: str, status: int = 400) -> web.Response:
    return web.json_response({"error": message, "field": field}, status=status)


def _broker_field(message: str) -> str:
    for name in ("task_type", "payload", "count", "priority", "labels"):
        if name in message:
            return "task" if name == "task_type" else name
    return ""


def _json_only(request: web.Request) -> None:
    """Writes come as JSON: a page on another site cannot send that without the
    browser asking this server first (CORS), which it does not allow. Without
    tokens there is no cookie for SameSite to guard, so this is what stops a
    page elsewhere from submitting or cancelling through a visitor's browser."""
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(text="send JSON (Content-Type: application/json)")


async def _form(request: web.Request) -> dict[str, Any]:
    _json_only(request)
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise web.HTTPBadRequest(text="send the form as a JSON object") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="send the form as a JSON object")
    return body


def form_options() -> dict[str, Any]:
    """What the forms offer: fractals, palettes, defaults, limits, task types."""
    return {
        "fractals": sorted(FRACTALS),
        "palettes": sorted(PALETTES),
        "colour_scales": list(COLOUR_SCALES),
        "defaults": {
            "fractal": config.DEFAULT_FRACTAL,
            "palette": config.DEFAULT_PALETTE,
            "colour-scale": config.DEFAULT_COLOUR_SCALE,
            "width": config.DEFAULT_WIDTH,
            "height": config.DEFAULT_HEIGHT,
            "regions": config.DEFAULT_REGIONS,
            "max-iter": config.DEFAULT_MAX_ITER,
            "priority": config.DEFAULT_PRIORITY,
        },
        "limits": {
            "dimension": config.MAX_DIMENSION,
            "max-iter": config.MAX_ITERATIONS,
            "priority": list(config.PRIORITY_RANGE),
        },
        "task_types": [t for t in task_types.names() if not t.startswith("fractal.")],
    }


def routes(service: CoordinatorService) -> web.RouteTableDef:
    table = web.RouteTableDef()

    def refused(request: web.Request, error: BrokerError, field: str = "") -> web.Response:
        errors.count(service, request, error)
        return _refusal(field, str(error), errors.status_of(error))

    async def submit(request: web.Request, job: pb.SubmitJobRequest) -> web.Response:
        try:
            response = await service.submit_job(job, caller_of(request))
        except BrokerError as error:
            return refused(request, error, _broker_field(str(error)))
        return web.json_response({"job_id": response.job.job_id, "total": response.job.total})

    @table.get("/api/render/options")
    async def options(request: web.Request) -> web.Response:
        return web.json_response(form_options())

    @table.post("/api/render")
    async def render(request: web.Request) -> web.Response:
        try:
            render, regions, priority = render_request(await _form(request))
        except FieldError as error:
            return _refusal(error.field, str(error))
        job = render_job(render, regions, priority, labels={"via": "dashboard"})
        return await submit(request, job)

    @table.post("/api/tasks")
    async def tasks(request: web.Request) -> web.Response:
        try:
            job = task_job(await _form(request))
        except FieldError as error:
            return _refusal(error.field, str(error))
        return await submit(request, job)

    @table.post("/api/jobs/{job_id}/cancel")
    async def cancel(request: web.Request) -> web.Response:
        _json_only(request)
        job_id = request.match_info["job_id"]
        try:
            job = await service.cancel_job(
                pb.CancelJobRequest(job_id=job_id, reason="cancelled from the dashboard"),
                caller_of(request),
            )
        except BrokerError as error:
            return refused(request, error)
        return web.json_response({"job_id": job.job_id, "state": job_message_state(job)})

    @table.post("/api/jobs/{job_id}/requeue")
    async def requeue(request: web.Request) -> web.Response:
        """Body: ``{}`` for every dead task of the job, or ``{"tasks": [N, ...]}``."""
        form = await _form(request)
        tasks = form.get("tasks", [])
        if not isinstance(tasks, list) or not all(
            isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 2**32 for n in tasks
        ):
            return _refusal("tasks", "tasks must be a list of task numbers")
        try:
            job = await service.requeue_job(
                pb.RequeueJobRequest(job_id=request.match_info["job_id"], tasks=tasks),
                caller_of(request),
            )
        except BrokerError as error:
            return refused(request, error)
        return web.json_response({"job_id": job.job_id, "state": job_message_state(job)})

    @table.post("/api/jobs/{job_id}/purge")
    async def purge(request: web.Request) -> web.Response:
        _json_only(request)
        try:
            done = await service.purge_job(
                pb.PurgeJobRequest(job_id=request.match_info["job_id"]), caller_of(request)
            )
        except BrokerError as error:
            return refused(request, error)
        return web.json_response({"job_id": done.job.job_id, "purged": done.purged})

    return table


def job_message_state(job: pb.Job) -> str:
    return pb.JobState.Name(job.state).lower()
