"""Images on the queue, end to end: real coordinator, workers, storage and commands."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from browser import ARTIFACTS
from PIL import Image
from procs import SLOW_VIEW, ProcessGroup, Worker, run_cli, start_render, wait_until
from reference import reference_png
from s3server import SeaweedS3

from fractalq.fractal.render import render_rows_and_counts
from fractalq.fractal.request import RenderRequest
from fractalq.proto import fractalq_pb2 as pb

SMALL = ["--width", "240", "--height", "160", "--max-iter", "200"]


class Renderers:
    """A coordinator and workers over one storage URL; stopped after the test."""

    def __init__(self, tmp: Path) -> None:
        self.group = ProcessGroup(tmp)
        self.coordinator = self.group.start_coordinator()

    def workers(self, count: int, storage: str, env: dict[str, str] | None = None) -> list[Worker]:
        started = [self.group.start_worker(storage=storage, env=env) for _ in range(count)]
        with self.coordinator.client() as client:
            wait_until(lambda: len(client.stats().workers) >= count, message="workers")
        return started

    def render(
        self, storage: str, out: Path, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run_cli(
            "render", "--coordinator", self.coordinator.address, "--storage", storage,
            "--out", str(out), *args, timeout=300, env=env,
        )  # fmt: skip

    def stop(self) -> None:
        self.group.stop()


@pytest.fixture
def renderers(tmp_path: Path) -> Iterator[Renderers]:
    cluster = Renderers(tmp_path)
    try:
        yield cluster
    finally:
        cluster.stop()


def test_demo_as_the_readme_runs_it(tmp_path: Path) -> None:
    # Its temporary folder under a folder of this test's own, so that the processes
    # it leaves behind (none) are told from other demos running on the machine.
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "fractalq", "demo"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TMPDIR": str(temporary)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = tmp_path / "mandelbrot.png"
    assert result.stdout.strip().splitlines()[-1] == "mandelbrot.png"
    assert out.read_bytes() == reference_png(RenderRequest.create("mandelbrot"))
    with Image.open(out) as image:
        assert (image.mode, image.size) == ("RGB", (1200, 800))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mandelbrot.png", "tmp"]
    assert list(temporary.iterdir()) == []  # nothing left over
    leftover = subprocess.run(["pgrep", "-f", f"{temporary}/fractalq-demo-"], capture_output=True)
    assert leftover.stdout == b""


def test_demo_julia_with_options(tmp_path: Path) -> None:
    out = tmp_path / "j.png"
    result = run_cli("demo", "--julia", *SMALL, "--regions", "5", "--workers", "2",
                     "--palette", "fire", "--out", str(out), timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    expected = RenderRequest.create("julia", width=240, height=160, max_iter=200, palette="fire")
    assert out.read_bytes() == reference_png(expected)


def test_any_bands_any_workers_same_bytes(renderers: Renderers, tmp_path: Path) -> None:
    storage = (tmp_path / "store").as_uri()
    zoom = ["--center-x", "-0.7435", "--center-y", "0.1314", "--view-width", "0.02"]
    renderers.workers(3, storage)
    expected = RenderRequest.create(
        "mandelbrot", width=240, height=160, max_iter=200,
        center_x=-0.7435, center_y=0.1314, view_width=0.02,
    )  # fmt: skip
    reference = reference_png(expected)
    for regions in ("1", "7", "8"):
        out = tmp_path / f"r{regions}.png"
        result = renderers.render(storage, out, *SMALL, *zoom, "--regions", regions)
        assert result.returncode == 0, result.stderr
        assert out.read_bytes() == reference, _differences(out, reference, regions)
    # Bands are removed once the image is assembled; each render's image stays in storage.
    stored = sorted(p.relative_to(tmp_path / "store") for p in (tmp_path / "store").rglob("*.png"))
    assert len(stored) == 3 and all(p.name == "image.png" for p in stored)


def _differences(out: Path, reference: bytes, regions: str) -> str:
    """Which rows of a render differ from the reference's, for the failure message;
    the render is kept under tests/artifacts."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    kept = ARTIFACTS / f"render-{regions}-bands-differs.png"
    kept.write_bytes(out.read_bytes())
    with Image.open(out) as got, Image.open(io.BytesIO(reference)) as want:
        rows = np.nonzero((np.asarray(got) != np.asarray(want)).any(axis=(1, 2)))[0]
    return f"{regions} bands: rows {rows.tolist()} differ (kept as {kept})"


def test_one_worker_and_kept_bands(renderers: Renderers, tmp_path: Path) -> None:
    storage = (tmp_path / "store").as_uri()
    renderers.workers(1, storage)
    out = tmp_path / "one.png"
    result = renderers.render(storage, out, *SMALL, "--regions", "7", "--keep-bands")
    assert result.returncode == 0, result.stderr
    expected = RenderRequest.create("mandelbrot", width=240, height=160, max_iter=200)
    assert out.read_bytes() == reference_png(expected)
    # The default view mirrors onto itself: each band task stores its rows and their mirror.
    assert len(list((tmp_path / "store").rglob("*.png"))) == 2 * 7 + 1  # bands and the image


def test_views_that_mirror_onto_themselves_render_the_same_bytes(
    renderers: Renderers, tmp_path: Path
) -> None:
    # Half the rows computed, the rest copied (fractal/symmetry.py): the same image as
    # rendering every pixel, at an odd height (a middle row that is its own mirror),
    # however many bands (101 is more than the top half's 81 rows: not mirrored).
    storage = (tmp_path / "store").as_uri()
    renderers.workers(2, storage)
    size = ["--width", "150", "--height", "161", "--max-iter", "300"]
    for fractal, regions in (("mandelbrot", "1"), ("mandelbrot", "80"), ("julia", "3"),
                             ("julia", "101")):  # fmt: skip
        out, counts = tmp_path / f"{fractal}-{regions}.png", tmp_path / f"{fractal}-{regions}.npy"
        result = renderers.render(
            storage, out, f"--{fractal}", *size, "--regions", regions, "--counts-out", str(counts)
        )
        assert result.returncode == 0, result.stderr
        expected = RenderRequest.create(fractal, width=150, height=161, max_iter=300)
        reference = reference_png(expected)
        assert out.read_bytes() == reference, _differences(out, reference, regions)
        _, values = render_rows_and_counts(expected, 0, 161, with_counts=True)
        assert values is not None and np.array_equal(np.load(counts), values)
        if regions == "1":  # a small image in one band: its task stores it, no assembly
            job_id = result.stdout.split()[5]
            with renderers.coordinator.client() as client:
                job = client.job(job_id)
            assert job.state == pb.SUCCEEDED and not job.final.task_type
            assert json.loads(job.result)["key"] == f"jobs/{job_id}/image.png"
            left = sorted(p.name for p in (tmp_path / "store" / "jobs" / job_id).iterdir())
            assert left == ["counts.npy", "image.png"]


def _loaded_numba(pid: int) -> bool:
    """Whether the process has numba's JIT library (llvmlite) mapped: compiled code loaded."""
    return "libllvmlite" in Path(f"/proc/{pid}/maps").read_text()


def _pool_processes(pid: int) -> list[int]:
    """The process pool's children of a worker (not multiprocessing's resource tracker)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            with contextlib.suppress(OSError):  # it may have exited meanwhile
                if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                    found.append(int(child))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("concurrency", [1, 2])
def test_workers_load_the_kernel_before_their_first_band(
    renderers: Renderers, tmp_path: Path, concurrency: int
) -> None:
    # No band is submitted: whatever renders (the worker itself, or each of its
    # child processes) has the compiled kernel loaded already.
    worker = renderers.group.start_worker(
        storage=(tmp_path / "s").as_uri(), concurrency=concurrency
    )

    def renderers_ready() -> bool:
        pids = [worker.pid] if concurrency == 1 else _pool_processes(worker.pid)
        return len(pids) == concurrency and all(_loaded_numba(pid) for pid in pids)

    assert wait_until(renderers_ready, 60, "warmed-up renderers")
    with renderers.coordinator.client() as client:
        assert client.stats().tasks_succeeded == 0


def test_killing_a_worker_mid_render_gives_the_same_image(
    renderers: Renderers, tmp_path: Path
) -> None:
    storage = (tmp_path / "store").as_uri()
    size = ["--width", "600", "--height", "400", "--max-iter", "3000", "--regions", "40"]
    victim, _ = renderers.workers(2, storage)
    out = tmp_path / "k.png"
    render = subprocess.Popen(
        [sys.executable, "-m", "fractalq", "render", "--coordinator",
         renderers.coordinator.address, "--storage", storage, "--out", str(out), *size],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    with renderers.coordinator.client() as client:
        wait_until(
            lambda: any(w.completed >= 2 and w.leased for w in client.stats().workers),
            message="the render under way",
        )
    victim.kill9()
    _, stderr = render.communicate(timeout=300)
    assert render.returncode == 0, stderr
    expected = RenderRequest.create("mandelbrot", width=600, height=400, max_iter=3000)
    assert out.read_bytes() == reference_png(expected)


def test_render_through_s3(renderers: Renderers, tmp_path: Path, s3_server: SeaweedS3) -> None:
    bucket = s3_server.make_bucket("render")
    storage = f"s3://{bucket}/renders"
    env = {**os.environ, **s3_server.env()}
    renderers.workers(2, storage, env=env)
    out = tmp_path / "s3.png"
    result = renderers.render(storage, out, *SMALL, "--regions", "6", "--keep-bands", env=env)
    assert result.returncode == 0, result.stderr
    expected = RenderRequest.create("mandelbrot", width=240, height=160, max_iter=200)
    assert out.read_bytes() == reference_png(expected)
    listed = s3_server.client().list_objects_v2(Bucket=bucket, Prefix="renders/")
    keys = [entry["Key"] for entry in listed.get("Contents", [])]
    # Six band tasks of a mirrored view: twelve bands, and the image.
    assert len(keys) == 2 * 6 + 1 and sum(key.endswith("/image.png") for key in keys) == 1

    missing = renderers.render("s3://no-such-bucket/x", out, *SMALL, env=env)
    assert missing.returncode != 0
    assert "no-such-bucket" in missing.stderr and "Traceback" not in missing.stderr
    wrong = {**env, "AWS_SECRET_ACCESS_KEY": "wrong-secret"}
    denied = renderers.render(storage, out, *SMALL, env=wrong)
    assert denied.returncode != 0 and "Traceback" not in denied.stderr
    assert "access" in denied.stderr.lower() or "credential" in denied.stderr.lower()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--width", "-5"], "width must be"),
        (["--regions", "0"], "regions must be"),
        (["--height", "10", "--regions", "11"], "regions"),
        (["--palette", "mauve"], "unknown palette"),
        (["--max-iter", "0"], "max_iter must be"),
        (["--width", "65537", "--height", "100"], "width must be"),
        (["--width", "ten"], "invalid int value"),
        (["--out", "/proc/no/such/dir/x.png"], "cannot write --out"),
    ],
)
def test_bad_render_options_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    base = ["render", "--coordinator", "127.0.0.1:1", "--storage", (tmp_path).as_uri(),
            "--out", str(tmp_path / "x.png")]  # fmt: skip
    result = run_cli(*base, *args)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "x.png").exists()


def test_unreachable_coordinator_is_one_line(tmp_path: Path) -> None:
    result = run_cli("render", "--coordinator", "127.0.0.1:1", "--storage", tmp_path.as_uri(),
                     "--out", str(tmp_path / "x.png"))  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        line for line in result.stderr.strip().splitlines() if "cannot reach" in line
    ]


def test_rendered_pixels_follow_the_contract(tmp_path: Path) -> None:
    """Inside pixels are pure black and no outside pixel is (checked independently)."""
    out = tmp_path / "c.png"
    result = run_cli("demo", "--width", "120", "--height", "80", "--max-iter", "100",
                     "--workers", "1", "--out", str(out), timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    with Image.open(out) as image:
        pixels = np.asarray(image.convert("RGB"))
    black = (pixels == 0).all(axis=2)
    width, height, scale = 120, 80, 3.5 / 120
    inside = np.zeros((height, width), dtype=bool)
    for j in range(height):
        for i in range(width):
            c = complex(-0.5 + (i + 0.5 - width / 2) * scale, -(j + 0.5 - height / 2) * scale)
            z = 0j
            for _ in range(100):
                z = z * z + c
                if abs(z) > 2:
                    break
            else:
                inside[j, i] = True
    assert inside.sum() > 1000
    assert (black != inside).sum() <= 3  # rounding at the boundary only


def test_a_render_rides_out_a_coordinator_killed_and_restarted(
    renderers: Renderers, tmp_path: Path
) -> None:
    storage = (tmp_path / "store").as_uri()
    renderers.workers(1, storage)
    coordinator = renderers.coordinator
    out = tmp_path / "deep.png"
    # Five times SLOW_VIEW's iterations: the render outlives a restart on a quiet machine.
    render = start_render(coordinator.address, storage, out, *SLOW_VIEW, "--max-iter", "100000")
    try:
        assert render.stdout is not None
        first = render.stdout.readline()
        assert first.startswith("submitted 24 bands as job ")
        job_id = first.split()[-1]
        with coordinator.client() as client:
            wait_until(lambda: client.job(job_id).succeeded >= 2, message="some bands")
        coordinator.kill9()
        restarted = renderers.group.start_coordinator(port=coordinator.port, data=coordinator.data)
        stdout, stderr = render.communicate(timeout=240)
    finally:
        render.kill()
    assert render.returncode == 0, stderr
    assert stdout.strip().splitlines()[-1] == str(out)
    assert "lost the coordinator" in stderr and "Traceback" not in stderr
    expected = RenderRequest.create(
        "mandelbrot", width=480, height=480, max_iter=100000,
        center_x=-0.1, center_y=0.75, view_width=0.01,
    )  # fmt: skip
    assert out.read_bytes() == reference_png(expected)
    with restarted.client() as client:
        assert client.job(job_id).state == pb.SUCCEEDED


def test_fetch_cancel_and_jobs(renderers: Renderers, tmp_path: Path) -> None:
    storage = (tmp_path / "store").as_uri()
    renderers.workers(1, storage)
    address = renderers.coordinator.address
    out = tmp_path / "first.png"
    result = renderers.render(storage, out, *SMALL, "--regions", "3")
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.splitlines()[0].split()[-1]

    again = tmp_path / "again.png"
    fetched = run_cli("fetch", job_id, "--coordinator", address, "--storage", storage,
                      "--out", str(again))  # fmt: skip
    assert fetched.returncode == 0, fetched.stderr
    assert fetched.stdout.strip() == str(again) and again.read_bytes() == out.read_bytes()
    unknown = run_cli("fetch", "no-such-job", "--coordinator", address, "--storage", storage,
                      "--out", str(again))  # fmt: skip
    assert unknown.returncode == 1 and "no job 'no-such-job'" in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1

    with renderers.coordinator.client() as client:
        sleeping = client.submit(
            pb.SubmitJobRequest(task_type="sleep", count=50, payload=b'{"seconds": 1}')
        ).job.job_id
    early = run_cli("fetch", sleeping, "--coordinator", address, "--storage", storage,
                    "--out", str(again))  # fmt: skip
    assert early.returncode == 1 and f"job {sleeping} is " in early.stderr
    active = run_cli("jobs", "--coordinator", address, "--active")
    assert active.returncode == 0 and sleeping in active.stdout and job_id not in active.stdout
    cancelled = run_cli("cancel", sleeping, "--coordinator", address, "--reason", "enough")
    assert cancelled.returncode == 0 and "CANCELLED: enough" in cancelled.stdout
    listed = run_cli("jobs", "--coordinator", address, "--json")
    states = {job["jobId"]: job["state"] for job in json.loads(listed.stdout)["jobs"]}
    assert states == {job_id: "SUCCEEDED", sleeping: "CANCELLED"}
    table = run_cli("jobs", "--coordinator", address).stdout.splitlines()
    assert table[0].split() == ["JOB", "TYPE", "STATE", "PROGRESS", "AGE", "LABELS"]
    [render_row] = [line for line in table if line.startswith(job_id)]
    assert "fractal.band" in render_row and "3/3" in render_row and "size=240x160" in render_row


def test_a_cancelled_render_leaves_no_bands_behind(renderers: Renderers, tmp_path: Path) -> None:
    store = tmp_path / "store"
    renderers.workers(1, store.as_uri())
    coordinator = renderers.coordinator
    # Twenty times SLOW_VIEW's iterations: far from done when the cancel comes.
    never = tmp_path / "never.png"
    render = start_render(
        coordinator.address, store.as_uri(), never, *SLOW_VIEW, "--max-iter", "400000"
    )
    try:
        assert render.stdout is not None
        job_id = render.stdout.readline().split()[-1]
        with coordinator.client() as client:
            wait_until(lambda: client.job(job_id).succeeded >= 2, message="some bands")
            assert list((store / "jobs" / job_id / "bands").iterdir())
            cancelled = run_cli("cancel", job_id, "--coordinator", coordinator.address)
            assert cancelled.returncode == 0, cancelled.stderr
            _, stderr = render.communicate(timeout=60)
            assert render.returncode == 1 and "CANCELLED" in stderr

            def cleaned() -> pb.Job | None:
                job = client.job(f"{job_id}.cleanup")
                return job if job.state == pb.SUCCEEDED else None

            cleanup = wait_until(cleaned, message="the cleanup job")
            assert cleanup.labels["cleanup-of"] == job_id
            assert client.job(job_id).cleanup_job == f"{job_id}.cleanup"
    finally:
        render.kill()
    assert not [path for path in (store / "jobs" / job_id).rglob("*") if path.is_file()]
