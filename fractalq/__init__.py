"""fractalq: a distributed task queue that renders Mandelbrot and Julia images.

Layout: the component folders at the top of the repository are subpackages
of this one (``coordinator/`` is ``fractalq.coordinator``, ``worker/`` is
``fractalq.worker``, ``operator/`` is ``fractalq.operator`` and ``proto/`` is
``fractalq.proto``); what several components share (configuration, the task
registry, storage, the fractal maths, the client, the command line) lives
here.
"""

__version__ = "0.1.0"
