"""The expected image: a request rendered in one piece, in this process, without a queue."""

from __future__ import annotations

import io

from fractalq.fractal.png import PngWriter
from fractalq.fractal.render import render_rows
from fractalq.fractal.request import RenderRequest


def reference_png(request: RenderRequest) -> bytes:
    out = io.BytesIO()
    with PngWriter(out, request.width, request.height) as writer:
        writer.write_rows(render_rows(request, 0, request.height))
    return out.getvalue()
