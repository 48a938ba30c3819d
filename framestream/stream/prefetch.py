"""Per-worker remote prefetch: what the next segments will read is brought into the byte cache
(:mod:`framestream.io.cache`) by a small thread pool while the worker decodes.

With ``RemoteOptions.fetch="files"`` that is the segments' data and video files, whole. With
``"ranges"`` (the default) it is exactly what their readers will read: each episode's row group
of its data file, and per camera the byte ranges of the frames the segment decodes (the same
:func:`camera_span` the reader computes, so the same cache entries).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np


def camera_span(
    from_ts: float, fps: float, first: int, last: int, backend: str = "torchcodec"
) -> tuple[float, float]:
    """Seconds of a camera's file holding episode frames ``first..last``, as decoded.

    PyAV's reader decodes one frame past the last it returns (to know it is the last one
    shown at the query), so its span runs one frame further; torchcodec's own look-ahead is
    in the byte ranges (:func:`framestream.io.mp4index.sample_span`).
    """
    from framestream.io.spans import frame_span

    return frame_span(from_ts, fps, first, last + (1 if backend == "pyav" else 0))


class StreamIO:
    """One worker's remote I/O helper: prefetch of upcoming segments and counter baselines.

    Why: the plan says in advance which episodes a worker reads, so what the open segments
    and the next ``depth`` ones need can be fetched into the cache by a small thread pool
    while the worker decodes. A segment is submitted once per stream; a foreground read of
    something still being prefetched waits on the cache lock instead of fetching it again.
    For a local source (or ``depth=0``, or no cache) it only reports counters.
    """

    def __init__(
        self,
        meta: Any,
        *,
        depth: int,
        threads: int = 2,
        offsets: Mapping[str, np.ndarray] | None = None,
        backend: str = "torchcodec",
    ) -> None:
        self.meta, self.source, self.depth = meta, meta.source, depth
        self.enabled = depth > 0 and getattr(self.source, "cache", None) is not None
        self.offsets = dict(offsets or {})
        self.backend = backend
        self._threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self._submitted: set[Any] = set()
        self._base = self.source.io_stats() if hasattr(self.source, "io_stats") else {}

    def files(self, episode: int) -> list[str]:
        """The files an episode is read from: its data file, then one video per camera."""
        ep = int(episode)
        return [self.meta.data_file(ep)] + [
            self.meta.video_file(ep, k) for k in self.meta.video_keys
        ]

    def advance(self, segments: Sequence[Any], next_index: int, active: Iterable[Any] = ()) -> None:
        """Schedule what the ``active`` segments and ``segments[next_index:+depth]`` read."""
        if not self.enabled:
            return
        upcoming = list(active) + list(segments[next_index : next_index + self.depth])
        for seg in upcoming:
            if getattr(self.source, "fetches_ranges", False):
                jobs = [((seg.episode, seg.start, seg.stop), self._fetch_segment, seg)]
            else:
                jobs = [(rel, self._fetch, rel) for rel in self.files(seg.episode)]
            for key, fn, arg in jobs:
                if key in self._submitted:
                    continue
                self._submitted.add(key)
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="prefetch")
                self._pool.submit(fn, arg)

    def _fetch(self, rel: str) -> None:
        # Errors are left to the foreground read, which retries and reports them with the URL.
        with contextlib.suppress(Exception):
            self.source.prefetch(rel)

    def _fetch_segment(self, seg: Any) -> None:
        """The row group and the camera ranges ``seg``'s reader will read (errors: see _fetch)."""
        meta, src, ep = self.meta, self.source, int(seg.episode)
        with contextlib.suppress(Exception):
            self._fetch_rows(meta.data_file(ep), ep)
        length = int(meta.episodes.length[meta.episodes.row(ep)])
        for key in meta.video_keys:
            with contextlib.suppress(Exception):
                rel = meta.video_file(ep, key)
                offs = self.offsets.get(key, np.zeros(1, dtype=np.int64))
                first = int(np.clip(seg.start + offs.min(), 0, length - 1))
                last = int(np.clip(seg.stop - 1 + offs.max(), 0, length - 1))
                span = camera_span(
                    meta.video_from_timestamp(ep, key), meta.fps, first, last, self.backend
                )
                whole = src.cached_whole(rel)
                if whole is not None:
                    whole.release()
                    continue
                src.spans.prefetch_span(rel, span)

    def _fetch_rows(self, rel: str, episode: int) -> None:
        import pyarrow.parquet as pq

        from framestream.format.tables import TableReader

        with self.source.open(rel) as raw:
            prefetch = getattr(raw, "prefetch_row_groups", None)
            if prefetch is None:
                return  # whole in the cache already
            pf = pq.ParquetFile(raw)
            groups = TableReader._row_group_map(pf)
            picked = [groups[episode]] if groups and episode in groups else None
            prefetch(pf.metadata, picked, count=False)

    def counters(self) -> dict[str, int]:
        """Remote I/O counters of this process since this stream started."""
        if not hasattr(self.source, "io_stats"):
            return {}
        now = self.source.io_stats()
        return {k: v - self._base.get(k, 0) for k, v in now.items()}

    def close(self) -> None:
        if self._pool is not None:
            # Running fetches finish in the background (bounded by the timeouts); queued ones
            # are dropped. A worker that exits takes its locks with it.
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
