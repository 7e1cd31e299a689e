"""TLS for both ends: what the coordinator serves with, what clients trust.

gRPC (C-core, BoringSSL) does the TLS of the gRPC port; Python's :mod:`ssl`
does the HTTP port's (aiohttp). Both load the same PEM files.

When a call over TLS fails, gRPC says only that the handshake failed, not
why. :func:`diagnose` then makes one handshake of its own with Python's
:mod:`ssl` against the same address (ALPN ``h2``, the same CA and client
certificate) and turns what OpenSSL reports into one line that says which:
a certificate signed by another CA, an expired one, one for another name, a
client certificate missing or refused, or TLS on one side only.
"""

from __future__ import annotations

import dataclasses
import datetime
import socket
import ssl
from pathlib import Path

import grpc

from fractalq import config


def _read(path: str, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ValueError(f"cannot read {what} {path}: {error.strerror or error}") from None
    if b"-----BEGIN " not in data:
        raise ValueError(f"{what} {path} is not a PEM file")
    return data


def _check_pair(cert_file: str, key_file: str) -> None:
    """A one-line ValueError unless the certificate and key load and belong together."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as error:
        raise ValueError(
            f"certificate {cert_file} and key {key_file} do not load together"
            f" ({error.reason or error})"
        ) from None
    except OSError as error:
        raise ValueError(f"cannot read {cert_file} or {key_file}: {error}") from None


def _check_ca(ca_file: str) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=ca_file)
    except (ssl.SSLError, OSError) as error:
        raise ValueError(f"CA file {ca_file} holds no certificate ({error})") from None


@dataclasses.dataclass(frozen=True)
class ServerTLS:
    """The coordinator's certificate and key, and the CA its clients' certificates need.

    Without ``client_ca`` any client may connect (and must then show a token,
    if tokens are on); with it, every gRPC client must present a certificate
    that CA signed (mutual TLS). The HTTP port never asks for a client
    certificate: the kubelet's HTTPS probe and Prometheus have none.
    """

    cert_file: str
    key_file: str
    client_ca_file: str | None = None

    @classmethod
    def load(cls, cert: str, key: str, client_ca: str | None = None) -> ServerTLS:
        """Checked files, or a ValueError in one line."""
        _read(cert, "certificate")
        _read(key, "key")
        _check_pair(cert, key)
        if client_ca is not None:
            _read(client_ca, "client CA")
            _check_ca(client_ca)
        return cls(cert, key, client_ca)

    def grpc_credentials(self) -> grpc.ServerCredentials:
        pair = (_read(self.key_file, "key"), _read(self.cert_file, "certificate"))
        client_ca = _read(self.client_ca_file, "client CA") if self.client_ca_file else None
        return grpc.ssl_server_credentials(
            [pair], root_certificates=client_ca, require_client_auth=client_ca is not None
        )

    def http_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


@dataclasses.dataclass(frozen=True)
class ClientTLS:
    """What a client trusts (``ca_file``; None: the system's CAs) and shows (mutual TLS)."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @classmethod
    def load(
        cls, ca: str | None = None, cert: str | None = None, key: str | None = None
    ) -> ClientTLS:
        """Checked files, or a ValueError in one line."""
        if (cert is None) != (key is None):
            raise ValueError(
                "a client certificate needs its key: give both --tls-cert and --tls-key"
            )
        if ca is not None:
            _read(ca, "CA file")
            _check_ca(ca)
        if cert is not None and key is not None:
            _read(cert, "certificate")
            _read(key, "key")
            _check_pair(cert, key)
        return cls(ca, cert, key)

    def grpc_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file, "CA file") if self.ca_file else None,
            private_key=_read(self.key_file, "key") if self.key_file else None,
            certificate_chain=_read(self.cert_file, "certificate") if self.cert_file else None,
        )

    def ssl_context(self) -> ssl.SSLContext:
        """The same trust for Python's ssl (the HTTP API, :func:`diagnose`)."""
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file and self.key_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


# HTTP/2's connection preface and an empty SETTINGS frame: a gRPC server that
# accepted the handshake answers with its own SETTINGS.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def _refused_after_handshake(tls: ClientTLS) -> str:
    """The server closed at once after a complete handshake: under TLS 1.3 that is
    its verdict on the client certificate (gRPC's server sends no alert)."""
    if not tls.cert_file:
        return (
            "TLS: the coordinator requires a client certificate (--tls-cert and --tls-key):"
            " mutual TLS is on"
        )
    try:
        from cryptography import x509

        cert = x509.load_pem_x509_certificate(Path(tls.cert_file).read_bytes())
        if cert.not_valid_after_utc < datetime.datetime.now(datetime.UTC):
            return f"TLS: the client certificate {tls.cert_file} has expired"
    except (OSError, ValueError):
        pass
    return (
        f"TLS: the coordinator refused the client certificate {tls.cert_file}:"
        " it is not signed by the CA the coordinator trusts (--tls-client-ca)"
    )


def _verify_failure(error: ssl.SSLCertVerificationError, address: str, tls: ClientTLS) -> str:
    reason = (error.verify_message or str(error)).rstrip(".")
    lowered = reason.lower()
    ca = f"the CA in {tls.ca_file}" if tls.ca_file else "the system's CAs"
    if "expired" in lowered:
        return f"TLS: the coordinator's certificate at {address} has expired"
    if "not yet valid" in lowered:
        return f"TLS: the coordinator's certificate at {address} is not valid yet"
    if "hostname mismatch" in lowered or "ip address mismatch" in lowered:
        host = split_address(address)[0]
        return f"TLS: the coordinator's certificate is not valid for the name {host!r}"
    if "issuer" in lowered or "self-signed" in lowered or "self signed" in lowered:
        return f"TLS: the coordinator's certificate at {address} is not signed by {ca}"
    return f"TLS: the coordinator's certificate at {address} was refused: {reason}"


def diagnose(address: str, tls: ClientTLS | None, timeout: float | None = None) -> str | None:
    """Why a call to ``address`` failed at the TLS level, in one line; None if it did not.

    Makes one TLS handshake (or, for a plaintext client, one probe of whether
    the server speaks TLS at all). Returns None when nothing is listening or
    the handshake succeeds, so that the caller keeps gRPC's own message.
    """
    timeout = config.TLS_DIAGNOSE_TIMEOUT if timeout is None else timeout
    host, port = split_address(address)
    if tls is None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        try:
            context = tls.ssl_context()
        except (OSError, ssl.SSLError) as error:
            return f"TLS: cannot load the client's TLS files: {error}"
    context.set_alpn_protocols(["h2"])
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError:
        return None  # not listening: gRPC's "cannot reach" says that
    with raw:
        try:
            conn = context.wrap_socket(raw, server_hostname=host)
        except ssl.SSLCertVerificationError as error:
            return None if tls is None else _verify_failure(error, address, tls)
        except (ssl.SSLError, OSError):
            # Not a TLS server (a plaintext gRPC server closes on a ClientHello).
            if tls is not None:
                return f"the coordinator at {address} does not serve TLS (drop --tls-ca)"
            return None
        with conn:
            try:
                # Under TLS 1.3 the server checks the client certificate after
                # the client's side of the handshake is done: a server that
                # accepted it answers the HTTP/2 preface, one that did not closes.
                conn.sendall(_H2_PREFACE)
                answered = conn.recv(1) != b""
            except TimeoutError:
                answered = True  # slow, but it did not refuse us
            except (ssl.SSLError, OSError):
                answered = False
    if tls is None:
        return f"the coordinator at {address} serves TLS: give --tls-ca" + (
            "" if answered else " (and --tls-cert/--tls-key: it requires a client certificate)"
        )
    return None if answered else _refused_after_handshake(tls)
