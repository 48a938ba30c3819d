"""The epoch clock: which epoch each pass streams, agreed by every process of a loader.

A *pass* is one iteration over the dataset: ``iter(ds)`` in the training process, or one
``iter(loader)`` of a DataLoader, whose workers each iterate once (separate processes, or the
same processes again with ``persistent_workers=True``). The clock lives in shared memory
(inherited on fork, passed along on spawn), so the training process and every worker see it:

- ``set_epoch(e)`` (or loading a state of epoch ``e``) *arms* the clock: the next pass
  streams ``e``;
- otherwise each new pass streams the previous pass's epoch + 1, so ``cycle(loader)``
  without ``set_epoch`` sees a new order each pass and covers each epoch exactly once.

A process starting to iterate joins the current pass when it has not taken part in it yet
and iterates with the same number of workers; otherwise it begins a new pass. The clock also
records, per worker, the episodes skipped under ``on_error="skip"`` (when, in the worker's
schedule, each was dropped), so that a plain DataLoader's batch count can be replayed exactly.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
from dataclasses import dataclass

from framestream.stream.stats import MAX_SLOTS, timed_lock

__all__ = ["EpochClock", "PassInfo", "SkipEvent"]

# header fields of the shared array
_NEXT, _GEN, _PASS_EPOCH, _PASS_NW, _ARMED, _PENDING_GEN, _PINNED, _HEADER = range(8)
SKIP_CAPACITY = 32  # skip events kept per worker and pass
_EV = 6  # fields of an event: epoch, num_workers, logical worker, emitted, reader id, lost


@dataclass(frozen=True)
class PassInfo:
    """What a process starting to iterate learnt from the clock."""

    generation: int  # the pass's number (1 for the first)
    epoch: int
    pending: bool  # this pass is the first after load_state_dict: the loaded state applies


@dataclass(frozen=True)
class SkipEvent:
    """An episode dropped by logical ``worker`` when its schedule had emitted ``emitted``
    samples: the reference handed out next belonged to reader ``rid``; ``lost`` samples net."""

    worker: int
    emitted: int
    rid: int
    lost: int


class EpochClock:
    """Shared epoch state of one dataset (see the module docstring)."""

    def __init__(self) -> None:
        self._head = mp.RawArray("q", _HEADER)
        self._seen = mp.RawArray("q", MAX_SLOTS)  # last pass each slot took part in
        self._events = mp.RawArray("q", MAX_SLOTS * (1 + SKIP_CAPACITY * _EV))
        self._lock = mp.Lock()
        self._head[_ARMED] = 1  # the first pass streams epoch 0
        self._head[_PENDING_GEN] = -1

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return timed_lock(self._lock)

    # ------------------------------------------------------------ the training process
    @property
    def epoch(self) -> int:
        """The epoch of the pass in progress (or last run), or the next one when armed."""
        h = self._head
        return int(h[_NEXT] if h[_ARMED] or h[_GEN] == 0 else h[_PASS_EPOCH])

    @property
    def pinned_epoch(self) -> int | None:
        """The epoch ``set_epoch`` chose for the next pass (None if no pass is pinned)."""
        h = self._head
        return int(h[_NEXT]) if h[_ARMED] and h[_PINNED] else None

    def arm(self, epoch: int, *, pending: bool = False, pinned: bool = True) -> None:
        """The next pass streams ``epoch``; with ``pending``, the loaded state applies to it."""
        with self._locked():
            h = self._head
            h[_NEXT], h[_ARMED], h[_PINNED] = int(epoch), 1, int(pinned)
            if pending:
                h[_PENDING_GEN] = h[_GEN] + 1
            for i in range(MAX_SLOTS):  # whoever starts next begins a new pass
                self._seen[i] = h[_GEN]

    def pending_applies_next(self) -> bool:
        """A loaded state waits for the next pass (no pass has started since the load)."""
        h = self._head
        return bool(h[_ARMED]) and h[_PENDING_GEN] == h[_GEN] + 1

    def drop_pending(self) -> None:
        self._head[_PENDING_GEN] = -1

    def pass_num_workers(self) -> int | None:
        """Workers of the pass in progress (0: the training process), None if armed."""
        h = self._head
        return None if h[_ARMED] or h[_GEN] == 0 else int(h[_PASS_NW])

    # ------------------------------------------------------------ a process starting a pass
    def _joins(self, slot: int, num_workers: int) -> bool:
        h = self._head
        return bool(
            h[_GEN] > 0
            and not h[_ARMED]
            and self._seen[slot] < h[_GEN]
            and h[_PASS_NW] == num_workers
        )

    def peek(self, slot: int, num_workers: int) -> int:
        """The epoch :meth:`start` would give ``slot`` now (nothing changes)."""
        with self._locked():
            h = self._head
            if self._joins(slot, num_workers):
                return int(h[_PASS_EPOCH])
            return int(h[_NEXT]) if h[_ARMED] else int(h[_PASS_EPOCH]) + 1

    def start(self, slot: int, num_workers: int) -> PassInfo:
        """``slot`` (0: training process, w + 1: worker w) begins iterating."""
        with self._locked():
            h = self._head
            if not self._joins(slot, num_workers):
                epoch = int(h[_NEXT]) if h[_ARMED] else int(h[_PASS_EPOCH]) + 1
                h[_GEN] += 1
                h[_PASS_EPOCH], h[_PASS_NW], h[_ARMED], h[_PINNED] = epoch, num_workers, 0, 0
                h[_NEXT] = epoch + 1
                for i in range(MAX_SLOTS):  # skip events describe the pass in progress only
                    self._events[i * (1 + SKIP_CAPACITY * _EV)] = 0
            self._seen[slot] = h[_GEN]
            return PassInfo(int(h[_GEN]), int(h[_PASS_EPOCH]), h[_PENDING_GEN] == h[_GEN])

    def use_epoch(self, generation: int, epoch: int) -> None:
        """A worker restored a state of a later epoch (StatefulDataLoader): the pass is that
        epoch's, for the workers still to start and for the training process."""
        with self._locked():
            h = self._head
            if h[_GEN] == generation and epoch > h[_PASS_EPOCH]:
                h[_PASS_EPOCH], h[_NEXT] = epoch, epoch + 1

    # ------------------------------------------------------------ skipped episodes
    def record_skip(self, slot: int, epoch: int, num_workers: int, event: SkipEvent) -> None:
        base = slot * (1 + SKIP_CAPACITY * _EV)
        with self._locked():
            n = int(self._events[base])
            if n < SKIP_CAPACITY:
                at = base + 1 + n * _EV
                row = [epoch, num_workers, event.worker, event.emitted, event.rid, event.lost]
                self._events[at : at + _EV] = row
            self._events[base] = n + 1  # past capacity: counted, so readers can refuse

    def skips(self, epoch: int, num_workers: int) -> tuple[list[SkipEvent], bool]:
        """Skip events of ``epoch`` with ``num_workers`` workers, and whether some overflowed."""
        out: list[SkipEvent] = []
        overflow = False
        with self._locked():
            values = self._events[:]
        for slot in range(MAX_SLOTS):
            base = slot * (1 + SKIP_CAPACITY * _EV)
            n = int(values[base])
            rows = [
                values[base + 1 + i * _EV : base + 1 + (i + 1) * _EV]
                for i in range(min(n, SKIP_CAPACITY))
            ]
            mine = [r for r in rows if r[0] == epoch and r[1] == num_workers]
            overflow = overflow or (n > SKIP_CAPACITY and bool(mine))
            out += [SkipEvent(int(r[2]), int(r[3]), int(r[4]), int(r[5])) for r in mine]
        return out, overflow
