"""What the sub-commands share: errors, the parser, argument types, a free port."""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from fractalq.client import check_address
from fractalq.options import resolve

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
    """argparse, but a usage error is one line naming the problem, and options the
    command line leaves out come from their variables or defaults (:mod:`fractalq.options`)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extra = super().parse_known_args(args, namespace)
        if not getattr(parsed, "resolve_late", False):
            resolve(parsed, self.error)
        return parsed, extra


def resolve_now(args: argparse.Namespace) -> None:
    """Resolve the options of a command that asked to (``resolve_late``): it checks
    its prerequisites first, so a missing one is named before a missing option."""

    def error(message: str) -> NoReturn:
        raise CommandError(f"{message} (see --help)", exit_code=2)

    resolve(args, error)


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


def cert_host(value: str) -> str:
    """A DNS name or IP address a certificate can name."""
    from fractalq.security.certs import check_host

    try:
        return check_host(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def endpoint_from(args: argparse.Namespace, address: str | None = None) -> Endpoint:
    """The coordinator endpoint the options (flags or variables) describe, checked."""
    from fractalq import endpoint as e

    try:
        return e.Endpoint.create(
            address or args.coordinator,
            tls_ca=args.tls_ca,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            token_file=args.token_file,
            token=os.environ.get(e.ENV_TOKEN),
        )
    except ValueError as error:
        raise CommandError(str(error)) from None


def command(commands: Any, name: str, run: Any, **kwargs: Any) -> argparse.ArgumentParser:
    """A sub-command that runs ``run(args)``."""
    parser: argparse.ArgumentParser = commands.add_parser(name, **kwargs)
    parser.set_defaults(run=run)
    return parser
