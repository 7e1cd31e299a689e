"""fractalq.security without a network: the token file, the role policy, certificates."""

from __future__ import annotations

import re
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from procs import run_cli

from fractalq.coordinator.access import is_open_method, method_allowed
from fractalq.endpoint import Endpoint
from fractalq.security import ClientTLS, Role, TokenTable, read_token_file
from fractalq.security.certs import write_bundle
from fractalq.security.tokens import Identity, bearer, default_holder

W = "w" * 24
C = "c" * 24
R = "r" * 24
R2 = "R" * 24


def test_token_file_roles_comments_and_several_tokens_per_role() -> None:
    table = TokenTable.parse(
        f"# fractalq tokens\n\nworker {W}\nclient {C}   # the CLI\nREADER {R}\nreader {R2}\n"
    )
    assert len(table) == 4
    assert table.role(W) is Role.WORKER
    assert table.role(C) is Role.CLIENT
    assert table.role(R) is Role.READER
    assert table.role(R2) is Role.READER
    # Unknown, empty, a prefix or an extension of a known token: no role.
    for presented in (None, "", W[:-1], W + "x", "x" * 24):
        assert table.role(presented) is None
    assert W not in repr(table)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"worker {W}\nboss {C}\n", "line 2: unknown role"),
        (f"worker {W}\n\nclient\n", "line 3: expected ROLE TOKEN"),
        (f"worker {W} alice extra\n", r"line 1: expected ROLE TOKEN \[NAME\]"),
        (f"client {C} al/ice\n", "line 1: a NAME is 1-64 letters"),
        (f"client {C} {'a' * 65}\n", "line 1: a NAME is 1-64 letters"),
        (f"client {C} token-12345678\n", "line 1: a NAME may not begin with 'token-'"),
        ("worker short\n", "line 1: a token must have at least 16 characters"),
        (f"worker {W}\nclient {W}\n", "the same token is given twice"),
        ("# nothing\n", "no ROLE TOKEN line"),
    ],
)
def test_a_bad_token_file_names_the_line_never_the_token(text: str, expected: str) -> None:
    with pytest.raises(ValueError, match=expected) as caught:
        TokenTable.parse(text)
    for token in (W, C, "short"):
        assert token not in str(caught.value)


def test_a_token_line_names_its_holder_or_gets_a_digest_that_hides_the_token() -> None:
    C2, A = "d" * 24, "a" * 24
    table = TokenTable.parse(
        f"client {C} alice\nclient {C2} alice  # rotated\nadmin {A} ops\nreader {R}\nworker {W}\n"
    )
    assert table.identify(C) == Identity(Role.CLIENT, "alice") == table.identify(C2)
    assert table.identify(A) == Identity(Role.ADMIN, "ops")
    unnamed = table.identify(R)
    assert unnamed is not None and unnamed.holder == default_holder(R)
    assert re.fullmatch(r"token-[0-9a-f]{8}", unnamed.holder)
    assert R not in unnamed.holder and R[:8] not in unnamed.holder
    # Stable (a restart keeps ownership), and different for another token.
    assert default_holder(R) == TokenTable.parse(f"reader {R}\n").identify(R).holder  # type: ignore[union-attr]
    assert default_holder(R) != default_holder(R2)
    assert table.identify("x" * 24) is None and table.identify(None) is None


def test_token_file_that_cannot_be_read_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"cannot read .*missing: No such file"):
        TokenTable.load(tmp_path / "missing")


def test_roles_may_call_what_the_policy_says() -> None:
    worker_calls = {"RegisterWorker", "Heartbeat", "GetTask", "CompleteTask", "FailTask",
                    "ReleaseTasks", "UnregisterWorker"}  # fmt: skip
    reads = {"GetJob", "WatchJob", "ListJobs", "GetStats", "ListDeadLetters"}
    writes = {"SubmitJob", "CancelJob", "RequeueJob", "PurgeJob"}
    allowed = {
        Role.WORKER: worker_calls,
        Role.READER: reads,
        Role.CLIENT: reads | writes,
        Role.ADMIN: reads | writes,
    }
    for role, methods in allowed.items():
        for method in worker_calls | reads | writes | {"NewMethod"}:
            full = f"/fractalq.v1.Coordinator/{method}"
            assert method_allowed(full, role) == (method in methods), (role, method)
    assert not method_allowed("/other.Service/GetJob", Role.CLIENT)
    assert is_open_method("/grpc.health.v1.Health/Check")
    assert not is_open_method("/fractalq.v1.Coordinator/GetStats")


def test_bearer_header() -> None:
    assert bearer(f"Bearer {C}") == C
    assert bearer(f"bearer  {C} ") == C
    assert bearer(f"Basic {C}") is None
    assert bearer("Bearer") is None
    assert bearer(None) is None


def test_token_file_of_a_client(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(f"# issued today\n{C}\n")
    assert read_token_file(path) == C
    path.write_text("short\n")
    with pytest.raises(ValueError, match="at least 16") as caught:
        read_token_file(path)
    assert "short" not in str(caught.value).replace(str(path), "")
    path.write_text(f"client {C}\n")
    with pytest.raises(ValueError, match="the token alone"):
        read_token_file(path)


def test_endpoint_carries_the_token_but_never_shows_it(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(C + "\n")
    endpoint = Endpoint.create("127.0.0.1:1", token_file=str(tmp_path / "token"), token=R)
    assert endpoint.token == C  # the file wins over the variable
    assert endpoint.metadata == (("authorization", f"Bearer {C}"),)
    assert C not in repr(endpoint)
    assert Endpoint.from_env("h:1", {"FRACTALQ_TOKEN": R}).token == R
    assert Endpoint.create("h:1").metadata == ()
    with pytest.raises(ValueError, match="FRACTALQ_TOKEN: a token must have at least"):
        Endpoint.from_env("h:1", {"FRACTALQ_TOKEN": "short"})


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, name: str) -> None:
    """One TLS handshake over a socket pair; raises what the client saw."""
    left, right = socket.socketpair()
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(right, server_side=True) as conn:
                conn.recv(1)
        except (ssl.SSLError, OSError) as error:
            errors.append(error)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_ctx.wrap_socket(left, server_hostname=name) as conn:
            conn.sendall(b"x")
    finally:
        left.close()
        thread.join(10)
        right.close()


def test_certs_make_a_ca_a_server_and_a_client_certificate(tmp_path: Path) -> None:
    folder = tmp_path / "certs"
    paths = write_bundle(folder, ["coordinator.example", "10.0.0.7"])
    names = ["ca.crt", "server.crt", "server.key", "client.crt", "client.key"]
    assert [p.name for p in paths] == names
    for key in ("server.key", "client.key"):
        assert stat.S_IMODE((folder / key).stat().st_mode) == 0o600
    server = x509.load_pem_x509_certificate((folder / "server.crt").read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(n.value) for n in san] == ["localhost", "127.0.0.1", "coordinator.example",
                                           "10.0.0.7"]  # fmt: skip

    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(folder / "server.crt", folder / "server.key")
    server_ctx.load_verify_locations(folder / "ca.crt")
    server_ctx.verify_mode = ssl.CERT_REQUIRED  # and the client certificate is checked
    client = ClientTLS.load(str(folder / "ca.crt"), str(folder / "client.crt"),
                            str(folder / "client.key"))  # fmt: skip
    for name in ("localhost", "127.0.0.1", "coordinator.example", "10.0.0.7"):
        _handshake(server_ctx, client.ssl_context(), name)
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        _handshake(server_ctx, client.ssl_context(), "elsewhere.example")


def test_certs_command_refuses_to_overwrite(tmp_path: Path) -> None:
    first = run_cli("certs", str(tmp_path), "--host", "fractalq.local")
    assert first.returncode == 0, first.stderr
    ca = (tmp_path / "ca.crt").read_bytes()
    again = run_cli("certs", str(tmp_path))
    assert again.returncode == 1
    assert again.stderr.count("\n") == 1 and "already holds ca.crt" in again.stderr
    assert (tmp_path / "ca.crt").read_bytes() == ca
    forced = run_cli("certs", str(tmp_path), "--force")
    assert forced.returncode == 0, forced.stderr
    assert (tmp_path / "ca.crt").read_bytes() != ca
    bad = run_cli("certs", str(tmp_path / "x"), "--host", "not a host!")
    assert bad.returncode == 2 and "not a DNS name or an IP address" in bad.stderr


def test_client_tls_files_are_checked_in_one_line(tmp_path: Path) -> None:
    write_bundle(tmp_path)
    with pytest.raises(ValueError, match=r"cannot read CA file .*nope"):
        ClientTLS.load(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="is not a PEM file"):
        (tmp_path / "junk").write_text("junk")
        ClientTLS.load(str(tmp_path / "junk"))
    with pytest.raises(ValueError, match="do not load together"):
        ClientTLS.load(None, str(tmp_path / "client.crt"), str(tmp_path / "server.key"))
    with pytest.raises(ValueError, match="both --tls-cert and --tls-key"):
        ClientTLS.load(None, str(tmp_path / "client.crt"))


def test_operator_settings_carry_tls_and_token(tmp_path: Path) -> None:
    from fractalq.operator.settings import OperatorSettings, SettingsError

    write_bundle(tmp_path)
    (tmp_path / "token").write_text(C)
    env = {"FRACTALQ_STORAGE": tmp_path.as_uri(), "FRACTALQ_COORDINATOR": "c:50051",
           "FRACTALQ_TLS_CA": str(tmp_path / "ca.crt"),
           "FRACTALQ_TOKEN_FILE": str(tmp_path / "token")}  # fmt: skip
    settings = OperatorSettings.from_env(env)
    assert settings.endpoint == Endpoint("c:50051", ClientTLS(str(tmp_path / "ca.crt")), C)
    assert C not in repr(settings)
    with pytest.raises(SettingsError, match="cannot read CA file"):
        OperatorSettings.from_env({**env, "FRACTALQ_TLS_CA": str(tmp_path / "nope")})
