"""The kernels' machine code, compiled once when the image is built.

numba keeps each compiled kernel (``cache=True``) in ``NUMBA_CACHE_DIR``, keyed by
the hash of its source file, its argument types and the CPU it was compiled for
(name and features). It only uses a directory it can write to: it checks by
creating a file there, and it adds entries (another signature, another CPU) to
the files already there. So a read-only cache cannot be the cache directory.

The image runs ``python -m fractalq.fractal.kernel_cache`` at build time with
``NUMBA_CACHE_DIR`` inside the image, which compiles every kernel for every
signature a render uses (:func:`compile_all`), and names that directory, read-only
at run time, in ``FRACTALQ_KERNEL_CACHE``. Before the first kernel is defined,
:func:`seed` copies what the writable ``NUMBA_CACHE_DIR`` (the pod's /tmp) lacks
out of it. On a CPU like the build machine's, numba then loads every kernel
instead of compiling it: a worker's first band starts a fraction of a second
after it registers, instead of 5-10 s. On any other CPU numba finds no entry for
that CPU, compiles and saves into the writable directory, as without the copy.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


# ---- compiling every kernel (at build time) ----------------------------------


@dataclass(frozen=True)
class Compiled:
    """What running every kernel did: signatures loaded from the cache, and compiled."""

    kernels: int
    loaded: int
    compiled: int


def _requests() -> Iterator[object]:
    """Requests that between them run every kernel with every argument type a render uses."""
    from fractalq.fractal.palettes import PALETTES
    from fractalq.fractal.request import FRACTALS, RenderRequest

    for fractal in FRACTALS:
        # Each palette: the colouring is compiled per palette's number of segments.
        for palette in PALETTES:
            yield RenderRequest.create(fractal, width=8, height=2, max_iter=64, palette=palette)
        # Wider than one chunk of the compiled loop (fast.CHUNK_PIXELS).
        yield RenderRequest.create(fractal, width=640, height=480, max_iter=32)
        # Deep views: perturbation in float64, and past float64's exponents (scaled).
        for view_width in ("1e-30", "1e-400"):
            yield RenderRequest.create(
                fractal,
                width=8,
                height=2,
                max_iter=64,
                center_x="-0.75" if fractal == "mandelbrot" else "0",
                center_y="0.1",
                view_width=view_width,
            )


def _dispatchers() -> list[Any]:
    import numba.core.dispatcher

    from fractalq.fractal import bla, fast, fast_colour, fixedpoint, perturb, precise

    return [bla.compiled_build()] + [
        value
        for module in (fast, fast_colour, perturb, precise, fixedpoint)
        for value in vars(module).values()
        if isinstance(value, numba.core.dispatcher.Dispatcher)
    ]


def _precise_pixels() -> None:
    """The double-double path, plain and scaled: only pixels too sensitive for
    float64 take it, which no small request above is sure to have."""
    import numpy as np

    from fractalq.fractal import depth, perturb, precise
    from fractalq.fractal import reference as orbits
    from fractalq.fractal.request import RenderRequest

    for view_width in ("1e-30", "1e-400"):
        request = RenderRequest.create(
            width=4, height=1, max_iter=64, center_x="-0.75", center_y="0.1", view_width=view_width
        )
        reference = orbits.compute(request)
        _, exponent = perturb.pixel_scale(request)
        exponent = 0 if exponent >= depth.SCALED_BELOW else exponent
        high, low = perturb._pixel_size(request, exponent)
        offsets = np.arange(4.0) - 1.5
        out = np.empty(4), np.empty(4)
        precise.escape_pixels(
            perturb._pairs(reference.orbit), perturb._pairs(reference.orbit_lo),
            reference.start.size - 1, 0, reference.start.size - 1, offsets, np.zeros(1),
            np.arange(4), high, low, exponent, False, request.cx, request.cy,
            request.max_iter, np.empty(4, np.int32), *out,
        )  # fmt: skip


def compile_all() -> Compiled:
    """Render every request of :func:`_requests`: numba loads or compiles each kernel."""
    from fractalq.fractal.render import render_rows
    from fractalq.fractal.request import RenderRequest

    for request in _requests():
        assert isinstance(request, RenderRequest)
        render_rows(request, 0, request.height)
    _precise_pixels()
    dispatchers = _dispatchers()
    loaded = sum(sum(d.stats.cache_hits.values()) for d in dispatchers)
    compiled = sum(sum(d.stats.cache_misses.values()) for d in dispatchers)
    return Compiled(len(dispatchers), loaded, compiled)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fractalq.fractal.kernel_cache",
        description="Compile every kernel into NUMBA_CACHE_DIR (or load it from there).",
    )
    parser.add_argument(
        "--require-cached",
        action="store_true",
        help="exit 1 if any kernel had to be compiled rather than loaded from the cache",
    )
    args = parser.parse_args(argv)
    try:
        cache_dir = numba_cache_dir()
    except ImportError:
        print("numba is not installed: there is nothing to compile", file=sys.stderr)
        return 1 if args.require_cached else 0
    result = compile_all()
    print(
        f"{result.kernels} kernels: {result.loaded} signatures loaded from the cache, "
        f"{result.compiled} compiled (NUMBA_CACHE_DIR={cache_dir or 'unset'})"
    )
    return 1 if args.require_cached and result.compiled else 0


if __name__ == "__main__":
    sys.exit(main())
