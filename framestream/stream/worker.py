"""One DataLoader worker's pass over its share of an epoch: the engine behind the dataset.

A :class:`WorkerStream` takes a :class:`~framestream.stream.schedule.Schedule` (which sample
comes next: pure, no I/O) and opens a :class:`~framestream.stream.reader.SegmentReader` for
each segment the first time one of its samples leaves (rows and frames: all the I/O). It
receives what it needs explicitly (metadata, window, options, a publish callback), never the
dataset object, so the same engine serves every process and every resume path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from framestream._errors import (
    FramestreamError,
    SourceError,
    TimestampToleranceError,
    VideoDecodeError,
)
from framestream.decode.video import DecoderCache, resolve_backend
from framestream.format.checks import declared_frame_shape
from framestream.format.meta import DatasetMeta
from framestream.format.tables import TableReader
from framestream.stream import ledger as _ledger
from framestream.stream.ledger import MemoryModel
from framestream.stream.options import (
    AUTO_MAX_MEMORY_BUDGET,
    DEFAULT_MEMORY_BUDGET,
    StreamOptions,
)
from framestream.stream.prefetch import StreamIO
from framestream.stream.reader import Counters, SegmentReader
from framestream.stream.sample import WindowSpec
from framestream.stream.schedule import Schedule, ScheduleConfig
from framestream.stream.state import StreamPosition
from framestream.stream.stats import COMBINE

log = logging.getLogger("framestream")

# Counters reach the shared board every this many samples (and at the end and on close):
# publishing costs ~0.2 ms, a tenth of a single-frame sample's own cost.
PUBLISH_EVERY = 16

Publish = Callable[[dict[str, int]], None]
# (emitted, reader id, samples lost net of padding) of an episode dropped under on_error="skip"
OnSkip = Callable[[int, int, int], None]


@dataclass(frozen=True)
class Layout:
    """Who this stream is: rank and worker, and the epoch it streams."""

    rank: int
    world_size: int
    worker: int
    num_workers: int
    epoch: int


@dataclass(frozen=True)
class ReadSpec:
    """What every reader of a dataset needs, fixed at the dataset's construction."""

    meta: DatasetMeta
    window: WindowSpec
    options: StreamOptions
    image_transforms: Callable[[torch.Tensor], torch.Tensor] | None = None


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


def _skip_reason(exc: Exception) -> str:
    """The stats() counter of a skipped episode's cause."""
    if isinstance(exc, TimestampToleranceError):
        return "skipped_timestamp_errors"
    if isinstance(exc, VideoDecodeError):
        return "skipped_video_errors"
    return "skipped_data_errors"


class Placer(Protocol):
    """Where each sample's camera tensors are built (:class:`framestream.batch.arena.Arena`)."""

    def place(self) -> None: ...

    def out(self, key: str, sample: Any) -> torch.Tensor | None: ...


class WorkerStream:
    """Streams the samples ``schedule`` names, opening readers as their samples come due.

    Args:
        spec: metadata, window, options and transforms shared by every reader.
        schedule: the reference stream (fresh, fast-forwarded or restored).
        layout: rank, worker and epoch (recorded in :meth:`position`).
        publish: receives counter increments for ``stats()`` (called every few samples, at
            the end and on close).
        custom_segments: the schedule's segments are not the plan's (an elastic resume) and
            must be saved with the position.
        on_skip: told where each episode was dropped (``on_error="skip"``), so that a plain
            DataLoader's batch count can replay the drops (:meth:`progress_state`).
    """

    def __init__(
        self,
        spec: ReadSpec,
        schedule: Schedule,
        layout: Layout,
        *,
        publish: Publish,
        custom_segments: bool = False,
        on_skip: OnSkip | None = None,
    ) -> None:
        self.spec, self.schedule, self.layout = spec, schedule, layout
        self.custom_segments = custom_segments
        self._on_skip = on_skip
        self._publish_to = publish
        opts, meta = spec.options, spec.meta
        self.readers: dict[int, SegmentReader] = {}
        self.counters = Counters()
        self.tables = TableReader(meta, tolerance_s=opts.tolerance_s)
        self.decoders = DecoderCache(
            meta.source,
            capacity=opts.decoder_cache_size(len(meta.video_keys)),
            backend=resolve_backend(opts.video_backend),
            threads=opts.decoder_threads,
        )
        self.skipped: list[dict[str, Any]] = []
        self.io = StreamIO(  # remote prefetch + byte counters
            meta,
            depth=opts.prefetch,
            offsets={k: spec.window.frame_offsets(k) for k in meta.video_keys},
            backend=self.decoders.backend,
        )
        self._published: dict[str, int] = {}
        # Set by the dataset for a pass whose samples go straight to framestream.collate.
        self.arena: Placer | None = None
        if schedule.ledger is None:  # a schedule built without a memory model
            schedule.ledger = _ledger.Ledger(memory_model(meta, spec.window, opts))
            schedule.load_state_dict(schedule.state_dict())  # accounts what is open
        model = schedule.ledger.model
        _ledger.set_batch_reserve(
            _ledger.batch_share(model.budget) if model.budget is not None else None
        )

    # ------------------------------------------------------------ reading
    def _reader(self, rid: int) -> SegmentReader:
        reader = self.readers.get(rid)
        if reader is None:
            sch, spec = self.schedule, self.spec
            self.io.advance(sch.segments, sch.next_segment, sch.open_segments())  # fetch ahead
            opts = spec.options
            reader = SegmentReader(
                sch.segment(rid),
                meta=spec.meta,
                spec=spec.window,
                tables=self.tables,
                decoders=self.decoders,
                tolerance_s=opts.tolerance_s,
                counters=self.counters,
                return_uint8=opts.return_uint8,
                channels_last=opts.channels_last,
                depth_output_unit=opts.depth_output_unit,
                pixel_format=opts.pixel_format,
                image_transforms=spec.image_transforms,
                ledger=sch.ledger.segments[rid],
                camera_out=self.arena.out if self.arena is not None else None,
            )
            self.readers[rid] = reader
        return reader

    def prepare(self) -> None:
        """Open the readers of the segments the schedule opens first (their table rows read,
        their decoders open) before any sample is asked for: the dataset does it for a
        worker's next pass while the last one drains. Nothing is decoded, so the memory
        ledger stays exact, and the schedule's position does not move (opening segments
        draws nothing from the RNG)."""
        sch = self.schedule
        sch.open_next()
        for rid in list(sch.active):
            if rid not in self.readers:
                self._reader(rid).open_decoders()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        sch, opts = self.schedule, self.spec.options
        while True:
            ref = sch.next_ref()
            if ref is None:
                self._publish()
                return
            rid, frame = ref
            if self.arena is not None:
                self.arena.place()
            try:
                reader = self._reader(rid)
                sample = reader.sample(frame)
            except FramestreamError as exc:
                # A network outage is not a bad episode: never skip past it.
                if opts.on_error == "raise" or isinstance(exc, SourceError):
                    raise
                self._drop(rid, exc)
                continue
            if opts.even_ranks:
                sample["is_repeat"] = torch.tensor(reader.segment.repeat)
            sch.done(rid)
            if not sch.is_open(rid):
                del self.readers[rid]
            if sch.emitted % PUBLISH_EVERY == 0:
                self._publish()
            yield sample

    def _drop(self, rid: int, exc: Exception) -> None:
        """on_error='skip': forget a failing episode and every reference to it."""
        episode = self.schedule.segment(rid).episode
        emitted = self.schedule.emitted
        pad = self.spec.options.even_ranks  # repeat other frames: every worker's count holds
        padded = self.schedule.padded
        net = self.schedule.drop(rid, pad=pad)
        lost = net + self.schedule.padded - padded
        if self._on_skip is not None:
            self._on_skip(emitted, rid, net)
        self.readers.pop(rid, None)
        c = self.counters
        c.errors += 1
        for name, n in (("skipped_episodes", 1), ("skipped_samples", lost), (_skip_reason(exc), 1)):
            c.extra[name] = c.extra.get(name, 0) + n
        self.skipped.append({"episode": int(episode), "samples": int(lost), "reason": str(exc)})
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log.warning(
            "framestream: skipping episode %d (%d samples, %s): %s",
            episode,
            lost,
            _skip_reason(exc).removeprefix("skipped_"),
            first_line if len(first_line) <= 160 else first_line[:157] + "...",
        )

    # ------------------------------------------------------------ counters
    def _publish(self) -> None:
        c, cache = self.counters, self.decoders
        now = {
            "samples": c.samples,
            "repeated_samples": c.repeated_samples,
            "decoded_frames": c.decoded_frames,
            "delivered_frames": c.delivered_frames,
            "episodes_opened": c.episodes_opened,
            "errors": c.errors,
            "decoder_cache_hits": cache.hits,
            "decoder_cache_misses": cache.misses,
            "decoder_cache_evictions": cache.evictions,
            **c.extra,
            **self.io.counters(),
            **self._memory(),
        }
        # COMBINE fields go as current values (the board keeps their max, min or latest)
        deltas = {k: v if k in COMBINE else v - self._published.get(k, 0) for k, v in now.items()}
        self._published = now
        self._publish_to(deltas)

    def _memory(self) -> dict[str, int]:
        sch = self.schedule
        led = sch.ledger
        assert led is not None
        out = {
            "memory_budget_bytes": led.model.budget or 0,
            "memory_peak_bytes": led.model.fixed_bytes + led.peak_committed,
            "memory_frames_peak_bytes": led.peak_held,
            "memory_limited_samples": sch.limited,
            "reservoir_fill_sum": sch.reservoir_sum,
        }
        if sch.reservoir_limited_min is not None:
            out["reservoir_limited_min"] = sch.reservoir_limited_min
        return out

    def close(self) -> None:
        self._publish()
        self.io.close()
        self.decoders.close()
        self.tables.close()
        self.readers.clear()

    # ------------------------------------------------------------ state
    def position(self) -> StreamPosition:
        """This stream's resumable position (no pixels, no reader state)."""
        lay, sch = self.layout, self.schedule
        return StreamPosition(
            rank=lay.rank,
            world_size=lay.world_size,
            worker=lay.worker,
            num_workers=lay.num_workers,
            schedule=sch.state_dict(),
            finished=sch.finished,
            segments=tuple(sch.segments) if self.custom_segments or sch.padded else None,
        )
