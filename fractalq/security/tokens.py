"""Role tokens: the ``--auth-tokens`` file and the lookup.

The file has one ``ROLE TOKEN [NAME]`` line a token; a word that starts with
``#`` begins a comment, blank lines are skipped, a role may have several tokens
(to rotate one without a gap: add the new one, restart, hand it out, remove
the old one). A bad line is a :class:`ValueError` that names the line number
and never the token.

NAME is the token's *holder*: who owns the jobs it submits. Several tokens
may name the same holder (a rotation keeps its jobs), also with different
roles. A line without one gets a holder of its own, ``token-`` and a short
digest of the token (stable across restarts, telling nothing of the token).

Which role may make which call is the coordinator's policy
(:mod:`fractalq.coordinator.access`); clients only read their token here.

Looking a presented token up compares it with *every* known token using
:func:`hmac.compare_digest` on their SHA-256 digests, so the time taken says
nothing about how much of a token was right, nor which token matched.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import hmac
import re
from collections.abc import Iterable
from pathlib import Path

from fractalq import config


class Role(enum.Enum):
    WORKER = "worker"
    CLIENT = "client"
    READER = "reader"
    ADMIN = "admin"  # a client of every holder's jobs


@dataclasses.dataclass(frozen=True)
class Identity:
    """Who presented a token: its role and its holder."""

    role: Role
    holder: str

    def __repr__(self) -> str:
        return f"Identity({self.role.value}, {self.holder})"


_HOLDER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:-]*$")
DIGEST_PREFIX = "token-"


def check_token(token: str) -> str:
    """``token`` if it can be a token, else a ValueError that does not quote it."""
    if len(token) < config.MIN_TOKEN_LENGTH:
        raise ValueError(f"a token must have at least {config.MIN_TOKEN_LENGTH} characters")
    if len(token) > config.MAX_TOKEN_LENGTH:
        raise ValueError(f"a token may have at most {config.MAX_TOKEN_LENGTH} characters")
    # Visible ASCII only: it travels in a gRPC metadata value and an HTTP header.
    if not all("!" <= char <= "~" for char in token) or token.startswith("#"):
        raise ValueError("a token may hold visible ASCII characters only, not first '#'")
    return token


def _fields(line: str) -> list[str]:
    """A line's words up to a comment: one that starts a line or follows a blank."""
    fields = line.split()
    for at, field in enumerate(fields):
        if field.startswith("#"):
            return fields[:at]
    return fields


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def default_holder(token: str) -> str:
    """The holder of a token line without a NAME: a short digest, never the token.

    A hash of its own (not the table's lookup digest), cut to a few hex digits.
    """
    digest = hashlib.sha256(b"fractalq holder\0" + token.encode("utf-8", "surrogateescape"))
    return DIGEST_PREFIX + digest.hexdigest()[: config.HOLDER_DIGEST_DIGITS]


def check_holder(name: str) -> str:
    """``name`` if it can name a holder (safe in logs, ids and labels), else a ValueError."""
    if len(name) > config.MAX_HOLDER_NAME_LENGTH or not _HOLDER.match(name):
        raise ValueError(
            f"a NAME is 1-{config.MAX_HOLDER_NAME_LENGTH} letters, digits and . _ @ : -"
            " (starting with a letter or digit)"
        )
    if name.startswith(DIGEST_PREFIX):
        raise ValueError(f"a NAME may not begin with {DIGEST_PREFIX!r} (kept for unnamed tokens)")
    return name


class TokenTable:
    """Known tokens, their roles and holders; :meth:`identify` finds a presented token's."""

    def __init__(self, entries: Iterable[tuple[Role, str] | tuple[Role, str, str]]) -> None:
        self._entries: list[tuple[bytes, Identity]] = []
        for entry in entries:
            role, token = entry[0], entry[1]
            holder = entry[2] if len(entry) > 2 else default_holder(token)
            self._entries.append((_digest(token), Identity(role, holder)))
        if not self._entries:
            raise ValueError("no tokens")
        digests = [digest for digest, _ in self._entries]
        if len(set(digests)) != len(digests):
            raise ValueError("the same token is given twice")

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:  # never the tokens
        return f"TokenTable({len(self._entries)} token(s))"

    def identify(self, presented: str | None) -> Identity | None:
        """Who ``presented`` is, or None; in time independent of the token."""
        if presented is None:
            return None
        digest = _digest(presented)
        found: Identity | None = None
        for known, identity in self._entries:  # no early exit: every entry is compared
            if hmac.compare_digest(known, digest):
                found = identity
        return found

    def role(self, presented: str | None) -> Role | None:
        """The role of ``presented``, or None; in time independent of the token."""
        identity = self.identify(presented)
        return identity.role if identity is not None else None

    @classmethod
    def parse(cls, text: str) -> TokenTable:
        entries: list[tuple[Role, str, str]] = []
        for number, line in enumerate(text.splitlines(), start=1):
            fields = _fields(line)
            if not fields:
                continue
            if len(fields) not in (2, 3):
                raise ValueError(f"line {number}: expected ROLE TOKEN [NAME]")
            name, token = fields[:2]
            try:
                role = Role(name.lower())
            except ValueError:
                roles = ", ".join(r.value for r in Role)
                raise ValueError(f"line {number}: unknown role (one of {roles})") from None
            try:
                check_token(token)
                holder = check_holder(fields[2]) if len(fields) == 3 else default_holder(token)
            except ValueError as error:
                raise ValueError(f"line {number}: {error}") from None
            entries.append((role, token, holder))
        if not entries:
            raise ValueError("no ROLE TOKEN line")
        try:
            return cls(entries)
        except ValueError as error:
            raise ValueError(str(error)) from None

    @classmethod
    def load(cls, path: str | Path) -> TokenTable:
        """The table in ``path``; a ValueError names the file (and line) in one line."""
        try:
            text = Path(path).read_text(encoding="utf-8", errors="surrogateescape")
        except OSError as error:
            raise ValueError(f"cannot read {path}: {error.strerror or error}") from None
        try:
            return cls.parse(text)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None


def bearer(header: str | None) -> str | None:
    """The token of an ``authorization: Bearer TOKEN`` value, or None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def read_token_file(path: str | Path) -> str:
    """The token in a ``--token-file``: its first line that is not blank or a comment."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as error:
        raise ValueError(f"cannot read token file {path}: {error.strerror or error}") from None
    for line in text.splitlines():
        fields = _fields(line)
        if len(fields) == 1:
            try:
                return check_token(fields[0])
            except ValueError as error:
                raise ValueError(f"token file {path}: {error}") from None
        if fields:
            raise ValueError(f"token file {path}: expected the token alone on its line")
    raise ValueError(f"token file {path} holds no token")
