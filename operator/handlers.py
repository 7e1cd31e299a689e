"""kopf handlers: FractalJob resources in, coordinator jobs and images out.

One timer per FractalJob drives it through its phases; everything it needs
is in the resource (its uid, generation and status), so an operator restart
simply resumes, and the coordinator job id is derived from the uid and the
generation, so no step ever submits twice:

- no job for this generation yet: check the spec (a bad one ends ``Failed``
  with the reason), submit the bands, ``Queued``;
- ``Queued``/``Running``: copy the job's progress into the status;
- the job succeeded: ``Assembling``, stream the bands into a PNG, upload it
  to ``<storage>/<namespace>/<name>.png``, write its ``s3://`` URL and a
  presigned link, ``Succeeded``; a dead-lettered band: ``Failed`` with why.

A spec change (a new generation) renders again: the old job is cancelled and
a new one submitted, since a user who edits the resource wants the new image.
Deleting the resource cancels its job, waits for bands still rendering and
removes the bands (a finalizer); an unreachable coordinator delays that by
at most ``DELETE_TIMEOUT`` seconds, never forever. The autoscaler runs
beside them on a thread of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import threading
import time
from typing import Any

import kopf

from fractalq import config
from fractalq.client import Client, ClientError, NotFound
from fractalq.fractal.request import RenderRequest
from fractalq.images import remove_bands, submit_render, write_png
from fractalq.operator import kube
from fractalq.operator.autoscaler import Autoscaler
from fractalq.operator.settings import OperatorSettings
from fractalq.operator.spec import image_key, job_id_for, parse_spec
from fractalq.operator.status import (
    ASSEMBLING,
    FAILED,
    FINAL,
    PENDING,
    QUEUED,
    SUCCEEDED,
    condition,
    now_iso,
    progress,
)
from fractalq.storage import Storage, StorageError, StorageOptions, open_storage

GROUP, VERSION, PLURAL = "fractalq.dev", "v1alpha1", "fractaljobs"
DELETE_TIMEOUT = 60.0

log = logging.getLogger("fractalq.operator")


class State:
    """What the handlers share, made once at start-up."""

    settings: OperatorSettings
    storage: Storage
    client: Client
    scaler: ScalerThread | None = None


state = State()


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod its service account, elsewhere the kubeconfig (as kubectl does)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, **_: Any) -> None:
    state.settings = OperatorSettings.from_env()
    state.storage = open_storage(
        state.settings.storage,
        options=StorageOptions(public_endpoint=state.settings.s3_public_endpoint),
    )
    state.client = Client(state.settings.endpoint, timeout=10)
    settings.persistence.finalizer = "fractalq.dev/cleanup"
    settings.posting.level = logging.INFO
    if state.settings.scale_enabled:
        state.scaler = ScalerThread(state.settings, Client(state.settings.endpoint, timeout=10))
        state.scaler.start()
    log.info(
        "coordinator %s (%s, %s), storage %s, workers %s/%s (autoscaling %s)",
        state.settings.coordinator,
        "TLS" if state.settings.tls else "no TLS",
        "token" if state.settings.token else "no token",
        state.settings.storage,
        state.settings.worker_namespace,
        state.settings.worker_deployment,
        "on" if state.settings.scale_enabled else "off",
    )


@kopf.on.cleanup()
async def stop(**_: Any) -> None:
    if state.scaler is not None:
        state.scaler.halt.set()
        await asyncio.to_thread(state.scaler.join, 30)
        state.scaler.client.close()
        state.scaler = None
    state.client.close()


# ---- the FractalJob lifecycle ----------------------------------------------


def _set(patch: kopf.Patch, fields: dict[str, Any]) -> None:
    for key, value in fields.items():
        patch.status[key] = value


def _fail(
    body: kopf.Body, patch: kopf.Patch, status: kopf.Status, generation: int, why: str
) -> None:
    _set(patch, {"phase": FAILED, "message": why, "completionTime": now_iso()})
    patch.status["conditions"] = condition(
        status.get("conditions", []), "Ready", False, "Failed", why, generation
    )
    kopf.warn(body, reason="Failed", message=why)


@kopf.timer(GROUP, VERSION, PLURAL, interval=config.PROGRESS_INTERVAL)
async def reconcile(
    body: kopf.Body,
    spec: kopf.Spec,
    status: kopf.Status,
    meta: kopf.Meta,
    patch: kopf.Patch,
    uid: str,
    name: str,
    namespace: str | None,
    **_: Any,
) -> None:
    generation = int(meta.get("generation") or 1)
    observed = status.get("observedGeneration")
    phase = status.get("phase")
    if observed == generation and phase in FINAL:
        return
    if phase is None:  # first sight: say so, submit on the next tick
        patch.status["phase"] = PENDING
        kopf.info(body, reason=PENDING, message="accepted")
        return
    if observed != generation:
        await _submit(body, spec, status, patch, uid, generation, observed)
        return
    await _follow(body, spec, status, patch, uid, name, namespace or "default", generation)


async def _submit(
    body: kopf.Body,
    spec: kopf.Spec,
    status: kopf.Status,
    patch: kopf.Patch,
    uid: str,
    generation: int,
    observed: int | None,
) -> None:
    _set(patch, {"observedGeneration": generation, "phase": PENDING, "message": ""})
    try:
        request, regions, priority = parse_spec(spec)
    except ValueError as error:
        _fail(body, patch, status, generation, str(error))
        return
    if observed is not None and status.get("jobId"):  # the spec changed: render again
        with contextlib.suppress(ClientError):
            await asyncio.to_thread(state.client.cancel, status["jobId"], "spec changed")
    job_id = job_id_for(uid, generation)
    try:
        await asyncio.to_thread(
            submit_render, state.client, request, regions, priority, job_id, {"fractaljob": uid}
        )
    except ClientError as error:
        # Nothing is lost: the next tick submits the same job id again.
        patch.status["observedGeneration"] = observed
        patch.status["conditions"] = condition(
            status.get("conditions", []), "CoordinatorReachable", False, "Unreachable",
            str(error), generation,
        )  # fmt: skip
        raise kopf.TemporaryError(str(error), delay=5) from None
    _set(
        patch,
        {
            "phase": QUEUED,
            "jobId": job_id,
            "size": f"{request.width}x{request.height}",
            "bandsTotal": regions,
            "bandsDone": 0,
            "progress": f"0/{regions}",
            "url": "",
            "presignedUrl": "",
            "startTime": now_iso(),
            "completionTime": None,
        },
    )
    conditions = condition(
        status.get("conditions", []), "CoordinatorReachable", True, "Submitted",
        f"job {job_id}", generation,
    )  # fmt: skip
    patch.status["conditions"] = condition(
        conditions, "Ready", False, "Rendering", f"{regions} bands queued", generation
    )
    kopf.info(body, reason="Queued", message=f"submitted {regions} bands as job {job_id}")


async def _follow(
    body: kopf.Body,
    spec: kopf.Spec,
    status: kopf.Status,
    patch: kopf.Patch,
    uid: str,
    name: str,
    namespace: str,
    generation: int,
) -> None:
    job_id = status.get("jobId") or job_id_for(uid, generation)
    try:
        job = await asyncio.to_thread(state.client.job, job_id)
    except ClientError as error:
        if isinstance(error, NotFound):
            # The coordinator lost its data (a new volume, no --data) or forgot
            # the job: render again, under the same job id.
            lost = f"job {job_id} is unknown to the coordinator: submitting it again"
            log.warning("%s/%s: %s", namespace, name, lost)
            kopf.warn(body, reason="JobLost", message=lost)
            await _submit(body, spec, status, patch, uid, generation, None)
            return
        patch.status["conditions"] = condition(
            status.get("conditions", []), "CoordinatorReachable", False, "Unreachable",
            str(error), generation,
        )  # fmt: skip
        raise kopf.TemporaryError(str(error), delay=5) from None
    fields = progress(job)
    if fields.get("phase") == FAILED:
        _set(patch, {key: value for key, value in fields.items() if key != "phase"})
        _fail(body, patch, status, generation, fields["message"])
        return
    if fields.get("phase") != status.get("phase"):
        kopf.info(body, reason=fields["phase"], message=f"{fields['progress']} bands")
    _set(patch, fields)
    # Assembling shows for a tick before the (possibly long) assembly starts.
    if fields.get("phase") != ASSEMBLING or status.get("phase") != ASSEMBLING:
        return
    request, regions, _priority = parse_spec(spec)
    try:
        url, link = await asyncio.to_thread(assemble, request, regions, job_id, namespace, name)
    except (StorageError, ValueError, OSError) as error:
        raise kopf.TemporaryError(f"assembly failed: {error}", delay=10) from None
    _set(
        patch,
        {"phase": SUCCEEDED, "url": url, "presignedUrl": link or "", "completionTime": now_iso()},
    )
    patch.status["conditions"] = condition(
        status.get("conditions", []), "Ready", True, "Succeeded", url, generation
    )
    kopf.info(body, reason="Succeeded", message=url)


def assemble(
    request: RenderRequest, regions: int, job_id: str, namespace: str, name: str
) -> tuple[str, str | None]:
    """Bands to PNG (through a temp file: bounded memory), upload, drop the bands."""
    storage, key = state.storage, image_key(namespace, name)
    with tempfile.TemporaryDirectory(prefix="fractalq-assemble-") as folder:
        path = os.path.join(folder, "image.png")
        write_png(storage, job_id, request, regions, path)
        with open(path, "rb") as image:
            storage.put(key, image.read())
    remove_bands(storage, job_id, request, regions)
    return storage.url(key), storage.presigned_url(key, state.settings.url_expiry)


@kopf.on.delete(GROUP, VERSION, PLURAL, timeout=DELETE_TIMEOUT)
async def delete(spec: kopf.Spec, status: kopf.Status, **_: Any) -> None:
    job_id = status.get("jobId")
    if not job_id:
        return
    try:
        job = await asyncio.to_thread(state.client.cancel, job_id, "FractalJob deleted")
    except ClientError as error:
        if not isinstance(error, NotFound):
            raise kopf.TemporaryError(f"cannot cancel {job_id}: {error}", delay=5) from None
        return
    # Bands still rendering would be stored after a clean-up now: wait for them.
    if job.leased:
        raise kopf.TemporaryError(f"{job.leased} band(s) of {job_id} still rendering", delay=1)
    with contextlib.suppress(ValueError, StorageError):
        request, regions, _priority = parse_spec(spec)
        await asyncio.to_thread(remove_bands, state.storage, job_id, request, regions)


# ---- the autoscaler -------------------------------------------------------


class ScalerThread(threading.Thread):
    """Every interval: queue depth -> replicas of the worker Deployment.

    Its calls are all blocking, so it runs on a thread of its own rather than
    borrowing the operator's event loop.
    """

    def __init__(self, settings: OperatorSettings, client: Client) -> None:
        super().__init__(name="fractalq-autoscaler", daemon=True)
        self.settings = settings
        self.client = client
        self.halt = threading.Event()

    def run(self) -> None:
        scaler = Autoscaler(self.settings.scale)
        api = None
        while not self.halt.is_set():
            try:
                api = api or kube.api_client()
                scale_once(scaler, api, self.client, self.settings)
            except Exception as error:  # keep going whatever one round met
                log.warning("autoscaler: %s", error)
            self.halt.wait(self.settings.scale_interval)


def scale_once(scaler: Autoscaler, api: Any, client: Client, settings: OperatorSettings) -> None:
    name, namespace = settings.worker_deployment, settings.worker_namespace
    current = kube.read_replicas(api, name, namespace)
    depth: int | None
    try:
        stats = client.stats()
        depth = stats.queued + stats.delayed + stats.leased
    except ClientError as error:
        log.warning("autoscaler: no queue depth (%s): holding %d workers", error, current)
        depth = None
    wanted = scaler.decide(depth, current, time.monotonic())
    if wanted != current:
        decision = f"queue depth {depth}: {current} -> {wanted} workers"
        kube.set_replicas(api, name, namespace, wanted)
        log.info("autoscaler: %s", decision)
        kube.record(api, name, namespace, "Scaled", decision)
