"""``fractalq certs DIR [--host NAME ...]``: a CA and certificates for local use."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fractalq import options
from fractalq.cli import table as t
from fractalq.cli.common import CommandError, command


def add_parsers(commands: Any) -> None:
    certs = command(
        commands,
        "certs",
        run_certs,
        help="write a new CA, a server and a client certificate into a folder",
        description="Writes DIR/ca.crt, server.crt, server.key, client.crt and client.key."
        " The server certificate is valid for localhost, 127.0.0.1 and every --host;"
        " keys are written readable by their owner only. The CA's own key is not kept.",
    )
    certs.add_argument("dir", metavar="DIR")
    options.add(certs, t.CERT_HOSTS, t.CERT_DAYS, t.CERT_FORCE)


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
