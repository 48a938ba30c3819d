"""A local byte cache for remote sources, shared by the workers and ranks of one machine.

Why: decoders and parquet readers are fastest on local files, and an epoch reads every file of a
dataset; fetching each remote file once into a local folder turns the network into a sequential
copy that can run ahead of decoding (see :class:`framestream.stream.prefetch.StreamIO`), and
a warm cache makes the next epoch (or the next run) as fast as local disk.

Layout under ``root``::

    data/<key>.data<ext>   whole, verified copies (their mtime is the LRU clock)
    data/<key>.meta.json   what was copied: URL, size, ETag
    locks/<key>.lock    one lock file per entry (never deleted)
    tmp/<key>.<pid>.<n>.part   downloads in progress
    .lock               held briefly while space is accounted for (reserve, commit, evict)
    pins/<run>/, pins/<run>.lock   the versions a live run reads (framestream.io.runs)

Safety between processes comes from ``flock``: a reader holds a *shared* lock on the entry's lock
file for as long as it uses the file (a pin), a downloader holds it *exclusively* while it
fetches, and eviction only takes entries whose exclusive lock it can get without waiting. So
two workers never download the same file (the second waits for the first, then reads its copy),
a pinned file is never evicted, and a file appears under ``data/`` only by an atomic rename
of a complete, verified download. Locks die with their process: a crashed worker leaves no pin
and no stuck download behind, only a stale ``.part`` file that the next space check removes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from framestream._errors import SourceError

DEFAULT_MAX_BYTES = 20 * 2**30

_log = logging.getLogger("framestream")
# A full disk (or quota): the file is read in place instead, as when the cache's limit is met.
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})

IO_FIELDS = (  # the counters a source publishes, named as in ``stats()``
    "bytes_fetched",
    "remote_requests",
    "remote_retries",
    "byte_cache_hits",
    "byte_cache_misses",
    "byte_cache_evictions",
    "byte_cache_bypass",
    # fetch="ranges" (io/spans.py): needed vs fetched bytes, index and range requests
    "bytes_needed",
    "index_bytes_fetched",
    "index_requests",
    "range_requests",
    "range_bytes_fetched",
    "range_unsupported",
)


def cache_dir() -> Path:
    """``$FRAMESTREAM_CACHE``, else ``$XDG_CACHE_HOME/framestream`` or ``~/.cache/framestream``."""
    if os.environ.get("FRAMESTREAM_CACHE"):
        return Path(os.environ["FRAMESTREAM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "framestream"


@dataclass(frozen=True)
class RemoteInfo:
    """What the remote says about a file: its size and, when it gives one, a version tag."""

    size: int
    etag: str | None = None
    version: str | None = None  # S3 VersionId (versioned buckets): reads stay on it


class CacheFullError(Exception):
    """No room can be made (the file is larger than the cache, the rest is pinned, or the
    cache's disk is full); the caller reads the file in place instead."""


class IOCounters:
    """Per-process counters (a forked worker starts from zero, not from its parent's counts)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._values = dict.fromkeys(IO_FIELDS, 0)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            if self._pid != os.getpid():
                self._pid, self._values = os.getpid(), dict.fromkeys(IO_FIELDS, 0)
            self._values[name] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            if self._pid != os.getpid():
                self._pid, self._values = os.getpid(), dict.fromkeys(IO_FIELDS, 0)
            return dict(self._values)

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()


def cache_key(identity: str) -> str:
    """A file-name-safe key for a remote file's full identity (protocol, endpoint, path)."""
    return hashlib.sha256(identity.encode()).hexdigest()[:40]


def _flock(fd: int, how: int, deadline: float, what: str) -> None:
    """``flock`` that gives up at ``deadline`` (a stuck holder must not hang a worker)."""
    delay = 0.001
    while True:
        try:
            fcntl.flock(fd, how | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
        if time.monotonic() >= deadline:
            raise SourceError(f"{what}: timed out waiting for the cache lock")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


class CachedFile:
    """A pinned cache entry: ``path`` stays valid (is never evicted) until :meth:`release`."""

    def __init__(self, path: str, size: int, fd: int | None) -> None:
        self.path, self.size, self._fd = path, size, fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor drops its shared lock

    def __enter__(self) -> CachedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


class ByteCache:
    """Whole-file cache with a byte limit and LRU eviction; see the module docstring."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        max_bytes: int | None = DEFAULT_MAX_BYTES,
        *,
        counters: IOCounters | None = None,
        lock_timeout_s: float = 600.0,
    ) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.counters = counters or IOCounters()
        self.lock_timeout_s = lock_timeout_s
        self._data, self._locks, self._tmp = (self.root / d for d in ("data", "locks", "tmp"))
        for d in (self._data, self._locks, self._tmp):
            d.mkdir(parents=True, exist_ok=True)
        self._seq = itertools.count()

    # ----------------------------------------------------------------- paths
    def data_path(self, key: str, suffix: str = "") -> Path:
        return self._data / f"{key}.data{suffix}"

    def _meta_path(self, key: str) -> Path:
        return self._data / f"{key}.meta.json"

    def _lock_fd(self, key: str) -> int:
        return os.open(self._locks / f"{key}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def _read_meta(self, key: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._meta_path(key).read_text())
        except (OSError, ValueError):
            return None

    def _valid(
        self, key: str, suffix: str, remote_info: Callable[[bool], RemoteInfo | None] | None
    ) -> Path | None:
        """The entry's path if it is whole and (when the remote says) the current version.

        The remote is asked only about an entry that exists (a missing one needs a fetch).
        """
        path = self.data_path(key, suffix)
        meta = self._read_meta(key)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return None
        if meta is None or meta.get("size") != size:
            return None
        info = remote_info(False) if remote_info is not None else None
        if info is not None and (
            info.size != size or (info.etag is not None and meta.get("etag") != info.etag)
        ):
            return None
        return path

    # ----------------------------------------------------------------- public
    def acquire(
        self,
        key: str,
        suffix: str,
        *,
        remote_info: Callable[[bool], RemoteInfo | None],
        fetch: Callable[[str, RemoteInfo], None],
        describe: str,
    ) -> CachedFile:
        """Pin ``key``, fetching it first if it is absent or stale.

        ``remote_info(required)`` says what the remote holds now; with ``required=False`` it may
        return None (unknown or unreachable: a whole cached copy is then used as it is).
        ``fetch(tmp_path, info)`` writes exactly ``info.size`` bytes into ``tmp_path`` (already
        created at that size) and raises if it cannot. Raises :class:`CacheFullError` when the
        file cannot be given room; the caller then reads it remotely instead.
        """
        try:
            return self._acquire(key, suffix, remote_info, fetch, describe)
        except OSError as exc:
            if exc.errno not in _NO_SPACE:
                raise
            raise self._disk_full(describe, exc) from exc

    def _disk_full(self, describe: str, exc: OSError) -> CacheFullError:
        """The error for a full cache disk, logged once per cache (it is the disk's fault,
        never the dataset's: the file is read in place, counted as ``byte_cache_bypass``)."""
        msg = f"{describe}: no space left on the cache's disk ({self.root}: {exc.strerror})"
        if not getattr(self, "_warned_full", False):
            self._warned_full = True
            _log.warning("framestream: %s; reading such files in place (uncached)", msg)
        return CacheFullError(msg)

    def _acquire(
        self,
        key: str,
        suffix: str,
        remote_info: Callable[[bool], RemoteInfo | None],
        fetch: Callable[[str, RemoteInfo], None],
        describe: str,
    ) -> CachedFile:
        deadline = time.monotonic() + self.lock_timeout_s
        for _ in range(4):
            fd = self._lock_fd(key)
            try:
                _flock(fd, fcntl.LOCK_SH, deadline, describe)
                path = self._valid(key, suffix, remote_info)
                if path is None:
                    # Exclusive to fetch; others wanting this file wait on their shared lock.
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    _flock(fd, fcntl.LOCK_EX, deadline, describe)
                    path = self._valid(key, suffix, remote_info)
                    if path is None:
                        self._fetch_locked(key, suffix, remote_info(True), fetch, describe)
                        self.counters.add("byte_cache_misses")
                    else:
                        self.counters.add("byte_cache_hits")  # another worker fetched it
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    _flock(fd, fcntl.LOCK_SH, deadline, describe)
                    path = self._valid(key, suffix, None)
                    if path is None:  # evicted between the unlock and the shared lock
                        os.close(fd)
                        continue
                else:
                    self.counters.add("byte_cache_hits")
                now = time.time_ns()  # finer than file-system timestamps: a strict LRU order
                with contextlib.suppress(OSError):
                    os.utime(path, ns=(now, now))
                return CachedFile(str(path), path.stat().st_size, fd)
            except BaseException:
                os.close(fd)
                raise
        raise SourceError(f"{describe}: the cached copy kept being evicted (cache too small?)")

    def contains(self, key: str, suffix: str = "") -> bool:
        return self._valid(key, suffix, None) is not None

    def usage(self) -> int:
        """Bytes held: whole entries plus downloads in progress (at their final size)."""
        total = 0
        for d in (self._data, self._tmp):
            for entry in os.scandir(d):
                if not entry.name.endswith(".meta.json"):
                    with contextlib.suppress(FileNotFoundError):
                        total += entry.stat().st_size
        return total

    # ----------------------------------------------------------------- fetching
    @contextlib.contextmanager
    def _space_lock(self, describe: str):
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            _flock(fd, fcntl.LOCK_EX, time.monotonic() + self.lock_timeout_s, describe)
            yield
        finally:
            os.close(fd)

    def _fetch_locked(
        self,
        key: str,
        suffix: str,
        info: RemoteInfo | None,
        fetch: Callable[[str, RemoteInfo], None],
        describe: str,
    ) -> None:
        if info is None:
            raise SourceError(f"{describe}: remote size unknown, cannot cache it")
        tmp = self._reserve(key, info.size, describe)
        try:
            fetch(str(tmp), info)
            meta = {"url": describe, "size": info.size, "etag": info.etag, "time": time.time()}
            with self._space_lock(describe):
                # Old data first: a crash must never pair a new .json with old bytes.
                with contextlib.suppress(FileNotFoundError):
                    self.data_path(key, suffix).unlink()
                mtmp = self._tmp / f"{key}.{os.getpid()}.{next(self._seq)}.meta.json"
                try:
                    mtmp.write_text(json.dumps(meta))
                    os.replace(mtmp, self._meta_path(key))
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        mtmp.unlink()
                os.replace(tmp, self.data_path(key, suffix))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise

    def _reserve(self, key: str, size: int, describe: str) -> Path:
        """Make room for ``size`` bytes (evicting LRU unpinned entries) and create the .part."""
        if self.max_bytes is not None and size > self.max_bytes:
            raise CacheFullError(f"{describe}: {size} bytes is larger than the cache limit")
        with self._space_lock(describe):
            used, entries = self._scan(key)
            if self.max_bytes is not None and used + size > self.max_bytes:
                for _, name, esize in sorted(entries):
                    ekey = name.split(".", 1)[0]
                    if ekey == key:
                        continue
                    if self._evict(ekey, name):
                        used -= esize
                        if used + size <= self.max_bytes:
                            break
                if used + size > self.max_bytes:
                    raise CacheFullError(
                        f"{describe}: no room for {size} bytes (limit {self.max_bytes}, "
                        f"{used} held by files in use)"
                    )
            tmp = self._tmp / f"{key}.{os.getpid()}.{next(self._seq)}.part"
            try:
                self._allocate(tmp, size)  # counted at full size from now on
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                raise
        return tmp

    def _allocate(self, tmp: Path, size: int) -> None:
        """Create ``tmp`` holding ``size`` bytes of real disk space (not a sparse file).

        Why: a sparse reservation succeeds on a full disk and the download then fails
        halfway with ENOSPC. ``posix_fallocate`` refuses at once (ENOSPC, raised to
        :meth:`acquire`, which reads the file in place instead). Where the filesystem cannot
        allocate, its free space is checked instead.
        """
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            if size > 0:
                try:
                    os.posix_fallocate(fd, 0, size)
                    return
                except OSError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                        raise
                st = os.fstatvfs(fd)
                if st.f_bavail * st.f_frsize < size:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
            os.ftruncate(fd, size)
        finally:
            os.close(fd)

    def _scan(self, own_key: str) -> tuple[int, list[tuple[int, str, int]]]:
        used, entries = 0, []
        for entry in os.scandir(self._data):
            if entry.name.endswith(".meta.json"):
                continue
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue
            used += st.st_size
            entries.append((st.st_mtime_ns, entry.name, st.st_size))
        for entry in os.scandir(self._tmp):
            ekey = entry.name.split(".", 1)[0]
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue
            # Ours are leftovers (this caller holds the key and has not reserved yet); others
            # are stale when no process holds their key's lock.
            if ekey == own_key or self._unlocked(ekey):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                continue
            used += st.st_size
        return used, entries

    def _unlocked(self, key: str) -> bool:
        fd = self._lock_fd(key)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            return False
        finally:
            os.close(fd)

    def _evict(self, key: str, name: str) -> bool:
        fd = self._lock_fd(key)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return False  # pinned, or being fetched
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._data / name)
            with contextlib.suppress(FileNotFoundError):
                self._meta_path(key).unlink()
            self.counters.add("byte_cache_evictions")
            return True
        finally:
            os.close(fd)
