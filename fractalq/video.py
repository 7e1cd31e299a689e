"""Writing a video file, frame by frame, with PyAV (FFmpeg's libraries, inside its wheel).

Two containers: MP4 with H.264 (libx264, ``yuv420p``, what every browser and
player takes; at ``crf`` 0 lossless RGB instead, ``libx264rgb``, for archives
and tests, which few players take) and WebM with VP9 (libvpx; at ``crf`` 0
lossless, ``gbrp``). Frames are RGB arrays; the encoder converts them.

The bytes are a pure function of the frames and the settings: the thread count
is fixed (``config.VIDEO_THREADS``; x264's and libvpx's output depends on it),
nothing is timed, and the muxer writes no creation time. MP4s are written with
their index first (``+faststart``), so a browser plays one while it downloads.
Frames go to a file: only the encoder's own look-ahead is held in memory (x264's
shortened to ``config.VIDEO_LOOKAHEAD`` frames).
"""

from __future__ import annotations

from fractions import Fraction
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

from fractalq import config

MEDIA_TYPES = {"mp4": "video/mp4", "webm": "video/webm"}


def _settings(container: str, crf: int) -> tuple[str, str, dict[str, str]]:
    """(codec, pixel format, codec options) for a container and quality."""
    if container == "mp4":
        x264 = {"preset": config.VIDEO_PRESET, "rc-lookahead": str(config.VIDEO_LOOKAHEAD)}
        if crf == 0:
            return "libx264rgb", "rgb24", {**x264, "qp": "0"}
        return "libx264", "yuv420p", {**x264, "crf": str(crf)}
    if container == "webm":
        options = {"deadline": "good", "cpu-used": "4", "row-mt": "1", "b": "0"}
        if crf == 0:
            return "libvpx-vp9", "gbrp", {**options, "lossless": "1"}
        return "libvpx-vp9", "yuv420p", {**options, "crf": str(crf)}
    raise ValueError(f"unknown video container {container!r} (known: mp4, webm)")


class VideoWriter:
    """A video file being written: :meth:`write` each frame, then :meth:`close`."""

    def __init__(
        self, path: str, container: str, width: int, height: int, fps: int, crf: int
    ) -> None:
        import av  # FFmpeg's libraries: loaded by the processes that encode only

        codec, pixels, options = _settings(container, crf)
        muxer = {"movflags": "+faststart"} if container == "mp4" else {}
        self._output: Any = av.open(path, "w", format=container, options=muxer)
        try:
            stream: Any = self._output.add_stream(codec, rate=fps, options=options)
            stream.width, stream.height, stream.pix_fmt = width, height, pixels
            stream.time_base = Fraction(1, fps)
            stream.codec_context.thread_count = config.VIDEO_THREADS
        except BaseException:
            self._output.close()
            raise
        self._stream = stream
        self._frame_type: Any = av.VideoFrame
        self.width, self.height = width, height
        self.frames = 0

    def write(self, rgb: npt.NDArray[np.uint8]) -> None:
        if rgb.shape != (self.height, self.width, 3):
            raise ValueError(f"a frame of {rgb.shape} in a {self.width}x{self.height} video")
        frame = self._frame_type.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = self.frames
        self.frames += 1
        for packet in self._stream.encode(frame):
            self._output.mux(packet)

    def close(self) -> None:
        """Flush the encoder and finish the file."""
        try:
            for packet in self._stream.encode(None):
                self._output.mux(packet)
        finally:
            self._output.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if kind is None:
            self.close()
        else:  # the file is abandoned: close it without flushing into a half-made one
            self._output.close()
