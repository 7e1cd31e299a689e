"""How the compiled kernels are compiled: numba, cached on disk, without the GIL.

Every numba module of :mod:`fractalq.fractal` decorates its functions with
:func:`compiled` (a function of its own: compiled once per machine, ``cache=True``,
the machine code kept next to its source file or under ``NUMBA_CACHE_DIR``, and
run without the interpreter lock, ``nogil=True``, so threads render bands side by
side) or :func:`inlined` (a helper numba writes into its caller, so LLVM sees one
loop body). Importing this module first seeds numba's cache folder with the
kernels compiled ahead into the image, if any (:mod:`.kernel_cache`): numba picks
that folder when the first kernel is defined.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba

from fractalq.fractal import numba_cache

numba_cache.seed(numba_cache.numba_cache_dir())

F = TypeVar("F", bound=Callable[..., Any])


def compiled(function: F) -> F:
    """A numba function: compiled once, cached on disk, run without the GIL."""
    return cast(F, numba.njit(cache=True, nogil=True)(function))


def inlined(function: F) -> F:
    """A helper inlined by numba into its caller, so LLVM sees one loop body."""
    return cast(F, numba.njit(cache=True, nogil=True, inline="always")(function))
