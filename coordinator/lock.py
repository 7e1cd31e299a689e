"""What must hold before a coordinator serves: its data folder and its ports.

One coordinator per data folder: a second one on the same SQLite database would
hand out the same tasks and fail on the first insert. :class:`DataFolderLock`
takes an exclusive ``flock`` on ``<data>/fractalq.lock`` and keeps it for the
process's life; the kernel drops it when the process ends, however it ends, so
there is never a stale lock to clean up. The file holds the owner's pid, which
only serves to say who is in the way.

One coordinator per port: gRPC is told not to share ports (``SO_REUSEPORT``
would let a second server take half of the connections), and
:func:`check_listen` tries the address with a plain socket first, so that what
is in the way is named in our words instead of gRPC's "Failed to bind".

Every failure here is a :class:`StartupError`: one line for the user.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket

LOCK_FILE = "fractalq.lock"


class StartupError(Exception):
    """The coordinator cannot start; the message is one line saying what is in the way."""


class DataFolderInUse(StartupError):
    """Another process holds the data folder's lock."""


def show_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class DataFolderLock:
    """An exclusive lock on a data folder, held until :meth:`release` or exit."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.path = os.path.join(folder, LOCK_FILE)
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise StartupError(f"data folder {folder} is not a folder")
        try:
            os.makedirs(folder, exist_ok=True)
            # No O_TRUNC: a second coordinator must not touch the owner's pid.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as error:
            raise StartupError(f"cannot use data folder {folder}: {error.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = _read_pid(fd)
            os.close(fd)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                by = f" (pid {holder})" if holder else ""
                raise DataFolderInUse(
                    f"data folder {folder} is in use by another coordinator{by}"
                ) from None
            raise StartupError(f"cannot lock data folder {folder}: {error.strerror}") from None
        self._fd: int | None = fd
        with contextlib.suppress(OSError):  # the pid is only informative
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def check_listen(host: str, port: int, what: str) -> None:
    """Raise :class:`StartupError` unless ``host:port`` can be listened on now.

    Binds (without listening) each address ``host`` resolves to, as a server
    would with ``SO_REUSEADDR``; a port another process listens on is refused
    even so. An address family this machine lacks (IPv6 for ``localhost``) is
    not an error as long as one address works, as with gRPC itself.
    """
    where = f"cannot listen on {show_address(host, port)} ({what})"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as error:
        reason = error.strerror if isinstance(error, socket.gaierror) else "not a host name"
        raise StartupError(f"{where}: unknown host ({reason})") from None
    failures: list[OSError] = []
    for family, kind, proto, _, address in infos:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise StartupError(f"{where}: the port is already in use") from None
            if error.errno == errno.EACCES:
                raise StartupError(f"{where}: permission denied") from None
            failures.append(error)
    if failures and len(failures) == len(infos):
        raise StartupError(f"{where}: {failures[0].strerror}")
