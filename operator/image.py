"""Where a finished render's image comes from: the one place that knows.

Today the operator assembles it: the job's bands are streamed into a PNG
and uploaded through a temporary file, so memory stays bounded; stored at
``<storage>/<namespace>/<name>.png`` and the bands removed. Once the
coordinator runs the assembly as the job's final task, :func:`finished_image`
reads the image's URL from ``Job.result`` instead, and nothing else in the
operator changes.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile

from fractalq.fractal.request import RenderRequest
from fractalq.images import remove_bands, write_png
from fractalq.operator.spec import image_key
from fractalq.proto import fractalq_pb2 as pb
from fractalq.storage import Storage


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
    retry is harmless (the key is a function of the resource).
    """
    key = image_key(namespace, name)
    with tempfile.TemporaryDirectory(prefix="fractalq-assemble-") as folder:
        path = os.path.join(folder, "image.png")
        write_png(storage, job.job_id, request, regions, path)
        storage.put_file(key, path)  # never the whole PNG in memory
    remove_bands(storage, job.job_id, request, regions)
    return Image(storage.url(key), storage.presigned_url(key, expiry))
