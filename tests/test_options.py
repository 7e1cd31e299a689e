"""The command line's conventions: one table of options, each with a variable and a
default in its help; a flag beats its variable; ``--version``; ``fetch`` over HTTP."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from procs import ProcessGroup, Trust, run_cli, wait_until
from reference import reference_png
from s3server import SeaweedS3

from fractalq.cli import build_parser, commands
from fractalq.cli.common import resolve_now
from fractalq.cli.listing import table as listing_table
from fractalq.cli.table import COORDINATOR
from fractalq.download import http_url
from fractalq.endpoint import Endpoint
from fractalq.fractal.request import RenderRequest
from fractalq.images import submit_render
from fractalq.options import listing, options_of
from fractalq.proto import fractalq_pb2 as pb
from fractalq.security.tls import ClientTLS
from fractalq.states import FINISHED

OPTIONS_PAGE = Path(__file__).parent.parent / "docs" / "options.md"
TABLE = re.compile(r"<!-- options: .*? -->\n(.*?)<!-- end of options -->", re.S)


def flags_of(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        action
        for action in parser._actions
        if action.option_strings and not isinstance(action, argparse._HelpAction)
    ]


def test_every_option_of_every_command_has_a_variable_and_shows_its_default() -> None:
    parser = build_parser()
    found = commands(parser)
    assert {"coordinator", "worker", "render", "demo", "submit", "fetch", "operator"} <= set(found)
    for name, command in found.items():
        declared = {option.dest: option for option in options_of(command)}
        for action in flags_of(command):
            # Every flag is a row of the table (or a shorthand of one, e.g. --julia).
            option = declared.get(action.dest)
            assert option is not None, f"{name} {action.option_strings}: not from the table"
            assert action.help is not None
            if action.option_strings[0] in option.shorthands:
                continue
            text = action.help % {}  # as --help prints it
            assert f"${option.variable}" in text, (name, text)
            assert "(default: " in text or "(required; " in text, (name, text)
            assert re.fullmatch(r"FRACTALQ_[A-Z0-9_]+", option.variable)
    # One variable, one meaning: a variable two rows share has the same flag in both.
    rows = listing(found)
    flags: dict[str, str] = {}
    for option, _ in rows:
        assert flags.setdefault(option.variable, option.flag) == option.flag, option.variable
    # FRACTALQ_COORDINATOR for every client, and the operator.
    clients = [
        name for name, command in found.items() if "coordinator" in map(_dest, flags_of(command))
    ]
    assert set(clients) == set(found) - {"coordinator", "demo", "demo zoom", "certs"}
    assert all(
        any(o.variable == COORDINATOR.variable for o in options_of(found[name])) for name in clients
    )


def _dest(action: argparse.Action) -> str:
    return action.dest


def test_the_docs_list_every_option_as_the_table_declares_it() -> None:
    table = TABLE.search(OPTIONS_PAGE.read_text())
    assert table is not None, "docs/options.md's table of options is missing"
    assert table.group(1) == listing_table(), (
        "docs/options.md's table of options is stale: replace it with the output of"
        " python -m fractalq.cli.listing"
    )


def test_a_flag_beats_its_variable_which_beats_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("FRACTALQ_")]:
        monkeypatch.delenv(name)
    parse = build_parser().parse_args
    assert parse(["coordinator"]).port == 50051
    assert parse(["requeue", "j", "--coordinator", "h:1"]).task == []
    monkeypatch.setenv("FRACTALQ_PORT", "6000")
    monkeypatch.setenv("FRACTALQ_LOG_FORMAT", "json")
    monkeypatch.setenv("FRACTALQ_COORDINATOR", "coordinator.example:50051")
    monkeypatch.setenv("FRACTALQ_REQUEUE_TASKS", "3, 5")
    monkeypatch.setenv("FRACTALQ_JSON", "yes")
    monkeypatch.setenv("FRACTALQ_FRACTAL", "julia")
    monkeypatch.setenv("FRACTALQ_SCALE_ENABLED", "off")
    coordinator = parse(["coordinator"])
    assert (coordinator.port, coordinator.log_format, coordinator.log_level) == (
        6000,
        "json",
        "info",
    )
    assert parse(["coordinator", "--port", "7000", "-v"]).port == 7000
    assert parse(["coordinator", "-v"]).log_level == "debug"
    requeue = parse(["requeue", "j"])
    assert (requeue.coordinator, requeue.task) == ("coordinator.example:50051", [3, 5])
    assert parse(["requeue", "j", "--task", "1"]).task == [1]  # the flag replaces the list
    assert parse(["jobs"]).json is True
    assert parse(["demo"]).fractal == "julia"
    assert parse(["demo", "--mandelbrot"]).fractal == "mandelbrot"
    operator = parse(["operator", "--storage", "s3://b"])
    resolve_now(operator)  # the operator resolves after checking for its extra
    assert operator.scale_enabled is False


@pytest.mark.parametrize(
    ("variable", "value", "args", "message"),
    [
        (
            "FRACTALQ_CONCURRENCY",
            "0",
            ["worker", "--coordinator", "h:1"],
            "0 is below the minimum 1",
        ),
        ("FRACTALQ_COORDINATOR", "nowhere", ["status"], "is not HOST:PORT"),
        ("FRACTALQ_LOG_FORMAT", "xml", ["coordinator"], "'xml' is not one of text, json"),
        ("FRACTALQ_NO_HTTP", "maybe", ["coordinator"], "'maybe' is not true or false"),
        ("FRACTALQ_WIDTH", "ten", ["demo"], "invalid int value: 'ten'"),
    ],
)
def test_a_bad_variable_is_one_line_that_names_it(
    variable: str, value: str, args: list[str], message: str
) -> None:
    result = run_cli(*args, env={**os.environ, variable: value})
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert f"variable {variable} (--" in line and message in line, line


def test_a_required_option_names_its_variable() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRACTALQ_")}
    result = run_cli("jobs", env=env)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "fractalq jobs: error: --coordinator is required (or set FRACTALQ_COORDINATOR) (see --help)"
    )


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"fractalq {importlib.metadata.version('fractalq')}"
    import fractalq

    assert importlib.metadata.version("fractalq") == fractalq.__version__


def test_every_client_finds_the_coordinator_in_its_variable(cluster: ProcessGroup) -> None:
    coordinator = cluster.start_coordinator()
    env = {**os.environ, "FRACTALQ_COORDINATOR": coordinator.address}
    submitted = run_cli("submit", "--task", "noop", "--count", "2", env=env)
    assert submitted.returncode == 0, submitted.stderr
    cluster.start_worker()
    job_id = submitted.stdout.split()[-1]
    waited = run_cli("wait", job_id, env=env)
    assert waited.returncode == 0 and "SUCCEEDED" in waited.stdout, waited.stderr
    listed = run_cli("jobs", env=env)
    assert job_id in listed.stdout


# ---- fetch through the coordinator's HTTP port ----------------------------------


def test_the_http_address_follows_the_coordinators(tmp_path: Path) -> None:
    assert http_url(Endpoint("coordinator.example:50051")) == "http://coordinator.example:8080"
    tls = ClientTLS()
    assert http_url(Endpoint("10.0.0.7:443", tls)) == "https://10.0.0.7:8080"
    assert http_url(Endpoint("[::1]:50051")) == "http://[::1]:8080"


def _render(cluster: ProcessGroup, request: RenderRequest) -> str:
    assert cluster.coordinator is not None
    with cluster.coordinator.client() as client:
        job_id = submit_render(client, request, 3, 10).job.job_id

        def done() -> pb.Job | None:
            job = client.job(job_id)
            return job if job.state in FINISHED else None

        assert wait_until(done, 120, "the render").state == pb.SUCCEEDED
    return job_id


def test_fetch_without_storage_downloads_through_the_coordinator(
    cluster: ProcessGroup, tmp_path: Path, s3_server: SeaweedS3
) -> None:
    """A client with a token and the CA, and no storage credentials, fetches the
    image over HTTPS from the coordinator, which reads S3 itself."""
    trust = Trust(tmp_path / "trust")
    storage = f"s3://{s3_server.make_bucket('fetch')}/renders"
    credentials = s3_server.env()
    coordinator = cluster.start_coordinator(
        trust=trust, extra=("--storage", storage), env=credentials
    )
    cluster.start_worker(storage=storage, env=credentials)
    request = RenderRequest.create("mandelbrot", width=160, height=96, max_iter=120)
    job_id = _render(cluster, request)
    client_env = {k: v for k, v in trust.env("client").items() if not k.startswith("AWS_")}
    client_env["FRACTALQ_HTTP_URL"] = f"https://127.0.0.1:{coordinator.http_port}"
    out = tmp_path / "fetched.png"
    fetched = run_cli("fetch", job_id, "--coordinator", coordinator.address, "--out", str(out),
                      env=client_env)  # fmt: skip
    assert fetched.returncode == 0, fetched.stderr
    assert fetched.stdout.strip() == str(out)
    assert out.read_bytes() == reference_png(request)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".fractalq-")] == []
    # A job that is not there: the gRPC answer, before any download.
    missing = run_cli("fetch", "nope", "--coordinator", coordinator.address, "--out",
                      str(tmp_path / "x.png"), env=client_env)  # fmt: skip
    assert missing.returncode == 1 and "no job 'nope'" in missing.stderr
    # Plain HTTP against the HTTPS port: one line, nothing written.
    http = f"http://127.0.0.1:{coordinator.http_port}"
    plain = run_cli("fetch", job_id, "--coordinator", coordinator.address, "--out",
                    str(tmp_path / "y.png"), "--http-url", http, env=client_env)  # fmt: skip
    assert plain.returncode == 1 and len(plain.stderr.strip().splitlines()) == 1, plain.stderr
    assert not (tmp_path / "y.png").exists()


def test_fetch_from_a_coordinator_that_reads_no_storage_says_so(
    cluster: ProcessGroup, tmp_path: Path
) -> None:
    coordinator = cluster.start_coordinator()  # no --storage
    cluster.start_worker(storage=(tmp_path / "store").as_uri())
    job_id = _render(cluster, RenderRequest.create("julia", width=64, height=48, max_iter=50))
    result = run_cli("fetch", job_id, "--coordinator", coordinator.address, "--out",
                     str(tmp_path / "x.png"),
                     "--http-url", f"http://127.0.0.1:{coordinator.http_port}")  # fmt: skip
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert "HTTP 404: this coordinator reads no storage (start it with --storage)" in line, line
    assert not (tmp_path / "x.png").exists()


def test_the_help_shows_defaults_and_variables() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fractalq", "worker", "--help"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert result.returncode == 0
    assert re.search(
        r"--concurrency N\s+tasks run at once \(default: 1; \$FRACTALQ_CONCURRENCY\)", result.stdout
    ), result.stdout
    assert "(required; $FRACTALQ_COORDINATOR)" in result.stdout
