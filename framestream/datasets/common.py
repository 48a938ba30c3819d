"""What both datasets share: where the bytes are, and how a stream reports to ``stats()``."""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Mapping
from typing import Any

from framestream._errors import DatasetFormatError
from framestream.batch import slots as _slots
from framestream.decode import buffers as _buffers
from framestream.format.meta import DatasetMeta
from framestream.io.source import RemoteOptions, Source, resolve_url
from framestream.stream.stats import StatsBoard
from framestream.stream.worker import WorkerStream

__all__ = ["Publisher", "check_not_all_skipped", "open_source"]


def _memory_counts() -> dict[str, int]:
    """This process's batch-slot and frame-buffer counters (cumulative across streams)."""
    slots, buffers = _slots.pool(), _buffers.pool()
    return {
        "batch_slots_reused": slots.reused,
        "batch_slot_fallbacks": slots.fallbacks,
        "batches_in_place": slots.in_place,
        "batch_slot_waits": slots.waits,
        "frame_buffers_reused": buffers.reused,
        "frame_buffers_allocated": buffers.allocated,
    }


# The memory counters a board has been given by this process, per board: (pid, counts).
# Several publishers of one process share a board (a persistent worker builds its next pass's
# stream, with its own publisher, while the last pass drains; a discarded prepared stream
# publishes when it closes), so each increment must go to the board once, whoever publishes.
_given: weakref.WeakKeyDictionary[StatsBoard, tuple[int, dict[str, int]]] = (
    weakref.WeakKeyDictionary()
)
_given_lock = threading.Lock()


def _fresh_lock_in_child() -> None:  # a fork never inherits the lock held by another thread
    global _given_lock
    _given_lock = threading.Lock()


os.register_at_fork(after_in_child=_fresh_lock_in_child)


class Publisher:
    """Adds a stream's counter increments, and this process's memory counters, to a board row.

    The memory counters are process-wide and cumulative: a board receives each increment
    once, counted from this process's first publisher for it.
    """

    def __init__(self, board: StatsBoard, slot: int) -> None:
        self.board, self.slot = board, slot
        with _given_lock:  # the board's count starts here, if this process has none yet
            self._given_here()

    def _given_here(self) -> dict[str, int]:
        """What this process has given the board so far (call with ``_given_lock`` held)."""
        pid = os.getpid()
        given = _given.get(self.board)
        if given is None or given[0] != pid:  # a new board, or one inherited by a fork
            given = _given[self.board] = (pid, _memory_counts())
        return given[1]

    def _memory_increments(self) -> dict[str, int]:
        with _given_lock:
            base, now = self._given_here(), _memory_counts()
            _given[self.board] = (os.getpid(), now)
        return {k: v - base[k] for k, v in now.items()}

    def __call__(self, deltas: dict[str, int]) -> None:
        self.board.add(self.slot, deltas | self._memory_increments())


def check_not_all_skipped(
    stream: WorkerStream, url: str, totals: Mapping[str, int], planned: int
) -> None:
    """on_error='skip' must not turn a broken dataset into a quiet, empty epoch.

    Raised by the stream that finds, when it ends, that its rank has delivered nothing and
    skipped every sample it was planned to give (``totals``: the rank's shared counters, which
    every finished worker has published): the last worker of the rank to finish sees it. A
    worker whose own share was all bad stays quiet while its rank's others deliver.
    """
    if stream.counters.samples or not stream.skipped:
        return
    if totals.get("samples", 0) > 0 or totals.get("skipped_samples", 0) < planned:
        return
    reasons: dict[str, int] = {}
    for k, v in stream.counters.extra.items():
        if k.startswith("skipped_") and k.endswith("_errors"):
            reasons[k.removeprefix("skipped_").removesuffix("_errors")] = v
    first = stream.skipped[0]
    raise DatasetFormatError(
        f"dataset {url}: every episode this worker was given failed and was skipped "
        f"({len(stream.skipped)} episodes, {sum(s['samples'] for s in stream.skipped)} samples; "
        f"by cause: {reasons}); nothing to stream. First: episode {first['episode']}: "
        f"{first['reason'][:300]}"
    )


def open_source(
    root: str | Source | None,
    meta: DatasetMeta | None,
    *,
    storage_options: Mapping[str, Any] | None = None,
    revision: str | None = None,
    cache_dir: str | None = None,
    cache_max_bytes: int | None = None,
    remote_options: RemoteOptions | Mapping[str, Any] | None = None,
) -> DatasetMeta:
    """The dataset's metadata from exactly one description of where its bytes are.

    ``meta`` already carries its :class:`Source`: source options given beside it would be
    ignored, so they are refused instead.
    """
    given = {
        "storage_options": storage_options,
        "revision": revision,
        "cache_dir": cache_dir,
        "cache_max_bytes": cache_max_bytes,
        "remote_options": remote_options,
    }
    set_names = [k for k, v in given.items() if v is not None]
    if meta is not None:
        if isinstance(root, str | os.PathLike) and resolve_url(os.fspath(root)) != meta.source.url:
            raise ValueError(
                f"root {os.fspath(root)!r} and meta= ({meta.source.url}) name different datasets"
            )
        if set_names or isinstance(root, Source):
            raise ValueError(
                f"meta= already says where the dataset is ({meta.source.url}); "
                f"{set_names or ['a Source']} would be ignored: pass them to the Source of meta"
            )
        return meta
    if isinstance(root, Source):
        if set_names:
            raise ValueError(f"{set_names} given beside a Source: set them on the Source")
        return DatasetMeta(root)
    if root is None:
        raise ValueError("a dataset root (path or URL) or meta= is required")
    return DatasetMeta(
        Source(
            str(root),
            dict(storage_options or {}),
            revision=revision,
            cache_dir=None if cache_dir is None else str(cache_dir),
            cache_max_bytes=cache_max_bytes,
            remote=remote_options,
        )
    )
