"""The remote half of :class:`~framestream.io.source.Source`: retried requests, size and ETag
checks, and files fetched in parallel byte ranges (into the byte cache) or read in place.

Every remote request has connect/read timeouts (set on the filesystem) and is retried with
exponential backoff on transient errors; what still fails is raised as :class:`SourceError`
naming the URL.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import fsspec

from framestream._errors import SourceError
from framestream.io.cache import CachedFile, IOCounters, RemoteInfo, cache_key
from framestream.io.ranged import SizedRaw
from framestream.io.remote import (
    RangeNotSupportedError,
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
    _pins: dict[str, RemoteInfo]
    run_id: str
    no_ranges: bool

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
        version = info.get("VersionId") if self.protocol in ("s3", "s3a") else None
        return RemoteInfo(int(info["size"]), _etag_of(info), str(version) if version else None)

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
        """The version of ``relative`` this run reads: the size/ETag it first saw.

        Asked once per run, not per process: the first process to see a file records what it
        saw (:meth:`_pin_record`, in the cache folder, shared by the run's workers) and every
        later read, in any worker and any epoch, is checked against it, so a file replaced on
        the server mid-run is never mixed with its old version (nor decoded with metadata read
        before the change): its cached bytes keep serving the pinned version, and a fetch of
        bytes not cached raises :class:`RemoteChangedError` naming the file. ``required=False``:
        None when unknown and unreachable (a whole cached copy is then used as it is).
        """
        self.fs  # noqa: B018 - a new process starts with an empty memo
        pin = self._pins.get(relative)
        if pin is not None:
            return pin
        record = self._pin_record(relative)
        if record is not None:
            pin = _load_pin(record)
            if pin is not None:
                self._pins[relative] = pin
                return pin
        if relative in self._infos and self._infos[relative] is None and not required:
            return None
        if not required and not self.remote.revalidate:
            return None
        try:
            info = self._stat_remote(relative)
        except SourceError:
            if required:
                raise
            self._infos[relative] = None  # unreachable: a whole cached copy will do
            return None
        if record is not None:
            info = _save_pin(record, info)  # the first process's version wins
        self._pins[relative] = info
        return info

    def _pin_record(self, relative: str) -> Path | None:
        """Where this run records the version of ``relative`` (None without a cache)."""
        if getattr(self, "cache", None) is None:
            return None
        return self._run_dir() / f"{cache_key(self._identity(relative))}.json"

    def _run_dir(self) -> Path:
        raise NotImplementedError

    def _identity(self, relative: str) -> str:
        raise NotImplementedError

    def _read_range(self, relative: str, start: int, end: int, kind: str = "file") -> bytes:
        """Bytes ``[start, end)`` of the version of ``relative`` this run reads.

        HTTP and S3 answers are checked against the pinned version (the ETag and total size
        they carry; S3 reads the pinned VersionId where the bucket has versions). A server
        that answers a range request with the whole object raises
        :class:`RangeNotSupportedError` without reading the body (unless the whole object
        was asked for). ``kind`` says which counters the bytes go to: ``"file"`` (whole-file
        copies), ``"index"`` (mp4 indexes, parquet footers) or ``"range"`` (episode ranges).
        """
        pin = self._remote_info(relative)
        assert pin is not None
        path = self.path(relative)

        def get() -> bytes:
            if self.protocol in ("http", "https"):
                data, seen = self._http_range(relative, path, start, end, pin.size)
            elif self.protocol in ("s3", "s3a"):
                data, seen = self._s3_range(path, start, end, pin)
            else:
                data, seen = self.fs.cat_file(path, start=start, end=end), None
            if len(data) != end - start:
                raise _ShortReadError(
                    f"bytes {start}-{end - 1}: got {len(data)} of {end - start} bytes "
                    "(truncated object or transfer)"
                )
            if seen is not None:
                self._check_version(relative, pin, seen)
            return data

        data = self._retrying(f"read of bytes {start}-{end - 1}", relative, get)
        self.counters.add("bytes_fetched", len(data))
        if kind == "index":
            self.counters.add("index_bytes_fetched", len(data))
            self.counters.add("index_requests")
        elif kind == "range":
            self.counters.add("range_bytes_fetched", len(data))
            self.counters.add("range_requests")
        return data

    def _check_version(self, relative: str, pin: RemoteInfo, seen: RemoteInfo) -> None:
        if seen.size == pin.size and (pin.etag is None or seen.etag in (None, pin.etag)):
            return
        raise RemoteChangedError(
            f"{self.describe(relative)}: the object changed while it was fetched or since this "
            f"run first read it ({pin.size} bytes, ETag {pin.etag} then; {seen.size} bytes, "
            f"ETag {seen.etag} now). A run reads one version of each file: restart it to read "
            "the new one"
        )

    def _http_range(
        self, relative: str, url: str, start: int, end: int, size: int
    ) -> tuple[bytes, RemoteInfo | None]:
        """One ranged GET (aiohttp on fsspec's session): the bytes and what the answer says
        about the object (total size from Content-Range, ETag)."""
        from fsspec.asyn import sync

        fs = self.fs
        where = self.describe(relative)

        async def get() -> tuple[bytes, RemoteInfo | None]:
            session = await fs.set_session()
            headers = {"Accept-Encoding": "identity", "Range": f"bytes={start}-{end - 1}"}
            async with session.get(fs.encode_url(url), headers=headers, allow_redirects=True) as r:
                if r.status == 404:
                    raise FileNotFoundError(url)
                raw_etag = r.headers.get("ETag")  # case-insensitive lookup
                etag = _etag_of({"etag": raw_etag}) if raw_etag else None
                if r.status == 200:
                    length = int(r.headers.get("Content-Length", -1))
                    if start == 0 and end == size and length in (size, -1):
                        return await r.read(), RemoteInfo(size if length < 0 else length, etag)
                    r.close()  # do not download the whole object for a range of it
                    self.counters.add("range_unsupported")
                    self.no_ranges = True  # the source's other readers stop asking
                    raise RangeNotSupportedError(
                        f"{where}: the server does not support range requests (it answered "
                        f"the range {start}-{end - 1} with the whole object, HTTP 200)"
                    )
                if r.status == 416:
                    raise _ShortReadError(f"bytes {start}-{end - 1}: range not satisfiable")
                r.raise_for_status()
                data = await r.read()
                total = _content_range_total(r.headers.get("Content-Range"))
                return data, RemoteInfo(size if total is None else total, etag)

        return sync(fs.loop, get)

    def _s3_range(self, path: str, start: int, end: int, pin: RemoteInfo) -> tuple[bytes, Any]:
        """One ranged GetObject, on the pinned VersionId when the bucket keeps versions."""
        from fsspec.asyn import sync

        fs = self.fs
        bucket, key, _ = fs.split_path(path)
        kw: dict[str, Any] = {"Bucket": bucket, "Key": key, "Range": f"bytes={start}-{end - 1}"}
        if pin.version:
            kw["VersionId"] = pin.version

        async def get() -> tuple[bytes, RemoteInfo]:
            resp = await fs._call_s3("get_object", **kw)
            body = resp["Body"]
            try:
                data = await body.read()
            finally:
                body.close()
            total = _content_range_total(resp.get("ContentRange"))
            etag = str(resp.get("ETag") or "").strip('"') or None
            return data, RemoteInfo(pin.size if total is None else total, etag)

        return sync(fs.loop, get)

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

            try:
                if len(ranges) <= 1 or self.remote.concurrency <= 1:
                    got = sum(one(rng) for rng in ranges)
                else:
                    got = sum(one(rng) for rng in ranges[:1])  # one first: does Range work?
                    futures = [self._block_pool().submit(one, rng) for rng in ranges[1:]]
                    try:
                        got += sum(f.result() for f in futures)
                    finally:
                        for f in futures:
                            f.cancel()
            except RangeNotSupportedError:
                # The whole body in one request (the server sends nothing less), read once.
                got = one((0, info.size))
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


class _RemoteRaw(SizedRaw):
    """A remote file read in place with retried range requests (used without a cache)."""

    def __init__(self, source: RemoteReads, relative: str, size: int) -> None:
        self._source, self._rel, self._size, self._pos = source, relative, size, 0
        self.name = source.describe(relative)

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self._size - self._pos)
        if n <= 0:
            return 0
        data = self._source._read_range(self._rel, self._pos, self._pos + n)
        buffer[:n] = data
        self._pos += n
        return n


def _content_range_total(value: str | None) -> int | None:
    """The total size in a ``Content-Range: bytes a-b/total`` header (None if absent/``*``)."""
    if not value or "/" not in value:
        return None
    total = value.rsplit("/", 1)[1].strip()
    return int(total) if total.isdigit() else None


def _load_pin(path: Path) -> RemoteInfo | None:
    try:
        d = json.loads(path.read_text())
        return RemoteInfo(int(d["size"]), d.get("etag"), d.get("version"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _save_pin(path: Path, info: RemoteInfo) -> RemoteInfo:
    """Record ``info`` unless another process already did; returns the recorded one."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({"size": info.size, "etag": info.etag, "version": info.version}))
        try:
            os.link(tmp, path)  # atomic: fails if another process recorded it first
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    except OSError:
        return info  # a read-only or full cache folder: the pin stays in this process
    return _load_pin(path) or info
