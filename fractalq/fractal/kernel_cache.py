"""The kernels' machine code, compiled once when the image is built.

The image runs ``python -m fractalq.fractal.kernel_cache`` at build time with
``NUMBA_CACHE_DIR`` inside the image, which compiles every kernel for every
signature a render uses (:func:`compile_all`), and names that directory, read-only
at run time, in ``FRACTALQ_KERNEL_CACHE``. Before the first kernel is defined,
:mod:`fractalq.fractal.numba_cache` copies what the writable ``NUMBA_CACHE_DIR``
(the pod's /tmp) lacks out of it. On a CPU like the build machine's, numba then loads every kernel
instead of compiling it: a worker's first band starts a fraction of a second
after it registers, instead of 5-10 s. On any other CPU numba finds no entry for
that CPU, compiles and saves into the writable directory, as without the copy.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fractalq.fractal import numba_cache

log = logging.getLogger(__name__)


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

    from fractalq.fractal import bla, fast, fast_colour, fixedpoint, perturb, precise, scheduler

    return [bla.compiled_build()] + [
        value
        for module in (fast, fast_colour, perturb, precise, fixedpoint, scheduler)
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
        cache_dir = numba_cache.numba_cache_dir()
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
