"""The ``fractalq`` command: one sub-command per module, one-line errors.

Every sub-command module offers ``add_parsers(subparsers)``, which adds its
commands, each with a ``run(args)`` stored as the parser's default and its
options from the table (:mod:`fractalq.cli.table`). A
:class:`~fractalq.cli.common.CommandError` (or a bad flag or variable) ends the
program with one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys

# gRPC's C core logs each failed TLS handshake at INFO on stderr: a second,
# unasked-for line beside our own one-line errors, and a line per attempt in a
# coordinator's log that anyone who connects can cause. Set before gRPC loads.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from fractalq.cli import certs, dead, jobs, manage, operator, render, serve, zoom
from fractalq.cli.common import CommandError, OneLineParser

EXIT_USAGE = 2


def version() -> str:
    """The installed package's version."""
    try:
        return importlib.metadata.version("fractalq")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        from fractalq import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="fractalq",
        description="A distributed task queue that renders Mandelbrot and Julia images."
        " Every option also reads its FRACTALQ_* variable (a flag wins); each"
        " command's --help shows them with their defaults.",
    )
    parser.add_argument("--version", action="version", version=f"fractalq {version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (render, zoom, serve, jobs, manage, dead, operator, certs):
        module.add_parsers(commands)
    zoom.add_demo_parser(commands.choices["demo"])
    return parser


def commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The sub-commands of ``parser``, by name, and theirs (``demo zoom``)."""
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, command in action.choices.items():
                found[name] = command
                found.update({f"{name} {sub}": inner for sub, inner in commands(command).items()})
    return found


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
