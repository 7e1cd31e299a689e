"""The fractal maths: requests, escape-time kernels, palettes and PNG encoding.

Plain typed modules, shared by the command line, the coordinator (to check a
request before queueing it), the workers (to render bands) and the assembler.
Nothing here does I/O except :mod:`.png` writing to a file object it is given.
"""

from fractalq.fractal.kernels import DEFAULT_KERNEL, KERNELS, escape
from fractalq.fractal.palettes import DEFAULT_PALETTE, PALETTES, Palette, colorize
from fractalq.fractal.png import PngWriter, assemble, decode_band, encode_band
from fractalq.fractal.render import render_rows
from fractalq.fractal.request import (
    FRACTALS,
    BandPlan,
    RenderRequest,
    band_plan,
    band_rows,
    split_rows,
)

__all__ = [
    "DEFAULT_KERNEL",
    "DEFAULT_PALETTE",
    "FRACTALS",
    "KERNELS",
    "PALETTES",
    "BandPlan",
    "Palette",
    "PngWriter",
    "RenderRequest",
    "assemble",
    "band_plan",
    "band_rows",
    "colorize",
    "decode_band",
    "encode_band",
    "escape",
    "render_rows",
    "split_rows",
]
