"""Seeding numba's cache with the kernels compiled when the image was built.

numba keeps each compiled kernel (``cache=True``) in ``NUMBA_CACHE_DIR``, keyed by
the hash of its source file, its argument types and the CPU it was compiled for
(name and features). It only uses a directory it can write to: it checks by
creating a file there, and it adds entries (another signature, another CPU) to
the files already there. So a read-only cache cannot be the cache directory.

The image names its read-only folder of compiled kernels
(:mod:`fractalq.fractal.kernel_cache` makes it) in ``FRACTALQ_KERNEL_CACHE``.
Before the first kernel is defined, :func:`seed` copies what the writable
``NUMBA_CACHE_DIR`` (the pod's /tmp) lacks out of it. On a CPU like the build
machine's, numba then loads every kernel instead of compiling it; on any other
CPU it finds no entry for that CPU, compiles and saves into the writable
directory, as without the copy.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from fractalq import config

log = logging.getLogger(__name__)

_seeded = False


def numba_cache_dir() -> str:
    """numba's ``NUMBA_CACHE_DIR`` as numba read it ("" when unset)."""
    import numba

    return str(getattr(numba.config, "CACHE_DIR", "") or "")


def seed(cache_dir: str, environ: Mapping[str, str] = os.environ) -> int:
    """Copy the kernels of ``$FRACTALQ_KERNEL_CACHE`` that ``cache_dir`` lacks into it.

    Once per process; returns the number of files copied. A copy that fails is
    logged and skipped: numba then compiles what it does not find.
    """
    global _seeded
    source = environ.get(config.KERNEL_CACHE_VARIABLE, "")
    if _seeded or not source or not cache_dir:
        return 0
    _seeded = True
    origin, target = Path(source), Path(cache_dir)
    try:
        if not origin.is_dir() or (target.exists() and target.samefile(origin)):
            return 0
        return _copy_missing(origin, target)
    except OSError as error:
        log.warning("compiled kernels not copied from %s to %s: %s", origin, target, error)
        return 0


def _copy_missing(origin: Path, target: Path) -> int:
    copied = 0
    for path in sorted(origin.rglob("*")):
        if not path.is_file():
            continue
        destination = target / path.relative_to(origin)
        if destination.exists():
            continue  # numba's own file, or one copied before: never overwritten
        destination.parent.mkdir(parents=True, exist_ok=True)
        # Written under a private name, then linked into place: another process of
        # the same pod seeding at the same moment never reads half a file.
        partial = destination.with_name(f".{destination.name}.{os.getpid()}.part")
        partial.write_bytes(path.read_bytes())
        try:
            os.link(partial, destination)
            copied += 1
        except FileExistsError:
            pass
        finally:
            partial.unlink()
    return copied
