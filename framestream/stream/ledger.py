"""The memory ledger: which decoded frames a worker holds, as a pure function of its schedule.

Which frames an episode reader holds decoded depends only on which samples have left (and in
what order), the window offsets, the decode chunk and the frame sizes: never on timing or on
pixels. So the bookkeeping lives here, once, and both sides use it: the
:class:`~framestream.stream.schedule.Schedule` (to keep what a worker holds within its memory
budget, also while it replays a resume without any reader) and the
:class:`~framestream.stream.reader.SegmentReader` (which decodes and frees exactly the frames
the ledger says).

Per open segment and camera it keeps the sorted frames some pending sample uses (``needed``),
each frame's remaining users (``counts``) and how far decoding has gone (``next``: a position
in ``needed``). A sample leaving decodes the needed frames up to the highest frame of its
window, in chunks of at least ``decode_chunk``, then releases every frame whose count drops to
zero. *Held* bytes are the decoded frames still counted. *Committed* bytes add what the
samples already produced into the reservoir could still make a reader decode: the schedule
admits a new reference only while committed bytes stay within the budget, and a sample
leaving never raises them, so held <= committed <= budget at every step (see
:meth:`SegmentLedger.committed`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Ledger",
    "MemoryModel",
    "SegmentLedger",
    "Step",
    "batch_reserve",
    "batch_share",
    "set_batch_reserve",
]

# The share of a worker's budget kept for batches (framestream.collate's slots), which the
# schedule cannot see: it does not know the batch size. Three eighths: at the default budget,
# the two slots that a worker with prefetch_factor 2 mostly uses for single-frame batches of
# the benchmark dataset (2 x 14.7 MB).
BATCH_SHARE = 3 / 8


def batch_share(budget: int) -> int:
    """Bytes of ``budget`` kept for batch slots."""
    return int(budget * BATCH_SHARE)


_batch_reserve: list[int | None] = [None]  # this process's, set by its stream


def set_batch_reserve(nbytes: int | None) -> None:
    """Bytes this process's batch slots may keep (None: no limit)."""
    _batch_reserve[0] = nbytes


def batch_reserve() -> int | None:
    return _batch_reserve[0]


@dataclass(frozen=True)
class MemoryModel:
    """What the ledger needs to know, fixed per dataset and options.

    Args:
        offsets: per video camera, the window's frame offsets (sorted).
        frame_bytes: per video camera, the bytes of one frame as a reader stores it.
        length: frames of an episode (windows are clipped to it).
        decode_chunk: the most frames a reader decodes at once beyond what a sample needs.
        chunk_within_produced: read ahead only over frames whose samples are already produced
            (the shuffle: what the reservoir holds is what is decoded, nothing more); else a
            full chunk (in order, where a sample leaves as soon as it is produced).
        frames_budget: bytes that held (committed) frames may use; None: no limit.
        fixed_bytes: the budget's other parts (decoders, batches), reported with the frames.
        budget: the whole per-worker budget (reported), or None.
        decode_align: capped read-ahead also decodes on (fewer than this many frames) until
            the next frame left is a multiple of it: the video's keyframe spacing, so that
            the next call on a shared decoder seeks to a keyframe and wastes no decode.
    """

    offsets: tuple[tuple[int, ...], ...]
    frame_bytes: tuple[int, ...]
    length: Callable[[int], int]
    decode_chunk: int = 16
    chunk_within_produced: bool = True
    frames_budget: int | None = None
    fixed_bytes: int = 0
    budget: int | None = None
    decode_align: int = 1


class _Camera:
    __slots__ = ("needed", "list", "counts", "offsets", "maxoff", "next", "p", "held", "bytes")

    def __init__(
        self, pending: np.ndarray, offsets: Sequence[int], length: int, nbytes: int
    ) -> None:
        offs = np.asarray(offsets, dtype=np.int64)
        idx = np.clip(pending[:, None] + offs[None, :], 0, length - 1).ravel()
        counts = np.bincount(idx, minlength=length)
        self.needed: np.ndarray = np.nonzero(counts)[0]
        # Per-sample bookkeeping touches single elements: a list is several times cheaper.
        self.list: list[int] = self.needed.tolist()
        self.counts: list[int] = counts.tolist()
        self.offsets: list[int] = [int(o) for o in offsets]
        self.maxoff = max(self.offsets)
        self.next = 0  # position in ``needed`` of the next frame to decode
        self.p = 0  # needed frames up to the highest produced frame's window
        self.held = 0  # decoded frames whose count is still positive
        self.bytes = nbytes

    @property
    def last(self) -> int:
        """The highest frame decoded so far (-1: none)."""
        return self.list[self.next - 1] if self.next else -1

    def p_after(self, top: int) -> int:
        """``p`` once frames up to ``top`` are in produced windows (``top`` only grows)."""
        p, frames = self.p, self.list
        while p < len(frames) and frames[p] <= top:
            p += 1
        return p


@dataclass
class Step:
    """What one leaving sample does to a reader: frames to decode first, then to free."""

    frame: int
    decode: list[np.ndarray]  # per camera, ascending
    release: list[list[int]]  # per camera


class SegmentLedger:
    """One open segment's frames: needed, remaining users, decoded-through.

    Args:
        model: frame sizes, offsets, chunk.
        episode: the segment's episode.
        pending: the frames whose samples have not left yet.
        through: the highest frame already produced (-1: none).
        last: per camera, the highest frame already decoded (a restored position), or None.
    """

    def __init__(
        self,
        model: MemoryModel,
        episode: int,
        pending: np.ndarray,
        *,
        through: int = -1,
        last: Sequence[int] | None = None,
    ) -> None:
        self.chunk = model.decode_chunk
        self.capped = model.chunk_within_produced
        self.align = model.decode_align if self.capped else 1
        self.length = int(model.length(episode))
        self.cameras = [
            _Camera(pending, offs, self.length, nbytes)
            for offs, nbytes in zip(model.offsets, model.frame_bytes, strict=True)
        ]
        self.through = through  # the highest frame produced so far (-1: none)
        self.step: Step | None = None
        for cam, top in zip(self.cameras, last or (), strict=False):
            cam.next = int(cam.needed.searchsorted(top, side="right"))
            cam.held = sum(1 for f in cam.list[: cam.next] if cam.counts[f] > 0)
        if through >= 0:
            for cam in self.cameras:
                cam.p = cam.p_after(self._top(cam, through))
        self.committed = self.held = 0
        self._recount()

    # ------------------------------------------------------------------ accounting
    def _top(self, c: _Camera, frame: int) -> int:
        return min(max(frame + c.maxoff, 0), self.length - 1)

    def _reach(self, c: _Camera, p: int) -> int:
        """Frames beyond the decoded ones that samples produced so far may still decode.

        A leaving sample decodes up to some position ``q <= p`` (``p``: the needed frames up
        to the highest produced frame's window), and only while ``next < p``. Capped, its
        read-ahead stops at ``p`` too (moved on to the next aligned frame): at most that.
        Else it reads ahead to ``next + chunk``,
        so decoding reaches at most ``next + chunk`` if that is ``>= p``, else
        ``p - 1 + chunk`` (land on ``p - 1``, then one more chunk). Every frame beyond the
        decoded ones still has users, so all of them would be held. What a sample leaving
        can reach was reachable before: this never grows when a sample leaves.
        """
        if p <= c.next:
            return 0
        if self.capped:
            return (self._aligned(c, p) if self.align > 1 else p) - c.next
        n = c.next + self.chunk
        reach = n if n >= p else p - 1 + self.chunk
        return min(len(c.list), reach) - c.next

    def _aligned(self, c: _Camera, stop: int) -> int:
        """``stop`` moved on (by fewer than ``align`` frames) until the first frame left to
        decode is a multiple of ``align``: a keyframe, where the next decode call seeks."""
        frames, n = c.list, len(c.list)
        while 0 < stop < n and frames[stop] % self.align and frames[stop] == frames[stop - 1] + 1:
            stop += 1
        return stop

    def _recount(self) -> None:
        self.held = sum(c.held * c.bytes for c in self.cameras)
        self.committed = sum((c.held + self._reach(c, c.p)) * c.bytes for c in self.cameras)

    def cost_of(self, frame: int) -> int:
        """How much producing ``frame`` (the next one) would add to :attr:`committed`
        (:meth:`Ledger.allowed` keeps the answer until this segment changes)."""
        total = 0
        for c in self.cameras:
            total += (c.held + self._reach(c, c.p_after(self._top(c, frame)))) * c.bytes
        return total - self.committed

    def held_frames(self, camera: int) -> list[int]:
        """Decoded frames of ``camera`` still counted (what a reader must have stored)."""
        c = self.cameras[camera]
        return [f for f in c.list[: c.next] if c.counts[f] > 0]

    def last(self) -> list[int]:
        """Per camera, the highest frame decoded (what a saved position records)."""
        return [c.last for c in self.cameras]

    # ------------------------------------------------------------------ driving
    def produce(self, frame: int) -> None:
        """``frame`` was produced (frames of a segment come in order)."""
        self.through = frame
        for c in self.cameras:
            c.p = c.p_after(self._top(c, frame))
        self._recount()

    def emit(self, frame: int) -> Step:
        """The sample of ``frame`` leaves: decode what its window lacks, then release."""
        decode: list[np.ndarray] = []
        release: list[list[int]] = []
        top_frame = self.length - 1
        for c in self.cameras:
            upto = min(max(frame + c.maxoff, 0), top_frame)
            todo = c.needed[c.next : c.next]
            if upto > c.last:
                stop = int(c.needed.searchsorted(upto, side="right"))
                ahead = min(len(c.list), c.next + self.chunk)
                stop = max(stop, min(c.p, ahead) if self.capped else ahead)
                if self.align > 1:
                    stop = self._aligned(c, stop)
                todo = c.needed[c.next : stop]
                c.next = stop
                c.held += len(todo)
            decode.append(todo)
            freed: list[int] = []
            counts = c.counts
            for off in c.offsets:
                i = min(max(frame + off, 0), top_frame)
                counts[i] -= 1
                if counts[i] == 0:
                    freed.append(i)
            c.held -= len(freed)
            release.append(freed)
        self._recount()
        self.step = Step(frame, decode, release)
        return self.step


class Ledger:
    """Every open segment's ledger of one worker, with its totals and peaks."""

    def __init__(self, model: MemoryModel) -> None:
        self.model = model
        self.segments: dict[int, SegmentLedger] = {}
        # Per reader, what its next reference would commit: valid until that reader changes
        # (the schedule asks about every open reader for every sample while the budget binds).
        self._costs: dict[int, int] = {}
        self.committed = 0  # sum of the segments' committed bytes
        self.held = 0
        self.peak_committed = 0
        self.peak_held = 0
        # The most one reference can commit: a segment's first one, its window's span (and
        # a chunk per camera, uncapped; a later one: one frame, or a chunk at most).
        extra = model.decode_align - 1 if model.chunk_within_produced else model.decode_chunk
        self.worst = sum(
            (max(o) - min(o) + 1 + extra) * b
            for o, b in zip(model.offsets, model.frame_bytes, strict=True)
        )

    def open(
        self,
        rid: int,
        episode: int,
        pending: np.ndarray,
        *,
        through: int = -1,
        last: Sequence[int] | None = None,
    ) -> SegmentLedger:
        """Start accounting reader ``rid`` (``through``/``last``: a restored position)."""
        seg = SegmentLedger(self.model, episode, pending, through=through, last=last)
        self.segments[rid] = seg
        self._costs.pop(rid, None)
        self._add(seg.committed, seg.held)
        return seg

    def _add(self, committed: int, held: int) -> None:
        self.committed += committed
        self.held += held
        if self.committed > self.peak_committed:
            self.peak_committed = self.committed
        if self.held > self.peak_held:
            self.peak_held = self.held

    def produced(self, rid: int, frame: int) -> None:
        """The schedule produced ``frame`` of reader ``rid`` (frames come in order)."""
        seg = self.segments[rid]
        self._costs.pop(rid, None)
        c0, h0 = seg.committed, seg.held
        seg.produce(frame)
        self._add(seg.committed - c0, seg.held - h0)

    def emit(self, rid: int, frame: int) -> Step:
        seg = self.segments[rid]
        self._costs.pop(rid, None)
        c0, h0 = seg.committed, seg.held
        step = seg.emit(frame)
        self._add(seg.committed - c0, seg.held - h0)
        return step

    def close(self, rid: int) -> None:
        seg = self.segments.pop(rid, None)
        self._costs.pop(rid, None)
        if seg is not None:
            self.committed -= seg.committed
            self.held -= seg.held

    def roomy(self) -> bool:
        """Whether any reference fits (the common case, decided without looking further)."""
        budget = self.model.frames_budget
        return budget is None or budget - self.committed >= self.worst

    def allowed(self, rids: Sequence[int], next_frame: Callable[[int], int]) -> list[int]:
        """The readers among ``rids`` whose next reference (frame ``next_frame(rid)``) keeps
        committed bytes within the budget, in the given order."""
        budget = self.model.frames_budget
        if budget is None:
            return list(rids)
        room = budget - self.committed
        if room >= self.worst:  # no single reference can add more
            return list(rids)
        costs, out = self._costs, []
        for rid in rids:
            cost = costs.get(rid)
            if cost is None:  # changed since last asked (open, produced, emit drop it)
                cost = costs[rid] = self.segments[rid].cost_of(next_frame(rid))
            if cost <= room:
                out.append(rid)
        return out
