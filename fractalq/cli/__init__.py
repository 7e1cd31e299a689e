"""The ``fractalq`` command: one sub-command per module, one-line errors.

Every sub-command module offers ``add_parser(subparsers)`` and a ``run(args)``
stored as the parser's default. A :class:`~fractalq.cli.common.CommandError`
(or a bad flag) ends the program with one line on stderr and a non-zero exit,
never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

# gRPC's C core logs each failed TLS handshake at INFO on stderr: a second,
# unasked-for line beside our own one-line errors, and a line per attempt in a
# coordinator's log that anyone who connects can cause. Set before gRPC loads.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from fractalq.cli import certs, jobs, manage, operator, render, serve, zoom
from fractalq.cli.common import CommandError, OneLineParser

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="fractalq",
        description="A distributed task queue that renders Mandelbrot and Julia images.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (render, zoom, serve, jobs, manage, operator, certs):
        module.add_parsers(commands)
    zoom.add_demo_parser(commands.choices["demo"])
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    try:
        code: int = args.run(args)
    except CommandError as error:
        print(f"fractalq {args.command}: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"fractalq {args.command}: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
