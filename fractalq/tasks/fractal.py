"""The fractal task types, registered through the ``fractalq.tasks`` entry point.

fractalq's own application registers its task types the way any package does
(``[project.entry-points."fractalq.tasks"]`` in pyproject.toml names this
module): importing it imports each module below, and each registers its types
with :func:`~fractalq.tasks.task_type`. A new fractal task type is a module
listed here.
"""

from fractalq.tasks import (  # noqa: F401 (each registers its types when imported)
    assemble,  # fractal.assemble, fractal.cleanup
    band,  # fractal.band
    encode,  # fractal.encode, fractal.zoom-cleanup
    reference,  # fractal.reference
    sweep,  # storage.sweep
    tile,  # fractal.tile
    zoom,  # fractal.orbits, fractal.keyframe
)
