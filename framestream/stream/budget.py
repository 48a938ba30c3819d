"""A worker's memory budget: how it resolves ("auto") and how it splits into decoders,
batches and decoded frames (the :class:`~framestream.stream.ledger.MemoryModel` the schedule's
ledger keeps). Beside the ledger, not in the worker: resume and elastic merges build schedules
with the same model and no worker at all.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from framestream.format.checks import declared_frame_shape
from framestream.format.meta import DatasetMeta
from framestream.stream import ledger as _ledger
from framestream.stream.ledger import MemoryModel
from framestream.stream.options import (
    AUTO_MAX_MEMORY_BUDGET,
    DEFAULT_MEMORY_BUDGET,
    StreamOptions,
)
from framestream.stream.sample import WindowSpec
from framestream.stream.schedule import ScheduleConfig

__all__ = ["memory_model", "resolve_budget", "schedule_config"]


# An open decoder's own memory: a fixed part plus frames of its I420 size (torchcodec, one
# thread, RSS per extra open decoder: AV1 1.2 MB at 240x320 and 5.1 MB at 480x640, H.264
# 2.6 MB and 4.9 MB; 1.5 MB + 8 frames covers each within 10 %, over rather than under).
DECODER_FIXED_BYTES = 3 << 19
DECODER_FRAMES = 8
# Shuffled readers end each decode call just before a frame at a multiple of this within
# its episode. Why: a shuffled reader decodes a few frames per call and its decoder, shared
# with the other open segments of the file, seeks between calls; a seek costs ~0.25 ms, and
# one that lands on a frame that is not a keyframe also decodes the keyframe before it and
# throws it away. LeRobot encodes each episode alone with a GOP of 2 (keyframes at even
# frames of the episode), so ending calls at even frames makes every seek land on a
# keyframe: decode calls of a single-frame stream replayed on one core went from 433 to 361
# us per frame with whole episodes, 553 to 495 with shuffle pieces. For other GOPs it costs
# at most one more held frame per call (the ledger accounts for it). It is a constant, not
# read from the files, so that the order stays a function of the metadata and options: a
# local copy and its remote original stream the same samples.
DECODE_ALIGN = 2
# "auto": frames at least this (about what 80 MB leaves for frames on the benchmark dataset)
AUTO_MIN_FRAMES_BYTES = 25 << 20
DECODE_CHUNK = 16  # the most frames a reader decodes at once beyond what a sample needs


def memory_model(meta: DatasetMeta, window: WindowSpec, options: StreamOptions) -> MemoryModel:
    """How a worker's budget splits: open decoders (estimated), 3/8 for batches, the
    rest for decoded frames (accounted exactly by the schedule's ledger)."""
    keys = meta.video_keys
    frame_bytes, decoder_bytes = [], 0
    shapes = [declared_frame_shape(meta.features[k]) for k in keys]
    for key, shape in zip(keys, shapes, strict=True):
        h, w, _ = shape or (0, 0, 3)
        if meta.features[key].is_depth:
            frame_bytes.append(h * w * 2)  # uint16 codes
        elif options.pixel_format == "yuv420":
            frame_bytes.append(h * w * 3 // 2)
        else:
            frame_bytes.append(h * w * 3)  # uint8, whatever the output dtype
        decoder_bytes = max(decoder_bytes, DECODER_FIXED_BYTES + DECODER_FRAMES * h * w * 3 // 2)
    files = sum(
        len(np.unique(meta.episodes.videos[k].chunk * (1 << 32) + meta.episodes.videos[k].file))
        for k in keys
    )
    decoders = min(options.decoder_cache_size(len(keys)), max(1, files)) * decoder_bytes
    budget = resolve_budget(options, window, keys, frame_bytes, decoders)
    known = budget is not None and all(s is not None for s in shapes)  # else: account only
    fixed = decoders + (_ledger.batch_share(budget) if budget is not None else 0)
    return MemoryModel(
        offsets=tuple(tuple(int(o) for o in window.frame_offsets(k)) for k in keys),
        frame_bytes=tuple(frame_bytes),
        length=lambda ep: int(meta.episodes.length[meta.episodes.row(ep)]),
        decode_chunk=DECODE_CHUNK,
        chunk_within_produced=options.shuffle,
        frames_budget=max(0, budget - fixed) if known else None,
        fixed_bytes=fixed,
        budget=budget,
        decode_align=DECODE_ALIGN if options.shuffle else 1,
    )


def resolve_budget(
    options: StreamOptions,
    window: WindowSpec,
    keys: Sequence[str],
    frame_bytes: Sequence[int],
    decoders: int,
) -> int | None:
    """The budget in bytes: the option, or for ``"auto"`` 112 MB raised to fit what decode-once
    needs for mixing with long windows.

    Why: an open episode keeps its camera window's span decoded (a window over the last 5 s
    at 30 fps holds ~150 frames per camera), so 112 MB would leave one episode open and every
    batch would come from it. And a dataset of many video files keeps up to the decoder
    cache's capacity of decoders open, which alone can fill the default and leave no room for a
    shuffle reservoir. ``"auto"`` makes room for the open decoders, ``active_shards`` window
    spans (at least ``AUTO_MIN_FRAMES_BYTES`` of frames) and the batch share, capped at
    ``AUTO_MAX_MEMORY_BUDGET``; single-frame samples from a few files keep 112 MB.
    """
    budget = options.memory_budget
    if budget != "auto":
        return budget
    span_bytes = sum(
        int(np.ptp(window.frame_offsets(k))) * b for k, b in zip(keys, frame_bytes, strict=True)
    )
    frames = max(AUTO_MIN_FRAMES_BYTES, (options.active_shards or 8) * span_bytes)
    wanted = int((decoders + frames) / (1 - _ledger.BATCH_SHARE))
    return int(np.clip(wanted, DEFAULT_MEMORY_BUDGET, AUTO_MAX_MEMORY_BUDGET))


def schedule_config(
    meta: DatasetMeta, window: WindowSpec, options: StreamOptions
) -> ScheduleConfig:
    """The schedule's options, with the worker's memory model."""
    o = options
    return ScheduleConfig(
        o.shuffle,
        o.active_shards,
        o.buffer_size,
        o.shuffle_warmup,
        memory=memory_model(meta, window, options),
    )
