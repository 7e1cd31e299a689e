"""Object storage for bands and images: one interface, two backends.

``open_storage(url)`` picks the backend from the URL's scheme:

* ``file:///absolute/path`` -- :class:`~fractalq.storage.local.LocalStorage`,
  a local folder (the demo, single-machine runs, tests);
* ``s3://bucket/prefix`` -- :class:`~fractalq.storage.s3.S3Storage`, any
  S3-compatible server, configured by the standard ``AWS_*`` variables.

Commands call :func:`check_storage` before starting work, so that a typo in a
bucket name or a wrong secret is one clear line at start-up rather than a
failed task minutes later.

The S3 backend (and with it boto3, a noticeable import) is only imported when
an ``s3://`` URL is opened, so local runs stay quick to start.
"""

from __future__ import annotations

import functools
import secrets
import urllib.parse

from fractalq.storage.base import (
    STORAGE_URL_FORMS,
    ObjectNotFoundError,
    Storage,
    StorageError,
    StorageOptions,
    bad_url,
    validate_key,
)
from fractalq.storage.local import LocalStorage

__all__ = [
    "STORAGE_URL_FORMS",
    "LocalStorage",
    "ObjectNotFoundError",
    "Storage",
    "StorageError",
    "StorageOptions",
    "check_storage",
    "open_storage",
    "shared_storage",
    "validate_key",
]


def open_storage(url: str, *, options: StorageOptions | None = None) -> Storage:
    """The storage a URL names; ``ValueError`` (one line) for anything else.

    Cheap and offline: nothing is created or contacted until the first call.
    """
    if not isinstance(url, str):
        raise bad_url(repr(url))
    scheme = urllib.parse.urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme == "file":
        return LocalStorage.from_url(url, options=options)
    if scheme == "s3":
        from fractalq.storage.s3 import S3Storage  # deferred: boto3 is slow to import

        return S3Storage.from_url(url, options=options)
    raise bad_url(url)


@functools.lru_cache(maxsize=8)
def shared_storage(url: str) -> Storage:
    """One storage object per URL in this process, so tasks reuse its connections."""
    return open_storage(url)


def check_storage(storage: Storage) -> None:
    """Raise :class:`StorageError` unless ``storage`` is usable right now.

    A folder must exist (or be creatable) and take a test write; a bucket must
    exist and the credentials must work for it. Then a probe object is
    written, read back and deleted through the storage itself: credentials
    that may read a bucket but not write to it, or a folder that takes a file
    but not its contents, fail here and not in every task a worker takes.
    """
    storage.check()
    key = f".fractalq-probe-{secrets.token_hex(8)}"
    data = f"fractalq storage probe {key}\n".encode()
    storage.put(key, data)
    try:
        if storage.get(key) != data:
            raise StorageError(
                f"storage {storage.location} gave back other bytes than were written"
            )
    finally:
        storage.delete([key])
