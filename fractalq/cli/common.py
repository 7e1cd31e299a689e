"""What the sub-commands share: errors, argument types, logging, a free port."""

from __future__ import annotations

import argparse
import logging
import math
import os
import socket
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, NoReturn

from fractalq.client import check_address

if TYPE_CHECKING:
    from fractalq.endpoint import Endpoint


def free_port() -> int:
    """A TCP port free on the loopback interface right now (the demo's, the tests')."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class CommandError(Exception):
    """Ends the command with this one-line message."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the problem."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def address(value: str) -> str:
    try:
        return check_address(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def listen_host(value: str) -> str:
    """A host name or IP address to listen on (``[::1]`` is taken as ``::1``).

    Whether it resolves is the coordinator's to say; this refuses what could
    never be one, and what would break its error line in two (a newline).
    """
    host = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    if not host or len(host) > 253 or not host.isprintable() or any(c.isspace() for c in host):
        raise argparse.ArgumentTypeError(f"{value!r} is not a host name or IP address")
    return host


def _number(kind: type[int] | type[float], low: float | None, high: float | None):  # type: ignore[no-untyped-def]
    def parse(value: str) -> int | float:
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{value!r} is not a {'whole ' if kind is int else ''}number"
            ) from None
        # float() takes "nan" and "inf": a NaN passes every range check below
        # (each comparison is False) and an infinity defeats timeouts.
        if not math.isfinite(number):
            raise argparse.ArgumentTypeError(f"{value!r} is not a finite number")
        if low is not None and number < low:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum {low:g}")
        if high is not None and number > high:
            raise argparse.ArgumentTypeError(f"{value} is above the maximum {high:g}")
        return number

    parse.__name__ = kind.__name__
    return parse


def integer(low: int | None = None, high: int | None = None) -> argparse._ActionType:
    return _number(int, low, high)  # type: ignore[no-any-return]


def real(low: float | None = None, high: float | None = None) -> argparse._ActionType:
    return _number(float, low, high)  # type: ignore[no-any-return]


def add_endpoint_options(parser: argparse.ArgumentParser) -> None:
    """A client's TLS and token flags; each defaults to its FRACTALQ_* variable."""
    from fractalq import endpoint as e

    group = parser.add_argument_group("TLS and token (each flag defaults to its variable)")
    group.add_argument(
        "--tls-ca",
        metavar="FILE",
        help=f"CA of the coordinator's certificate (${e.ENV_TLS_CA})",
    )
    group.add_argument(
        "--tls-cert", metavar="FILE", help=f"client certificate, for mutual TLS (${e.ENV_TLS_CERT})"
    )
    group.add_argument("--tls-key", metavar="FILE", help=f"its key (${e.ENV_TLS_KEY})")
    group.add_argument(
        "--token-file",
        metavar="FILE",
        help=f"file holding the token (${e.ENV_TOKEN_FILE}; or the token itself in ${e.ENV_TOKEN})",
    )


def endpoint_from(args: argparse.Namespace, address: str | None = None) -> Endpoint:
    """The coordinator endpoint the flags (or the environment) describe, checked."""
    from fractalq import endpoint as e

    env = os.environ
    try:
        return e.Endpoint.create(
            address or args.coordinator,
            tls_ca=args.tls_ca or env.get(e.ENV_TLS_CA),
            tls_cert=args.tls_cert or env.get(e.ENV_TLS_CERT),
            tls_key=args.tls_key or env.get(e.ENV_TLS_KEY),
            token_file=args.token_file or env.get(e.ENV_TOKEN_FILE),
            token=env.get(e.ENV_TOKEN),
        )
    except ValueError as error:
        raise CommandError(str(error)) from None


def setup_logging(verbose: bool = False, secrets: Iterable[str | None] = ()) -> None:
    """The long-running commands' log on stderr; no secret in it at any level
    (:mod:`fractalq.security.logs`), ``secrets`` included."""
    from fractalq.security.logs import protect_logs

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    protect_logs(secret for secret in secrets if secret)
