"""Storage in a local folder: ``file:///absolute/path``.

Each key is a file under the root folder (``jobs/1/band-0.png`` is
``<root>/jobs/1/band-0.png``); subfolders are created as needed and pruned again
when a delete leaves them empty.

Writes are atomic: the bytes go to a hidden temporary file in the *same* folder
(same file system, so the rename cannot turn into a copy), which then replaces
the target with ``os.replace``. A reader -- the assembler, say, while a
duplicate delivery of a band is being rewritten -- sees the old object or the
new one, never a half-written file. That holds whatever process is killed,
whenever: the file system's page cache outlives the process. Flushing to disk
as well (``fsync=True``: the data and the rename, before ``put`` returns) would
also survive a power cut, but costs two disk flushes per object, about 4 ms a
band on a virtual disk, a third of a small render's time; the default follows
the coordinator's journal (SQLite in WAL mode with ``synchronous=NORMAL``),
which makes the same trade. Clusters keep their objects in S3, where the server
decides.

The process may run as root (in containers it often does), where permission
bits do not stop writes; :meth:`LocalStorage.check` therefore *tries* a write
rather than trusting ``os.access``.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import secrets
import urllib.parse
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

from fractalq.storage.base import (
    ObjectNotFoundError,
    Storage,
    StorageError,
    StorageOptions,
    bad_url,
    validate_expires,
    validate_key,
)
from fractalq.storage.retry import call_with_retry

# Errors that say the folder cannot take writes at all: retrying will not help.
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
# A file where a folder should be, or the other way round.
_IN_THE_WAY = {errno.ENOTDIR, errno.EEXIST, errno.EISDIR}


class LocalStorage(Storage):
    """Objects as files under ``root``, an absolute folder path."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        options: StorageOptions | None = None,
        fsync: bool = False,
    ) -> None:
        path = os.fspath(root)
        if not os.path.isabs(path):
            raise ValueError(f"storage folder must be an absolute path, not {path!r}")
        self.root = Path(os.path.normpath(path))
        self.options = options or StorageOptions()
        self.fsync = fsync

    @classmethod
    def from_url(cls, url: str, *, options: StorageOptions | None = None) -> LocalStorage:
        """Parse ``file:///absolute/path`` (percent-escapes allowed)."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "file":
            raise bad_url(url)
        if parts.netloc not in ("", "localhost"):
            raise bad_url(url, "a file URL needs three slashes before an absolute path")
        if parts.query or parts.fragment:
            raise bad_url(url, "no query or fragment allowed")
        path = urllib.parse.unquote(parts.path)
        if not path.startswith("/"):
            raise bad_url(url, "the path must be absolute")
        return cls(path, options=options)

    @property
    def location(self) -> str:
        return self.root.as_uri()

    # ---- the interface ---------------------------------------------------

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        call_with_retry(
            lambda: self._write(key, path, lambda out: out.write(data)),
            self.options,
            what=f"put {key!r}",
        )

    def get(self, key: str) -> bytes:
        path = self._path(key)
        return call_with_retry(lambda: self._read(key, path), self.options, what=f"get {key!r}")

    def put_file(self, key: str, path: str) -> int:
        target, fill = self._path(key), functools.partial(_copy_from, Path(path))
        return call_with_retry(
            lambda: self._write(key, target, fill), self.options, what=f"put {key!r}"
        )

    def get_file(self, key: str, path: str) -> int:
        source = self._path(key)
        if not source.is_file():
            raise ObjectNotFoundError(f"no object {key!r} in folder {self.root}")
        return _replace_whole(Path(path), functools.partial(_copy_from, source), fsync=False)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, keys: Iterable[str]) -> None:
        # Validate every key before deleting any, so a bad key cannot leave a
        # half-done delete behind.
        paths = [self._path(key) for key in keys]
        for path in paths:
            call_with_retry(functools.partial(self._remove, path), self.options, what="delete")

    def written_before(self, prefix: str, before: float) -> list[str]:
        folder = self._path(prefix.rstrip("/"))
        keys = []
        for parent, _, names in os.walk(folder):
            for name in names:
                path = Path(parent, name)
                with contextlib.suppress(FileNotFoundError):  # removed meanwhile
                    if path.stat().st_mtime < before:
                        keys.append(path.relative_to(self.root).as_posix())
        return sorted(keys)

    def url(self, key: str) -> str:
        return self._path(key).as_uri()

    def presigned_url(self, key: str, expires: int) -> str | None:
        validate_key(key)
        validate_expires(expires)
        return None  # a local folder has no HTTP server to sign for

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise self._os_error(error, None) from error
        if not self.root.is_dir():
            raise StorageError(f"folder {self.root} is not writable: it is a file")
        # Try a real write: as root, os.access() says yes to everything.
        probe = self.root / f".fractalq-check-{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            os.close(fd)
            os.unlink(probe)
        except OSError as error:
            raise self._os_error(error, None) from error

    # ---- helpers ---------------------------------------------------------

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    def _write(self, key: str, path: Path, fill: Callable[[BinaryIO], int]) -> int:
        """Store what ``fill`` writes under ``key``, whole or not at all; its size."""
        folder = path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise self._os_error(error, key) from error
        try:
            size = _replace_whole(path, fill, self.fsync)
            if self.fsync:
                self._fsync_folder(folder)
        except OSError as error:
            raise self._os_error(error, key) from error
        return size

    def _read(self, key: str, path: Path) -> bytes:
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as error:
            raise ObjectNotFoundError(f"no object {key!r} in folder {self.root}") from error
        except PermissionError as error:
            raise StorageError(
                f"cannot read object {key!r} in folder {self.root}: permission denied"
            ) from error
        except OSError as error:
            raise self._os_error(error, key) from error

    def _remove(self, path: Path) -> None:
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return  # no object under this key (a folder is not an object)
        except OSError as error:
            raise self._os_error(error, None) from error
        # Prune folders the delete emptied, up to (not including) the root, so
        # deleting a job's bands leaves no empty job folder behind. A folder
        # that is not empty (or that a concurrent put just refilled) stops it;
        # a put racing with this sees its folder vanish, fails transiently and
        # is retried.
        folder = path.parent
        while folder != self.root and self.root in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                break
            folder = folder.parent

    def _fsync_folder(self, folder: Path) -> None:
        # Makes the rename itself durable; some file systems cannot open a
        # folder for this, which is not worth failing a put over.
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    def _os_error(self, error: OSError, key: str | None) -> StorageError:
        """Translate an ``OSError`` into a one-line :class:`StorageError`."""
        reason = (error.strerror or str(error)).lower()
        code = error.errno
        if code in _NOT_WRITABLE:
            return StorageError(f"folder {self.root} is not writable: {reason}")
        if code in _IN_THE_WAY:
            blocker = _file_in_the_way(Path(error.filename) if error.filename else self.root)
            if blocker is not None and (blocker == self.root or blocker in self.root.parents):
                return StorageError(f"folder {self.root} is not writable: {blocker} is a file")
            what = f"object {key!r}" if key else "a file"
            return StorageError(
                f"cannot store {what} in folder {self.root}: "
                f"a file or folder is in the way ({reason})"
            )
        if code in _NO_SPACE:
            return StorageError(f"no space left in folder {self.root}: {reason}")
        if code == errno.ENAMETOOLONG:
            return StorageError(f"storage key {key!r} is too long for folder {self.root}")
        # Anything else (EIO, EAGAIN, EBUSY, ESTALE on NFS, ENOENT from a
        # concurrent prune, ...) may pass: let the retry helper try again.
        target = f"object {key!r}" if key else "objects"
        return StorageError(
            f"cannot access {target} in folder {self.root}: {reason}", transient=True
        )


def _file_in_the_way(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` (or ``path``) if it is not a folder."""
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return None if candidate.is_dir() else candidate
    return None


def _replace_whole(path: Path, fill: Callable[[BinaryIO], int], fsync: bool) -> int:
    """Write ``path`` through a temporary file beside it, then rename: readers see
    the old file or the new one, never part of it. ``fsync``: the data is on disk
    before the rename makes it visible. Returns what ``fill`` wrote."""
    # Hidden, random and in the same folder: concurrent writers of the same
    # path never share a temporary file, and os.replace stays a rename.
    temp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    # os.open with 0o666 (not tempfile.mkstemp's 0o600) so that the file gets
    # the usual umask-derived permissions.
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        with os.fdopen(fd, "wb") as stream:
            size = fill(stream)
            if fsync:
                stream.flush()
                os.fsync(stream.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return size


def _copy_from(source: Path, out: BinaryIO) -> int:
    """Copy the file ``source`` into ``out`` a megabyte at a time; the bytes copied."""
    size = 0
    with open(source, "rb") as reader:
        while chunk := reader.read(1 << 20):
            size += out.write(chunk)
    return size
