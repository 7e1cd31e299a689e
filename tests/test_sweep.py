"""The orphan sweep: objects of jobs the coordinator no longer knows are removed
once older than the retention; a known job's objects, fresh objects and finished
images are kept."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from procs import ProcessGroup, wait_until
from s3server import SeaweedS3

from fractalq.proto import fractalq_pb2 as pb
from fractalq.storage import open_storage
from fractalq.tasks.sweep import orphans, parse_payload

HOUR = 3600.0


def test_orphans_are_the_old_objects_of_unknown_jobs_but_their_images() -> None:
    keys = [
        "jobs/lost/bands/000000-000100.png",
        "jobs/lost/orbit.bin",
        "jobs/lost/image.png",
        "jobs/known/bands/000000-000100.png",
        "jobs/lost2/bands/.000000-000100.png.0a1b.tmp",
    ]
    assert orphans(keys, frozenset({"known"})) == [keys[0], keys[1], keys[4]]


@pytest.mark.parametrize(
    "payload",
    [b"", b"[]", b'{"before": 1}', b'{"before": "x", "keep": []}', b'{"before": 1, "keep": [1]}',
     b'{"before": NaN, "keep": []}', b"[" * 100_000],
)  # fmt: skip
def test_a_bad_sweep_payload_is_refused(payload: bytes) -> None:
    with pytest.raises(ValueError, match=r"sweep payload|before|keep"):
        parse_payload(payload)


def _plant(storage_url: str, keys: list[str]) -> None:
    storage = open_storage(storage_url)
    for key in keys:
        storage.put(key, b"x")


def test_written_before_lists_old_objects_in_a_folder(tmp_path: Path) -> None:
    storage = open_storage(tmp_path.as_uri())
    _plant(storage.location, ["jobs/a/old.png", "jobs/a/new.png", "other/old.png"])
    past = time.time() - HOUR
    for name in ("jobs/a/old.png", "other/old.png"):
        os.utime(tmp_path / name, (past, past))
    assert storage.written_before("jobs/", time.time() - 60) == ["jobs/a/old.png"]


def test_written_before_on_s3(s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    bucket = s3_server.make_bucket()
    storage = open_storage(f"s3://{bucket}/prefix")
    _plant(storage.location, ["jobs/a/one.png", "jobs/b/two.png", "other/three.png"])
    assert storage.written_before("jobs/", time.time() + 60) == ["jobs/a/one.png", "jobs/b/two.png"]
    assert storage.written_before("jobs/", time.time() - HOUR) == []


def test_the_coordinator_sweeps_what_no_job_it_knows_owns(cluster: ProcessGroup) -> None:
    retention = 2.0
    folder = cluster.tmp / "storage"
    coordinator = cluster.start_coordinator(
        extra=("--retention", str(retention), "--orphan-sweep", "0.5")
    )
    client = coordinator.client()
    # A job the coordinator knows, still running when the sweep comes.
    known = client.submit(
        pb.SubmitJobRequest(job_id="known", task_type="sleep", payload=b'{"seconds": 60}', count=1)
    ).job
    wait_until(lambda: time.time() > known.created_at + retention + 0.2, message="an old job")
    orphan_band, orphan_image = "jobs/lost/bands/000000-000010.png", "jobs/lost/image.png"
    known_band, fresh_band = "jobs/known/bands/000000-000010.png", "jobs/new/bands/0-1.png"
    _plant(folder.as_uri(), [orphan_band, orphan_image, known_band, fresh_band])
    past = time.time() - HOUR
    for key in (orphan_band, orphan_image, known_band):
        os.utime(folder / key, (past, past))

    cluster.start_worker(storage=folder.as_uri(), concurrency=2)
    sweep = wait_until(
        lambda: next(
            (job for job in client.jobs() if job.job_id.startswith("sweep-")
             and job.state == pb.SUCCEEDED),
            None,
        ),
        message="a sweep job succeeded",
    )  # fmt: skip
    assert json.loads(client.job(sweep.job_id, include_results=True).results[0]) == {"removed": 1}
    assert not (folder / orphan_band).exists()
    assert (folder / orphan_image).exists(), "a finished image is what the user asked for"
    assert (folder / known_band).exists(), "a known job's objects are kept"
    assert (folder / fresh_band).exists(), "objects newer than the retention are kept"
    assert client.job("known").state == pb.RUNNING
