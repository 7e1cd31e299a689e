"""No secret reaches a log line, at any log level (fractalq/security/logs.py).

A coordinator and a worker at their most verbose (``-v``), with TLS, role
tokens and the real S3 server on loopback, render an image and serve it to
the dashboard; then their logs are searched for every secret they held: the
S3 access key id and secret key, SigV4 signatures, ``Authorization``
headers, the role tokens.
"""

from __future__ import annotations

import json
import logging
import re
import ssl
import sys
import urllib.request
from pathlib import Path

import pytest
from procs import ProcessGroup, Trust, run_cli, wait_until
from s3server import SeaweedS3

from fractalq.logs import JsonLines
from fractalq.security.logs import RedactSecrets, redact

SIGNATURE = re.compile(r"(?i)signature=[0-9a-f]{16}|x-amz-signature|x-amz-credential")


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_verbose_worker_and_coordinator_log_no_secret(
    tmp_path: Path, s3_server: SeaweedS3, log_format: str
) -> None:
    trust = Trust(tmp_path / "trust")
    storage = f"s3://{s3_server.make_bucket('logs-' + log_format)}/renders"
    env = s3_server.env() | {"FRACTALQ_LOG_FORMAT": log_format}
    group = ProcessGroup(tmp_path)
    try:
        coordinator = group.start_coordinator(
            trust=trust, extra=("-v", "--storage", storage), env=env
        )
        worker = group.start_worker(storage=storage, env=env, extra_args=("-v",))
        out = tmp_path / "small.png"
        rendered = run_cli(
            "render", "--mandelbrot", "--width", "96", "--height", "64", "--regions", "3",
            "--coordinator", coordinator.address, "--storage", storage, "--out", str(out),
            env={**trust.env("client"), **env},
        )  # fmt: skip
        assert rendered.returncode == 0, rendered.stderr
        job_id = rendered.stdout.split("as job ")[1].split()[0]
        # The dashboard's download: the coordinator reads the image from S3.
        request = urllib.request.Request(
            f"https://127.0.0.1:{coordinator.http_port}/api/jobs/{job_id}/image.png",
            headers={"Authorization": f"Bearer {trust.tokens['client']}"},
        )
        context = ssl.create_default_context(cafile=trust.path("ca.crt"))
        with urllib.request.urlopen(request, context=context, timeout=30) as reply:
            assert reply.read() == out.read_bytes()
        # At -v, the logs are verbose indeed: the worker's own debug lines are there.
        debug = '"level": "DEBUG"' if log_format == "json" else " DEBUG "
        wait_until(lambda: debug in worker.log(), 10, "debug lines")
        logs = {"worker": worker.log(), "coordinator": coordinator.log()}
    finally:
        group.stop()
    if log_format == "json":  # every line an object with these fields first
        for name, text in logs.items():
            for line in text.splitlines():
                fields = json.loads(line)
                assert list(fields)[:4] == ["time", "level", "logger", "message"], (name, line)
                assert fields["time"].endswith("+00:00")
    secrets = [env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], *trust.tokens.values()]
    for name, text in logs.items():
        assert text, name
        for secret in secrets:
            assert secret not in text, f"a secret in the {name}'s log"
        assert "authorization" not in text.lower(), name
        assert not SIGNATURE.search(text), name


def test_the_filter_hides_credentials_in_every_shape_libraries_print_them() -> None:
    shapes = [
        "headers={'Authorization': b'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/us-east-1/"
        "s3/aws4_request, SignedHeaders=host, Signature=0123456789abcdef0123456789abcdef'}",
        "authorization: Bearer abcdefghijklmnop0123",
        "GET /b/k?X-Amz-Algorithm=AWS4&X-Amz-Credential=AKIDEXAMPLE%2F2026&X-Amz-Signature="
        "0123456789abcdef HTTP/1.1",
        "send: b'PUT /b/k HTTP/1.1\\r\\nAuthorization: AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/x'",
    ]
    for text in shapes:
        cleaned = redact(text)
        assert "AKIDEXAMPLE" not in cleaned and "0123456789abcdef" not in cleaned, cleaned
        assert "abcdefghijklmnop0123" not in cleaned, cleaned
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "key %s", ("s3cr3t-value-42",), None)
    assert RedactSecrets(["s3cr3t-value-42"]).filter(record)
    assert record.getMessage() == "key ***"


def test_json_lines_carry_extra_fields_and_the_filter_reaches_them_and_tracebacks() -> None:
    secret = "s3cr3t-value-42"
    try:
        raise RuntimeError(f"the server said Bearer {secret}")
    except RuntimeError:
        record = logging.getLogger("fractalq.test").makeRecord(
            "fractalq.test", logging.WARNING, __file__, 1, "job %s failed", ("j1",),
            sys.exc_info(), extra={"job": "j1", "header": f"Authorization: {secret}"},
        )  # fmt: skip
    assert RedactSecrets([secret]).filter(record)
    line = JsonLines().format(record)
    assert secret not in line
    fields = json.loads(line)
    assert (fields["level"], fields["logger"], fields["message"]) == (
        "WARNING",
        "fractalq.test",
        "job j1 failed",
    )
    assert fields["job"] == "j1" and fields["header"] == "Authorization: ***"
    assert "RuntimeError: the server said Bearer ***" in fields["exc_info"]
