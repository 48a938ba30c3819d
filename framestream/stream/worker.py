"""One DataLoader worker's pass over its share of an epoch: the engine behind the dataset.

Per worker (or in the main process when ``num_workers=0``) a :class:`WorkerStream` walks its
plan with ``active_shards`` episodes open, pushes their sample references through the
reservoir, and assembles each sample as it leaves. Its whole position (plan position,
cursors, reservoir references, RNG) is a small dict: see :meth:`WorkerStream.state_dict`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from framestream._errors import (
    FramestreamError,
    SourceError,
    TimestampToleranceError,
    VideoDecodeError,
)
from framestream.batch import slots as _shm
from framestream.decode import buffers as _buffers
from framestream.decode.video import DecoderCache
from framestream.format.tables import TableReader
from framestream.stream.plan import Segment, make_plan
from framestream.stream.prefetch import StreamIO
from framestream.stream.reader import Counters, SegmentReader
from framestream.stream.shuffle import Reservoir
from framestream.stream.stats import MAX_SLOTS

if TYPE_CHECKING:
    from framestream.datasets.streaming import StreamingLeRobotDataset

log = logging.getLogger("framestream")

# Counters reach the shared board every this many samples (and at the end and on close):
# publishing costs ~0.2 ms, a tenth of a single-frame sample's own cost.
PUBLISH_EVERY = 16


def _skip_reason(exc: Exception) -> str:
    """The stats() counter (a StatsBoard field) of a skipped episode's cause."""
    if isinstance(exc, TimestampToleranceError):
        return "skipped_timestamp_errors"
    if isinstance(exc, VideoDecodeError):
        return "skipped_video_errors"
    return "skipped_data_errors"


class Cursor:
    """A segment's production position: light, so that fast-forward needs no decoding."""

    __slots__ = ("segment", "pos")

    def __init__(self, segment: Segment, pos: int = 0) -> None:
        self.segment, self.pos = segment, pos

    @property
    def remaining(self) -> int:
        return self.segment.size - self.pos


def _memory_counts() -> dict[str, int]:
    """This process's batch-slot and frame-buffer counters (cumulative across streams)."""
    slots, buffers = _shm.pool(), _buffers.pool()
    return {
        "batch_slots_reused": slots.reused,
        "batch_slot_fallbacks": slots.fallbacks,
        "frame_buffers_reused": buffers.reused,
        "frame_buffers_allocated": buffers.allocated,
    }


class WorkerStream:
    """One worker's pass over its share of one epoch.

    Two layers: the *reference* layer (plan position, cursors, reservoir, RNG) decides which
    sample comes next and costs no I/O; the *reader* layer (:class:`SegmentReader`, opened on
    the first sample an episode owes) reads rows and decodes frames. Resuming and
    fast-forwarding replay only the reference layer.
    """

    def __init__(
        self,
        ds: StreamingLeRobotDataset,
        *,
        rank: int,
        world_size: int,
        worker: int,
        num_workers: int,
        epoch: int,
        segments: Sequence[Segment] | None = None,
    ) -> None:
        self.ds = ds
        self.rank, self.world_size = rank, world_size
        self.worker, self.num_workers = worker, num_workers
        self.epoch = epoch
        self.custom_segments = segments is not None
        if segments is None:
            segments = make_plan(
                ds.episodes,
                ds.lengths,
                seed=ds.seed,
                epoch=epoch,
                shuffle=ds.shuffle,
                rank=rank,
                world_size=world_size,
                worker=worker,
                num_workers=num_workers,
                even_ranks=ds.even_ranks,
            ).segments
        self.segments: list[Segment] = list(segments)
        self.rng = np.random.default_rng([ds.seed, epoch, rank, worker, 0xF5])
        self.reservoir = Reservoir(ds.buffer_size, self.rng, warmup=ds.shuffle_warmup)
        self.next_segment = 0
        self.cursors: dict[int, Cursor] = {}
        self.active: list[int] = []
        self.outstanding: dict[int, int] = {}
        self.readers: dict[int, SegmentReader] = {}
        self.next_reader_id = 0
        self.emitted = 0
        self.counters = Counters()
        self.tables = TableReader(ds.meta)
        self.decoders = DecoderCache(
            ds.meta.source,
            capacity=ds.video_decoder_cache_size,
            backend=ds.video_backend,
            threads=ds.decoder_threads,
        )
        self.skipped: list[dict[str, Any]] = []
        self.io = StreamIO(ds.meta, depth=ds.prefetch)  # remote prefetch + byte counters
        self._slot = (worker + 1) % MAX_SLOTS
        self._published: dict[str, int] = {}
        self._memory_base = _memory_counts()

    # ------------------------------------------------------------ reference layer
    def _fill(self) -> None:
        limit = self.ds.active_shards if self.ds.shuffle else 1
        while len(self.active) < limit and self.next_segment < len(self.segments):
            seg = self.segments[self.next_segment]
            self.next_segment += 1
            if seg.size <= 0:
                continue
            rid, self.next_reader_id = self.next_reader_id, self.next_reader_id + 1
            self.cursors[rid] = Cursor(seg)
            self.outstanding[rid] = 0
            self.active.append(rid)

    def _produce(self) -> tuple[int, int]:
        if len(self.active) == 1 or not self.ds.shuffle:
            rid = self.active[0]
        else:
            # Weighted by frames left, so episodes drain together: one integer draw and a walk
            # (rng.choice with p= costs tens of microseconds per sample).
            remaining = [self.cursors[r].remaining for r in self.active]
            pick = int(self.rng.integers(sum(remaining)))
            rid = self.active[-1]
            for candidate, n in zip(self.active, remaining, strict=True):
                if pick < n:
                    rid = candidate
                    break
                pick -= n
        cur = self.cursors[rid]
        frame = cur.segment.start + cur.pos
        cur.pos += 1
        self.outstanding[rid] += 1
        if cur.remaining == 0:
            self.active.remove(rid)
            self._fill()
        return rid, frame

    def _next_ref(self) -> tuple[int, int] | None:
        self._fill()
        if not self.ds.shuffle:
            return self._produce() if self.active else None
        while self.reservoir.wants_more() and self.active:
            self.reservoir.push(self._produce())
        return self.reservoir.pop() if len(self.reservoir) else None

    def _done_with(self, rid: int) -> None:
        self.outstanding[rid] -= 1
        if self.outstanding[rid] == 0 and rid not in self.active:
            del self.outstanding[rid], self.cursors[rid]
            self.readers.pop(rid, None)

    def fast_forward(self, n: int) -> None:
        """Skip ``n`` samples without reading or decoding anything."""
        for _ in range(n):
            ref = self._next_ref()
            if ref is None:
                return
            self._done_with(ref[0])
            self.emitted += 1

    # ------------------------------------------------------------ reader layer
    def _reader(self, rid: int, frame: int) -> SegmentReader:
        reader = self.readers.get(rid)
        if reader is None:
            active = [self.cursors[r].segment for r in self.active]
            self.io.advance(self.segments, self.next_segment, active)  # fetch ahead (remote)
            cur = self.cursors[rid]
            owed = [f for r, f in self.reservoir.items if r == rid] + [frame]
            ds = self.ds
            reader = SegmentReader(
                cur.segment,
                meta=ds.meta,
                spec=ds.window,
                tables=self.tables,
                decoders=self.decoders,
                tolerance_s=ds.tolerance_s,
                counters=self.counters,
                return_uint8=ds.return_uint8,
                channels_last=ds.channels_last,
                image_transforms=ds.image_transforms,
                cursor=cur.pos,
                produced_pending=owed,
            )
            self.readers[rid] = reader
        return reader

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            ref = self._next_ref()
            if ref is None:
                self._publish()
                return
            rid, frame = ref
            try:
                reader = self._reader(rid, frame)
                sample = reader.sample(frame)
            except FramestreamError as exc:
                # A network outage is not a bad episode: never skip past it.
                if self.ds.on_error == "raise" or isinstance(exc, SourceError):
                    raise
                self._drop(rid, exc)
                continue
            if self.ds.even_ranks:
                sample["is_repeat"] = torch.tensor(reader.segment.repeat)
            self._done_with(rid)
            self.emitted += 1
            if self.emitted % PUBLISH_EVERY == 0:
                self._publish()
            yield sample

    # ------------------------------------------------------------ errors
    def _drop(self, rid: int, exc: Exception) -> None:
        """on_error='skip': forget a failing episode and every reference to it."""
        cur = self.cursors.pop(rid)
        self.readers.pop(rid, None)
        before = len(self.reservoir.items)
        self.reservoir.items = [r for r in self.reservoir.items if r[0] != rid]
        lost = 1 + (before - len(self.reservoir.items)) + cur.remaining
        if rid in self.active:
            self.active.remove(rid)
        self.outstanding.pop(rid, None)
        c = self.counters
        c.errors += 1
        c.extra["skipped_episodes"] = c.extra.get("skipped_episodes", 0) + 1
        c.extra["skipped_samples"] = c.extra.get("skipped_samples", 0) + lost
        reason = _skip_reason(exc)  # counted per kind, so that stats() says why across workers
        c.extra[reason] = c.extra.get(reason, 0) + 1
        episode = cur.segment.episode
        self.skipped.append({"episode": int(episode), "samples": int(lost), "reason": str(exc)})
        log.warning("framestream: skipping episode %d (%d samples): %s", episode, lost, exc)

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
            "skipped_episodes": c.extra.get("skipped_episodes", 0),
            "skipped_samples": c.extra.get("skipped_samples", 0),
            "cache_hits": cache.hits,
            "cache_misses": cache.misses,
            "cache_evictions": cache.evictions,
        }
        now.update({k: v for k, v in c.extra.items() if k.startswith("skipped_")})
        now.update(self.io.counters())
        now.update({k: v - self._memory_base[k] for k, v in _memory_counts().items()})
        deltas = {k: v - self._published.get(k, 0) for k, v in now.items()}
        self._published = now
        self.ds._board.add(self._slot, deltas)

    def close(self) -> None:
        self._publish()
        self.io.close()
        self.decoders.close()
        self.tables.close()
        self.readers.clear()

    # ------------------------------------------------------------ state
    def remaining_segments(self) -> list[Segment]:
        """Everything this stream still owes, as segments (for elastic resume)."""
        out = [
            Segment(s.episode, s.start + c.pos, s.stop, s.repeat)
            for c in self.cursors.values()
            for s in [c.segment]
            if c.remaining > 0
        ]
        for rid, frame in self.reservoir.items:
            seg = self.cursors[rid].segment
            out.append(Segment(seg.episode, frame, frame + 1, seg.repeat))
        out += [s for s in self.segments[self.next_segment :] if s.size > 0]
        return out

    def state_dict(self) -> dict[str, Any]:
        return self.ds._fingerprint() | {
            "epoch": self.epoch,
            "stream": {
                "rank": self.rank,
                "world_size": self.world_size,
                "worker": self.worker,
                "num_workers": self.num_workers,
                "even_ranks": self.ds.even_ranks,
                "segments": (
                    [list(s.as_tuple()) for s in self.segments] if self.custom_segments else None
                ),
                "next_segment": self.next_segment,
                "cursors": [[rid, c.pos] for rid, c in self.cursors.items()],
                "active": list(self.active),
                "next_reader_id": self.next_reader_id,
                "reservoir": self.reservoir.state_dict(),
                "rng": self.rng.bit_generator.state,
                "emitted": self.emitted,
                "finished": not self.active
                and not len(self.reservoir)
                and self.next_segment >= len(self.segments),
            },
        }

    def load_stream_state(self, s: dict[str, Any]) -> None:
        """Restore exactly the position :meth:`state_dict` captured."""
        if s.get("segments") is not None:
            self.segments = [Segment(*x) for x in s["segments"]]
            self.custom_segments = True
        self.next_segment = int(s["next_segment"])
        self.next_reader_id = int(s["next_reader_id"])
        self.reservoir.load_state_dict(s["reservoir"])
        self.rng.bit_generator.state = s["rng"]
        self.emitted = int(s["emitted"])
        # A cursor's segment is found again from its reader id: ids are handed out in order.
        seg_of = self._segments_by_id()
        self.cursors = {int(rid): Cursor(seg_of[int(rid)], int(pos)) for rid, pos in s["cursors"]}
        self.active = [int(a) for a in s["active"]]
        self.outstanding = {rid: 0 for rid in self.cursors}
        for rid, _ in self.reservoir.items:
            self.outstanding[rid] += 1
        self.readers = {}

    def _segments_by_id(self) -> dict[int, Segment]:
        nonempty = [seg for seg in self.segments if seg.size > 0]
        return dict(enumerate(nonempty))
