"""The ``fractal.reference`` task type: what every band of a render shares, computed once.

Payload: ``{"request": <RenderRequest JSON>}`` of a deep view
(:attr:`RenderRequest.deep`) or of one coloured on the ``auto`` scale. It is
the first task of such a render's job: the coordinator releases the bands once
it has succeeded. For a deep view it iterates the reference orbit in arbitrary
precision and builds its table of skips (:mod:`fractalq.fractal.reference`),
stored under :func:`reference_key`; for ``auto`` colours it measures the
view's range on a probe render (:mod:`fractalq.fractal.probe`), stored under
:func:`colour_key`. Both keys are pure functions of the job, so a retry
rewrites the same bytes; its result names them.

Every band of the job reads them from there through :func:`reference_for` and
:func:`scale_for`, which keep the last few they read in the worker process: a
worker that renders eight bands of a job downloads the orbit once.
"""

from __future__ import annotations

import functools
import json
import logging

from fractalq.fractal import probe
from fractalq.fractal import reference as orbits
from fractalq.fractal.kernels import cached_reference
from fractalq.fractal.palettes import ColourScale
from fractalq.fractal.reference import Reference
from fractalq.fractal.request import RenderRequest
from fractalq.storage import ObjectNotFoundError, shared_storage
from fractalq.tasks.registry import InvalidPayload, TaskContext, task_type

TASK_TYPE = "fractal.reference"
log = logging.getLogger(__name__)


def reference_key(job_id: str) -> str:
    return f"jobs/{job_id}/reference.orbit"


def colour_key(job_id: str) -> str:
    return f"jobs/{job_id}/colour-scale.json"


def shared_keys(job_id: str, request: RenderRequest) -> list[str]:
    """The objects a render's first task stores (none if it has no first task)."""
    keys = [reference_key(job_id)] if request.deep else []
    return [*keys, colour_key(job_id)] if needs_scale(request) else keys


def needs_first_task(request: RenderRequest) -> bool:
    return request.deep or needs_scale(request)


def needs_scale(request: RenderRequest) -> bool:
    return request.colour_scale == "auto"


def reference_payload(request: RenderRequest) -> bytes:
    return json.dumps({"request": json.loads(request.to_json())}, sort_keys=True).encode()


def parse_payload(payload: bytes) -> RenderRequest:
    try:
        request = RenderRequest.from_json(json.dumps(json.loads(payload)["request"]))
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise InvalidPayload(f"not a reference payload: {error}") from None
    if not needs_first_task(request):
        raise InvalidPayload(
            "the view is not deep and its colours need no range: it has nothing to share"
        )
    return request


def _check(payload: bytes) -> None:
    parse_payload(payload)


@functools.lru_cache(maxsize=4)
def _stored(url: str, key: str) -> Reference:
    # A job's orbit never changes under its key, so the cache needs no expiry.
    return orbits.from_bytes(shared_storage(url).get(key))


def reference_for(request: RenderRequest, context: TaskContext) -> Reference | None:
    """The reference a band of ``request`` renders around: None for a shallow view;
    the one its job's first task stored; computed here if the job has none (a job
    submitted without the first task still renders right, only slower)."""
    if not request.deep:
        return None
    if context.storage_url:
        try:
            stored = _stored(context.storage_url, reference_key(context.job_id))
        except ObjectNotFoundError:
            log.warning("job %s has no stored reference orbit: computing it here", context.job_id)
        else:
            if stored.precision == request.precision and stored.start.size <= request.max_iter + 1:
                return stored
            log.warning("job %s's stored reference orbit is not this view's", context.job_id)
    return cached_reference(request)


@functools.lru_cache(maxsize=4)
def _stored_scale(url: str, key: str) -> ColourScale:
    return probe.from_json(shared_storage(url).get(key))


def scale_for(
    request: RenderRequest, context: TaskContext, reference: Reference | None
) -> ColourScale:
    """The colour scale a band of ``request`` colours with: the one its job's first
    task measured, or measured here if the job stored none (the same)."""
    if needs_scale(request) and context.storage_url:
        try:
            return _stored_scale(context.storage_url, colour_key(context.job_id))
        except ObjectNotFoundError:
            log.warning("job %s has no stored colour scale: measuring it here", context.job_id)
        except ValueError as error:
            log.warning("job %s's stored colour scale is unreadable: %s", context.job_id, error)
    return probe.colour_scale(request, reference)


def _warm() -> None:
    """A tiny deep render: loads gmpy2 and the perturbation kernel's compiled code
    (0.04 s once the float64 kernel's is loaded), so a deep job's first band does not."""
    from fractalq.fractal.render import render_rows

    tiny = RenderRequest.create(
        width=8, height=2, max_iter=50, center_x="0", center_y="1", view_width="1e-30"
    )
    render_rows(tiny, 0, 2)


@task_type(TASK_TYPE, check=_check, cpu_bound=True, needs_storage=True, warm=_warm)
def compute_reference(payload: bytes, context: TaskContext) -> bytes:
    if not context.storage_url:
        raise RuntimeError("this worker has no --storage to put the reference orbit in")
    request = parse_payload(payload)
    storage = shared_storage(context.storage_url)
    reference = None
    if request.deep:
        reference = orbits.compute(request)
        storage.put(reference_key(context.job_id), orbits.to_bytes(reference))
    if needs_scale(request):
        scale = probe.colour_scale(request, reference)
        storage.put(colour_key(context.job_id), probe.to_json(scale))
    return json.dumps(shared_keys(context.job_id, request)).encode()
