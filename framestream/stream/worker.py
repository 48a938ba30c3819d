"""One DataLoader worker's pass over its share of an epoch: the engine behind the dataset.

A :class:`WorkerStream` takes a :class:`~framestream.stream.schedule.Schedule` (which sample
comes next: pure, no I/O) and opens a :class:`~framestream.stream.reader.SegmentReader` for
each segment the first time one of its samples leaves (rows and frames: all the I/O). It
receives what it needs explicitly (metadata, window, options, a publish callback), never the
dataset object, so the same engine serves every process and every resume path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from framestream._errors import (
    FramestreamError,
    SourceError,
    TimestampToleranceError,
    VideoDecodeError,
)
from framestream.decode import buffers as _buffers
from framestream.decode.video import DecoderCache, resolve_backend
from framestream.format.meta import DatasetMeta
from framestream.format.tables import TableReader
from framestream.stream import ledger as _ledger
from framestream.stream.budget import memory_model
from framestream.stream.options import StreamOptions
from framestream.stream.prefetch import StreamIO
from framestream.stream.reader import Counters, SegmentReader
from framestream.stream.sample import WindowSpec
from framestream.stream.schedule import Schedule
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
        self._arena: Placer | None = None
        if schedule.ledger is None:  # a schedule built without a memory model
            schedule.ledger = _ledger.Ledger(memory_model(meta, spec.window, opts))
            schedule.load_state_dict(schedule.state_dict())  # accounts what is open
        model = schedule.ledger.model
        _ledger.set_batch_reserve(
            _ledger.batch_share(model.budget) if model.budget is not None else None
        )
        # Idle recycled frame buffers: an eighth of the frames' share (else 512 MB).
        _buffers.pool().set_max_free_bytes(
            int(model.frames_budget * _buffers.IDLE_SHARE)
            if model.frames_budget is not None
            else _buffers.MAX_FREE_BYTES
        )

    @property
    def arena(self) -> Placer | None:
        """Where camera tensors are built: set by the dataset for a pass whose samples go
        straight to :func:`framestream.collate`; None: in each sample's own memory."""
        return self._arena

    @arena.setter
    def arena(self, arena: Placer | None) -> None:
        # Readers opened before (a persistent worker's next pass is prepared while the last
        # one drains, before its fetch exists) are told too: else every batch of their
        # samples alone was collated the ordinary way, one more copy per camera.
        self._arena = arena
        for reader in self.readers.values():
            reader.camera_out = self._camera_out

    @property
    def _camera_out(self) -> Callable[[str, Any], torch.Tensor | None] | None:
        """What readers ask for a camera's place in the batch slot (None: no arena)."""
        return self._arena.out if self._arena is not None else None

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
                camera_out=self._camera_out,
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
            if self._arena is not None:
                self._arena.place()
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
