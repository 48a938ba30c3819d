"""What both datasets share: where the bytes are, and how a stream reports to ``stats()``."""

from __future__ import annotations

import os
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


class Publisher:
    """Adds a stream's counter increments, and this process's memory counters, to a board row."""

    def __init__(self, board: StatsBoard, slot: int) -> None:
        self.board, self.slot = board, slot
        self.base = _memory_counts()

    def __call__(self, deltas: dict[str, int]) -> None:
        now = _memory_counts()
        memory = {k: v - self.base[k] for k, v in now.items()}
        self.base = now
        self.board.add(self.slot, deltas | memory)


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
