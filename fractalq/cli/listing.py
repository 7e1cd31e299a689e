"""``python -m fractalq.cli.listing``: docs/options.md's table of every command's options.

One row per option (per variable and flag, and default where commands differ),
sorted by variable, with the commands that take it; a test compares it with the
docs/options.md's.
"""

from __future__ import annotations

from fractalq.cli import build_parser, commands
from fractalq.options import listing, markdown


def table() -> str:
    rows = sorted(listing(commands(build_parser())), key=lambda row: row[0].variable)
    return markdown(rows)


if __name__ == "__main__":
    print(table(), end="")
