"""Zoom movies on the queue: real coordinator and workers, the real S3 server, PyAV.

One small zoom, 160x90, 2 s at 10 fps, from 2**68 x 1e-20 to 1e-20 into the
seahorse valley (a shallow keyframe first, a deep one last, 38 keyframes),
encoded losslessly so that every frame can be held to the pixel: the file
decodes to its 20 frames; each is the composition of the stored keyframes
around it, in order; the first and last, at keyframes' depths, are exactly
``fractalq render`` of their views. The same zoom again with a worker killed
mid-job gives the same bytes, a cancelled zoom leaves nothing in storage, and a
client without storage credentials fetches the video through the coordinator.
``demo zoom`` makes a small WebM with local processes and leaves none behind.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from procs import ProcessGroup, Worker, run_cli, wait_until
from s3server import SeaweedS3

from fractalq.fractal import movie
from fractalq.fractal.zoom import ZoomRequest
from fractalq.proto import fractalq_pb2 as pb
from fractalq.storage import Storage, open_storage
from fractalq.tasks.encode import load_keyframe
from fractalq.tasks.zoom import keyframe_key, stats_key
from fractalq.zooms import zoom_job

X = "-0.743643887037158704752191506114774"
Y = "0.131825904205311970493132056385139"
FROM = str(Decimal("1e-20") * 2**68)  # a keyframe's depth: the first frame is one
OPTIONS = ("--center-x", X, "--center-y", Y, "--from", FROM, "--to", "1e-20", "--width", "160",
           "--height", "90", "--seconds", "2", "--fps", "10", "--max-iter", "12000",
           "--max-iter-growth", "1.02", "--colour-scale", "log", "--crf", "0")  # fmt: skip
ZOOM = ZoomRequest.create(
    center_x=X, center_y=Y, from_width=FROM, to_width="1e-20", width=160, height=90, seconds=2,
    fps=10, max_iter=12000, max_iter_growth=1.02, colour_scale="log", crf=0,
)  # fmt: skip


@dataclass
class Cluster:
    group: ProcessGroup
    storage_url: str
    storage: Storage
    bucket: str
    env: dict[str, str]
    s3: SeaweedS3

    @property
    def address(self) -> str:
        assert self.group.coordinator is not None
        return self.group.coordinator.address

    def worker(self, name: str) -> Worker:
        return self.group.start_worker(storage=self.storage_url, env=self.env, name=name)

    def zoom(self, out: Path, *extra: str) -> subprocess.Popen[str]:
        command = [sys.executable, "-m", "fractalq", "zoom", *OPTIONS, *extra, "--coordinator",
                   self.address, "--storage", self.storage_url, "--out", str(out)]  # fmt: skip
        return subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env
        )

    def keys(self, job_id: str) -> list[str]:
        listed = self.s3.client().list_objects_v2(
            Bucket=self.bucket, Prefix=f"zooms/jobs/{job_id}/"
        )
        return [entry["Key"].removeprefix("zooms/") for entry in listed.get("Contents", [])]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, s3_server: SeaweedS3) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("zoom")
    bucket = s3_server.make_bucket("zoom")
    env = {**os.environ, **s3_server.env()}
    group = ProcessGroup(tmp)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in s3_server.env().items():
            patch.setenv(name, value)
        url = f"s3://{bucket}/zooms"
        try:
            # It reads the workers' storage, so that a client without credentials
            # fetches the video through its HTTP port.
            group.start_coordinator(extra=("--storage", url), env=s3_server.env())
            cluster = Cluster(group, url, open_storage(url), bucket, env, s3_server)
            for n in range(2):
                cluster.worker(f"worker{n}")
            with group.coordinator.client() as client:  # type: ignore[union-attr]
                wait_until(lambda: len(client.stats().workers) == 2, 60, "two workers")
            yield cluster
        finally:
            group.stop()


@dataclass
class Made:
    path: Path
    job_id: str
    stderr: str


@pytest.fixture(scope="module")
def made(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Made:
    out = tmp_path_factory.mktemp("made") / "zoom.mp4"
    zoom = cluster.zoom(out, "--keep-keyframes")
    stdout, stderr = zoom.communicate(timeout=240)
    assert zoom.returncode == 0, stderr
    assert stdout.splitlines()[-1] == str(out)
    job_id = stdout.split()[stdout.split().index("job") + 1]
    return Made(out, job_id, stderr)


def decode(path: Path) -> list[movie.Rgb]:
    with av.open(str(path)) as video:
        stream = video.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.average_rate == 10
        return [np.asarray(f.to_ndarray(format="rgb24"), np.uint8) for f in video.decode(video=0)]


def test_the_video_decodes_to_its_frames_each_made_from_its_keyframes(
    cluster: Cluster, made: Made
) -> None:
    frames = decode(made.path)
    assert len(frames) == ZOOM.frame_count == 20
    assert all(frame.shape == (90, 160, 3) for frame in frames)
    keyframes = len(ZOOM.levels)
    assert f"{keyframes}/{keyframes} keyframes" in made.stderr
    assert "encoding 20 frames" in made.stderr
    # Every frame, in order, is the composition of the two stored keyframes around it.
    stats = {level: movie.stats_from_json(cluster.storage.get(stats_key(made.job_id, level)))
             for level in ZOOM.levels}  # fmt: skip
    scales = movie.movie_scales(ZOOM, stats)
    for n, frame in enumerate(frames):
        position = ZOOM.position(n)
        scale = movie.frame_scale(scales, position)
        inner = load_keyframe(cluster.storage, made.job_id, ZOOM, position.level)
        outer = (
            load_keyframe(cluster.storage, made.job_id, ZOOM, position.level + 1)
            if position.t
            else None
        )
        want = movie.compose(
            movie.colour(inner, ZOOM.palette, scale),
            movie.colour(outer, ZOOM.palette, scale) if outer else None,
            position.t,
        )
        assert np.array_equal(frame, want), f"frame {n}"
    # Each frame a view of its own: none repeats its neighbour, none is mostly inside.
    assert all(not np.array_equal(a, b) for a, b in itertools.pairwise(frames))
    assert all(frame.any(axis=2).mean() > 0.2 for frame in frames)
    # The job's result names the video, as a render's names its image.
    with cluster.group.coordinator.client() as client:  # type: ignore[union-attr]
        result = json.loads(client.job(made.job_id).result)
    assert (result["frames"], result["keyframes"], result["container"]) == (20, keyframes, "mp4")
    assert cluster.storage.get(result["key"]) == made.path.read_bytes()
    status = run_cli("status", made.job_id, "--coordinator", cluster.address)
    assert f"keyframes: {keyframes} total, {keyframes} succeeded" in status.stdout, status.stdout
    assert f"result: s3://{cluster.bucket}/zooms/jobs/{made.job_id}/zoom.mp4" in status.stdout


@pytest.mark.parametrize("frame", [0, 19], ids=["first (shallow)", "last (deepest)"])
def test_a_frame_at_a_keyframes_depth_is_the_render_of_its_view(
    cluster: Cluster, made: Made, frame: int, tmp_path: Path
) -> None:
    position = ZOOM.position(frame)
    assert position.t == 0
    view = ZOOM.keyframe(position.level)
    out = tmp_path / "view.png"
    rendered = run_cli(
        "render", "--mandelbrot", "--width", "160", "--height", "90", "--center-x", X,
        "--center-y", Y, "--view-width", view.view_width, "--max-iter", str(view.max_iter),
        "--colour-scale", "log", "--coordinator", cluster.address, "--storage",
        cluster.storage_url, "--out", str(out), env=cluster.env,
    )  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr
    image = np.asarray(Image.open(io.BytesIO(out.read_bytes())).convert("RGB"))
    assert np.array_equal(decode(made.path)[frame], image)


def test_fetch_without_storage_downloads_the_video_through_the_coordinator(
    cluster: Cluster, made: Made, tmp_path: Path
) -> None:
    assert cluster.group.coordinator is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FRACTALQ_"))}
    out = tmp_path / "fetched.mp4"
    url = f"http://127.0.0.1:{cluster.group.coordinator.http_port}"
    fetched = run_cli("fetch", made.job_id, "--coordinator", cluster.address, "--http-url", url,
                      "--out", str(out), env=env)  # fmt: skip
    assert fetched.returncode == 0, fetched.stderr
    assert out.read_bytes() == made.path.read_bytes()


def test_a_worker_killed_mid_job_gives_the_same_video(
    cluster: Cluster, made: Made, tmp_path: Path
) -> None:
    out = tmp_path / "again.mp4"
    zoom = cluster.zoom(out)
    with cluster.group.coordinator.client() as client:  # type: ignore[union-attr]

        def under_way() -> pb.Job | None:
            jobs = [j for j in client.jobs(active_only=True) if j.job_id != made.job_id]
            running = [j for j in jobs if j.state == pb.RUNNING and j.succeeded >= 3 and j.leased]
            return running[0] if running else None

        job = wait_until(under_way, 120, "the second zoom's keyframes under way")
        # The victim holds a keyframe (this zoom's: the only job running), and its
        # worker id carries its process id.
        holders = {w.worker_id for w in client.stats().workers if w.leased}
    workers = [p for p in cluster.group.processes if isinstance(p, Worker) and p.alive()]
    victim = next((w for w in workers if any(f"-{w.pid}-" in h for h in holders)), None)
    assert victim is not None, (holders, [w.pid for w in workers])
    victim.kill9()
    cluster.worker("replacement")
    _, stderr = zoom.communicate(timeout=240)
    assert zoom.returncode == 0, stderr
    assert out.read_bytes() == made.path.read_bytes()
    # Without --keep-keyframes only the video stays.
    assert cluster.keys(job.job_id) == [f"jobs/{job.job_id}/zoom.mp4"]


def test_a_cancelled_zoom_leaves_nothing_in_storage(cluster: Cluster) -> None:
    deep = ZoomRequest.create(
        center_x=X, center_y=Y, to_width="1e-30", width=160, height=90, seconds=4, fps=30,
        max_iter=60000,
    )  # fmt: skip
    with cluster.group.coordinator.client() as client:  # type: ignore[union-attr]
        job = client.submit(zoom_job(deep, priority=10)).job
        wait_until(
            lambda: client.job(job.job_id).succeeded >= 2, 120, "two keyframes of the deep zoom"
        )
        assert any(key.endswith(".f64") for key in cluster.keys(job.job_id))
        client.cancel(job.job_id, "enough")
        cleanup = f"{job.job_id}.cleanup"
        wait_until(lambda: client.job(cleanup).state == pb.SUCCEEDED, 120, "the zoom's cleanup job")
    # Keyframes still rendering when it was cancelled land before the cleanup runs
    # (it waits for them), so nothing is left after it.
    assert cluster.keys(job.job_id) == []
    assert not cluster.storage.exists(keyframe_key(job.job_id, 0))


def test_demo_zoom_makes_the_movie_with_local_processes_and_leaves_none(tmp_path: Path) -> None:
    out = tmp_path / "demo.webm"
    # Its temporary folder in one of this test's own, to tell its processes from others'.
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRACTALQ_")}
    env["TMPDIR"] = str(temporary)
    demo = run_cli("demo", "zoom", "--center-x", X, "--center-y", Y, "--to", "1e-12",
                   "--width", "64", "--height", "36", "--seconds", "1", "--fps", "6",
                   "--max-iter", "3000", "--workers", "1", "--out", str(out),
                   timeout=180, env=env)  # fmt: skip
    assert demo.returncode == 0, demo.stderr
    assert demo.stdout.splitlines()[-1] == str(out)
    assert "encoding 6 frames" in demo.stderr and "64x36 zoom, 6 frames" in demo.stderr
    with av.open(str(out)) as video:
        assert video.streams.video[0].codec_context.name == "vp9"
        frames = [f.to_ndarray(format="rgb24") for f in video.decode(video=0)]
    assert [frame.shape for frame in frames] == [(36, 64, 3)] * 6
    # Its coordinator, worker and storage folder went with it.
    assert list(temporary.iterdir()) == []
    leftover = subprocess.run(["pgrep", "-f", f"{temporary}/fractalq-demo-"], capture_output=True)
    assert leftover.stdout == b""
