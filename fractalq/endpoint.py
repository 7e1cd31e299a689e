"""How to reach the coordinator: its address, the TLS to use, the token to show.

One :class:`Endpoint` makes every channel a client opens (the command line's
synchronous :class:`~fractalq.client.Client`, the worker's asyncio channel,
the operator's), so TLS, the token and the message-size limits are the same
everywhere.

The token travels as ``authorization: Bearer TOKEN`` metadata, added by a
client interceptor rather than by gRPC's call credentials: gRPC refuses call
credentials on a plaintext channel, and tokens must work without TLS as well
(on a trusted network, or behind a TLS-terminating proxy).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import grpc

from fractalq import config
from fractalq.security.tls import ClientTLS, diagnose
from fractalq.security.tokens import check_token, read_token_file

# Environment variables every client reads (the command line's flags win).
ENV_TLS_CA = "FRACTALQ_TLS_CA"
ENV_TLS_CERT = "FRACTALQ_TLS_CERT"
ENV_TLS_KEY = "FRACTALQ_TLS_KEY"
ENV_TOKEN_FILE = "FRACTALQ_TOKEN_FILE"
ENV_TOKEN = "FRACTALQ_TOKEN"


def channel_options() -> list[tuple[str, Any]]:
    """Every client channel's options: the message limit and keepalive (see config)."""
    return [
        ("grpc.max_send_message_length", config.MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", config.MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", int(config.KEEPALIVE_TIME * 1000)),
        ("grpc.keepalive_timeout_ms", int(config.KEEPALIVE_TIMEOUT * 1000)),
        # A keepalive that finds a ping in flight (gRPC's own bandwidth probe)
        # waits for that one, whose timeout is a minute unless set here.
        ("grpc.http2.ping_timeout_ms", int(config.KEEPALIVE_TIMEOUT * 1000)),
        # Pings only while a call is open, as many as the call's silence needs.
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def _with_token(metadata: Any, header: tuple[str, str]) -> list[tuple[str, Any]]:
    return [*(metadata or ()), header]


class _SyncDetails(grpc.ClientCallDetails):  # type: ignore[misc]
    def __init__(self, details: Any, header: tuple[str, str]) -> None:
        self.method = details.method
        self.timeout = details.timeout
        self.metadata = _with_token(details.metadata, header)
        self.credentials = details.credentials
        self.wait_for_ready = getattr(details, "wait_for_ready", None)
        self.compression = getattr(details, "compression", None)


class _SyncToken(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    def __init__(self, header: tuple[str, str]) -> None:
        self._header = header

    def _call(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(_SyncDetails(details, self._header), request)

    intercept_unary_unary = _call
    intercept_unary_stream = _call
    intercept_stream_unary = _call
    intercept_stream_stream = _call


def _aio_details(details: Any, header: tuple[str, str]) -> grpc.aio.ClientCallDetails:
    return grpc.aio.ClientCallDetails(
        method=details.method,
        timeout=details.timeout,
        metadata=grpc.aio.Metadata(*_with_token(details.metadata, header)),
        credentials=details.credentials,
        wait_for_ready=details.wait_for_ready,
    )


# grpc.aio files an interceptor under the first of the four kinds it is an
# instance of, so each kind needs a class of its own.
class _AioToken:
    def __init__(self, header: tuple[str, str]) -> None:
        self._header = header

    async def _call(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_aio_details(details, self._header), request)


class _AioUnaryUnaryToken(_AioToken, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    intercept_unary_unary = _AioToken._call


class _AioUnaryStreamToken(_AioToken, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    intercept_unary_stream = _AioToken._call


class _AioStreamUnaryToken(_AioToken, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    intercept_stream_unary = _AioToken._call


class _AioStreamStreamToken(_AioToken, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    intercept_stream_stream = _AioToken._call


_AIO_KINDS = (
    _AioUnaryUnaryToken,
    _AioUnaryStreamToken,
    _AioStreamUnaryToken,
    _AioStreamStreamToken,
)


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """The coordinator at ``address`` (HOST:PORT), over ``tls`` if given, showing ``token``."""

    address: str
    tls: ClientTLS | None = None
    token: str | None = dataclasses.field(default=None, repr=False)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The call metadata that carries the token (empty without one)."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def channel(self) -> grpc.Channel:
        """A synchronous channel; every call on it carries the token."""
        if self.tls is None:
            channel = grpc.insecure_channel(self.address, options=channel_options())
        else:
            credentials = self.tls.grpc_credentials()
            channel = grpc.secure_channel(self.address, credentials, options=channel_options())
        if self.token:
            channel = grpc.intercept_channel(channel, _SyncToken(self.metadata[0]))
        return channel

    def aio_channel(self, add_token: bool = True) -> grpc.aio.Channel:
        """An asyncio channel; every call on it carries the token.

        ``add_token=False``: the caller passes :attr:`metadata` with each call
        itself, which spares the interceptors' cost on a busy channel.
        """
        interceptors: Sequence[Any] | None = None
        if self.token and add_token:
            header = self.metadata[0]
            interceptors = [kind(header) for kind in _AIO_KINDS]
        if self.tls is None:
            return grpc.aio.insecure_channel(
                self.address, options=channel_options(), interceptors=interceptors
            )
        return grpc.aio.secure_channel(
            self.address,
            self.tls.grpc_credentials(),
            options=channel_options(),
            interceptors=interceptors,
        )

    def diagnose(self) -> str | None:
        """After a failed call: why, if TLS is the reason, in one line (blocks up to seconds)."""
        return diagnose(self.address, self.tls)

    @classmethod
    def create(
        cls,
        address: str,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        token_file: str | None = None,
        token: str | None = None,
    ) -> Endpoint:
        """Checked: files readable, certificate and key matching; else a one-line ValueError.

        TLS is on when any of the TLS files is given; a token file wins over a token.
        """
        tls = None
        if tls_ca or tls_cert or tls_key:
            tls = ClientTLS.load(tls_ca or None, tls_cert or None, tls_key or None)
        if token_file:
            token = read_token_file(token_file)
        elif token:
            try:
                check_token(token)
            except ValueError as error:
                raise ValueError(f"{ENV_TOKEN}: {error}") from None
        return cls(address, tls, token or None)

    @classmethod
    def from_env(cls, address: str, env: Mapping[str, str] | None = None) -> Endpoint:
        """The endpoint the ``FRACTALQ_TLS_*`` and ``FRACTALQ_TOKEN*`` variables describe."""
        env = os.environ if env is None else env
        return cls.create(
            address,
            tls_ca=env.get(ENV_TLS_CA),
            tls_cert=env.get(ENV_TLS_CERT),
            tls_key=env.get(ENV_TLS_KEY),
            token_file=env.get(ENV_TOKEN_FILE),
            token=env.get(ENV_TOKEN),
        )
