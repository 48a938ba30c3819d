"""A shared-memory board where each DataLoader worker publishes its counters.

Workers are separate processes, so the dataset object in the training process never sees
their counters. Each worker adds its increments into its own row of a small shared array
(inherited on fork, passed along on spawn); :meth:`StatsBoard.totals` sums the rows. A lock
makes each publication atomic, so a snapshot never shows one field of a worker's update
without the others (``delivered_frames`` always equals samples x frames per sample).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
from collections.abc import Iterator
from typing import Any

from framestream.io.cache import IO_FIELDS

FIELDS = (
    "samples",
    "repeated_samples",
    "decoded_frames",
    "delivered_frames",
    "episodes_opened",
    "errors",
    "skipped_episodes",
    "skipped_samples",
    "skipped_video_errors",
    "skipped_timestamp_errors",
    "skipped_data_errors",
    "decoder_cache_hits",
    "decoder_cache_misses",
    "decoder_cache_evictions",
    "batch_slots_reused",
    "batch_slot_fallbacks",
    "batches_in_place",
    "batch_slot_waits",
    "frame_buffers_reused",
    "frame_buffers_allocated",
    "memory_budget_bytes",  # per worker (its current pass's), summed: all workers' together
    "memory_peak_bytes",  # max over workers: budget parts + committed frames at their peak
    "memory_frames_peak_bytes",  # max over workers: decoded frames actually held at the peak
    "memory_limited_samples",  # samples that left while the budget kept the reservoir short
    "reservoir_fill_sum",  # reservoir sizes summed over the samples that left it
    "reservoir_limited_min",  # min over workers: the smallest reservoir the budget forced
    "prepared_passes",  # passes whose stream a persistent worker built ahead (dataset)
    *IO_FIELDS,
)
# How a field combines over workers (default: sum). A "min" field is stored as value + 1, so
# that 0 means "nothing published" (each worker's row holds its current value). A "current"
# field is a setting, not a counter: each worker's row holds its latest value (a later pass
# replaces it rather than adding to it), and the rows are summed.
COMBINE = {
    "memory_budget_bytes": "current",
    "memory_peak_bytes": "max",
    "memory_frames_peak_bytes": "max",
    "reservoir_limited_min": "min",
}
MAX_SLOTS = 129  # worker ids 0..127 plus the main process
LOCK_TIMEOUT_S = 2.0


@contextlib.contextmanager
def timed_lock(lock: Any) -> Iterator[None]:
    """Hold a shared lock, but never wait forever: a worker killed while holding it (during a
    publication) would otherwise block every later one."""
    held = lock.acquire(timeout=LOCK_TIMEOUT_S)
    try:
        yield
    finally:
        if held:
            lock.release()


class StatsBoard:
    slots = MAX_SLOTS  # rows: one per DataLoader worker id, plus the main process

    def __init__(self) -> None:
        self._arr = mp.RawArray("d", MAX_SLOTS * len(FIELDS))
        self._epoch = mp.RawValue("q", 0)
        self._lock = mp.Lock()

    @property
    def epoch(self) -> int:
        return int(self._epoch.value)

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._epoch.value = int(value)

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return timed_lock(self._lock)

    def add(self, slot: int, deltas: dict[str, float]) -> None:
        """Add increments to a row; a :data:`COMBINE` field takes a current value instead
        (the row keeps its max, its min or the value), so that several passes never add
        peaks or settings up."""
        base = (slot % MAX_SLOTS) * len(FIELDS)
        with self._locked():
            for i, name in enumerate(FIELDS):
                d = deltas.get(name)
                if d is None:
                    continue
                how = COMBINE.get(name)
                if how == "max":
                    self._arr[base + i] = max(self._arr[base + i], d)
                elif how == "current":
                    self._arr[base + i] = d
                elif how == "min":
                    old = self._arr[base + i]
                    self._arr[base + i] = d + 1 if old == 0 else min(old, d + 1)
                elif d:
                    self._arr[base + i] += d

    def totals(self) -> dict[str, Any]:
        n = len(FIELDS)
        with self._locked():
            values = self._arr[:]
        out: dict[str, Any] = {}
        for i, name in enumerate(FIELDS):
            column = [values[s * n + i] for s in range(MAX_SLOTS)]
            how = COMBINE.get(name)
            if how == "max":
                out[name] = int(max(column))
            elif how == "min":
                seen = [v for v in column if v > 0]
                out[name] = int(min(seen)) - 1 if seen else None
            else:
                out[name] = int(sum(column))
        return out

    def reset(self) -> None:
        with self._locked():
            for i in range(len(self._arr)):
                self._arr[i] = 0.0
