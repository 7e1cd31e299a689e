"""kopf handlers: FractalJob resources in, coordinator jobs and images out.

One daemon per FractalJob that still has work to do (kopf stops it once this
generation is ``Succeeded`` or ``Failed``, and starts it again when the spec
changes). Everything it needs is in the resource (its uid, generation and
status), so an operator restart simply resumes, and the coordinator job id is
derived from the uid and the generation, so no step ever submits twice:

- no job for this generation yet: check the spec (a bad one ends ``Failed``
  with the reason), submit the bands (or, with ``spec.zoom``, a zoom movie's
  keyframes, which the status then counts), ``Queued``;
- then follow the job's ``WatchJob`` stream: each message the coordinator
  sends becomes status fields, written only when they differ from what is
  written, progress alone at most once per ``PROGRESS_INTERVAL``
  (:class:`~fractalq.operator.status.StatusBuffer`);
- the job succeeded: ``Assembling``, then the image (:mod:`.image`), its
  ``s3://`` URL and a presigned link, ``Succeeded``; a dead-lettered band:
  ``Failed`` with why, and the Ready condition's reason ``DeadLettered`` while
  the coordinator holds the job's dead letters: the daemon goes on asking every
  ``requeue_check`` seconds, and a job requeued (``fractalq requeue``) makes
  the resource Running again and followed to its end; a purged one leaves it
  Failed for good.

The stream runs on an asyncio channel in kopf's own event loop, not on a
thread: a stream lasts as long as its render, and a thread per FractalJob
would soon exhaust the default executor that every ``asyncio.to_thread``
call (submissions, status patches) shares; a daemon's stream is also
cancelled at once when kopf stops the daemon.

A spec change (a new generation) renders again: the old job is cancelled and
a new one submitted, since a user who edits the resource wants the new image.
Deleting the resource cancels its job, waits for bands still rendering and
removes the bands (a finalizer); an unreachable coordinator delays that by
at most ``DELETE_TIMEOUT`` seconds, never forever.

What the handlers share (settings, storage, clients) is made once at start-up
and kept in kopf's memo; the autoscaler runs beside them (:mod:`.scaler`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import grpc
import kopf
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from fractalq import config
from fractalq.client import Client, ClientError, NotFound, Unavailable, client_error
from fractalq.images import submit_render
from fractalq.operator import image, kube
from fractalq.operator.scaler import ScalerThread
from fractalq.operator.settings import OperatorSettings
from fractalq.operator.spec import job_id_for, parse_spec, parse_zoom
from fractalq.operator.status import (
    DEAD_LETTERED,
    FAILED,
    PENDING,
    QUEUED,
    SUCCEEDED,
    StatusBuffer,
    condition,
    dead_lettered,
    finished,
    now_iso,
    progress,
)
from fractalq.proto import fractalq_pb2 as pb
from fractalq.proto import fractalq_pb2_grpc as pb_grpc
from fractalq.retry import retry_delay
from fractalq.storage import Storage, StorageError, StorageOptions, open_storage
from fractalq.zooms import submit_zoom

GROUP, VERSION, PLURAL = "fractalq.dev", "v1alpha1", "fractaljobs"
DELETE_TIMEOUT = 60.0
MEMO_KEY = "fractalq"  # the Operator in kopf's memo
SETTINGS_KEY = "settings"  # OperatorSettings a caller of kopf.run may put in the memo

log = logging.getLogger("fractalq.operator")


@dataclasses.dataclass
class Operator:
    """What the handlers share, made once at start-up and kept in kopf's memo."""

    settings: OperatorSettings
    storage: Storage
    client: Client  # unary calls (submit, cancel), made on threads
    channel: grpc.aio.Channel  # the WatchJob streams, in kopf's event loop
    api: Any  # the Kubernetes API client for status patches
    scaler: ScalerThread | None = None

    def watch(self, job_id: str) -> Any:
        stub = pb_grpc.CoordinatorStub(self.channel)
        request = pb.WatchJobRequest(job_id=job_id)
        return stub.WatchJob(request, metadata=self.settings.endpoint.metadata)


def operator_of(memo: Any) -> Operator:
    found = memo.get(MEMO_KEY)
    if not isinstance(found, Operator):
        raise kopf.PermanentError("the operator has not started")  # a handler before startup
    return found


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod its service account, elsewhere the kubeconfig (as kubectl does)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # `fractalq operator` puts its settings in the memo; `kopf run -m` reads the environment.
    ours = memo.get(SETTINGS_KEY) or OperatorSettings.from_env()
    storage = open_storage(
        ours.storage, options=StorageOptions(public_endpoint=ours.s3_public_endpoint)
    )
    api = await asyncio.to_thread(kube.api_client)
    state = Operator(
        settings=ours,
        storage=storage,
        client=Client(ours.endpoint, timeout=10),
        channel=ours.endpoint.aio_channel(add_token=False),
        api=api,
    )
    memo[MEMO_KEY] = state
    settings.persistence.finalizer = "fractalq.dev/cleanup"
    settings.posting.level = logging.INFO
    if ours.scale_enabled:
        state.scaler = ScalerThread(ours, Client(ours.endpoint, timeout=10))
        state.scaler.start()
    log.info(
        "coordinator %s (%s, %s), storage %s, workers %s/%s (autoscaling %s)",
        ours.coordinator,
        "TLS" if ours.tls else "no TLS",
        "token" if ours.token else "no token",
        ours.storage,
        ours.worker_namespace,
        ours.worker_deployment,
        "on" if ours.scale_enabled else "off",
    )


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    state = memo.get(MEMO_KEY)
    if not isinstance(state, Operator):
        return
    if state.scaler is not None:
        await asyncio.to_thread(state.scaler.stop, 30)
        state.scaler = None
    await state.channel.close()
    state.client.close()


# ---- the FractalJob lifecycle ----------------------------------------------


class Retry(Exception):
    """Something outside the operator failed; the daemon tries again after a pause."""


def _generation(meta: Mapping[str, Any]) -> int:
    return int(meta.get("generation") or 1)


def _unfinished(status: kopf.Status, meta: kopf.Meta, **_: Any) -> bool:
    return not finished(status, _generation(meta))


@kopf.daemon(GROUP, VERSION, PLURAL, when=_unfinished, cancellation_timeout=5.0)
async def follow_fractaljob(
    body: kopf.Body,
    status: kopf.Status,
    uid: str,
    name: str,
    namespace: str | None,
    memo: kopf.Memo,
    stopped: kopf.DaemonStopped,
    **_: Any,
) -> None:
    """Submit this generation's job and follow it to its end; never returns on its own.

    kopf stops it when the resource is deleted or this generation finished
    (the ``when`` filter); a daemon that returned would never be started
    again for this resource.
    """
    run = Run(operator_of(memo), body, status, uid, name, namespace or "default", stopped)
    while not stopped:
        try:
            await run.step()
        except (ClientError, Retry, ApiException, HTTPError) as error:
            # The reconnect backoff: a restarted coordinator is found again within
            # a fraction of a second, one that stays down is asked every few seconds.
            run.failures += 1
            log.warning("%s/%s: %s", run.namespace, run.name, error)
            await stopped.wait(retry_delay(config.RECONNECT_BACKOFF, run.failures))


class Run:
    """One FractalJob followed by its daemon; ``buffer`` holds its status as written."""

    def __init__(
        self,
        operator: Operator,
        body: kopf.Body,
        status: Mapping[str, Any],
        uid: str,
        name: str,
        namespace: str,
        stopped: kopf.DaemonStopped,
    ) -> None:
        self.operator = operator
        self.body = body  # kopf keeps it fresh: a spec change shows as a new generation
        self.uid, self.name, self.namespace = uid, name, namespace
        self.stopped = stopped
        self.buffer = StatusBuffer(status, config.PROGRESS_INTERVAL)
        self.failures = 0  # in a row: the calls since the last that got through

    @property
    def generation(self) -> int:
        return _generation(self.body.meta)

    async def step(self) -> None:
        generation = self.generation
        if finished(self.buffer.written, generation):
            # kopf stops this daemon on the next event; a spec change restarts the work.
            while not self.stopped and self.generation == generation:
                await self.stopped.wait(1.0)
            return
        if self.buffer.get("phase") is None:
            await self.write({"phase": PENDING})
            kopf.info(self.body, reason=PENDING, message="accepted")
        if self.buffer.written.get("observedGeneration") != generation:
            await self.submit(generation)
            return
        job_id = self.buffer.get("jobId") or job_id_for(self.uid, generation)
        if dead_lettered(self.buffer.written):
            await self.await_requeue(job_id)
            return
        try:
            await self.follow(job_id, generation)
        except NotFound:
            # The coordinator lost its data (a new volume, no --data) or forgot
            # the job: render again, under the same job id.
            lost = f"job {job_id} is unknown to the coordinator: submitting it again"
            log.warning("%s/%s: %s", self.namespace, self.name, lost)
            kopf.warn(self.body, reason="JobLost", message=lost)
            await self.submit(generation)

    # -- writing the status ----------------------------------------------------

    async def write(self, fields: Mapping[str, Any] | None = None) -> None:
        """Add ``fields``; write what changed if it is due (progress alone waits its turn)."""
        if fields:
            self.buffer.add(fields)
        if self.buffer.due(time.monotonic()) != 0:
            return
        pending = self.buffer.take()
        await asyncio.to_thread(
            kube.patch_status,
            self.operator.api, GROUP, VERSION, PLURAL, self.namespace, self.name, pending,
        )  # fmt: skip
        self.buffer.wrote(pending, time.monotonic())

    def conditions(self, kind: str, ok: bool, reason: str, message: str) -> list[dict[str, Any]]:
        existing = self.buffer.get("conditions") or []
        return condition(existing, kind, ok, reason, message, self.generation)

    async def unreachable(self, error: ClientError) -> None:
        conditions = self.conditions("CoordinatorReachable", False, "Unreachable", str(error))
        with contextlib.suppress(ApiException, HTTPError):
            await self.write({"conditions": conditions})

    async def fail(
        self, why: str, fields: Mapping[str, Any] | None = None, held: bool = False
    ) -> None:
        """Failed; ``held``: the job's dead letters are held (a requeue may revive it)."""
        reason = DEAD_LETTERED if held else "Failed"
        await self.write(
            {
                **(fields or {}),
                "phase": FAILED,
                "message": why,
                "completionTime": self.buffer.get("completionTime") or now_iso(),
                "conditions": self.conditions("Ready", False, reason, why),
            }
        )
        kopf.warn(self.body, reason=reason, message=why)

    async def await_requeue(self, job_id: str) -> None:
        """One look at a dead-lettered job: still held (wait), purged or forgotten
        (Failed for good), or requeued (Running again: the next step follows it)."""
        why = self.buffer.get("message") or "the render job failed"
        try:
            job = await asyncio.to_thread(self.operator.client.job, job_id)
        except NotFound:
            await self.fail(why)
            return
        if job.state == pb.FAILED and job.dead_letters_held:
            await self.stopped.wait(self.operator.settings.requeue_check)
            return
        if job.state in (pb.FAILED, pb.CANCELLED):  # purged
            await self.fail(job.reason or why)
            return
        fields = progress(job)
        await self.write(
            {
                **fields,
                "message": "",
                "completionTime": None,
                "conditions": self.conditions("Ready", False, "Rendering", "requeued"),
            }
        )
        kopf.info(self.body, reason="Requeued", message=f"job {job_id} runs again")

    # -- the steps -------------------------------------------------------------

    async def submit(self, generation: int) -> None:
        spec = self.body.spec
        try:
            job = _job_of(spec)
        except ValueError as error:
            await self.fail(str(error), {"observedGeneration": generation})
            return
        client = self.operator.client
        job_id = job_id_for(self.uid, generation)
        previous = self.buffer.written.get("jobId")
        if previous and previous != job_id:
            # The spec changed: the old render is no longer wanted.
            with contextlib.suppress(ClientError):
                await asyncio.to_thread(client.cancel, previous, "spec changed")
        # The name and namespace: how the dashboard shows the job.
        labels = {
            "fractaljob": self.uid,
            "fractaljob.name": self.name,
            "fractaljob.namespace": self.namespace,
        }
        try:
            await asyncio.to_thread(job.submit, client, job_id, labels)
        except ClientError as error:
            await self.unreachable(error)  # nothing is lost: the same job id is submitted again
            raise
        conditions = self.conditions("CoordinatorReachable", True, "Submitted", f"job {job_id}")
        queued = f"{job.total} {job.unit} queued"
        ready = condition(conditions, "Ready", False, "Rendering", queued, generation)
        await self.write(
            {
                "observedGeneration": generation,
                "phase": QUEUED,
                "message": "",
                "jobId": job_id,
                "size": job.size,
                "bandsTotal": job.total,
                "bandsDone": 0,
                "progress": f"0/{job.total}",
                "url": "",
                "presignedUrl": "",
                "startTime": now_iso(),
                "completionTime": None,
                "conditions": ready,
            }
        )
        kopf.info(
            self.body, reason="Queued", message=f"submitted {job.total} {job.unit} as job {job_id}"
        )
        self.failures = 0

    async def follow(self, job_id: str, generation: int) -> None:
        """Until the job ends, the daemon is stopped or the spec changes."""
        messages: asyncio.Queue[pb.Job | ClientError] = asyncio.Queue()
        reader = asyncio.create_task(self._read(job_id, messages), name=f"watch {job_id}")
        try:
            while not self.stopped and self.generation == generation:
                due = self.buffer.due(time.monotonic())
                wait = 1.0 if due is None else min(1.0, due)
                try:
                    message = await asyncio.wait_for(messages.get(), wait)
                except TimeoutError:
                    await self.write()  # progress held back, if it is due now
                    continue
                if isinstance(message, ClientError):
                    if not isinstance(message, NotFound):
                        await self.unreachable(message)
                    raise message
                if await self.update(message):
                    return
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _read(self, job_id: str, messages: asyncio.Queue[pb.Job | ClientError]) -> None:
        try:
            async for job in self.operator.watch(job_id):
                messages.put_nowait(job)
        except grpc.aio.AioRpcError as error:
            code, details = error.code(), error.details() or error.code().name
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                details = (
                    f"cannot reach the coordinator at {self.operator.client.address}: {details}"
                )
            messages.put_nowait(client_error(code, details))
            return
        except Exception as error:  # whatever it was, follow() must hear of it, not wait
            messages.put_nowait(ClientError(f"watching {job_id}: {error!r}"))
            return
        # The stream ends after the job's final state, which update() ends on first.
        messages.put_nowait(Unavailable(f"the watch of {job_id} ended early"))

    async def update(self, job: pb.Job) -> bool:
        """One message of the stream into the status; True once the job has ended."""
        self.failures = 0
        fields = progress(job)
        if _was_unreachable(self.buffer):
            fields["conditions"] = self.conditions(
                "CoordinatorReachable", True, "Following", f"job {job.job_id}"
            )
        if fields.get("phase") == FAILED:
            why = fields.pop("message")
            fields.pop("phase")
            await self.fail(why, fields, held=job.dead_letters_held)
            return True
        phase = fields.get("phase")
        if phase and phase != self.buffer.get("phase"):
            kopf.info(self.body, reason=phase, message=f"{fields['progress']} done")
        await self.write(fields)  # a new phase at once, progress alone when due
        if job.state != pb.SUCCEEDED:
            return False
        await self.finish(job)
        return True

    async def finish(self, job: pb.Job) -> None:
        """The job succeeded (the status says Assembling): its image, then Succeeded."""
        operator = self.operator
        try:
            found = await asyncio.to_thread(
                image.finished_image, operator.storage, job, operator.settings.url_expiry
            )
        except (StorageError, ValueError, OSError) as error:
            raise Retry(f"the image of job {job.job_id}: {error}") from None
        await self.write(
            {
                "phase": SUCCEEDED,
                "url": found.url,
                "presignedUrl": found.link or "",
                "completionTime": now_iso(),
                "conditions": self.conditions("Ready", True, "Succeeded", found.url),
            }
        )
        kopf.info(self.body, reason="Succeeded", message=found.url)


@dataclasses.dataclass(frozen=True)
class _Job:
    """What a FractalJob asks for: a render, or a zoom movie (``spec.zoom``)."""

    submit: Callable[[Client, str, dict[str, str]], object]
    size: str
    total: int  # its parallel tasks: bands or keyframes
    unit: str


def _job_of(spec: Mapping[str, Any]) -> _Job:
    """The job a spec describes; ValueError (one line) for a bad spec."""
    zoom = parse_zoom(spec)
    if zoom is not None:
        movie, priority = zoom

        def submit_movie(client: Client, job_id: str, labels: dict[str, str]) -> object:
            return submit_zoom(client, movie, priority, job_id, labels)

        size = f"{movie.width}x{movie.height}"
        return _Job(submit_movie, size, len(movie.levels), "keyframes")
    request, regions, priority = parse_spec(spec)

    def submit_image(client: Client, job_id: str, labels: dict[str, str]) -> object:
        return submit_render(client, request, regions, priority, job_id, labels)

    return _Job(submit_image, f"{request.width}x{request.height}", regions, "bands")


def _was_unreachable(buffer: StatusBuffer) -> bool:
    return any(
        c.get("type") == "CoordinatorReachable" and c.get("status") == "False"
        for c in buffer.get("conditions") or []
    )


@kopf.on.delete(GROUP, VERSION, PLURAL, timeout=DELETE_TIMEOUT)
async def delete(status: kopf.Status, memo: kopf.Memo, **_: Any) -> None:
    """Cancel the resource's job (or purge its dead letters, if it failed); its cleanup
    job removes the bands once none is rendering.

    A finished image is kept.
    """
    job_id = status.get("jobId")
    if not job_id:
        return
    operator = operator_of(memo)
    try:
        job = await asyncio.to_thread(operator.client.cancel, job_id, "FractalJob deleted")
        if job.dead_letters_held:  # failed: its bands wait for a requeue nobody will make
            await asyncio.to_thread(operator.client.purge, job_id)
    except ClientError as error:
        if not isinstance(error, NotFound):
            raise kopf.TemporaryError(f"cannot cancel {job_id}: {error}", delay=5) from None
