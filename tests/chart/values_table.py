"""The table of values in charts/fractalq/README.md, made from values.yaml.

Each key of values.yaml is a row: its dotted path, its default (none for a key with
keys under it) and the comment above it. ``python tests/chart/values_table.py``
rewrites the table in the README; tests/chart/test_readme.py checks that it is current.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[2] / "charts" / "fractalq"
VALUES = CHART / "values.yaml"
README = CHART / "README.md"
BEGIN = "<!-- values table: made by tests/chart/values_table.py from values.yaml -->"
END = "<!-- end of values table -->"

_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_]+):(?P<rest>.*)$")


@dataclasses.dataclass(frozen=True)
class Value:
    path: str
    default: Any
    parent: bool  # other keys are under it
    description: str


def values(text: str) -> list[Value]:
    """Every key of a values.yaml, in order, with the comment lines just above it."""
    data = yaml.safe_load(text)
    found = []
    stack: list[tuple[int, str]] = []  # (indent, key) of the keys enclosing this line
    comment: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comment.append(stripped.lstrip("#").strip())
            continue
        match = _KEY.match(line)
        if match is None:
            comment = []  # a blank line or a list item: the comment was about something else
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match["key"]))
        keys = [key for _, key in stack]
        default = data
        for key in keys:
            default = default[key]
        parent = isinstance(default, dict) and not match["rest"].strip()
        found.append(Value(".".join(keys), default, parent, " ".join(comment)))
        comment = []
    return found


def _cell(text: str) -> str:
    """Text as Markdown shows it: ``*``, ``_`` and ``|`` as themselves, ``<name>`` not a tag."""
    for char in ("\\", "*", "_", "|"):
        text = text.replace(char, "\\" + char)
    return text.replace("<", "&lt;").replace(">", "&gt;")


def table(text: str) -> str:
    rows = ["| Key | Default | Description |", "| --- | --- | --- |"]
    for value in values(text):
        default = "" if value.parent else f"`{json.dumps(value.default)}`"
        rows.append(f"| `{value.path}` | {default} | {_cell(value.description)} |")
    return "\n".join(rows) + "\n"


def readme_table(readme: str) -> str:
    """The table between the README's markers."""
    start, end = readme.index(BEGIN) + len(BEGIN), readme.index(END)
    return readme[start:end].strip("\n") + "\n"


def main() -> int:
    readme = README.read_text()
    start, end = readme.index(BEGIN) + len(BEGIN), readme.index(END)
    README.write_text(readme[:start] + "\n" + table(VALUES.read_text()) + readme[end:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
