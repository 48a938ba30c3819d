"""Episode byte ranges of remote files (``RemoteOptions.fetch="ranges"``).

A rank reads a share of the episodes, and an mp4 or parquet file holds many episodes; fetching
every file it touches whole makes N ranks fetch up to N copies of the dataset. Here a worker
fetches only what its episodes need:

* **Video**: a file's :class:`~framestream.io.mp4index.Mp4Index` is read once per file and
  node (a few requests: :func:`~framestream.io.mp4index.index_file`) together with the bytes
  FFmpeg reads when it opens the file (the 2 KiB probe and box headers, the ``moov``, the
  first packet), and stored in the byte cache as one entry keyed by URL + size + ETag
  (+ S3 VersionId), so every worker and rank of the node shares it and a changed object never
  meets a stale index. For an episode span (seconds of that file) the packets from the
  keyframe at or before its first frame through the last packet the decoder needs
  (:func:`~framestream.io.mp4index.episode_ranges`, coalesced) are fetched, each range a
  cache entry of its own (so prefetch, the next epoch and the node's other ranks reuse them),
  and the decoder reads a :class:`~framestream.io.ranged.RangedFile` over memory-mapped cache
  entries (no copy on the heap). Without a cache the ranges are held in memory.
* **Parquet**: :class:`RangedParquet` is a file object for pyarrow that fetches what it is
  asked for (the footer: one request) and, before the table reader reads an episode's row
  group, that row group's whole byte span in one request.

Files already whole in the cache (``framestream prewarm``, ``fetch="files"``) are read from
there. A server without Range support (HTTP 200 to a range request) makes the file fall back
to one whole download into the cache (or a clear error without a cache).
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from framestream.io.cache import CachedFile, CacheFullError, RemoteInfo, cache_key
from framestream.io.mp4index import (
    PROBE_MIN,
    Mp4Index,
    coalesce,
    episode_ranges,
    index_file,
)
from framestream.io.parquet_ranges import subtract
from framestream.io.ranged import RangedFile

__all__ = ["SpanReader", "frame_mappings", "frame_span"]

_MAGIC = b"FSIX1\n"


def frame_span(from_ts: float, fps: float, first: int, last: int) -> tuple[float, float]:
    """The seconds of a camera's file in which frames ``first..last`` of an episode are shown.

    Episode frame ``f`` is shown from ``from_ts + f / fps`` for ``1 / fps``. Readers query
    a little after a frame's start, so exactly these frames (no earlier one) are needed.
    """
    return from_ts + first / fps, from_ts + (last + 1) / fps


def frame_mappings(index: Mp4Index) -> str:
    """torchcodec's ``custom_frame_mappings`` JSON for ``index`` (presentation order).

    With it torchcodec seeks exactly (as ``seek_mode="exact"`` on the whole file: the same
    frames, bit for bit) without scanning every packet of the file, which would read bytes
    that were not fetched.
    """
    order = np.argsort(index.pts, kind="stable")
    pts = index.pts[order]
    dur = np.append(np.diff(pts), index.duration[order[-1]]) if len(pts) else pts
    key = index.is_sync[order]
    frames = [
        {"pts": int(p), "duration": int(d), "key_frame": int(k)}
        for p, d, k in zip(pts.tolist(), dur.tolist(), key.tolist(), strict=True)
    ]
    return json.dumps({"frames": frames})


class FileIndex:
    """An mp4's index plus the bytes every decoder of it reads on open, as one cache entry."""

    def __init__(self, index: Mp4Index, opening: dict[int, bytes]) -> None:
        self.index, self.opening = index, opening
        self._mappings: str | None = None

    @property
    def held(self) -> list[tuple[int, int]]:
        """The byte ranges held (what opening the file reads, and a little more)."""
        return sorted((o, o + len(d)) for o, d in self.opening.items())

    @property
    def mappings(self) -> str:
        if self._mappings is None:
            self._mappings = frame_mappings(self.index)
        return self._mappings

    def to_bytes(self) -> bytes:
        idx = self.index.to_bytes()
        head = struct.pack(">QI", len(idx), len(self.opening))
        table = b"".join(struct.pack(">QQ", o, len(d)) for o, d in sorted(self.opening.items()))
        return _MAGIC + head + idx + table + b"".join(d for _, d in sorted(self.opening.items()))

    @classmethod
    def from_bytes(cls, data: bytes) -> FileIndex:
        if not data.startswith(_MAGIC):
            raise ValueError("not a framestream file index")
        pos = len(_MAGIC)
        n_idx, n = struct.unpack_from(">QI", data, pos)
        pos += 12
        index = Mp4Index.from_bytes(data[pos : pos + n_idx])
        pos += n_idx
        table = [struct.unpack_from(">QQ", data, pos + 16 * i) for i in range(n)]
        pos += 16 * n
        opening = {}
        for off, length in table:
            opening[off] = data[pos : pos + length]
            pos += length
        return cls(index, opening)


def _covered(windows: dict[int, bytes], a: int, b: int) -> bytes | None:
    for off, data in windows.items():
        if off <= a and b <= off + len(data):
            return data[a - off : b - off]
    return None


class SpanReader:
    """Episode byte ranges of one :class:`~framestream.io.source.Source` (one per process)."""

    MEMO = 64  # file indexes kept per process

    def __init__(self, source: Any) -> None:  # a framestream.io.source.Source
        self.source = source
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._memo: OrderedDict[str, FileIndex] = OrderedDict()
        self._counted: set[tuple[str, tuple[float, float]]] = set()

    # ------------------------------------------------------------ cache entries
    def _key(self, relative: str, pin: RemoteInfo, what: str) -> str:
        ident = self.source._identity(relative)
        return cache_key(f"{ident}|{pin.size}|{pin.etag}|{pin.version}|{what}")

    def _entry(
        self, key: str, suffix: str, build: Callable[[], bytes], describe: str
    ) -> tuple[Any, CachedFile | None]:
        """``(buffer, pin)``: a cache entry's bytes (memory-mapped; ``pin`` keeps it from
        eviction until released), built by ``build`` under the entry's lock when missing, so
        that two workers never fetch the same range. Without room or cache: ``(bytes, None)``.
        """
        cache = self.source.cache
        if cache is None:
            return build(), None
        made: dict[str, bytes] = {}

        def info(required: bool) -> RemoteInfo | None:
            if not required:
                return None  # content-addressed by size/ETag: a whole entry is always current
            made["data"] = build()
            return RemoteInfo(len(made["data"]))

        def fetch(tmp: str, _info: RemoteInfo) -> None:
            fd = os.open(tmp, os.O_WRONLY | os.O_CLOEXEC)
            try:  # pwrite, as whole-file downloads: a full disk is a CacheFullError (bypass)
                view, done = memoryview(made["data"]), 0
                while done < len(view):
                    done += os.pwrite(fd, view[done:], done)
            finally:
                os.close(fd)

        try:
            pin = cache.acquire(key, suffix, remote_info=info, fetch=fetch, describe=describe)
        except CacheFullError:
            self.source.counters.add("byte_cache_bypass")
            return (made["data"] if "data" in made else build()), None
        if pin.size == 0:
            return b"", pin
        with open(pin.path, "rb") as f:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return buf, pin

    def _bytes(self, key: str, suffix: str, build: Callable[[], bytes], describe: str) -> bytes:
        buf, pin = self._entry(key, suffix, build, describe)
        try:
            return bytes(buf)
        finally:
            if isinstance(buf, mmap.mmap):
                buf.close()
            if pin is not None:
                pin.release()

    # ------------------------------------------------------------ mp4
    def file_index(self, relative: str) -> FileIndex:
        """The index of ``relative`` (the version this run reads): memo, byte cache, remote."""
        with self._lock:
            if self._pid != os.getpid():
                self._pid, self._memo, self._counted = os.getpid(), OrderedDict(), set()
            hit = self._memo.get(relative)
            if hit is not None:
                self._memo.move_to_end(relative)
                return hit
        src = self.source
        pin = src._remote_info(relative)
        assert pin is not None
        data = self._bytes(
            self._key(relative, pin, "mp4index"),
            ".mp4idx",
            lambda: self._build_index(relative, pin).to_bytes(),
            src.describe(relative),
        )
        fi = FileIndex.from_bytes(data)
        with self._lock:
            self._memo[relative] = fi
            while len(self._memo) > self.MEMO:
                self._memo.popitem(last=False)
        return fi

    def _build_index(self, relative: str, pin: RemoteInfo) -> FileIndex:
        windows: dict[int, bytes] = {}

        def read_at(off: int, n: int) -> bytes:
            n = max(0, min(n, pin.size - off))
            data = self.source._read_range(relative, off, off + n, kind="index")
            windows[off] = data
            return data

        index = index_file(read_at, pin.size, etag=pin.etag)
        # The head ends a byte past the 2 KiB probe at least: FFmpeg reads the probe, then
        # fills its 64 KiB buffer from there, and a short answer to that (the range's end)
        # is read-ahead that RangedFile ends without an error; an answer that ends exactly
        # where the next read starts would make that read an error.
        head = next((b for a, b in index.open_ranges if a == 0), 0)
        head = min(pin.size, max(head, PROBE_MIN + 1))
        # Ranges closer than FFmpeg's read-through reach are joined (it would read the gap).
        wanted = coalesce([(0, head), *index.open_ranges], SHORT_SEEK_FILL)
        opening: dict[int, bytes] = {}
        for a, b in wanted:
            got = _covered(windows, a, b)
            opening[a] = got if got is not None else read_at(a, b - a)
        return FileIndex(index, opening)

    def needed(self, relative: str, span: tuple[float, float]) -> list[tuple[int, int]]:
        """The byte ranges an episode span needs beyond what opening the file reads."""
        fi = self.file_index(relative)
        return _to_fetch(fi, episode_ranges(fi.index, *span, gap=self.source.remote.range_gap))

    def open_span(self, relative: str, span: tuple[float, float]) -> RangedFile:
        """A file object holding what decoding ``span`` (seconds of the file) needs.

        Its ``frame_mappings`` attribute is the file's frame table for torchcodec; closing
        it releases the cache entries it maps.
        """
        fi = self.file_index(relative)
        ranges = episode_ranges(fi.index, *span, gap=self.source.remote.range_gap)
        with self._lock:  # once per span and process (a decoder may be opened again)
            first = (relative, span) not in self._counted
            self._counted.add((relative, span))
        if first:
            self.source.counters.add("bytes_needed", sum(b - a for a, b in ranges))
        parts: dict[int, Any] = dict(fi.opening)
        pins: list[tuple[Any, CachedFile | None]] = []
        try:
            for a, b in _to_fetch(fi, ranges):
                buf, pin = self._range(relative, a, b)
                pins.append((buf, pin))
                parts[a] = buf
            f = RangedFile(fi.index.file_size, parts, name=self.source.describe(relative))
        except BaseException:
            _release(pins)
            raise
        f.frame_mappings = fi.mappings  # type: ignore[attr-defined]
        f.on_close = lambda: _release(pins)  # type: ignore[attr-defined]
        return f

    def prefetch_span(self, relative: str, span: tuple[float, float]) -> None:
        """Bring the index and the ranges of ``span`` into the byte cache."""
        for a, b in self.needed(relative, span):
            _release([self._range(relative, a, b)])

    def _range(self, relative: str, a: int, b: int) -> tuple[Any, CachedFile | None]:
        src = self.source
        pin = src._remote_info(relative)
        assert pin is not None
        return self._entry(
            self._key(relative, pin, f"{a}-{b}"),
            ".range",
            lambda: src._read_range(relative, a, b, kind="range"),
            src.describe(relative),
        )

    # ------------------------------------------------------------ parquet
    def open_parquet(self, relative: str) -> Any:
        """A :class:`~framestream.io.parquet_ranges.RangedParquet` (footer fetched)."""
        from framestream.io.parquet_ranges import RangedParquet  # noqa: PLC0415

        pin = self.source._remote_info(relative)
        assert pin is not None
        f = RangedParquet(self, relative, pin.size)
        f.read_footer()
        return f


SHORT_SEEK_FILL = 40 * 1024
"""A span starting less than this after a range read at open is fetched from that range on.

FFmpeg seeks forward by reading through when the target is within its buffer plus 32 KiB
(``SHORT_SEEK_THRESHOLD``); after opening a file its buffer ends where an opening range
ends, so a span that starts within that reach is read through from there (bytes that must
be real, not invented)."""


def _to_fetch(fi: FileIndex, ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    held = fi.held
    filled = []
    for a, b in ranges:
        ends = [e for _, e in held if e <= a < e + SHORT_SEEK_FILL]
        filled.append((min(ends), b) if ends else (a, b))
    return subtract(coalesce(filled, 1), held)


def _release(pins: Iterable[tuple[Any, CachedFile | None]]) -> None:
    for buf, pin in pins:
        if isinstance(buf, mmap.mmap):
            try:
                buf.close()
            except BufferError:  # a view still exported: the mapping goes with it
                pass
        if pin is not None:
            pin.release()
