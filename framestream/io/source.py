"""Where a dataset's bytes come from: one fsspec filesystem and a root inside it.

Everything downstream asks the :class:`Source` for a relative path (``meta/info.json``,
``videos/cam/chunk-000/file-001.mp4``), so nothing assumes a local folder. Local paths get a
fast path (decoders open them by name, without a Python file object in between).

Remote roots (``s3://``, ``http(s)://``, ``hf://`` and Hub repo ids) go through a local
:class:`~framestream.io.cache.ByteCache`: a file is fetched whole (in parallel byte ranges),
checked against the remote size and ETag, renamed into the cache, and then read like a local
file. Every remote request has connect/read timeouts and is retried with exponential backoff
on transient errors; what still fails is raised as :class:`SourceError` naming the URL.
With ``cache_max_bytes=0`` (or when the cache cannot make room) files are read in place with
retried range requests instead. The remote requests themselves (retries, stat, ranged
fetches) are in :mod:`framestream.io.fetch`.
"""

from __future__ import annotations

import functools
import io
import json
import os
import threading
import uuid
import weakref
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

import fsspec
from fsspec.core import url_to_fs

from framestream._errors import DatasetFormatError, DatasetNotFoundError, SourceError
from framestream.io.cache import (
    DEFAULT_MAX_BYTES,
    ByteCache,
    CachedFile,
    CacheFullError,
    IOCounters,
    RemoteInfo,
    cache_dir,
    cache_key,
)
from framestream.io.fetch import RemoteReads, _PinnedReader, _RemoteRaw
from framestream.io.remote import (
    RangeNotSupportedError,
    RemoteChangedError,
    RemoteOptions,
    is_transient,
    resolve_url,
)
from framestream.io.runs import RunLease, hold_run, run_dir, sweep_runs

__all__ = ["RemoteChangedError", "RemoteOptions", "Source", "is_transient", "resolve_url"]

_EPISODES_FILE = "meta/episodes/chunk-{chunk:03d}/file-{file:03d}.parquet"


def default_cache_dir() -> str:
    return str(cache_dir() / "bytes")


@dataclass
class Source(RemoteReads):
    """A dataset root on some filesystem, plus the options used to open and cache it.

    Args:
        url: a local folder, ``s3://bucket/prefix``, ``http(s)://host/path``,
            ``hf://datasets/org/name`` or a Hub repo id ``org/name``.
        storage_options: passed to fsspec (credentials, ``endpoint_url``...). For ``s3://``
            the endpoint and region also come from ``AWS_ENDPOINT_URL(_S3)`` and
            ``AWS_REGION``/``AWS_DEFAULT_REGION``, credentials from the usual AWS variables.
        revision: the Hub revision (branch, tag or commit) of a Hub dataset.
        cache_dir: where remote bytes are cached (default ``<framestream cache>/bytes``).
        cache_max_bytes: the cache's size limit (default 20 GiB); 0 disables the cache.
        remote: timeouts, retries and fetch sizes (:class:`RemoteOptions`, or a dict of them).
    """

    url: str
    storage_options: dict[str, Any] = field(default_factory=dict)
    revision: str | None = None
    cache_dir: str | None = None
    cache_max_bytes: int | None = None
    remote: RemoteOptions | Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        self.url = resolve_url(os.fspath(self.url), self.revision)
        self.storage_options = dict(self.storage_options or {})
        if not isinstance(self.remote, RemoteOptions):
            self.remote = RemoteOptions(**dict(self.remote or {}))
        self._lock = threading.Lock()
        self._fs_pid = -1
        self._fs: fsspec.AbstractFileSystem | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._infos: dict[str, RemoteInfo | None] = {}
        # The versions this run reads (see RemoteReads._remote_info); inherited by workers.
        self._pins: dict[str, RemoteInfo] = dict(getattr(self, "_inherited_pins", {}))
        self.run_id: str = getattr(self, "_inherited_run", None) or uuid.uuid4().hex
        fs, root = self._make_fs()
        self._fs, self._fs_pid = fs, os.getpid()
        self.root: str = root.rstrip("/")
        self.protocol: str = self.protocol_of(fs)
        self.is_local = self.protocol in ("file", "local")
        if self.is_local and not os.path.isdir(self.root):
            # Say so at once: never a retried lookup, never a guess at the Hub.
            what = "is a file, not a dataset folder" if os.path.exists(self.root) else "not found"
            raise DatasetNotFoundError(f"no such local dataset folder: {self.url} ({what})")
        self.counters = IOCounters()
        self.no_ranges = False  # set when the server answered a range request with 200
        self.cache: ByteCache | None = None
        if not self.is_local and self.cache_max_bytes != 0:
            self.cache = ByteCache(
                self.cache_dir or default_cache_dir(),
                DEFAULT_MAX_BYTES if self.cache_max_bytes is None else self.cache_max_bytes,
                counters=self.counters,
                lock_timeout_s=self.remote.lock_timeout_s,
            )
            sweep_runs(self.cache.root)  # records of runs that are over (crashed ones too)
        self._lease: RunLease | None = None
        if self.cache is not None:
            self._run_dir()  # held from the start: the run's versions outlive its workers

    def __getstate__(self) -> dict[str, Any]:
        # Filesystems, pools and locks are re-created in each worker process, not pickled.
        return {
            "url": self.url,
            "storage_options": self.storage_options,
            "revision": None,  # already part of the resolved URL
            "cache_dir": self.cache_dir,
            "cache_max_bytes": self.cache_max_bytes,
            "remote": asdict(self.remote),
            "run_id": self.run_id,
            "pins": {k: asdict(v) for k, v in self._pins.items()},
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        self._inherited_run = state.pop("run_id", None)
        self._inherited_pins = {k: RemoteInfo(**v) for k, v in state.pop("pins", {}).items()}
        self.__init__(**state)

    # --------------------------------------------------------------- filesystem
    def _fs_options(self) -> dict[str, Any]:
        """``storage_options`` plus timeouts and env defaults the user did not set."""
        opts = dict(self.storage_options)
        scheme = self.url.split("://", 1)[0] if "://" in self.url else "file"
        r = self.remote
        if scheme in ("s3", "s3a"):
            ck = dict(opts.get("client_kwargs") or {})
            endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            if endpoint and "endpoint_url" not in ck and "endpoint_url" not in opts:
                ck["endpoint_url"] = endpoint
            region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
            if region and "region_name" not in ck:
                ck["region_name"] = region
            opts["client_kwargs"] = ck
            cfg = dict(opts.get("config_kwargs") or {})
            cfg.setdefault("connect_timeout", r.connect_timeout_s)
            cfg.setdefault("read_timeout", r.read_timeout_s)
            cfg.setdefault("retries", {"max_attempts": 0, "mode": "standard"})  # ours instead
            opts["config_kwargs"] = cfg
            opts.setdefault("skip_instance_cache", True)  # we set its retries (below)
        elif scheme in ("http", "https"):
            import aiohttp

            ck = dict(opts.get("client_kwargs") or {})
            ck.setdefault(
                "timeout",
                aiohttp.ClientTimeout(
                    total=None,
                    connect=r.connect_timeout_s,
                    sock_connect=r.connect_timeout_s,
                    sock_read=r.read_timeout_s,
                ),
            )
            opts["client_kwargs"] = ck
            opts.setdefault("skip_instance_cache", True)
        return opts

    def _make_fs(self) -> tuple[fsspec.AbstractFileSystem, str]:
        fs, root = url_to_fs(self.url, **self._fs_options())
        if self.protocol_of(fs) in ("s3", "s3a"):
            fs.retries = 1  # s3fs's own retry loop off: ours is configurable and reports the URL
        return fs, root

    @staticmethod
    def protocol_of(fs: fsspec.AbstractFileSystem) -> str:
        return fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        """This process's filesystem (async filesystems are not fork-safe: one per process)."""
        if self._fs is None or self._fs_pid != os.getpid():
            with self._lock:
                if self._fs is None or self._fs_pid != os.getpid():
                    self._fs = self._make_fs()[0]
                    self._fs_pid, self._pool, self._infos = os.getpid(), None, {}
        return self._fs

    def path(self, relative: str) -> str:
        """The full path of ``relative`` on this source's filesystem."""
        return f"{self.root}/{relative}" if self.root else relative

    def describe(self, relative: str) -> str:
        """A human-readable location for error messages."""
        if self.is_local:
            return self.path(relative)
        return f"{self.url.rstrip('/')}/{relative}"

    def _identity(self, relative: str) -> str:
        """What makes a remote file unique across servers (the cache key's input)."""
        endpoint = ""
        if self.protocol in ("s3", "s3a"):
            ck = self._fs_options().get("client_kwargs", {})
            endpoint = str(self.storage_options.get("endpoint_url") or ck.get("endpoint_url", ""))
        elif self.protocol == "hf":
            endpoint = os.environ.get("HF_ENDPOINT", "")
        return f"{self.protocol}|{endpoint}|{self.path(relative)}"

    # --------------------------------------------------------------- cache
    def _run_dir(self) -> Path:
        """This run's pin-record folder, with this process holding the run (see
        :mod:`framestream.io.runs`: the folder goes when no process of the run is left)."""
        assert self.cache is not None
        with self._lock:
            if self._lease is None or not self._lease.held:
                self._lease = hold_run(self.cache.root, self.run_id, self.remote.lock_timeout_s)
                if self._lease is not None:
                    weakref.finalize(self, self._lease.release)
        return run_dir(self.cache.root, self.run_id)

    def close(self) -> None:
        """End this process's hold on the run: its pin records are removed once no process
        of the run holds it (also done when the source is garbage-collected or the process
        exits). Using the source again takes a new hold."""
        lease, self._lease = self._lease, None
        if lease is not None:
            lease.release()

    def pin(self, relative: str) -> CachedFile | None:
        """A local copy of ``relative`` that stays in the cache until ``release()``.

        Local sources give the file itself. Remote sources fetch it into the cache first (or
        find it there); None means it must be read remotely (no cache, or no room in it).
        """
        if self.is_local:
            return CachedFile(self.path(relative), -1, None)
        if self.cache is None:
            return None
        key = cache_key(self._identity(relative))
        suffix = PurePosixPath(relative).suffix
        where = self.describe(relative)
        # A RemoteChangedError is not retried: this run reads the version it first saw
        # (its cached copy still serves), and another try would only find the new one.
        try:
            return self.cache.acquire(
                key,
                suffix,
                remote_info=lambda required: self._remote_info(relative, required),
                fetch=lambda tmp, info: self._fetch_into(relative, tmp, info),
                describe=where,
            )
        except CacheFullError:
            self.counters.add("byte_cache_bypass")
            return None

    def cached_whole(self, relative: str) -> CachedFile | None:
        """A pinned whole copy of ``relative`` of the version this run reads, if the cache
        already holds one (``framestream prewarm``, an earlier ``fetch="files"`` run); no
        download. Ranged reads use it instead of fetching ranges."""
        if self.is_local or self.cache is None:
            return None
        key = cache_key(self._identity(relative))
        suffix = PurePosixPath(relative).suffix
        meta = self.cache._read_meta(key)
        if meta is None or not self.cache.contains(key, suffix):
            return None
        info = self._remote_info(relative)
        assert info is not None
        if meta.get("size") != info.size or (info.etag and meta.get("etag") != info.etag):
            return None  # another version than the one this run reads
        return self.pin(relative)

    @property
    def fetches_ranges(self) -> bool:
        """Whether episodes are read as byte ranges (remote, ``fetch="ranges"``, and the
        server has answered range requests as such)."""
        return not self.is_local and self.remote.fetch == "ranges" and not self.no_ranges

    def whole_instead_of_ranges(self, relative: str, exc: RangeNotSupportedError) -> CachedFile:
        """After a server refused ranges: the whole file, downloaded once into the cache."""
        self.no_ranges = True
        pin = self.pin(relative) if self.cache is not None else None
        if pin is None:
            raise RangeNotSupportedError(
                f"{exc}; reading it needs the byte cache (cache_max_bytes=0 here) or a "
                "server with Range support"
            ) from exc
        return pin

    @functools.cached_property
    def spans(self) -> Any:
        """This source's :class:`~framestream.io.spans.SpanReader` (episode byte ranges)."""
        from framestream.io.spans import SpanReader

        return SpanReader(self)

    def prefetch(self, relative: str) -> None:
        """Bring ``relative`` into the cache (a no-op for local sources)."""
        if not self.is_local and self.cache is not None:
            pin = self.pin(relative)
            if pin is not None:
                pin.release()

    def io_stats(self) -> dict[str, int]:
        """This process's remote I/O counters (bytes fetched, requests, cache hits...)."""
        return self.counters.snapshot()

    # --------------------------------------------------------------- reading
    def exists(self, relative: str) -> bool:
        if self.is_local:
            return self.fs.exists(self.path(relative))
        try:
            self._remote_info(relative)
        except (FileNotFoundError, IsADirectoryError):
            return False
        return True

    def open(self, relative: str, mode: str = "rb") -> IO[bytes]:
        """Open a file; a missing file raises :class:`FileNotFoundError` naming it."""
        if self.is_local or mode != "rb":
            try:
                return self.fs.open(self.path(relative), mode)
            except FileNotFoundError as exc:
                raise FileNotFoundError(f"{self.describe(relative)}: file not found") from exc
            except OSError as exc:
                raise SourceError(f"{self.describe(relative)}: cannot open ({exc})") from exc
        if self.fetches_ranges and relative.startswith("data/") and relative.endswith(".parquet"):
            whole = self.cached_whole(relative)
            if whole is not None:
                return _PinnedReader(whole)
            return self.spans.open_parquet(relative)  # row groups fetched as needed
        if self._read_in_place(relative):
            # Unbuffered: pyarrow asks for the footer and each needed column chunk exactly.
            return _RemoteRaw(self, relative, self._remote_info(relative).size)  # type: ignore[union-attr]
        pin = self.pin(relative)
        if pin is not None:
            return _PinnedReader(pin)
        info = self._remote_info(relative)
        assert info is not None
        raw = _RemoteRaw(self, relative, info.size)
        return io.BufferedReader(raw, buffer_size=max(1, self.remote.read_buffer_size))

    def _read_in_place(self, relative: str) -> bool:
        """Large episode index files are read once per run, a few columns of hundreds
        (``stats/*``): range reads of those columns beat copying the whole file."""
        if not (relative.startswith("meta/episodes/") and relative.endswith(".parquet")):
            return False
        info = self._remote_info(relative)
        return info is not None and info.size >= self.remote.metadata_in_place_bytes

    def local_path(self, relative: str) -> str | None:
        """A path a native library can open directly, or None for files read remotely.

        For a remote source this is the cached copy (fetched if needed). It is not pinned:
        hold :meth:`pin` instead while the file must not be evicted.
        """
        if self.is_local:
            return self.path(relative)
        pin = self.pin(relative)
        if pin is None:
            return None
        pin.release()
        return pin.path

    def read_json(self, relative: str) -> dict[str, Any]:
        with self.open(relative) as f:
            raw = f.read()
        try:
            value = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DatasetFormatError(f"{self.describe(relative)}: not valid JSON ({exc})") from exc
        if not isinstance(value, dict):
            raise DatasetFormatError(f"{self.describe(relative)}: expected a JSON object")
        return value

    def list(self, relative_dir: str) -> list[str]:
        """Relative paths of the files below ``relative_dir`` (recursively), sorted.

        HTTP servers cannot list folders; there only ``meta/episodes`` can be listed, by
        probing LeRobot's ``chunk-CCC/file-FFF.parquet`` names in order until one is missing.
        """
        if self.protocol in ("http", "https"):
            return self._probe_episode_files(relative_dir)
        base = self.path(relative_dir)
        if self.is_local:
            if not self.fs.exists(base):
                return []
            found = self.fs.find(base)
        else:

            def find() -> list[str]:
                try:
                    return self.fs.find(base)
                except FileNotFoundError:
                    return []

            found = self._retrying("list", relative_dir, find)
        prefix = self.root + "/" if self.root else ""
        out = []
        for p in found:
            p = p if not self.is_local else os.path.normpath(p)
            rel = p[len(prefix) :] if p.startswith(prefix) else p
            out.append(rel)
        return sorted(out)

    def _probe_episode_files(self, relative_dir: str) -> list[str]:
        if relative_dir.strip("/") != "meta/episodes":
            raise SourceError(
                f"{self.describe(relative_dir)}: HTTP servers cannot list folders (only "
                "meta/episodes can be found, by probing its file names)"
            )
        try:
            chunks_size = int(self.read_json("meta/info.json").get("chunks_size") or 1000)
        except FileNotFoundError:
            chunks_size = 1000
        out: list[str] = []
        chunk = file = 0
        while True:
            rel = _EPISODES_FILE.format(chunk=chunk, file=file)
            if not self.exists(rel):
                return out
            out.append(rel)
            file += 1
            if file >= chunks_size:
                chunk, file = chunk + 1, 0
