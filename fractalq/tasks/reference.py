"""The ``fractal.reference`` task type: a deep render's reference orbit, computed once.

Payload: ``{"request": <RenderRequest JSON>}`` of a deep view
(:attr:`RenderRequest.deep`). It is the first task of a deep render's job: the
coordinator releases the bands once it has succeeded. It iterates the view's
reference orbit in arbitrary precision (:mod:`fractalq.fractal.reference`) and
stores it under :func:`reference_key`, a pure function of the job, so a retry
rewrites the same bytes; its result is the key.

Every band of the job reads it from there through :func:`reference_for`, which
keeps the last few it read in the worker process: a worker that renders eight
bands of a job downloads the orbit once.
"""

from __future__ import annotations

import functools
import json
import logging

from fractalq.fractal import reference as orbits
from fractalq.fractal.kernels import cached_reference
from fractalq.fractal.reference import Reference
from fractalq.fractal.request import RenderRequest
from fractalq.storage import ObjectNotFoundError, Storage, open_storage
from fractalq.tasks.registry import InvalidPayload, TaskContext, task_type

TASK_TYPE = "fractal.reference"
log = logging.getLogger(__name__)


def reference_key(job_id: str) -> str:
    return f"jobs/{job_id}/reference.orbit"


def reference_payload(request: RenderRequest) -> bytes:
    return json.dumps({"request": json.loads(request.to_json())}, sort_keys=True).encode()


def parse_payload(payload: bytes) -> RenderRequest:
    try:
        request = RenderRequest.from_json(json.dumps(json.loads(payload)["request"]))
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise InvalidPayload(f"not a reference payload: {error}") from None
    if not request.deep:
        raise InvalidPayload("the view is not deep: it renders in float64, with no reference")
    return request


def _check(payload: bytes) -> None:
    parse_payload(payload)


@functools.lru_cache(maxsize=8)
def _storage(url: str) -> Storage:
    return open_storage(url)


@functools.lru_cache(maxsize=4)
def _stored(url: str, key: str) -> Reference:
    # A job's orbit never changes under its key, so the cache needs no expiry.
    return orbits.from_bytes(_storage(url).get(key))


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
    key = reference_key(context.job_id)
    _storage(context.storage_url).put(key, orbits.to_bytes(orbits.compute(request)))
    return key.encode()
