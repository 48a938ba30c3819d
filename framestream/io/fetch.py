"""The remote half of :class:`~framestream.io.source.Source`: retried requests, size and ETag
checks, and files fetched in parallel byte ranges (into the byte cache) or read in place.

Every remote request has connect/read timeouts (set on the filesystem) and is retried with
exponential backoff on transient errors; what still fails is raised as :class:`SourceError`
naming the URL.
"""

from __future__ import annotations

import io
import itertools
import os
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import fsspec

from framestream._errors import SourceError
from framestream.io.cache import CachedFile, IOCounters, RemoteInfo
from framestream.io.remote import (
    RemoteChangedError,
    RemoteOptions,
    _etag_of,
    _ShortReadError,
    _why,
    is_transient,
)

T = TypeVar("T")


class RemoteReads:
    """Remote requests of a source; :class:`~framestream.io.source.Source` provides the
    attributes below (its filesystem, options, counters and per-process memos)."""

    remote: RemoteOptions
    protocol: str
    counters: IOCounters
    _lock: threading.Lock
    _pool: ThreadPoolExecutor | None
    _infos: dict[str, RemoteInfo | None]

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        raise NotImplementedError

    def path(self, relative: str) -> str:
        raise NotImplementedError

    def describe(self, relative: str) -> str:
        raise NotImplementedError

    def _retrying(self, what: str, relative: str, fn: Callable[[], T]) -> T:
        """Run one remote request with timeouts already set, retrying transient failures."""
        r = self.remote
        delay = r.backoff_s
        for attempt in itertools.count():
            try:
                self.counters.add("remote_requests")
                return fn()
            except Exception as exc:
                where = self.describe(relative)
                transient = is_transient(exc)
                if not transient:
                    if isinstance(exc, FileNotFoundError):
                        raise FileNotFoundError(f"{where}: file not found") from exc
                    if isinstance(exc, OSError) and not isinstance(exc, SourceError):
                        raise SourceError(f"{where}: {what} failed ({_why(exc)})") from exc
                    raise
                if attempt >= r.retries:
                    raise SourceError(
                        f"{where}: {what} failed after {attempt + 1} attempts ({_why(exc)})"
                    ) from exc
                self.counters.add("remote_retries")
                time.sleep(min(delay, r.max_backoff_s) * random.uniform(0.5, 1.0))
                delay *= 2
        raise AssertionError("unreachable")

    def _stat_remote(self, relative: str) -> RemoteInfo:
        path = self.path(relative)

        def stat() -> dict[str, Any]:
            if self.protocol in ("http", "https"):
                return self._http_head(path)
            try:
                self.fs.invalidate_cache(path)
            except Exception:  # noqa: S110 - a filesystem without a listings cache
                pass
            return self.fs.info(path)

        info = self._retrying("stat", relative, stat)
        if info.get("type") == "directory":
            raise IsADirectoryError(f"{self.describe(relative)}: is a folder, not a file")
        if info.get("size") is None:
            raise SourceError(f"{self.describe(relative)}: the server gives no size")
        return RemoteInfo(int(info["size"]), _etag_of(info))

    def _http_head(self, url: str) -> dict[str, Any]:
        """One HEAD request. fsspec's ``info`` falls back to a GET of the whole file when
        HEAD fails (for a video, the whole video), and reports any failure as not found."""
        from fsspec.asyn import sync

        fs = self.fs

        async def head() -> dict[str, Any]:
            session = await fs.set_session()
            headers = {"Accept-Encoding": "identity"}
            async with session.head(url, allow_redirects=True, headers=headers) as r:
                if r.status == 404:
                    raise FileNotFoundError(url)
                if r.status == 405:  # HEAD not allowed: let fsspec find the size its way
                    return {}
                r.raise_for_status()
                out: dict[str, Any] = {"etag": r.headers.get("ETag")}
                if "Content-Length" in r.headers and r.headers.get("Content-Encoding") in (
                    None,
                    "",
                    "identity",
                ):
                    out["size"] = int(r.headers["Content-Length"])
                return out

        info = sync(fs.loop, head)
        return info if info.get("size") is not None else fs.info(url)

    def _remote_info(self, relative: str, required: bool = True) -> RemoteInfo | None:
        """The remote size/ETag, asked once per process (``required=False``: None if unknown)."""
        self.fs  # noqa: B018 - a new process starts with an empty memo
        if relative in self._infos:
            known = self._infos[relative]
            if known is not None or not required:
                return known
        if not required and not self.remote.revalidate:
            return None
        try:
            info = self._stat_remote(relative)
        except SourceError:
            if required:
                raise
            self._infos[relative] = None  # unreachable: a whole cached copy will do
            return None
        self._infos[relative] = info
        return info

    def _read_range(self, relative: str, start: int, end: int) -> bytes:
        path = self.path(relative)

        def get() -> bytes:
            data = self.fs.cat_file(path, start=start, end=end)
            if len(data) != end - start:
                raise _ShortReadError(
                    f"bytes {start}-{end - 1}: got {len(data)} of {end - start} bytes "
                    "(truncated object or transfer)"
                )
            return data

        data = self._retrying(f"read of bytes {start}-{end - 1}", relative, get)
        self.counters.add("bytes_fetched", len(data))
        return data

    def _block_pool(self) -> ThreadPoolExecutor:
        self.fs  # noqa: B018 - resets the pool in a new process
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max(1, self.remote.concurrency), thread_name_prefix="framestream-fetch"
                )
            return self._pool

    def _fetch_into(self, relative: str, tmp: str, info: RemoteInfo) -> None:
        """Write the remote file into ``tmp`` (pre-sized), then check it is whole and current."""
        bs = max(1, self.remote.block_size)
        ranges = [(s, min(s + bs, info.size)) for s in range(0, info.size, bs)]
        fd = os.open(tmp, os.O_WRONLY | os.O_CLOEXEC)
        try:

            def one(rng: tuple[int, int]) -> int:
                data = self._read_range(relative, *rng)
                os.pwrite(fd, data, rng[0])
                return len(data)

            if len(ranges) <= 1 or self.remote.concurrency <= 1:
                got = sum(one(rng) for rng in ranges)
            else:
                futures = [self._block_pool().submit(one, rng) for rng in ranges]
                try:
                    got = sum(f.result() for f in futures)
                finally:
                    for f in futures:
                        f.cancel()
        finally:
            os.close(fd)
        now = self._stat_remote(relative)
        where = self.describe(relative)
        if got != info.size or now.size != info.size:
            raise RemoteChangedError(
                f"{where}: size changed while it was fetched ({info.size} bytes announced, "
                f"{got} received, {now.size} now)"
            )
        if info.etag is not None and now.etag is not None and now.etag != info.etag:
            raise RemoteChangedError(
                f"{where}: the object changed while it was fetched (ETag {info.etag} -> {now.etag})"
            )


class _PinnedReader(io.BufferedReader):
    """A cached file opened for reading; closing it unpins it."""

    def __init__(self, pin: CachedFile) -> None:
        super().__init__(io.FileIO(pin.path, "rb"))
        self._pin = pin

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._pin.release()


class _RemoteRaw(io.RawIOBase):
    """A remote file read in place with retried range requests (used without a cache)."""

    def __init__(self, source: RemoteReads, relative: str, size: int) -> None:
        self._source, self._rel, self._size, self._pos = source, relative, size, 0
        self.name = source.describe(relative)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self._size - self._pos)
        if n <= 0:
            return 0
        data = self._source._read_range(self._rel, self._pos, self._pos + n)
        buffer[:n] = data
        self._pos += n
        return n
