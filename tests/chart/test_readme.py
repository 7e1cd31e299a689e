"""charts/fractalq/README.md: its table of values is values.yaml's, key for key."""

from __future__ import annotations

import itertools
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from chart import values_table
from chart.rendering import CHART, VALUES_FILE, Helm


def keys(node: dict[str, Any], prefix: str = "") -> list[str]:
    """Every key of a values tree as a dotted path, parents before their children."""
    found = []
    for key, value in node.items():
        path = f"{prefix}{key}"
        found.append(path)
        if isinstance(value, dict) and value:
            found += keys(value, f"{path}.")
    return found


def test_the_readme_lists_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    table = values_table.readme_table(readme)
    rows = [row for row in table.splitlines() if row.startswith("| `")]
    listed = [re.match(r"\| `([^`]+)` \|", row)[1] for row in rows]  # type: ignore[index]
    values = yaml.safe_load(VALUES_FILE.read_text())
    assert listed == keys(values), "the README's values table lists other keys than values.yaml"
    # Defaults and descriptions as values.yaml has them now.
    assert table == values_table.table(VALUES_FILE.read_text()), (
        "the README's values table is out of date: run python tests/chart/values_table.py"
    )


def test_each_row_says_what_its_value_is() -> None:
    for value in values_table.values(VALUES_FILE.read_text()):
        assert value.description, f"{value.path} has no comment in values.yaml"
    rows = values_table.table("# What a is.\na:\n  # Its b.\n  b: 1\n  # Its c.\n  c: {}\n")
    assert rows.splitlines()[2:] == [
        "| `a` |  | What a is. |",
        "| `a.b` | `1` | Its b. |",
        "| `a.c` | `{}` | Its c. |",
    ]


def test_the_readmes_examples_render(chart_helm: Helm, tmp_path: Path) -> None:
    """Its values files and its --set flags give a chart that renders."""
    readme = (CHART / "README.md").read_text()
    examples = re.findall(r"```yaml\n(.*?)```", readme, flags=re.S)
    commands = re.findall(r"```sh\n(.*?)```", readme, flags=re.S)
    assert examples and len(commands) >= 3
    for number, example in enumerate(examples):
        values = tmp_path / f"example-{number}.yaml"
        values.write_text(example)
        assert chart_helm.template("-f", str(values))
    for command in commands:
        words = shlex.split(command.replace("\\\n", " "))
        flags = [
            part
            for flag, value in itertools.pairwise(words)
            if flag == "--set"
            for part in (flag, value)
        ]
        assert flags, command
        assert chart_helm.template(*flags)
