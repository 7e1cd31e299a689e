"""Where a finished render's image is: copied from its job, never made here.

A FractalJob's job has the assembly as its final task (``fractal.assemble``,
see :mod:`fractalq.tasks.assemble`): a worker stores the PNG under
``jobs/<job id>/image.png`` and the job's result names it. The operator only
copies that key's URL, and a presigned link to it, into the status.
"""

from __future__ import annotations

import dataclasses

from fractalq.images import image_of
from fractalq.proto import fractalq_pb2 as pb
from fractalq.storage import Storage


@dataclasses.dataclass(frozen=True)
class Image:
    url: str  # s3://bucket/key or file://...
    link: str | None  # a presigned HTTP link, when the storage makes them


def finished_image(storage: Storage, job: pb.Job, expiry: int) -> Image:
    """The image of a job that succeeded: its URL and a presigned link (signed locally).

    Raises ValueError when the job's result names no image, StorageError when
    a link cannot be signed now.
    """
    key, _size = image_of(job)
    return Image(storage.url(key), storage.presigned_url(key, expiry))
