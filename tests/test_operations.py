"""Day-two operations with real processes: dead letters, ownership, quotas.

A coordinator with TLS and named tokens (alice and bob are clients, plus a
reader and an admin), the command line, the HTTP API and real workers. Dead
letters are made by a worker of the test's own that fails what it leases
(procs.FailingWorker), so that the same tasks can succeed once requeued.
"""

from __future__ import annotations

import json
import re
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from procs import Coordinator, FailingWorker, ProcessGroup, Trust, run_cli

from fractalq import config
from fractalq.client import Client
from fractalq.proto import fractalq_pb2 as pb
from fractalq.security.tokens import default_holder

HOLDERS = {"alice": "client", "bob": "client"}
VALUES = Path(__file__).parent.parent / "charts" / "fractalq" / "values.yaml"


@pytest.fixture
def trust(tmp_path: Path) -> Trust:
    return Trust(tmp_path / "trust", holders=HOLDERS)


def cli(trust: Trust, who: str, *args: str) -> Any:
    return run_cli(*args, env=trust.env(who))


def client(coordinator: Coordinator, trust: Trust, who: str) -> Client:
    return Client(trust.endpoint(coordinator.address, who), timeout=10)


def submitted(result: Any) -> str:
    assert result.returncode == 0, result.stderr
    return str(result.stdout.split("as job ")[1].split()[0])


def metrics(coordinator: Coordinator, trust: Trust | None) -> dict[str, float]:
    scheme = "https" if trust else "http"
    context = ssl.create_default_context(cafile=trust.path("ca.crt")) if trust else None
    url = f"{scheme}://127.0.0.1:{coordinator.http_port}/metrics"
    with urllib.request.urlopen(url, context=context, timeout=10) as reply:
        text = reply.read().decode()
    found = re.findall(r"^(fractalq_\w+(?:\{[^}]*\})?) ([0-9.e+]+)$", text, re.M)
    return {name: float(value) for name, value in found}


def http(
    coordinator: Coordinator, trust: Trust, who: str, path: str, body: bytes | None = None
) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"https://127.0.0.1:{coordinator.http_port}{path}",
        data=body,
        headers={
            "Authorization": f"Bearer {trust.tokens[who]}",
            "Content-Type": "application/json",
        },
    )
    context = ssl.create_default_context(cafile=trust.path("ca.crt"))
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as reply:
            return reply.status, json.loads(reply.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def make_dead(coordinator: Coordinator, trust: Trust, job_id: str) -> None:
    """Fail the job's tasks until it is FAILED (a dead letter), as a worker would."""
    failing = FailingWorker(trust.endpoint(coordinator.address, "worker"), ["noop", "sleep"])
    try:
        with client(coordinator, trust, "admin") as admin:
            failing.fail_until(lambda: admin.job(job_id).state == pb.FAILED, "disk on fire")
    finally:
        failing.close()


def test_a_dead_letter_is_listed_survives_a_restart_is_requeued_and_runs_to_the_end(
    cluster: ProcessGroup, trust: Trust
) -> None:
    coordinator = cluster.start_coordinator(trust=trust)
    job_id = submitted(cli(trust, "alice", "submit", "--coordinator", coordinator.address,
                           "--task", "noop", "--count", "4", "--max-attempts", "2"))  # fmt: skip
    make_dead(coordinator, trust, job_id)
    listed = cli(trust, "alice", "dead", "--coordinator", coordinator.address)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    heading = rf"job {job_id} task (\d) \(noop\): 2 attempt\(s\), failed [-\d: ]+, owner alice"
    dead = re.fullmatch(heading, lines[0])
    assert dead is not None, lines
    assert re.fullmatch(r"  attempt 1 at .* on failing: disk on fire \(attempt 1\)", lines[1])
    assert re.fullmatch(r"  attempt 2 at .* on failing: disk on fire \(attempt 2\)", lines[2])
    status = cli(trust, "alice", "status", job_id, "--coordinator", coordinator.address)
    assert "  owner: alice" in status.stdout
    assert f"its dead letters are held: fractalq dead --job {job_id}" in status.stdout
    as_json = json.loads(cli(trust, "reader", "dead", "--coordinator", coordinator.address,
                             "--job", job_id, "--json").stdout)["deadLetters"]  # fmt: skip
    index = int(dead[1])
    assert [(d["jobId"], d.get("index", 0), len(d["errors"])) for d in as_json] == [
        (job_id, index, 2)
    ]
    assert metrics(coordinator, trust)["fractalq_dead_letters"] == 1

    # A restart (kill -9) keeps the dead letter, its errors and what it needs to run again.
    coordinator.kill9()
    coordinator = cluster.start_coordinator(port=coordinator.port, data=coordinator.data,
                                            trust=trust, name="restarted")  # fmt: skip
    after = cli(trust, "alice", "dead", "--coordinator", coordinator.address)
    assert after.stdout.splitlines()[:3] == lines[:3]

    requeued = cli(trust, "alice", "requeue", job_id, "--coordinator", coordinator.address)
    assert requeued.returncode == 0, requeued.stderr
    assert f"job {job_id} RUNNING: its dead tasks requeued" in requeued.stdout
    cluster.start_worker(concurrency=2)
    waited = cli(trust, "alice", "wait", job_id, "--coordinator", coordinator.address,
                 "--timeout", "60")  # fmt: skip
    assert waited.returncode == 0 and "SUCCEEDED: 4/4" in waited.stdout, waited.stderr
    none = cli(trust, "alice", "dead", "--coordinator", coordinator.address)
    assert none.stdout.strip() == "no dead letters"
    counts = metrics(coordinator, trust)
    assert counts["fractalq_dead_letters"] == 0 and counts["fractalq_tasks_requeued_total"] == 1


def test_a_purge_drops_the_dead_letters_and_a_requeue_then_is_refused(
    cluster: ProcessGroup, trust: Trust
) -> None:
    coordinator = cluster.start_coordinator(trust=trust)
    job_id = submitted(cli(trust, "alice", "submit", "--coordinator", coordinator.address,
                           "--task", "noop", "--max-attempts", "1"))  # fmt: skip
    make_dead(coordinator, trust, job_id)
    purged = cli(trust, "alice", "purge", job_id, "--coordinator", coordinator.address)
    assert purged.returncode == 0 and f"job {job_id}: 1 dead letter(s) purged" in purged.stdout
    again = cli(trust, "alice", "requeue", job_id, "--coordinator", coordinator.address)
    assert again.returncode == 1 and "holds no dead letters any more" in again.stderr
    assert again.stderr.count("\n") == 1  # one line
    status = cli(trust, "alice", "status", job_id, "--coordinator", coordinator.address)
    assert "FAILED" in status.stdout and "1 dead-lettered" in status.stdout
    counts = metrics(coordinator, trust)
    assert counts["fractalq_tasks_purged_total"] == 1 and counts["fractalq_dead_letters"] == 0


def test_a_client_sees_and_changes_its_own_jobs_only_over_grpc_and_http(
    cluster: ProcessGroup, trust: Trust
) -> None:
    coordinator = cluster.start_coordinator(trust=trust)
    address = coordinator.address
    mine = submitted(cli(trust, "alice", "submit", "--coordinator", address, "--task", "noop",
                         "--max-attempts", "1"))  # fmt: skip
    running = submitted(cli(trust, "alice", "submit", "--coordinator", address, "--task", "sleep",
                            "--payload", '{"seconds": 1}'))  # fmt: skip
    make_dead(coordinator, trust, mine)
    theirs = submitted(cli(trust, "bob", "submit", "--coordinator", address, "--task", "sleep",
                           "--payload", '{"seconds": 1}'))  # fmt: skip
    with client(coordinator, trust, "alice") as alice:
        assert alice.job(mine).owner == "alice"
    # Bob: nothing of alice's, by any call.
    for command in (("status", mine), ("wait", mine, "--timeout", "0"), ("cancel", running),
                    ("requeue", mine), ("purge", mine), ("dead", "--job", mine)):  # fmt: skip
        refused = cli(trust, "bob", *command, "--coordinator", address)
        assert refused.returncode == 1, (command, refused.stdout)
        assert "is another holder's" in refused.stderr, (command, refused.stderr)
    listed = cli(trust, "bob", "jobs", "--coordinator", address, "--json")
    assert [job["jobId"] for job in json.loads(listed.stdout)["jobs"]] == [theirs]
    assert cli(trust, "bob", "dead", "--coordinator", address).stdout.strip() == "no dead letters"
    with client(coordinator, trust, "alice") as alice:
        assert alice.job(running).state in (pb.QUEUED, pb.RUNNING)  # bob's cancel changed nothing
    # The same policy over HTTP, by bearer token.
    assert http(coordinator, trust, "bob", f"/api/jobs/{mine}")[0] == 403
    assert http(coordinator, trust, "bob", f"/api/jobs/{mine}/preview")[0] == 403
    assert http(coordinator, trust, "bob", f"/api/jobs/{running}/cancel", b"{}")[0] == 403
    assert http(coordinator, trust, "bob", f"/api/jobs/{mine}/requeue", b"{}")[0] == 403
    assert http(coordinator, trust, "bob", f"/api/dead?job={mine}")[0] == 403
    status, jobs = http(coordinator, trust, "bob", "/api/jobs")
    assert status == 200 and [job["jobId"] for job in jobs["jobs"]] == [theirs]
    status, dead = http(coordinator, trust, "alice", "/api/dead")
    assert status == 200 and [d["jobId"] for d in dead["deadLetters"]] == [mine]
    # A reader watches everything and changes nothing; an admin acts on any job.
    reader_jobs = json.loads(
        cli(trust, "reader", "jobs", "--coordinator", address, "--json").stdout
    )
    assert {job["jobId"] for job in reader_jobs["jobs"]} == {mine, running, theirs}
    assert http(coordinator, trust, "reader", f"/api/jobs/{mine}")[0] == 200
    denied = cli(trust, "reader", "requeue", mine, "--coordinator", address)
    assert denied.returncode == 1 and "the reader token may not make this call" in denied.stderr
    assert http(coordinator, trust, "reader", f"/api/jobs/{mine}/purge", b"{}")[0] == 403
    status, done = http(coordinator, trust, "admin", f"/api/jobs/{mine}/requeue", b"{}")
    assert status == 200 and done["state"] == "running"
    assert cli(trust, "admin", "cancel", theirs, "--coordinator", address).returncode == 0
    # A token without a name is a holder too: a digest of it, never the token.
    unnamed = submitted(cli(trust, "client", "submit", "--coordinator", address, "--task", "noop"))
    with client(coordinator, trust, "client") as anonymous:
        owner = anonymous.job(unnamed).owner
    assert owner == default_holder(trust.tokens["client"]) and trust.tokens["client"] not in owner
    counts = metrics(coordinator, trust)
    assert counts['fractalq_requests_refused_total{reason="denied"}'] >= 12
    assert "Traceback" not in coordinator.log()


def test_a_holders_quotas_refuse_what_is_over_them_naming_the_limit(
    cluster: ProcessGroup, trust: Trust
) -> None:
    coordinator = cluster.start_coordinator(
        trust=trust, extra=("--quota-active-jobs", "2", "--quota-job-pixels", "10000")
    )
    address = coordinator.address

    def sleep(who: str) -> Any:
        return cli(trust, who, "submit", "--coordinator", address, "--task", "sleep",
                   "--payload", '{"seconds": 1}')  # fmt: skip

    submitted(sleep("alice"))
    submitted(sleep("alice"))
    over = sleep("alice")
    assert over.returncode == 1
    assert "holder 'alice' has 2 unfinished jobs, its quota (--quota-active-jobs 2)" in over.stderr
    submitted(sleep("bob"))  # bob's quota is bob's
    for _ in range(3):
        submitted(sleep("admin"))  # an admin has none
    big = cli(trust, "bob", "render", "--mandelbrot", "--width", "200", "--height", "100",
              "--coordinator", address, "--storage", (cluster.tmp / "s").as_uri(),
              "--out", str(cluster.tmp / "big.png"))  # fmt: skip
    assert big.returncode == 1
    assert "a job of 20000 pixels is over the quota of holder 'bob'" in big.stderr
    assert "(--quota-job-pixels)" in big.stderr
    counts = metrics(coordinator, trust)
    assert counts['fractalq_requests_refused_total{reason="over_quota"}'] == 2
    with client(coordinator, trust, "reader") as reader:
        assert reader.stats().requests_over_quota == 2
        assert len(reader.jobs()) == 6


def test_without_tokens_there_are_no_owners_and_no_quotas(cluster: ProcessGroup) -> None:
    coordinator = cluster.start_coordinator(extra=("--quota-active-jobs", "1"))
    for _ in range(3):
        result = run_cli("submit", "--coordinator", coordinator.address, "--task", "sleep",
                         "--payload", '{"seconds": 1}')  # fmt: skip
        assert result.returncode == 0, result.stderr
    with coordinator.client() as anyone:
        jobs = anyone.jobs()
        assert len(jobs) == 3 and {job.owner for job in jobs} == {""}
        assert anyone.cancel(jobs[0].job_id).state == pb.CANCELLED


def test_the_charts_quota_values_mirror_the_configuration() -> None:
    quota = yaml.safe_load(VALUES.read_text())["coordinator"]["quota"]
    assert quota == {
        "activeJobs": config.QUOTA_ACTIVE_JOBS,
        "queuedTasks": config.QUOTA_QUEUED_TASKS,
        "jobPixels": config.QUOTA_JOB_PIXELS,
    }
