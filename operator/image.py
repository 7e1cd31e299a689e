"""Where a finished render's image comes from: the one place that knows.

Two ways, told apart by the job itself:

- the job's final task assembled it (``fractal.assemble``, see
  :mod:`fractalq.tasks.assemble`): ``Job.result`` names its key, which the
  operator copies into the status;
- the job is bands only: the operator assembles it, streaming the bands into a
  PNG in a temporary file (memory stays bounded), uploading it to
  ``<storage>/<namespace>/<name>.png`` and removing the bands.

The operator still submits bands only (``QUEUE_ASSEMBLES``): turning that on
makes the coordinator assemble every FractalJob's image, under
``jobs/<job id>/image.png`` rather than ``<namespace>/<name>.png``, and
nothing else in the operator changes.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile

from fractalq.fractal.request import RenderRequest
from fractalq.images import image_of, remove_bands, write_png
from fractalq.operator.spec import image_key
from fractalq.proto import fractalq_pb2 as pb
from fractalq.storage import Storage

QUEUE_ASSEMBLES = False  # submit renders with the assembly as their final task


@dataclasses.dataclass(frozen=True)
class Image:
    url: str  # s3://bucket/key or file://...
    link: str | None  # a presigned HTTP link, when the storage makes them


def finished_image(
    storage: Storage,
    job: pb.Job,
    request: RenderRequest,
    regions: int,
    namespace: str,
    name: str,
    expiry: int,
) -> Image:
    """The image of a job that succeeded (blocking: storage calls, maybe an assembly).

    Raises StorageError, ValueError or OSError when it cannot be had now; a
    retry is harmless (either key is a function of the job or the resource).
    """
    if job.HasField("final"):
        key, _size = image_of(job)
    else:
        key = image_key(namespace, name)
        with tempfile.TemporaryDirectory(prefix="fractalq-assemble-") as folder:
            path = os.path.join(folder, "image.png")
            write_png(storage, job.job_id, request, regions, path)
            storage.put_file(key, path)  # never the whole PNG in memory
        remove_bands(storage, job.job_id, request, regions)
    return Image(storage.url(key), storage.presigned_url(key, expiry))
