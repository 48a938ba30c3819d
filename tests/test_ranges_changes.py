"""fetch="ranges": files that change on the server during a run, and servers without Range.

A run reads the version of each file it first saw (issue 18.5): a replaced file keeps being
read from the cached bytes of that version, and a fetch of bytes not cached stops the run with
a RemoteChangedError naming the file, at once (no lock wait). A server that answers range
requests with the whole object (18.8) costs one whole download per file, not 15 retries.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from ranges_helpers import digest, ranges_dataset
from remote_helpers import FAST, small_dataset

from framestream import SourceError, StreamingLeRobotDataset
from framestream.io.source import RemoteChangedError
from framestream.testing.servers import serve

pytestmark = pytest.mark.timeout(300)
EPS = [0, 1, 2, 3, 4, 5]


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return small_dataset(tmp_path_factory)


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    return ranges_dataset(tmp_path_factory.getbasetemp())


def _copy(root: Path, dst: Path) -> Path:
    shutil.copytree(root, dst)
    return dst


def _touch_new_version(path: Path) -> None:
    """The same bytes written again: a new mtime, so a new ETag (a re-upload)."""
    data = path.read_bytes()
    time.sleep(0.01)
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 0]))  # same content, new write
    st = path.stat()
    import os

    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def _rows(samples, keys):
    return sorted(digest(s, keys) for s in samples)


def test_replaced_between_epochs_http(big, tmp_path):
    root = _copy(big, tmp_path / "ds")
    local = StreamingLeRobotDataset(
        str(root), return_uint8=True, seed=1, episodes=EPS, shuffle_chunk=0
    )
    want = _rows(list(local), local.meta.video_keys)
    with serve("http", root) as srv:
        cache = tmp_path / "cache"
        ds = StreamingLeRobotDataset(
            srv.url, return_uint8=True, seed=1, cache_dir=cache, episodes=EPS
        )
        assert _rows(list(ds), ds.meta.video_keys) == want
        rel = ds.meta.video_file(0, ds.meta.video_keys[0])
        _touch_new_version(root / rel)
        # epoch 1: everything of the pinned version is cached: it is read again, nothing
        # of the new version is mixed in
        before = ds.meta.source.io_stats()["bytes_fetched"]
        ds.set_epoch(1)
        assert _rows(list(ds), ds.meta.video_keys) == want
        assert ds.meta.source.io_stats()["bytes_fetched"] == before
        # epoch 2 with the cached bytes gone: the old version cannot be read any more
        shutil.rmtree(cache / "data")
        (cache / "data").mkdir()
        ds.set_epoch(2)
        t0 = time.monotonic()
        with pytest.raises(RemoteChangedError, match=rf"{rel}.*since this run first read it"):
            list(ds)
        assert time.monotonic() - t0 < 30


def test_replaced_between_epochs_s3_without_cache(big, tmp_path):
    with serve("s3", big) as srv:
        ds = StreamingLeRobotDataset(
            srv.url,
            storage_options=srv.storage_options,
            return_uint8=True,
            seed=1,
            cache_max_bytes=0,
            episodes=[0, 1, 2],
        )
        first = _rows(list(ds), ds.meta.video_keys)
        assert len(first) > 0
        rel = ds.meta.video_file(1, ds.meta.video_keys[1])
        srv.replace(rel, (big / rel).read_bytes())  # a re-upload: new ETag on moto? same MD5
        srv.replace(rel, (big / rel).read_bytes()[:-1] + b"\x00")  # different bytes
        with pytest.raises(RemoteChangedError, match=rel):
            list(ds)


def test_replaced_mid_epoch_with_workers(big, tmp_path):
    root = _copy(big, tmp_path / "ds")
    eps = list(range(8))
    local = StreamingLeRobotDataset(str(root), return_uint8=True, shuffle=False, episodes=eps)
    want = {d[0]: d for d in (digest(s, local.meta.video_keys) for s in local)}
    with serve("http", root) as srv:
        ds = StreamingLeRobotDataset(
            srv.url,
            return_uint8=True,
            shuffle=False,
            prefetch=0,
            cache_dir=tmp_path / "c",
            episodes=eps,
        )
        keys = ds.meta.video_keys
        rel = ds.meta.video_file(7, keys[0])  # read late in the epoch
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, timeout=120)
        got = []
        t0 = time.monotonic()
        try:
            for s in loader:
                got.append(digest(s, keys))
                if len(got) == 10:
                    _touch_new_version(root / rel)
        except RemoteChangedError as exc:
            assert rel in str(exc)
        else:  # every byte of the old version was already fetched: still one version
            assert len(got) == len(want)
        assert time.monotonic() - t0 < 120  # never a lock wait of lock_timeout_s
        for d in got:
            assert d == want[d[0]]


def test_server_without_range_support(small, big, tmp_path):
    local = StreamingLeRobotDataset(str(small), return_uint8=True, seed=5, shuffle_chunk=0)
    want = _rows(list(local), local.meta.video_keys)
    with serve("http", small) as srv:
        srv.faults.ignore_range = True
        ds = StreamingLeRobotDataset(
            srv.url, return_uint8=True, seed=5, cache_dir=tmp_path / "c", remote_options=FAST
        )
        assert _rows(list(ds), ds.meta.video_keys) == want
        gets = Counter(p for m, p, _r, _s in srv.faults.log if m == "GET")
        assert max(gets.values()) <= 2, gets  # not 15 retries of whole downloads
    eps = [0, 1, 2, 3]
    local = StreamingLeRobotDataset(
        str(big), return_uint8=True, seed=5, episodes=eps, shuffle_chunk=0
    )
    want = _rows(list(local), local.meta.video_keys)
    with serve("http", big) as srv:
        srv.faults.ignore_range = True
        ds = StreamingLeRobotDataset(
            srv.url, return_uint8=True, seed=5, cache_dir=tmp_path / "c2", episodes=eps
        )
        assert _rows(list(ds), ds.meta.video_keys) == want
        assert ds.meta.source.no_ranges  # found out, then read whole files from the cache
        # each file downloaded whole once (range requests answered 200 are dropped before
        # their body is read), not retried as truncated transfers
        sizes = {p.relative_to(big).as_posix(): p.stat().st_size for p in big.rglob("*")}
        read = {p.lstrip("/") for m, p, _r, _s in srv.faults.log if m == "GET"}
        assert ds.meta.source.io_stats()["bytes_fetched"] <= 1.02 * sum(sizes[r] for r in read)
        # without a cache there is nowhere to keep the whole body: a clear error
        with pytest.raises(SourceError, match="does not support range requests"):
            ds = StreamingLeRobotDataset(
                srv.url, return_uint8=True, cache_max_bytes=0, episodes=eps, remote_options=FAST
            )
            list(ds)
