"""A PyAV decoder that returns I420 planes (``pixel_format="yuv420"``), not RGB.

No colour conversion happens in the worker: each frame's planes are copied once, row by
row, into one ``(H*3/2, W)`` uint8 array (1.5 bytes per pixel). The training process turns
them into torchcodec's exact RGB with :func:`framestream.yuv_to_rgb`, on its GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from framestream._errors import VideoDecodeError
from framestream.decode.yuv import i420_into


class PyAVYuvFile:
    """I420 output over a PyAV reader (``decode.video._PyAVFile``: its seeking and
    frame choice, ``_frame_at(t) -> (pts, av.VideoFrame)``); ``colorspace`` is the stream's
    ``AVColorSpace``, known after the first frame."""

    def __init__(self, reader: Any) -> None:
        self._reader = reader
        self.colorspace: int | None = None

    def close(self) -> None:
        self._reader.close()

    def frames_at(self, seconds: Sequence[float]) -> tuple[torch.Tensor, np.ndarray]:
        found = [self._reader._frame_at(float(t)) for t in seconds]
        first = found[0][1]
        h, w = first.height, first.width
        out = np.empty((len(found), h * 3 // 2, w), dtype=np.uint8)
        for i, (_, frame) in enumerate(found):
            cs = int(frame.colorspace or 2)
            if self.colorspace is None:
                self.colorspace = cs
            elif cs != self.colorspace or frame.height != h or frame.width != w:
                raise VideoDecodeError(
                    f"pixel_format='yuv420': the colour space or size changed within the file "
                    f"({self.colorspace} -> {cs}, {w}x{h} -> {frame.width}x{frame.height})"
                )
            try:
                i420_into(frame, out[i])
            except ValueError as exc:
                raise VideoDecodeError(str(exc)) from exc
        pts = np.asarray([p for p, _ in found], dtype=np.float64)
        return torch.from_numpy(out), pts
