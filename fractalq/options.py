"""Options declared once: the flag, its ``FRACTALQ_*`` variable, its default and its help.

An :class:`Option` is one row of the table (the command line's in
:mod:`fractalq.cli.table`, the operator's in :mod:`fractalq.operator.settings`). :func:`add`
turns rows into argparse arguments whose help ends with the default and the
variable; the parser only records what the command line gave. After parsing,
:func:`resolve` fills in every option the command line left out: from its
variable when that is set (and not empty), else from its default. So a flag
beats its variable, and the variable beats the default; a bad value in a
variable is the same one-line usage error as a bad flag, naming the variable.

A new command adopts this by listing its rows: ``options.add(parser, table.X,
table.Y)`` (rows shared with other commands are imported from the table, new
ones declared there), and ``fractalq`` resolves them before ``run`` is called.
:func:`listing` walks every command's rows for docs/options.md's table.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, NoReturn

Kind = Literal["value", "switch", "list"]

# What the parser leaves in an option the command line did not give.
_UNSET: Any = type("Unset", (), {"__repr__": lambda self: "UNSET"})()
_OPTIONS = "_fractalq_options"


def _variable_of(flag: str) -> str:
    return "FRACTALQ_" + flag.lstrip("-").upper().replace("-", "_")


@dataclasses.dataclass(frozen=True)
class Option:
    """One option of one or more commands.

    ``type`` parses a flag's text and a variable's alike (argparse's
    conventions: an ``ArgumentTypeError`` carries the message). ``kind``:
    ``"value"`` takes one value; ``"switch"`` takes none (its variable is
    true/false, 1/0, yes/no, on/off); ``"list"`` may be repeated (its variable
    holds the values separated by commas). ``shorthands``: more flags that set
    the option to a fixed value (``--julia`` for ``--fractal julia``).
    ``shown``: the default as the help says it, when ``default`` alone would not
    say it well (a computed default, or none).
    """

    flag: str
    help: str
    default: Any = None
    type: Callable[[str], Any] = str
    metavar: str | None = None
    variable: str = ""
    kind: Kind = "value"
    required: bool = False
    shown: str | None = None
    aliases: tuple[str, ...] = ()
    shorthands: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.variable:
            object.__setattr__(self, "variable", _variable_of(self.flag))

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    def but(self, **changes: Any) -> Option:
        """This option with other settings for one command (the same variable)."""
        return dataclasses.replace(self, **changes)

    @property
    def default_text(self) -> str:
        if self.required:
            return "required"
        if self.shown is not None:
            return self.shown
        return show(self.default)

    def help_text(self) -> str:
        said = "required" if self.required else f"default: {self.default_text}"
        return f"{self.help} ({said}; ${self.variable})".replace("%", "%%")

    def parse(self, text: str) -> Any:
        """The value a variable's ``text`` gives, or a ValueError saying why not."""
        if self.kind == "switch":
            return _convert(boolean, text)
        if self.kind == "list":
            return [_convert(self.type, item.strip()) for item in text.split(",") if item.strip()]
        return _convert(self.type, text)


def show(value: Any) -> str:
    """A default as help shows it."""
    if value is None or value == []:
        return "none"
    if value is True or value is False:
        return "on" if value else "off"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _convert(kind: Callable[[str], Any], text: str) -> Any:
    """``kind(text)`` with argparse's messages, as a ValueError."""
    try:
        return kind(text)
    except argparse.ArgumentTypeError as error:
        raise ValueError(str(error)) from None
    except (TypeError, ValueError):
        name = getattr(kind, "__name__", repr(kind))
        raise ValueError(f"invalid {name} value: {text!r}") from None


class _Repeatable(argparse.Action):
    """``append``, but starting from an empty list whatever the default."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        items = getattr(namespace, self.dest, _UNSET)
        setattr(namespace, self.dest, [*([] if items is _UNSET else items), values])


def add(parser: argparse.ArgumentParser, *options: Option, title: str | None = None) -> None:
    """Add ``options`` to ``parser`` (in an argument group called ``title``, if given)."""
    where: Any = parser.add_argument_group(title) if title else parser
    for option in options:
        _add_one(where, option)
    known: list[Option] = parser.get_default(_OPTIONS) or []
    parser.set_defaults(**{_OPTIONS: [*known, *options]})


def _add_one(where: Any, option: Option) -> None:
    flags = [option.flag, *option.aliases]
    common: dict[str, Any] = {"dest": option.dest, "default": _UNSET}
    if option.shorthands:  # the flag and its shorthands exclude one another
        where = where.add_mutually_exclusive_group()
    if option.kind == "switch":
        where.add_argument(*flags, action="store_const", const=True, help=option.help_text(),
                           **common)  # fmt: skip
    else:
        action = _Repeatable if option.kind == "list" else "store"
        where.add_argument(*flags, action=action, type=option.type, metavar=option.metavar,
                           help=option.help_text(), **common)  # fmt: skip
    for shorthand, value in option.shorthands.items():
        where.add_argument(shorthand, action="store_const", const=value,
                           help=f"{option.flag} {show(value)}", **common)  # fmt: skip


def resolve(
    args: argparse.Namespace,
    error: Callable[[str], NoReturn],
    env: Mapping[str, str] | None = None,
) -> None:
    """Fill in each option the command line did not give: its variable, else its default.

    ``error`` ends the program with a usage error (the parser's ``error``).
    """
    env = os.environ if env is None else env
    for option in getattr(args, _OPTIONS, ()):
        if getattr(args, option.dest, _UNSET) is not _UNSET:
            continue
        text = env.get(option.variable, "")
        if text:
            try:
                value = option.parse(text)
            except ValueError as problem:
                error(f"variable {option.variable} ({option.flag}): {problem}")
        elif option.required:
            error(f"{option.flag} is required (or set {option.variable})")
        else:
            value = option.default
        setattr(args, option.dest, value)


def options_of(parser: argparse.ArgumentParser) -> list[Option]:
    found: list[Option] = parser.get_default(_OPTIONS) or []
    return found


# ---- value types (argparse's conventions: ArgumentTypeError says what is wrong) ----


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


def integer(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    return _number(int, low, high)  # type: ignore[no-any-return]


def real(low: float | None = None, high: float | None = None) -> Callable[[str], float]:
    return _number(float, low, high)  # type: ignore[no-any-return]


def boolean(text: str) -> bool:
    word = text.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def choice(*values: str) -> Callable[[str], str]:
    """One of ``values`` (checked for a variable's value too, unlike argparse's choices)."""

    def parse(text: str) -> str:
        if text not in values:
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(values)}")
        return text

    parse.__name__ = "choice"
    return parse


def listing(commands: Mapping[str, argparse.ArgumentParser]) -> list[tuple[Option, list[str]]]:
    """Every option of ``commands`` once (a variable and flag with another default or
    help in some commands is a row of its own), with the commands that take it."""
    rows: dict[tuple[str, str, str, str], tuple[Option, list[str]]] = {}
    for name, parser in commands.items():
        for option in options_of(parser):
            key = (option.variable, option.flag, option.default_text, option.help)
            rows.setdefault(key, (option, []))[1].append(name)
    return list(rows.values())


def markdown(rows: Iterable[tuple[Option, Sequence[str]]]) -> str:
    """docs/options.md's table of options."""
    lines = ["| variable | flag | commands | default | what |", "| --- | --- | --- | --- | --- |"]
    for option, commands in rows:
        flags = ", ".join(f"`{flag}`" for flag in (option.flag, *option.aliases))
        if option.shorthands:
            flags += " (" + ", ".join(f"`{flag}`" for flag in option.shorthands) + ")"
        default = option.default_text.replace("|", "\\|")
        what = option.help.replace("|", "\\|")
        lines.append(
            f"| `{option.variable}` | {flags} | {', '.join(commands)} | {default} | {what} |"
        )
    return "\n".join(lines) + "\n"
