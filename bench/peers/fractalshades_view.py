"""Times fractalshades on one deep view: run by bench/deep.py with fractalshades' own Python.

    <fractalshades venv>/bin/python bench/peers/fractalshades_view.py X Y WIDTH NX NY MAX_ITER
        [--eps 1e-6] [--runs 3] [--counts-out PATH]

fractalshades needs numpy 2.3 (fractalq pins another), so it lives in a venv of
its own: bench/peers/setup_fractalshades.sh makes one. Prints one JSON line:
the seconds of each run, reference orbit included (the first is a warm-up:
numba compiles), the escape radius used (2, as fractalq counts), and where the
counts went. Its reference is its own choice: it looks for a periodic point
near the centre (ball method and Newton), as it does by default.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import fractalshades as fs
import fractalshades.models as fsm
import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("x", "y", "width"):
        parser.add_argument(name)
    for name in ("nx", "ny", "max_iter"):
        parser.add_argument(name, type=int)
    parser.add_argument("--eps", type=float, default=1e-6)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--counts-out")
    args = parser.parse_args()
    fs.settings.enable_multithreading = True
    fs.settings.verbosity = 0
    digits = max(len(args.x), len(args.y), -Decimal(args.width).adjusted()) + 20
    seconds = []
    with tempfile.TemporaryDirectory() as folder:
        # One model for every run: fractalshades compiles its numba code per model.
        fractal = fsm.Perturbation_mandelbrot(folder)
        for run in range(args.runs + 1):
            # Its reference orbit is computed again each run, as fractalq's is.
            Path(fractal.ref_point_file()).unlink(missing_ok=True)
            began = time.perf_counter()
            # fractalshades' pixels run from edge to edge of dx; fractalq's are
            # pixel centres: this dx and ratio put the two on the same points.
            fractal.zoom(
                precision=digits, x=args.x, y=args.y,
                dx=str(Decimal(args.width) * (args.nx - 1) / args.nx), nx=args.nx,
                xy_ratio=(args.nx - 1) / (args.ny - 1), theta_deg=0.0,
                projection=fs.projection.Cartesian(),
            )  # fmt: skip
            fractal.calc_std_div(
                calc_name=f"div{run}", subset=None, max_iter=args.max_iter, M_divergence=2.0,
                epsilon_stationnary=1e-3, BLA_eps=args.eps, interior_detect=False,
                calc_dzndc=False,
            )  # fmt: skip
            fractal.calc_raw(f"div{run}")
            seconds.append(time.perf_counter() - began)
        if args.counts_out:
            np.save(args.counts_out, _counts(fractal, f"div{args.runs}", args.nx, args.ny))
    print(json.dumps({"seconds": seconds, "radius": 2.0, "counts": args.counts_out}))


def _counts(fractal: fsm.Perturbation_mandelbrot, calc: str, nx: int, ny: int) -> np.ndarray:
    """Each pixel's count as fractalq defines it (iterations within radius 2;
    fractalshades stores the iteration of exit, one more), (ny, nx), row 0 at the top."""
    counts = np.zeros((ny, nx), dtype=np.int64)
    for chunk in fractal.chunk_slices():
        ix, ixx, iy, iyy = chunk
        *_, stop_iter = fractal.reload_data(chunk, calc)  # x fastest, from the top
        counts[iy:iyy, ix:ixx] = stop_iter.reshape(iyy - iy, ixx - ix)
    return counts - 1


if __name__ == "__main__":
    main()
