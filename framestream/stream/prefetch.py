"""Per-worker remote prefetch: the files of the next segments are copied into the byte cache
(:mod:`framestream.io.cache`) by a small thread pool while the worker decodes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class StreamIO:
    """One worker's remote I/O helper: prefetch of upcoming files and counter baselines.

    Why: the plan says in advance which episodes a worker reads, so the files of the open
    segments and of the next ``depth`` ones can be copied into the cache by a small thread
    pool while the worker decodes. A file is submitted once per stream; a foreground read of
    a file still being prefetched waits on the cache lock instead of downloading it again.
    For a local source (or ``depth=0``) it only reports zero counters.
    """

    def __init__(self, meta: Any, *, depth: int, threads: int = 2) -> None:
        self.meta, self.source, self.depth = meta, meta.source, depth
        self.enabled = depth > 0 and getattr(self.source, "cache", None) is not None
        self._threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self._submitted: set[str] = set()
        self._base = self.source.io_stats() if hasattr(self.source, "io_stats") else {}

    def files(self, episode: int) -> list[str]:
        """The files an episode is read from: its data file, then one video per camera."""
        ep = int(episode)
        return [self.meta.data_file(ep)] + [
            self.meta.video_file(ep, k) for k in self.meta.video_keys
        ]

    def advance(self, segments: Sequence[Any], next_index: int, active: Iterable[Any] = ()) -> None:
        """Schedule the files of the ``active`` segments and of ``segments[next_index:+depth]``."""
        if not self.enabled:
            return
        upcoming = list(active) + list(segments[next_index : next_index + self.depth])
        for seg in upcoming:
            for rel in self.files(seg.episode):
                if rel in self._submitted:
                    continue
                self._submitted.add(rel)
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="prefetch")
                self._pool.submit(self._fetch, rel)

    def _fetch(self, rel: str) -> None:
        # Errors are left to the foreground read, which retries and reports them with the URL.
        with contextlib.suppress(Exception):
            self.source.prefetch(rel)

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
