"""The operator's decisions, without a cluster or a network.

The spec's checks, the status computed from a job and which fields get
written when, where a finished job's image comes from, the autoscaler's
window and clamp (driven by an injected clock, no waiting), one autoscaler
round against stand-ins for the Deployment and the coordinator, and
``fractalq operator`` handing its settings to kopf.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from fractalq import config
from fractalq.client import Unavailable
from fractalq.operator import kube, scaler
from fractalq.operator.autoscaler import Autoscaler, ScalePolicy, recommend
from fractalq.operator.image import Image, finished_image
from fractalq.operator.settings import OperatorSettings
from fractalq.operator.spec import job_id_for, parse_spec
from fractalq.operator.status import (
    StatusBuffer,
    changes,
    condition,
    finished,
    progress,
)
from fractalq.proto import fractalq_pb2 as pb
from fractalq.storage import open_storage

# ---- spec -----------------------------------------------------------------


def test_a_spec_becomes_a_render_request_with_defaults() -> None:
    request, regions, priority = parse_spec(
        {"fractal": "julia", "width": 300, "height": 200, "julia": {"cRe": -0.8, "cIm": 0.156}}
    )
    assert (request.fractal, request.width, request.height) == ("julia", 300, 200)
    assert (request.c_re, request.c_im) == (-0.8, 0.156)
    assert regions == config.DEFAULT_REGIONS and priority == config.DEFAULT_PRIORITY
    assert request.colour_scale == config.DEFAULT_COLOUR_SCALE
    assert parse_spec({"colourScale": "auto"})[0].colour_scale == "auto"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"width": 0}, "width"),
        ({"width": "wide"}, "spec.width must be a number"),
        ({"width": 10.5}, "spec.width must be a whole number"),
        ({"width": True}, "spec.width must be a number"),
        ({"center": 3}, "spec.center must be an object"),
        ({"fractal": 7}, "must be strings"),
        ({"fractal": "sierpinski"}, "sierpinski"),
        ({"colourScale": "hsv"}, "unknown colour scale 'hsv'"),
        ({"colourScale": 1}, "must be strings"),
        ({"height": 10, "regions": 11}, "region"),
        ({"priority": 10**9}, "spec.priority must be between"),
        ([], "spec must be an object"),
    ],
)
def test_a_bad_spec_is_one_line_saying_which_field(spec: Any, message: str) -> None:
    with pytest.raises(ValueError, match=None) as raised:
        parse_spec(spec)
    said = str(raised.value)
    assert message in said and "\n" not in said


def test_job_ids_are_functions_of_the_resource() -> None:
    assert job_id_for("u-1", 2) == job_id_for("u-1", 2) != job_id_for("u-1", 3)


# ---- status ---------------------------------------------------------------


def job(state: int, succeeded: int = 0, total: int = 8, reason: str = "") -> pb.Job:
    return pb.Job(job_id="j", state=state, succeeded=succeeded, total=total, reason=reason)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("state", "phase"),
    [
        (pb.QUEUED, "Queued"),
        (pb.PREPARING, "Running"),
        (pb.RUNNING, "Running"),
        (pb.FINISHING, "Assembling"),
        (pb.SUCCEEDED, "Assembling"),  # the operator still has the image to get
        (pb.FAILED, "Failed"),
        (pb.CANCELLED, "Failed"),
    ],
)
def test_each_job_state_has_its_phase(state: int, phase: str) -> None:
    assert progress(job(state, 3))["phase"] == phase


def test_progress_counts_bands_and_a_failure_says_why() -> None:
    assert progress(job(pb.RUNNING, 3)) == {
        "phase": "Running",
        "bandsTotal": 8,
        "bandsDone": 3,
        "progress": "3/8",
    }
    assert progress(job(pb.FAILED, 3, reason="band 4 dead"))["message"] == "band 4 dead"
    assert progress(job(pb.CANCELLED))["message"]  # never an empty reason


def test_a_condition_keeps_its_transition_time_while_its_status_holds() -> None:
    first = condition([], "Ready", False, "Rendering", "8 bands", 1)
    old = [{**first[0], "lastTransitionTime": "2020-01-01T00:00:00Z"}]
    same = condition(old, "Ready", False, "Rendering", "still", 1)
    assert same[0]["lastTransitionTime"] == "2020-01-01T00:00:00Z"
    assert same[0]["message"] == "still"
    flipped = condition(old, "Ready", True, "Succeeded", "url", 1)
    assert flipped[0]["lastTransitionTime"] != "2020-01-01T00:00:00Z"
    both = condition(flipped, "CoordinatorReachable", True, "Submitted", "job", 1)
    assert [c["type"] for c in both] == ["CoordinatorReachable", "Ready"]


def test_finished_means_this_generation_reached_a_final_phase() -> None:
    assert finished({"observedGeneration": 2, "phase": "Succeeded"}, 2)
    assert finished({"observedGeneration": 2, "phase": "Failed"}, 2)
    assert not finished({"observedGeneration": 1, "phase": "Succeeded"}, 2)  # spec changed
    assert not finished({"observedGeneration": 2, "phase": "Running"}, 2)
    assert not finished({}, 1)


def test_changes_are_only_the_fields_that_differ() -> None:
    current = {"phase": "Running", "bandsDone": 3, "url": ""}
    assert changes(current, {"phase": "Running", "bandsDone": 4}) == {"bandsDone": 4}
    assert changes(current, {"completionTime": None}) == {}  # absent is None
    assert changes(current, {"message": ""}) == {"message": ""}


RUNNING = {"phase": "Running", "bandsTotal": 8, "bandsDone": 2, "progress": "2/8"}


def test_the_same_fields_again_write_nothing() -> None:
    buffer = StatusBuffer(RUNNING, interval=1.0)
    buffer.add(RUNNING)
    assert buffer.due(0.0) is None and buffer.take() == {}


def test_a_new_phase_is_written_at_once_with_the_progress_that_came_with_it() -> None:
    buffer = StatusBuffer(RUNNING, interval=1.0)
    buffer.wrote({"bandsDone": 2}, 100.0)  # progress was just written
    buffer.add({"phase": "Assembling", "bandsDone": 8, "progress": "8/8"})
    assert buffer.due(100.1) == 0
    assert buffer.take() == {"phase": "Assembling", "bandsDone": 8, "progress": "8/8"}


def test_progress_alone_is_written_at_most_once_an_interval() -> None:
    buffer = StatusBuffer(RUNNING, interval=1.0)
    buffer.add({"bandsDone": 3, "progress": "3/8"})
    assert buffer.due(10.0) == 0  # the first progress goes out at once
    buffer.wrote(buffer.take(), 10.0)
    buffer.add({"bandsDone": 4, "progress": "4/8"})
    assert buffer.due(10.25) == pytest.approx(0.75)
    buffer.add({"bandsDone": 5, "progress": "5/8"})  # coalesced with the one before
    assert buffer.due(11.0) == 0
    assert buffer.take() == {"bandsDone": 5, "progress": "5/8"}
    buffer.wrote({"bandsDone": 5, "progress": "5/8"}, 11.0)
    assert buffer.due(11.0) is None and buffer.written["progress"] == "5/8"


def test_progress_that_goes_back_to_what_is_written_is_dropped() -> None:
    buffer = StatusBuffer(RUNNING, interval=1.0)
    buffer.wrote({"bandsDone": 2}, 0.0)
    buffer.add({"bandsDone": 3})
    buffer.add({"bandsDone": 2})
    assert buffer.due(0.5) is None


def test_a_failed_write_leaves_the_fields_pending() -> None:
    buffer = StatusBuffer({}, interval=1.0)
    buffer.add({"phase": "Pending"})
    pending = buffer.take()  # ... and the PATCH fails: wrote() is never called
    assert pending == {"phase": "Pending"}
    assert buffer.get("phase") == "Pending" and buffer.written.get("phase") is None
    assert buffer.due(0.0) == 0


def test_a_field_changed_while_its_write_was_on_the_way_stays_pending() -> None:
    buffer = StatusBuffer({}, interval=1.0)
    buffer.add({"phase": "Queued"})
    sent = buffer.take()
    buffer.add({"phase": "Running"})
    buffer.wrote(sent, 0.0)
    assert buffer.written["phase"] == "Queued" and buffer.take() == {"phase": "Running"}


# ---- image ----------------------------------------------------------------


def test_the_image_is_copied_from_the_jobs_result(tmp_path: Path) -> None:
    storage = open_storage(f"file://{tmp_path}")
    storage.put("jobs/j/image.png", b"png")
    result = json.dumps({"key": "jobs/j/image.png", "url": "ignored", "bytes": 3}).encode()
    final = pb.StageTaskStatus(task_type="fractal.assemble", state=pb.TASK_SUCCEEDED)
    done = pb.Job(job_id="j", state=pb.SUCCEEDED, final=final, result=result)
    assert finished_image(storage, done, 60) == Image(storage.url("jobs/j/image.png"), None)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["image.png"]
    with pytest.raises(ValueError, match="no image in its result"):
        finished_image(storage, pb.Job(job_id="j", final=final), 60)


# ---- autoscaler -----------------------------------------------------------

POLICY = ScalePolicy(minimum=1, maximum=5, tasks_per_worker=4, down_window=60.0)


@pytest.mark.parametrize(
    ("depth", "workers"), [(0, 1), (1, 1), (4, 1), (5, 2), (16, 4), (17, 5), (10_000, 5)]
)
def test_the_recommendation_is_clamped_to_min_and_max(depth: int, workers: int) -> None:
    assert recommend(depth, POLICY) == workers


def test_scaling_up_is_at_once_and_down_only_after_the_window() -> None:
    scaler = Autoscaler(POLICY)
    assert scaler.decide(40, 1, now=0.0) == 5  # up at once, clamped to the maximum
    assert scaler.decide(6, 5, now=10.0) == 5  # a dip: 5 was wanted within the window
    assert scaler.decide(6, 5, now=59.9) == 5
    assert scaler.decide(6, 5, now=60.1) == 2  # 40 left the window; 6 tasks want 2
    assert scaler.decide(0, 2, now=100.0) == 2  # 6 was seen at 60.1: still in the window
    assert scaler.decide(0, 2, now=120.2) == 1  # empty for the whole window: the minimum
    assert scaler.decide(0, 1, now=500.0) == 1  # never below it


def test_the_window_keeps_the_highest_recommendation_seen() -> None:
    scaler = Autoscaler(POLICY)
    scaler.decide(12, 3, now=0.0)
    scaler.decide(20, 5, now=30.0)
    assert scaler.decide(0, 5, now=80.0) == 5  # 20 at t=30 is within 60 s
    assert scaler.decide(0, 5, now=91.0) == 1  # nothing but zeros in the last 60 s


def test_an_unknown_queue_depth_holds_the_count() -> None:
    scaler = Autoscaler(POLICY)
    scaler.decide(0, 3, now=0.0)
    assert scaler.decide(None, 3, now=1_000.0) == 3  # never scale down blind
    assert scaler.decide(None, 0, now=1_000.0) == 0


def test_a_zero_window_scales_down_at_once() -> None:
    scaler = Autoscaler(ScalePolicy(minimum=0, maximum=10, tasks_per_worker=1, down_window=0))
    assert scaler.decide(7, 0, now=0.0) == 7
    assert scaler.decide(2, 7, now=0.5) == 2
    assert scaler.decide(0, 2, now=1.0) == 0


class FakeCoordinator:
    def __init__(self, depth: int | None) -> None:
        self.depth = depth

    def stats(self) -> pb.Stats:
        if self.depth is None:
            raise Unavailable("cannot reach the coordinator")
        return pb.Stats(queued=self.depth, delayed=0, leased=0)


class FakeDeployment:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, replicas: int) -> None:
        self.replicas = replicas
        self.events: list[str] = []
        monkeypatch.setattr(kube, "read_replicas", lambda api, name, ns: self.replicas)
        monkeypatch.setattr(kube, "set_replicas", self.set)
        monkeypatch.setattr(
            kube, "record", lambda api, name, ns, reason, text: self.events.append(text)
        )

    def set(self, api: Any, name: str, namespace: str, replicas: int) -> None:
        self.replicas = replicas


def settings(**env: str) -> OperatorSettings:
    return OperatorSettings.from_env({"FRACTALQ_STORAGE": "file:///tmp/x", **env})


def test_a_round_reads_decides_sets_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    deployment = FakeDeployment(monkeypatch, replicas=1)
    chosen = settings(
        FRACTALQ_SCALE_MIN="1", FRACTALQ_SCALE_MAX="5", FRACTALQ_SCALE_DOWN_WINDOW="60"
    )
    autoscaler = Autoscaler(chosen.scale)
    coordinator = FakeCoordinator(depth=12)
    client: Any = coordinator
    assert scaler.scale_once(autoscaler, None, client, chosen, now=0.0) == 3
    assert deployment.replicas == 3
    assert deployment.events == ["queue depth 12: 1 -> 3 workers"]
    coordinator.depth = 0
    assert scaler.scale_once(autoscaler, None, client, chosen, now=30.0) == 3
    assert len(deployment.events) == 1  # no change, no Event
    coordinator.depth = None  # unreachable: hold, whatever the window says
    assert scaler.scale_once(autoscaler, None, client, chosen, now=1_000.0) == 3
    coordinator.depth = 0
    assert scaler.scale_once(autoscaler, None, client, chosen, now=1_001.0) == 1
    assert deployment.events[-1] == "queue depth 0: 3 -> 1 workers"


# ---- fractalq operator ----------------------------------------------------


def test_fractalq_operator_hands_its_settings_to_kopf_in_the_memo(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import kopf

    from fractalq.cli import main
    from fractalq.operator import handlers

    ran: dict[str, Any] = {}
    monkeypatch.setattr(kopf, "run", lambda **options: ran.update(options))
    monkeypatch.setattr(kopf, "configure", lambda **options: None)
    monkeypatch.delenv("FRACTALQ_STORAGE", raising=False)
    monkeypatch.setenv("FRACTALQ_SCALE_MAX", "7")
    code = main(
        ["operator", "--storage", "s3://bucket/images", "--scale-min", "2", "-A", "--standalone"]
    )
    assert code == 0
    given = ran["memo"][handlers.SETTINGS_KEY]
    assert isinstance(given, OperatorSettings)
    assert given.storage == "s3://bucket/images"  # a flag
    assert (given.scale.minimum, given.scale.maximum) == (2, 7)  # a flag and a variable
    assert "FRACTALQ_STORAGE" not in os.environ  # no round trip through the environment
    assert ran["clusterwide"] is True and ran["standalone"] is True


def test_fractalq_operator_refuses_a_bad_kopf_option_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from fractalq.cli import main

    assert main(["operator", "--storage", "s3://b", "--no-such-option"]) != 0
    said = capsys.readouterr().err.strip()
    assert "No such option" in said and len(said.splitlines()) == 1


def test_fractalq_operator_logs_json_lines_with_the_kubernetes_object(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json
    import logging

    import kopf

    from fractalq.cli import main

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    monkeypatch.setattr(kopf, "run", lambda **options: None)
    try:
        code = main(["operator", "--storage", "s3://b", "--log-format", "json",
                     "--log-level", "warning", "-A", "--standalone"])  # fmt: skip
        assert code == 0 and root.level == logging.WARNING
        reference = {"kind": "FractalJob", "name": "m", "namespace": "ns"}
        # As kopf's object loggers log: the object, and its settings (not for a log line).
        extra = {"k8s_ref": reference, "k8s_skip": False, "settings": object()}
        # A logger of its own: other tests set levels on the operator's loggers.
        logger = logging.getLogger("fractalq.tests.operator")
        logger.warning("phase %s", "Failed", extra=extra)
        logger.info("not at warning")
    finally:
        root.handlers[:], root.level = handlers, level
    [line] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    fields = json.loads(line)
    assert (fields["level"], fields["logger"]) == ("WARNING", "fractalq.tests.operator")
    assert fields["message"] == "phase Failed" and fields["object"] == reference
    assert not {"settings", "k8s_ref", "k8s_skip"} & set(fields)
