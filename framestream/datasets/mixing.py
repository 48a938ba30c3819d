"""How the streaming dataset cuts episodes for mixing: piece size and open pieces, by default.

Why here: the plan (:mod:`framestream.stream.plan`) is pure and takes the piece size as a
number; what that number should be depends on the dataset (its camera window, its videos'
keyframe spacing, where its bytes come from), which only the dataset knows. Each rule bounds
what a cut costs: frames decoded twice, or a seek, kept under 1/16 of the frames decoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from framestream.decode.gop import keyframe_interval
from framestream.stream.plan import MIN_CHUNK

__all__ = ["auto_active", "camera_span", "keyframe_interval", "mix_chunk"]


def camera_span(meta: Any, window: Any) -> int:
    """Frames between the first and last frame of a camera window (0: one frame)."""
    spans = [np.ptp(window.frame_offsets(k)) for k in meta.video_keys]
    return int(max(spans, default=0))


def auto_active(span: int, pieces: bool) -> int:
    """Pieces open at once per worker: 32 mixes like a global shuffle on the benchmark
    dataset, but each open piece holds its window's frames, so long windows open fewer:
    512 / span, at least 8. Whole episodes (``pieces`` False: long windows or GOPs, ranged
    sources) keep the 8 open that streamed them before."""
    return int(np.clip(512 // max(1, span), 8, 32)) if pieces else 8


def mix_chunk(options: Any, meta: Any, window: Any, episodes: Sequence[int]) -> int:
    """Frames per shuffled piece of an episode (0: whole episodes).

    ``options.shuffle_chunk`` when given; 0 with ``shuffle_pieces=False``. Otherwise the
    smallest piece whose cuts cost under 1/16 of its frames: 16 frames, times the camera
    window's span (a cut decodes the span twice) or half the keyframe interval (a piece starts
    with a seek that decodes up to a keyframe interval of frames it does not use: long-GOP H.264
    gets whole episodes). Remote sources keep whole episodes: pieces would spread every episode
    over every rank, so each node would fetch (and, read as byte ranges, open a decoder per
    piece of) nearly every file, and the keyframe probe itself would fetch a file at
    construction. ``on_error="skip"`` keeps them too: a bad episode is then dropped whole, once,
    not piece by piece.
    """
    if not options.shuffle:
        return 0
    if options.shuffle_chunk is None and not options.shuffle_pieces:
        return 0
    if options.shuffle_chunk is not None:
        return int(options.shuffle_chunk)
    if not meta.video_keys or not len(episodes):
        return MIN_CHUNK
    if not meta.source.is_local or options.on_error == "skip":
        return 0
    gop = keyframe_interval(meta, int(episodes[0]))
    return MIN_CHUNK * max(1, camera_span(meta, window), gop // 2) if gop else 0
