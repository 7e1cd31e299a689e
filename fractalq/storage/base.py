"""The storage interface every backend implements, its errors and its options.

Storage holds opaque objects (rendered bands, finished images) under *keys*:
relative paths with ``/`` separators such as ``jobs/42/band-0003.png``. The
interface is deliberately small -- put, get, exists, delete, url, presigned_url
and an up-front check -- so that a local folder and an S3 bucket behave the same
and the rest of fractalq never knows which one it has.

Contracts shared by all backends:

* ``put`` is atomic: a reader sees either the previous object or the new one,
  never a half-written one. Together with keys that are pure functions of job
  and band, this is what makes at-least-once delivery harmless.
* Every failure is a :class:`StorageError` whose message is one readable line
  naming the problem (the command line prints it as is). ``transient`` tells the
  retry helper whether trying again can help.
* A missing object is an :class:`ObjectNotFoundError`, a subclass, so callers
  can tell "not there (yet)" from "storage is broken".
* Invalid keys are a programming error, hence ``ValueError``, raised before any
  I/O.
"""

from __future__ import annotations

import abc
import dataclasses
import urllib.parse
from collections.abc import Iterable

from fractalq.config import (
    PRESIGNED_URL_MAX_EXPIRES,
    S3_CLIENT_MAX_ATTEMPTS,
    STORAGE_ATTEMPTS,
    STORAGE_CONNECT_TIMEOUT,
    STORAGE_READ_TIMEOUT,
    STORAGE_RETRY_BASE_DELAY,
    STORAGE_RETRY_MAX_DELAY,
)

STORAGE_URL_FORMS = "file:///absolute/path or s3://bucket/prefix"


class StorageError(Exception):
    """A storage operation failed; ``str(error)`` is one line naming the problem.

    ``transient`` is true for failures that may go away by themselves (a
    dropped connection, a timeout, a 5xx, throttling) and false for those that
    will not (a missing bucket, wrong credentials, a missing object, a read-only
    folder): only transient errors are retried.
    """

    def __init__(self, message: str, transient: bool = False) -> None:
        # Collapse whitespace so that a server's multi-line message cannot
        # break the one-line promise the command line relies on.
        self.message = " ".join(str(message).split())
        self.transient = transient
        super().__init__(self.message)

    def __reduce__(self) -> tuple[type[StorageError], tuple[str, bool]]:
        # Workers may run in child processes; keep the flag across pickling
        # (the default reduce would only pass the message back).
        return (type(self), (self.message, self.transient))


class ObjectNotFoundError(StorageError):
    """The key names no object. Never transient."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message, False)


@dataclasses.dataclass(frozen=True)
class StorageOptions:
    """Retry and timeout settings; the defaults come from :mod:`fractalq.config`.

    ``attempts`` counts fractalq's own attempts per operation (1 means no
    retry); ``s3_max_attempts`` is what botocore makes per request underneath,
    in its "standard" retry mode, which is best placed to handle throttling.
    ``public_endpoint`` (S3 only) is the endpoint presigned URLs are signed for,
    when people reach the server at another address than this process does
    (``http://localhost:9000`` through a port-forward, a public host name);
    nothing else is sent there.
    """

    attempts: int = STORAGE_ATTEMPTS
    retry_base_delay: float = STORAGE_RETRY_BASE_DELAY
    retry_max_delay: float = STORAGE_RETRY_MAX_DELAY
    connect_timeout: float = STORAGE_CONNECT_TIMEOUT
    read_timeout: float = STORAGE_READ_TIMEOUT
    s3_max_attempts: int = S3_CLIENT_MAX_ATTEMPTS
    public_endpoint: str | None = None

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.s3_max_attempts < 1:
            raise ValueError("storage attempts must be at least 1")
        if min(self.retry_base_delay, self.retry_max_delay) < 0:
            raise ValueError("storage retry delays must not be negative")
        if min(self.connect_timeout, self.read_timeout) <= 0:
            raise ValueError("storage timeouts must be positive")
        if self.public_endpoint is not None:
            parts = urllib.parse.urlsplit(self.public_endpoint)
            if (
                parts.scheme not in ("http", "https")
                or not parts.hostname
                or parts.path not in ("", "/")
                or parts.query
                or parts.fragment
                or parts.username
            ):
                raise ValueError(
                    f"public endpoint must be http(s)://host[:port], not {self.public_endpoint!r}"
                )


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative key, else raise ``ValueError``.

    Stricter than either backend needs on its own: empty segments (``a//b``,
    a trailing ``/``) and ``.`` segments are refused as well as ``..``, because a
    folder would fold them away while S3 would keep them, and one key must name
    the same object in both.
    """
    if not isinstance(key, str) or not key:
        raise ValueError(f"storage key must be a non-empty string, not {key!r}")
    if key.startswith("/"):
        raise ValueError(f"storage key must be relative, not {key!r}")
    if "\\" in key or "\0" in key:
        raise ValueError(f"storage key must not contain a backslash or NUL: {key!r}")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise ValueError(f"storage key must not contain empty, '.' or '..' segments: {key!r}")
    return key


def validate_expires(expires: int) -> int:
    """Seconds a presigned URL stays valid: 1 up to SigV4's limit of seven days."""
    if not isinstance(expires, int) or not 1 <= expires <= PRESIGNED_URL_MAX_EXPIRES:
        raise ValueError(
            f"presigned URL expiry must be 1..{PRESIGNED_URL_MAX_EXPIRES} seconds, not {expires!r}"
        )
    return expires


def bad_url(url: str, reason: str | None = None) -> ValueError:
    """The one-line error for a storage URL that no backend accepts."""
    detail = f" ({reason})" if reason else ""
    return ValueError(f"storage URL must be {STORAGE_URL_FORMS}, not {url!r}{detail}")


class Storage(abc.ABC):
    """Objects under relative keys; see the module docstring for the contracts.

    Implementations are cheap to construct and safe to pickle, so a storage
    object (or just its :attr:`location`) can be handed to another process,
    which opens its own connections on first use.
    """

    options: StorageOptions

    @property
    @abc.abstractmethod
    def location(self) -> str:
        """The canonical URL of the storage root; ``open_storage`` accepts it back."""

    @abc.abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` atomically, replacing any previous object."""

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """The object under ``key``; :class:`ObjectNotFoundError` if there is none."""

    @abc.abstractmethod
    def put_file(self, key: str, path: str) -> int:
        """Store the file at ``path`` under ``key`` atomically; returns its size.

        Memory stays bounded whatever the size (S3: a multipart upload)."""

    @abc.abstractmethod
    def get_file(self, key: str, path: str) -> int:
        """Write the object under ``key`` to ``path`` (replaced whole, never half-written);
        returns its size. :class:`ObjectNotFoundError` if there is none."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""

    @abc.abstractmethod
    def delete(self, keys: Iterable[str]) -> None:
        """Remove the objects under ``keys``; keys with no object are ignored."""

    @abc.abstractmethod
    def written_before(self, prefix: str, before: float) -> list[str]:
        """The keys under ``prefix`` (a folder: ``jobs/``) whose objects were last
        written before ``before`` (Unix time); for sweeping what nobody removed."""

    @abc.abstractmethod
    def url(self, key: str) -> str:
        """The canonical location of ``key`` (``file:///...`` or ``s3://...``)."""

    @abc.abstractmethod
    def presigned_url(self, key: str, expires: int) -> str | None:
        """An HTTP(S) URL anyone can GET for ``expires`` seconds, or None if the
        backend has no such thing (a local folder)."""

    @abc.abstractmethod
    def check(self) -> None:
        """Raise :class:`StorageError` unless the storage looks usable (folder
        writable; bucket reachable with working credentials)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location!r})"
