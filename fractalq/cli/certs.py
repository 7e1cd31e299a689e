"""``fractalq certs DIR [--host NAME ...]``: a CA and certificates for local use."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fractalq import config
from fractalq.cli.common import CommandError, integer


def _host(value: str) -> str:
    from fractalq.security.certs import check_host

    try:
        return check_host(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_parsers(commands: Any) -> None:
    certs = commands.add_parser(
        "certs",
        help="write a new CA, a server and a client certificate into a folder",
        description="Writes DIR/ca.crt, server.crt, server.key, client.crt and client.key."
        " The server certificate is valid for localhost, 127.0.0.1 and every --host;"
        " keys are written readable by their owner only. The CA's own key is not kept.",
    )
    certs.add_argument("dir", metavar="DIR")
    certs.add_argument(
        "--host",
        action="append",
        default=[],
        type=_host,
        metavar="NAME",
        help="another DNS name or IP address of the coordinator (repeatable)",
    )
    certs.add_argument(
        "--days",
        type=integer(1, 100 * 365),
        default=config.CERT_DAYS,
        metavar="N",
        help="days the server and client certificates are valid",
    )
    certs.add_argument("--force", action="store_true", help="replace files already there")
    certs.set_defaults(run=run_certs)


def run_certs(args: argparse.Namespace) -> int:
    from fractalq.security.certs import write_bundle

    try:
        paths = write_bundle(Path(args.dir), args.host, force=args.force, days=args.days)
    except FileExistsError as error:
        raise CommandError(str(error)) from None
    except OSError as error:
        raise CommandError(f"cannot write into {args.dir}: {error.strerror or error}") from None
    for path in paths:
        print(path)
    return 0
