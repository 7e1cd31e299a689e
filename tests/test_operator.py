"""The operator for real, against kmock's Kubernetes emulator.

The operator runs in this process (kopf's KopfRunner thread) against the
emulator, with a real coordinator, real workers and a real S3 server on
127.0.0.1. Only the cluster is emulated.
"""

from __future__ import annotations

import io
import os
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import kopf
import pytest
from kopf.testing import KopfRunner
from kube import DEPLOYMENTS, FRACTALJOBS, Emulator
from procs import FailingWorker, Process, ProcessGroup, Trust, run_cli, wait_until
from procs import fractalq as fractalq_command
from reference import reference_png
from s3server import SeaweedS3

import fractalq.operator.handlers  # noqa: F401 - registers the handlers
from fractalq import config
from fractalq.fractal.request import RenderRequest
from fractalq.fractal.zoom import ZoomRequest
from fractalq.images import image_of
from fractalq.operator.spec import job_id_for
from fractalq.proto import fractalq_pb2 as pb

NAMESPACE = "default"
QUIET = 3.0  # seconds a test watches for writes that should not happen
SMALL = {"width": 240, "height": 160, "maxIterations": 200, "regions": 6}
# A view inside the Mandelbrot set's period-3 bulb: every pixel is inside and no
# shortcut applies, so each runs all its iterations (32 G pixel-iterations,
# seconds even for the fast kernel): tests can watch it run.
HEAVY = {
    "fractal": "mandelbrot",
    "center": {"x": -0.1226, "y": 0.7449},
    "viewWidth": 0.04,
    "width": 200,
    "height": 160,
    "maxIterations": 1_000_000,
    "regions": 40,
}


class Setup:
    """Emulator, coordinator, workers, S3 and the operator's environment."""

    def __init__(
        self, tmp: Path, s3: SeaweedS3, monkeypatch: pytest.MonkeyPatch, trust: Trust | None = None
    ) -> None:
        self.group = ProcessGroup(tmp)
        self.emulator = Emulator()
        self.coordinator = self.group.start_coordinator(trust=trust)
        self.bucket = s3.make_bucket("operator")
        self.storage = f"s3://{self.bucket}/images"
        self.s3 = s3
        self.env = {**os.environ, **s3.env()}
        if trust is not None:  # the operator speaks as a client (workers get their own token)
            for key, value in trust.env("client").items():
                if key.startswith("FRACTALQ_"):
                    monkeypatch.setenv(key, value)
        for key, value in s3.env().items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("KUBECONFIG", str(self.emulator.kubeconfig(tmp)))
        monkeypatch.setenv("FRACTALQ_COORDINATOR", self.coordinator.address)
        monkeypatch.setenv("FRACTALQ_STORAGE", self.storage)
        monkeypatch.setenv("FRACTALQ_WORKER_NAMESPACE", NAMESPACE)
        monkeypatch.setenv("FRACTALQ_SCALE_ENABLED", "false")

    def workers(self, count: int) -> None:
        for _ in range(count):
            self.group.start_worker(storage=self.storage, env=self.env)

    def operator(self) -> KopfRunner:
        return KopfRunner(
            ["run", "-A", "--standalone", "-m", "fractalq.operator.handlers"],
            registry=kopf.get_default_registry(),
            timeout=30,
        )

    def fractaljob(self, name: str, **spec: Any) -> dict[str, Any]:
        body = {
            "apiVersion": "fractalq.dev/v1alpha1",
            "kind": "FractalJob",
            "metadata": {"name": name},
            "spec": spec,
        }
        return self.emulator.create(FRACTALJOBS, NAMESPACE, body)

    def status(self, name: str) -> dict[str, Any]:
        found = self.emulator.get(FRACTALJOBS, NAMESPACE, name)
        return dict((found or {}).get("status") or {})

    def phase_is(self, name: str, *phases: str) -> dict[str, Any] | None:
        status = self.status(name)
        return status if status.get("phase") in phases else None

    def phases(self, name: str) -> list[str]:
        seen: list[str] = []
        for version in self.emulator.history(FRACTALJOBS, NAMESPACE, name):
            phase = (version.get("status") or {}).get("phase")
            if phase and (not seen or seen[-1] != phase):
                seen.append(phase)
        return seen

    def stop(self) -> None:
        self.group.stop()
        self.emulator.close()


@pytest.fixture
def setup(tmp_path: Path, s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    prepared = Setup(tmp_path, s3_server, monkeypatch)
    try:
        yield prepared
    finally:
        prepared.stop()


def test_a_fractaljob_goes_from_pending_to_a_png_url(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    # People reach S3 at another address than the operator does (a port-forward).
    public = setup.s3.endpoint.replace("127.0.0.1", "localhost")
    monkeypatch.setenv("FRACTALQ_S3_PUBLIC_ENDPOINT", public)
    setup.workers(2)
    with setup.operator():
        created = setup.fractaljob("first", fractal="julia", palette="ocean", **SMALL)
        done = wait_until(lambda: setup.phase_is("first", "Succeeded", "Failed"), 60, "the render")
    assert done["phase"] == "Succeeded", done
    phases = setup.phases("first")
    # Running may be skipped when every band is done between two looks.
    assert [p for p in phases if p != "Running"] == ["Pending", "Queued", "Assembling", "Succeeded"]
    key = f"jobs/{done['jobId']}/image.png"  # where the job's final task put it
    assert done["url"] == f"{setup.storage}/{key}"
    assert (done["bandsDone"], done["bandsTotal"], done["progress"]) == (6, 6, "6/6")
    assert done["size"] == "240x160" and done["observedGeneration"] == 1
    assert done["jobId"] == job_id_for(created["metadata"]["uid"], 1)
    ready = {c["type"]: c for c in done["conditions"]}["Ready"]
    assert ready["status"] == "True" and done["completionTime"]
    assert done["presignedUrl"].startswith(f"{public}/{setup.bucket}/images/{key}?")
    with urllib.request.urlopen(done["presignedUrl"], timeout=10) as response:
        image = response.read()
    expected = RenderRequest.create("julia", width=240, height=160, max_iter=200, palette="ocean")
    assert image == reference_png(expected)
    # Bands are gone once the image is stored.
    listed = setup.s3.client().list_objects_v2(Bucket=setup.bucket, Prefix="images/jobs/")
    assert [entry["Key"] for entry in listed.get("Contents", [])] == [f"images/{key}"]


def test_the_url_is_copied_from_the_jobs_result(setup: Setup) -> None:
    setup.workers(2)
    with setup.operator():
        setup.fractaljob("queued", fractal="julia", **SMALL)
        done = wait_until(lambda: setup.phase_is("queued", "Succeeded", "Failed"), 60, "the render")
    assert done["phase"] == "Succeeded", done
    with setup.coordinator.client() as client:
        job = client.job(done["jobId"])
    key, size = image_of(job)  # where the job's final task put it
    assert key == f"jobs/{done['jobId']}/image.png"
    assert done["url"] == f"{setup.storage}/{key}"
    assert done["presignedUrl"].startswith(f"{setup.s3.endpoint}/{setup.bucket}/images/{key}?")
    with urllib.request.urlopen(done["presignedUrl"], timeout=10) as response:
        png = response.read()
    assert len(png) == size
    assert png == reference_png(RenderRequest.create("julia", width=240, height=160, max_iter=200))
    assert setup.phases("queued")[-2:] == ["Assembling", "Succeeded"]


def test_a_fractaljob_with_a_zoom_section_ends_with_its_videos_url(setup: Setup) -> None:
    setup.workers(2)
    spec = {"width": 64, "height": 36, "maxIterations": 300, "colourScale": "auto",
            "center": {"x": "-0.7436438870371587", "y": "0.1318259042053119"},
            "zoom": {"to": "1e-6", "seconds": 1, "fps": 6}}  # fmt: skip
    with setup.operator():
        setup.fractaljob("movie", **spec)
        done = wait_until(lambda: setup.phase_is("movie", "Succeeded", "Failed"), 90, "the zoom")
    assert done["phase"] == "Succeeded", done
    zoom = ZoomRequest.create(
        width=64, height=36, max_iter=300, center_x="-0.7436438870371587",
        center_y="0.1318259042053119", to_width="1e-6", seconds=1, fps=6,
    )  # fmt: skip
    keyframes = len(zoom.levels)
    assert (done["bandsDone"], done["bandsTotal"]) == (keyframes, keyframes)
    assert done["size"] == "64x36"
    assert [p for p in setup.phases("movie") if p != "Running"][-2:] == ["Assembling", "Succeeded"]
    key = f"jobs/{done['jobId']}/zoom.mp4"
    assert done["url"] == f"{setup.storage}/{key}"
    with urllib.request.urlopen(done["presignedUrl"], timeout=10) as response:
        video = response.read()
    with av.open(io.BytesIO(video), "r") as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(frames) == 6 and frames[0].shape == (36, 64, 3)
    listed = setup.s3.client().list_objects_v2(Bucket=setup.bucket, Prefix="images/jobs/")
    assert [entry["Key"] for entry in listed.get("Contents", [])] == [f"images/{key}"]


def test_the_operator_renders_over_mutual_tls_with_a_client_token(
    tmp_path: Path, s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    trust = Trust(tmp_path / "trust", mutual=True)
    setup = Setup(tmp_path, s3_server, monkeypatch, trust)
    try:
        setup.workers(1)
        with setup.operator():
            setup.fractaljob("secure", fractal="mandelbrot", **SMALL)
            done = wait_until(lambda: setup.phase_is("secure", "Succeeded", "Failed"), 60)
        assert done["phase"] == "Succeeded", done
        key = f"images/jobs/{done['jobId']}/image.png"
        image = setup.s3.client().get_object(Bucket=setup.bucket, Key=key)
        expected = RenderRequest.create("mandelbrot", width=240, height=160, max_iter=200)
        assert image["Body"].read() == reference_png(expected)
    finally:
        setup.stop()
    said = " ".join(record.getMessage() for record in caplog_records())
    assert "(TLS, token)" in said
    assert not any(token in said for token in trust.tokens.values())


def test_progress_is_visible_while_running(setup: Setup) -> None:
    setup.workers(1)
    with setup.operator():
        setup.fractaljob("slow", **HEAVY)
        midway = wait_until(
            lambda: (
                (s := setup.status("slow")).get("phase") == "Running"
                and 0 < s.get("bandsDone", 0) < 24
                and s
            ),
            120,
            "a partly done render",
        )
        assert midway["progress"] == f"{midway['bandsDone']}/40"
        assert wait_until(lambda: setup.phase_is("slow", "Succeeded"), 180, "the render")


def test_status_follows_the_job_as_the_coordinator_reports_it(setup: Setup) -> None:
    setup.workers(1)
    with setup.operator():
        setup.fractaljob("followed", **HEAVY)
        started = time.monotonic()
        running = wait_until(
            lambda: (s := setup.status("followed")).get("bandsDone", 0) >= 3 and s, 120, "bands"
        )
        # Cancelled behind the operator's back: the stream says so, the status follows.
        with setup.coordinator.client() as client:
            client.cancel(running["jobId"], "stopped by hand")
        failed = wait_until(lambda: setup.phase_is("followed", "Failed"), 10, "Failed")
        elapsed = time.monotonic() - started
    assert failed["message"] == "stopped by hand"
    ready = {c["type"]: c for c in failed["conditions"]}["Ready"]
    assert ready["status"] == "False" and ready["reason"] == "Failed"
    seen = [
        (version.get("status") or {}).get("bandsDone")
        for version in setup.emulator.history(FRACTALJOBS, NAMESPACE, "followed")
    ]
    done = [value for value in seen if value is not None]
    assert done == sorted(done) and len(set(done)) >= 2  # progress as it happened
    # Progress at most about once a second, plus one write per phase.
    writes = setup.emulator.patches(FRACTALJOBS, NAMESPACE, "followed").count("status")
    assert writes <= elapsed / config.PROGRESS_INTERVAL + 5, (writes, elapsed)


def test_status_is_patched_only_when_it_changes(setup: Setup) -> None:
    def writes() -> int:  # the operator's status PATCHes (kopf's own go to the object)
        return setup.emulator.patches(FRACTALJOBS, NAMESPACE, "quiet").count("status")

    with setup.operator():
        setup.fractaljob("quiet", **SMALL)
        wait_until(lambda: setup.phase_is("quiet", "Queued"), 30, "Queued")
        # No worker yet: the job waits at the coordinator and nothing changes,
        # so nothing is written for QUIET seconds.
        queued = writes()
        time.sleep(QUIET)
        assert writes() == queued
        setup.workers(2)
        wait_until(lambda: setup.phase_is("quiet", "Succeeded"), 60, "the render")
        done = writes()
        time.sleep(QUIET)  # finished: nothing is written either
        assert writes() == done
    everything = setup.emulator.patches(FRACTALJOBS, NAMESPACE, "quiet")
    print(f"PATCH requests for one FractalJob: {len(everything)}, {done} of them its status")
    # One per phase (Pending, Queued, Running, Assembling, Succeeded) and perhaps
    # a progress update between two phases, not one a second.
    assert done <= 7, everything


def test_fractalq_operator_renders_with_its_settings_given_as_flags(
    setup: Setup, tmp_path: Path
) -> None:
    setup.workers(1)
    env = {key: value for key, value in os.environ.items() if not key.startswith("FRACTALQ_")}
    flags = ("--coordinator", setup.coordinator.address, "--storage", setup.storage)
    args = fractalq_command("operator", *flags, "--scale-enabled", "false", "-A", "--standalone")
    operator = Process(args, tmp_path / "operator.log", env=env)
    setup.group.processes.append(operator)
    setup.fractaljob("flags", fractal="mandelbrot", **SMALL)
    done = wait_until(lambda: setup.phase_is("flags", "Succeeded", "Failed"), 60, "the render")
    assert done["phase"] == "Succeeded", (done, operator.log())
    assert done["url"] == f"{setup.storage}/jobs/{done['jobId']}/image.png"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("FRACTALQ_S3_PUBLIC_ENDPOINT", "localhost:9000", "public endpoint must be http"),
        ("FRACTALQ_SCALE_MIN", "many", "is not a whole number"),
    ],
)
def test_bad_operator_settings_are_one_line(variable: str, value: str, message: str) -> None:
    result = run_cli("operator", "--storage", "s3://b", env={**os.environ, variable: value})
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_invalid_spec_ends_failed_with_a_message(setup: Setup) -> None:
    with setup.operator():
        setup.fractaljob("bad", fractal="mandelbrot", width=0)
        failed = wait_until(lambda: setup.phase_is("bad", "Failed"), 30, "Failed")
    assert "width must be" in failed["message"]
    setup_ok = setup.phases("bad")
    assert setup_ok[-1] == "Failed"


def _dead_lettered(setup: Setup, name: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A FractalJob whose bands a worker of the test's own fails until the job is FAILED."""
    monkeypatch.setenv("FRACTALQ_REQUEUE_CHECK", "0.2")
    setup.fractaljob(name, **SMALL)
    queued = wait_until(lambda: setup.phase_is(name, "Queued"), 30, "Queued")
    failing = FailingWorker(setup.coordinator.endpoint, ["fractal.band"])
    try:
        with setup.coordinator.client() as client:
            failing.fail_until(lambda: client.job(queued["jobId"]).state == pb.FAILED, "no disk")
    finally:
        failing.close()
    failed = wait_until(lambda: setup.phase_is(name, "Failed"), 30, "Failed")
    assert "dead-lettered after 3 attempt(s): no disk" in failed["message"]
    ready = {c["type"]: c for c in failed["conditions"]}["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "DeadLettered")
    return failed


def test_a_dead_lettered_fractaljob_runs_again_once_its_job_is_requeued(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    with setup.operator():
        failed = _dead_lettered(setup, "flaky", monkeypatch)
        requeued = run_cli("requeue", failed["jobId"], "--coordinator", setup.coordinator.address)
        assert requeued.returncode == 0, requeued.stderr
        setup.workers(2)
        done = wait_until(lambda: setup.phase_is("flaky", "Succeeded"), 90, "the render")
    assert done["jobId"] == failed["jobId"] and done["message"] == ""
    assert done["url"] == f"{setup.storage}/jobs/{done['jobId']}/image.png"
    ready = {c["type"]: c for c in done["conditions"]}["Ready"]
    assert (ready["status"], ready["reason"]) == ("True", "Succeeded")
    phases = setup.phases("flaky")
    revived = phases[phases.index("Failed") + 1 :]
    assert revived[0] in ("Running", "Assembling") and revived[-1] == "Succeeded", phases


def test_deleting_a_dead_lettered_fractaljob_purges_its_job(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    with setup.operator():
        failed = _dead_lettered(setup, "given-up", monkeypatch)
        setup.emulator.delete(FRACTALJOBS, NAMESPACE, "given-up")
        wait_until(
            lambda: setup.emulator.get(FRACTALJOBS, NAMESPACE, "given-up") is None, 60, "gone"
        )
    with setup.coordinator.client() as client:
        job = client.job(failed["jobId"])
        assert job.state == pb.FAILED and not job.dead_letters_held
        assert job.cleanup_job == f"{failed['jobId']}.cleanup"  # its bands are removed
        assert client.dead_letters() == []


def test_a_job_the_coordinator_lost_is_submitted_again(setup: Setup) -> None:
    with setup.operator():
        setup.fractaljob("lost", **SMALL)
        queued = wait_until(lambda: setup.phase_is("lost", "Queued"), 30, "Queued")
        # No worker yet. The coordinator comes back on a new, empty volume.
        old = setup.coordinator
        old.kill9()
        fresh = old.data.with_name("fresh-volume")
        setup.coordinator = setup.group.start_coordinator(port=old.port, data=fresh)
        setup.workers(2)
        done = wait_until(lambda: setup.phase_is("lost", "Succeeded"), 60, "the render")

    # Said in the log (and as a JobLost Event, which kmock keeps only the first of).
    said = "".join(record.getMessage() for record in caplog_records())
    assert f"default/lost: job {queued['jobId']} is unknown to the coordinator" in said
    assert done["jobId"] == queued["jobId"]  # the same id, submitted again
    with setup.coordinator.client() as client:
        assert client.job(done["jobId"]).state == pb.SUCCEEDED


def test_a_coordinator_restart_is_ridden_out_and_said_in_a_condition(setup: Setup) -> None:
    def reachable() -> str | None:
        conditions = setup.status("restarted").get("conditions") or []
        found = [c for c in conditions if c["type"] == "CoordinatorReachable"]
        return found[0]["status"] if found else None

    with setup.operator():
        setup.fractaljob("restarted", **SMALL)
        queued = wait_until(lambda: setup.phase_is("restarted", "Queued"), 30, "Queued")
        old = setup.coordinator
        old.kill9()  # its watch streams break
        wait_until(lambda: reachable() == "False", 30, "CoordinatorReachable False")
        setup.coordinator = setup.group.start_coordinator(port=old.port, data=old.data)
        setup.workers(2)
        done = wait_until(lambda: setup.phase_is("restarted", "Succeeded"), 60, "the render")
    assert done["jobId"] == queued["jobId"]  # followed again, not submitted again
    assert reachable() == "True"


def test_editing_the_spec_of_a_finished_fractaljob_renders_it_again(setup: Setup) -> None:
    setup.workers(2)
    with setup.operator():
        setup.fractaljob("edited", **SMALL)
        first = wait_until(lambda: setup.phase_is("edited", "Succeeded"), 60, "the render")
        # kmock keeps no generation: bump it as the API server does on a spec change.
        edit = {"metadata": {"generation": 2}, "spec": {**SMALL, "width": 200}}
        setup.emulator.patch(FRACTALJOBS, NAMESPACE, "edited", edit)
        second = wait_until(
            lambda: (
                (s := setup.status("edited")).get("observedGeneration") == 2
                and s.get("phase") == "Succeeded"
                and s
            ),
            60,
            "the second render",
        )
    assert second["size"] == "200x160" and second["jobId"] != first["jobId"]
    assert second["jobId"].endswith("-g2")
    key = f"images/jobs/{second['jobId']}/image.png"
    image = setup.s3.client().get_object(Bucket=setup.bucket, Key=key)
    expected = RenderRequest.create("mandelbrot", width=200, height=160, max_iter=200)
    assert image["Body"].read() == reference_png(expected)


def test_an_operator_restart_mid_job_submits_nothing_twice(setup: Setup) -> None:
    with setup.operator():
        created = setup.fractaljob("restart", **SMALL)
        wait_until(lambda: setup.phase_is("restart", "Queued"), 30, "Queued")
    # No workers yet: the job waits at the coordinator while the operator is away.
    setup.workers(2)
    with setup.operator():
        done = wait_until(lambda: setup.phase_is("restart", "Succeeded"), 60, "the render")
    uid = created["metadata"]["uid"]
    with setup.coordinator.client() as client:
        jobs = [job for job in client.jobs() if job.labels.get("fractaljob") == uid]
    assert [job.job_id for job in jobs] == [done["jobId"]]


def test_deleting_mid_job_cancels_it_removes_bands_and_releases_the_finalizer(
    setup: Setup,
) -> None:
    setup.workers(1)
    # 2.5 times the work of HEAVY: far from done when it is deleted, on any machine.
    with setup.operator():
        setup.fractaljob("doomed", **{**HEAVY, "width": 320, "height": 250})
        running = wait_until(
            lambda: (s := setup.status("doomed")).get("bandsDone", 0) >= 2 and s, 60, "bands"
        )
        assert "fractalq.dev/cleanup" in (
            setup.emulator.get(FRACTALJOBS, NAMESPACE, "doomed") or {}
        )["metadata"].get("finalizers", [])
        setup.emulator.delete(FRACTALJOBS, NAMESPACE, "doomed")
        wait_until(lambda: setup.emulator.get(FRACTALJOBS, NAMESPACE, "doomed") is None, 60, "gone")
    with setup.coordinator.client() as client:
        assert client.job(running["jobId"]).state == pb.CANCELLED
        # Once the band that was rendering is in, the job's cleanup job removes them all.
        cleanup = f"{running['jobId']}.cleanup"
        wait_until(lambda: client.job(cleanup).state == pb.SUCCEEDED, 60, "the cleanup job")
    listed = setup.s3.client().list_objects_v2(Bucket=setup.bucket, Prefix="images/jobs/")
    assert listed.get("KeyCount", 0) == 0


def test_the_autoscaler_follows_the_queue(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRACTALQ_SCALE_ENABLED", "true")
    monkeypatch.setenv("FRACTALQ_SCALE_MIN", "1")
    monkeypatch.setenv("FRACTALQ_SCALE_MAX", "5")
    monkeypatch.setenv("FRACTALQ_SCALE_TASKS_PER_WORKER", "4")
    monkeypatch.setenv("FRACTALQ_SCALE_INTERVAL", "0.2")
    monkeypatch.setenv("FRACTALQ_SCALE_DOWN_WINDOW", "2")
    setup.emulator.create(
        DEPLOYMENTS,
        NAMESPACE,
        {"metadata": {"name": "fractalq-worker"}, "spec": {"replicas": 0}},
    )

    def replicas() -> int:
        found = setup.emulator.get(DEPLOYMENTS, NAMESPACE, "fractalq-worker") or {}
        return int(found.get("spec", {}).get("replicas", -1))

    with setup.operator(), setup.coordinator.client() as client:
        assert wait_until(lambda: replicas() == 1, 20, "scaled up to the minimum")
        deep = client.submit(pb.SubmitJobRequest(task_type="sleep", count=40, payload=b"{}")).job
        assert wait_until(lambda: replicas() == 5, 20, "scaled up to the maximum")
        small = client.submit(pb.SubmitJobRequest(task_type="sleep", count=6, payload=b"{}"))
        client.cancel(deep.job_id)
        assert wait_until(lambda: replicas() == 2, 20, "scaled down after the window")
        client.cancel(small.job.job_id)
        assert wait_until(lambda: replicas() == 1, 20, "down to the minimum, not below")
        client.submit(pb.SubmitJobRequest(task_type="sleep", count=12, payload=b"{}"))
        assert wait_until(lambda: replicas() == 3, 20, "up again")
        setup.coordinator.kill9()  # stats fail from now on: hold, never scale down
        history_before = len(setup.emulator.history(DEPLOYMENTS, NAMESPACE, "fractalq-worker"))
        wait_until(
            lambda: "holding 3 workers" in "".join(r.getMessage() for r in caplog_records()),
            20,
            "the autoscaler to notice",
        )
        assert replicas() == 3
        assert (
            len(setup.emulator.history(DEPLOYMENTS, NAMESPACE, "fractalq-worker")) == history_before
        )


_records: list[Any] = []


def caplog_records() -> list[Any]:
    return _records


@pytest.fixture(autouse=True)
def _collect_operator_logs() -> Iterator[None]:
    import logging

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            _records.append(record)

    handler = Collect()
    logger = logging.getLogger("fractalq.operator")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    _records.clear()
    try:
        yield
    finally:
        logger.removeHandler(handler)
