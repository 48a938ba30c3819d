"""Interleaved (H, W, C) uint8 frames into planar (C, H, W) memory: the one transposing copy
that a contiguous camera tensor needs.

Decoders produce interleaved RGB. numpy and torch both copy it into planes with a strided
loop that moves one byte per step: about 3 GB/s on the 2-core reference machine, ~80 us for a
240x320 frame, which was a seventh of a single-frame DataLoader worker's time (decoding the
frame costs ~450 us). OpenCV's ``split`` deinterleaves with SIMD shuffles in ~15 us. It is
used when ``cv2`` imports (``opencv-python-headless``, which LeRobot already installs; the
``framestream[fast]`` extra), after a self-check that it writes into the given planes; numpy
is the fallback. Both produce the same bytes. ``FRAMESTREAM_OPENCV=0`` forces numpy, for
comparisons. Channels-last output needs no deinterleave at all (a memcpy).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import numpy as np

Splitter = Callable[[np.ndarray, list[np.ndarray]], object]


@functools.cache
def _opencv_split() -> Splitter | None:
    """``cv2.split`` if it is importable, enabled, and writes into caller-provided planes."""
    if os.environ.get("FRAMESTREAM_OPENCV", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    try:
        import cv2
    except Exception:  # ImportError, or a broken binary wheel (missing system libraries)
        return None
    src = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    dst = np.zeros((3, 5, 7), dtype=np.uint8)
    try:
        cv2.split(src, [dst[0], dst[1], dst[2]])
    except Exception:
        return None
    return cv2.split if np.array_equal(dst, src.transpose(2, 0, 1)) else None


def backend() -> str:
    """Which implementation :func:`to_planar` uses in this process: ``opencv`` or ``numpy``."""
    return "opencv" if _opencv_split() is not None else "numpy"


def to_planar(src: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Copy an (H, W, C) uint8 frame into ``out``, a C-contiguous (C, H, W) uint8 array."""
    split = _opencv_split()
    channels = src.shape[2]
    if (
        split is not None
        and 1 < channels <= 4
        and src.dtype == np.uint8
        and out.dtype == np.uint8
        and out.flags.c_contiguous
        and src.flags.c_contiguous
    ):
        split(src, [out[c] for c in range(channels)])
    else:
        np.copyto(out, src.transpose(2, 0, 1))
    return out
