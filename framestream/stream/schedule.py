"""The schedule: which sample a worker emits next, with no I/O at all.

A worker's position in an epoch is fully described by its segments (from the plan), the
cursors of its open segments, the shuffle reservoir and one RNG. :class:`Schedule` owns
exactly that and nothing else: no table reader, no decoder, no file. Streaming drives it one
reference at a time; resume, fast-forward and elastic merges replay or inspect it without
building any reader, so they cost microseconds per sample.

Invariant: every frame of every non-empty segment is emitted exactly once, as a reference
``(reader id, frame)``; reader ids are handed out in segment order, one per non-empty segment.

With a :class:`~framestream.stream.ledger.MemoryModel` the schedule also keeps the worker's
:class:`~framestream.stream.ledger.Ledger` (which decoded frames its readers hold) and admits
a reference into the reservoir only while the ledger's committed bytes stay within the
budget: the effective shuffle buffer shrinks instead of memory growing. That depends only on
the schedule's own history, so a replay (resume, fast-forward) makes the same decisions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from framestream.stream.ledger import Ledger, MemoryModel
from framestream.stream.plan import Segment
from framestream.stream.shuffle import Ref, Reservoir

__all__ = ["Schedule", "ScheduleConfig"]


@dataclass(frozen=True)
class ScheduleConfig:
    """The options a schedule depends on (a subset of :class:`StreamOptions`)."""

    shuffle: bool
    active_shards: int
    buffer_size: int
    shuffle_warmup: int
    memory: MemoryModel | None = None  # None: no ledger (pure order, e.g. elastic merges)


class _Cursor:
    """A segment's production position."""

    __slots__ = ("segment", "pos")

    def __init__(self, segment: Segment, pos: int = 0) -> None:
        self.segment, self.pos = segment, pos

    @property
    def remaining(self) -> int:
        return self.segment.size - self.pos


class Schedule:
    """One worker's reference stream over ``segments``.

    Args:
        segments: what this worker reads, in order (empty segments are skipped).
        config: shuffle, open segments and reservoir sizes.
        rng_key: seeds the RNG (e.g. ``[seed, epoch, rank, worker]``): the same key and
            segments give the same order in every process.
    """

    def __init__(
        self, segments: Sequence[Segment], config: ScheduleConfig, rng_key: Sequence[int]
    ) -> None:
        self.segments: list[Segment] = list(segments)
        self.config = config
        self.rng = np.random.default_rng([*rng_key, 0xF5])
        self.reservoir = Reservoir(config.buffer_size, self.rng, warmup=config.shuffle_warmup)
        self.next_segment = 0
        self.cursors: dict[int, _Cursor] = {}
        self.active: list[int] = []
        self.outstanding: dict[int, int] = {}  # references emitted but not yet done
        self.next_id = 0
        self.emitted = 0
        self.padded = 0  # repeated frames appended to make up for dropped episodes
        self.ledger = Ledger(config.memory) if config.memory is not None else None
        # statistics of the budget (not state: a restored schedule counts afresh)
        self.limited = 0  # samples that left while the budget kept the reservoir short
        self.reservoir_sum = 0  # reservoir sizes summed over the samples that left
        self.reservoir_limited_min: int | None = None  # smallest reservoir the budget forced

    # ------------------------------------------------------------------ driving
    def open_next(self) -> None:
        """Open the segments :meth:`next_ref` would open first (up to ``active_shards``).

        Opening draws nothing from the RNG and produces nothing, so doing it early (to open
        readers ahead of the first sample) leaves the order unchanged."""
        self._fill()

    def _fill(self) -> None:
        limit = self.config.active_shards if self.config.shuffle else 1
        while len(self.active) < limit and self.next_segment < len(self.segments):
            seg = self.segments[self.next_segment]
            self.next_segment += 1
            if seg.size <= 0:
                continue
            rid, self.next_id = self.next_id, self.next_id + 1
            self.cursors[rid] = _Cursor(seg)
            self.outstanding[rid] = 0
            self.active.append(rid)
            if self.ledger is not None:
                self.ledger.open(rid, seg.episode, np.arange(seg.start, seg.stop))

    def _produce(self, candidates: list[int] | None = None) -> Ref:
        pool = self.active if candidates is None else candidates
        if len(pool) == 1 or not self.config.shuffle:
            rid = pool[0]
        elif self.next_segment < len(self.segments):
            # Uniform while segments are left to open: open segments advance at one rate and
            # end at staggered times, so their positions stay spread and a small (budget-
            # limited) reservoir still holds many episodes; weighted by frames left, they
            # would drain together and the next ones would all start together.
            rid = pool[int(self.rng.integers(len(pool)))]
        else:
            # The last ones: weighted by frames left, so they drain together: one draw and a walk
            # (rng.choice with p= costs tens of microseconds per sample).
            remaining = [self.cursors[r].remaining for r in pool]
            pick = int(self.rng.integers(sum(remaining)))
            rid = pool[-1]
            for candidate, n in zip(pool, remaining, strict=True):
                if pick < n:
                    rid = candidate
                    break
                pick -= n
        cur = self.cursors[rid]
        frame = cur.segment.start + cur.pos
        cur.pos += 1
        self.outstanding[rid] += 1
        if self.ledger is not None:
            self.ledger.produced(rid, frame)
        if cur.remaining == 0:
            self.active.remove(rid)
            self._fill()
        return rid, frame

    def next_ref(self) -> Ref | None:
        """The next ``(reader id, frame)`` to emit, or None when the worker's share is done.

        Every reference returned must be passed to :meth:`done` (or its reader to
        :meth:`drop`) before the segment's state is forgotten.
        """
        self._fill()
        if not self.config.shuffle:
            return self._emit(self._produce()) if self.active else None
        limited = False
        while self.reservoir.wants_more() and self.active:
            pool = self._within_budget()
            if pool is not None and not pool:
                if len(self.reservoir):
                    limited = True
                    break
                pool = self._cheapest()  # an empty reservoir must take one: progress first
            self.reservoir.push(self._produce(pool))
        if not len(self.reservoir):
            return None
        n = len(self.reservoir)
        self.reservoir_sum += n
        if limited:
            self.limited += 1
            low = self.reservoir_limited_min
            self.reservoir_limited_min = n if low is None else min(low, n)
        return self._emit(self.reservoir.pop())

    def _within_budget(self) -> list[int] | None:
        """The active readers a new reference may come from (None: any, no ledger)."""
        if self.ledger is None:
            return None
        if self.ledger.roomy():
            return None
        allowed = self.ledger.allowed(self.active, self._next_frame)
        return None if len(allowed) == len(self.active) else allowed

    def _next_frame(self, rid: int) -> int:
        cur = self.cursors[rid]
        return cur.segment.start + cur.pos

    def _cheapest(self) -> list[int]:
        """Over budget with an empty reservoir: one reference must come anyway. It comes from
        the started reader closest to its end (finishing it frees its frames; spreading over
        every started one would keep all of their windows decoded), else the first one."""
        started = [r for r in self.active if self.cursors[r].pos > 0]
        if not started:
            return self.active[:1]
        return [min(started, key=lambda r: (self.cursors[r].remaining, r))]

    def _emit(self, ref: Ref) -> Ref:
        if self.ledger is not None:
            self.ledger.emit(*ref)
        return ref

    def done(self, rid: int) -> None:
        """A reference of reader ``rid`` left as a sample."""
        self.emitted += 1
        self.outstanding[rid] -= 1
        if self.outstanding[rid] == 0 and rid not in self.active:
            del self.outstanding[rid], self.cursors[rid]
            if self.ledger is not None:
                self.ledger.close(rid)

    def is_open(self, rid: int) -> bool:
        return rid in self.cursors

    def fast_forward(
        self, n: int, skips: Sequence[tuple[int, int]] = (), *, pad: bool = False
    ) -> int:
        """Skip ``n`` samples (no I/O); returns how many were skipped (fewer at the end).

        ``skips`` replays the episodes the original run dropped (``on_error="skip"``): each
        ``(emitted, rid)`` drops reader ``rid`` when it comes out after ``emitted`` samples,
        exactly where the original run dropped it, so the replay follows the same order.
        """
        todo = sorted(skips)
        for i in range(n):
            while True:
                ref = self.next_ref()
                if ref is None:
                    return i
                if todo and todo[0] == (self.emitted, ref[0]):
                    todo.pop(0)
                    self.drop(ref[0], pad=pad)
                    continue
                break
            self.done(ref[0])
        return n

    def drop(self, rid: int, *, pad: bool = False) -> int:
        """Forget reader ``rid`` and every reference to it; returns the samples lost.

        The reference being emitted when the reader failed counts as lost too. With ``pad``
        (``even_ranks``) as many repeated frames of this worker's other episodes are appended,
        so the worker still yields its planned count; returns the samples lost net of them.
        """
        cur = self.cursors.pop(rid)
        before = len(self.reservoir.items)
        self.reservoir.items = [r for r in self.reservoir.items if r[0] != rid]
        if rid in self.active:
            self.active.remove(rid)
        self.outstanding.pop(rid, None)
        if self.ledger is not None:
            self.ledger.close(rid)
        lost = 1 + (before - len(self.reservoir.items)) + cur.remaining
        if pad:
            donors = [s for s in self.segments if s.size > 0 and s.episode != cur.segment.episode]
            missing, i = lost, 0
            while missing > 0 and donors:
                d = donors[i % len(donors)]
                k = min(missing, d.size)
                self.segments.append(Segment(d.episode, d.start, d.start + k, True))
                missing, i = missing - k, i + 1
            self.padded += lost - missing
            return missing
        return lost

    # ------------------------------------------------------------------ inspection
    def segment(self, rid: int) -> Segment:
        return self.cursors[rid].segment

    def cursor(self, rid: int) -> int:
        """Frames of reader ``rid``'s segment already produced (emitted or in the reservoir)."""
        return self.cursors[rid].pos

    def pending(self, rid: int) -> list[int]:
        """Frames of ``rid`` produced but still waiting in the reservoir."""
        return [f for r, f in self.reservoir.items if r == rid]

    def open_segments(self) -> list[Segment]:
        return [self.cursors[r].segment for r in self.active]

    @property
    def finished(self) -> bool:
        return (
            not self.active and not len(self.reservoir) and self.next_segment >= len(self.segments)
        )

    def remaining_segments(self) -> list[Segment]:
        """Everything still owed, as segments (for elastic resume)."""
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

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "next_segment": self.next_segment,
            "cursors": [[rid, c.pos] for rid, c in self.cursors.items()],
            "active": list(self.active),
            "next_id": self.next_id,
            "reservoir": self.reservoir.state_dict(),
            "rng": self.rng.bit_generator.state,
            "emitted": self.emitted,
            # per open reader, per camera: the highest frame decoded (what it holds follows)
            "decoded": (
                {str(rid): seg.last() for rid, seg in self.ledger.segments.items()}
                if self.ledger is not None
                else {}
            ),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore exactly the position :meth:`state_dict` captured (same segments)."""
        self.next_segment = int(state["next_segment"])
        self.next_id = int(state["next_id"])
        self.reservoir.load_state_dict(state["reservoir"])
        self.rng.bit_generator.state = state["rng"]
        self.emitted = int(state["emitted"])
        # A cursor's segment is found again from its reader id: ids are handed out in order.
        nonempty = [seg for seg in self.segments if seg.size > 0]
        self.cursors = {
            int(rid): _Cursor(nonempty[int(rid)], int(pos)) for rid, pos in state["cursors"]
        }
        self.active = [int(a) for a in state["active"]]
        self.outstanding = {rid: 0 for rid in self.cursors}
        for rid, _ in self.reservoir.items:
            self.outstanding[rid] += 1
        if self.ledger is not None:
            self.ledger = Ledger(self.ledger.model)
            decoded = state.get("decoded", {})
            for rid, cur in self.cursors.items():
                seg = cur.segment
                pending = np.concatenate(
                    [
                        np.asarray(self.pending(rid), dtype=np.int64),
                        np.arange(seg.start + cur.pos, seg.stop, dtype=np.int64),
                    ]
                )
                through = seg.start + cur.pos - 1 if cur.pos else -1
                self.ledger.open(
                    rid, seg.episode, pending, through=through, last=decoded.get(str(rid))
                )
