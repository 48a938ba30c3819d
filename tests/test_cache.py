"""The byte cache: LRU under a size limit, pins, atomic fills, one download per file across
processes, stale leftovers; an epoch larger than the cache; ``framestream prewarm``."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest
from remote_helpers import (
    assert_same_samples,
    check_frames,
    dataset_files,
    small_dataset,
    stream,
)

from framestream import StreamingLeRobotDataset
from framestream._units import parse_episodes, parse_size
from framestream.cli import main as cli_main
from framestream.io.cache import ByteCache, CacheFullError, RemoteInfo
from framestream.testing.servers import serve

pytestmark = pytest.mark.timeout(120)


class FakeRemote:
    """Objects by key; counts fetches; can fail a fetch halfway."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, str]] = {}
        self.fetches: list[str] = []
        self.fail_after: int | None = None

    def put(self, key: str, data: bytes, etag: str = "v1") -> None:
        self.objects[key] = (data, etag)

    def acquire(self, cache: ByteCache, key: str):
        def remote_info(required: bool) -> RemoteInfo:
            data, etag = self.objects[key]
            return RemoteInfo(len(data), etag)

        def fetch(tmp: str, info: RemoteInfo) -> None:
            data, _ = self.objects[key]
            self.fetches.append(key)
            with open(tmp, "r+b") as f:
                if self.fail_after is not None:
                    f.write(data[: self.fail_after])
                    raise OSError("connection reset mid-download")
                f.write(data)

        return cache.acquire(key, ".bin", remote_info=remote_info, fetch=fetch, describe=key)


def key(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:40]


def read(pin) -> bytes:
    return Path(pin.path).read_bytes()


def test_lru_eviction_keeps_the_limit(tmp_path):
    cache = ByteCache(tmp_path, max_bytes=300)
    remote = FakeRemote()
    a, b, c, d = (key(x) for x in "abcd")
    for k, fill in ((a, b"a"), (b, b"b"), (c, b"c"), (d, b"d")):
        remote.put(k, fill * 100)
    for k in (a, b, c):
        remote.acquire(cache, k).release()
        assert cache.usage() <= 300
    remote.acquire(cache, a).release()  # a is now the most recently used
    pin = remote.acquire(cache, d)
    assert read(pin) == b"d" * 100
    pin.release()
    assert cache.usage() == 300
    assert cache.contains(a, ".bin") and not cache.contains(b, ".bin")  # b was least recent
    assert cache.contains(c, ".bin") and cache.contains(d, ".bin")
    assert cache.counters.snapshot()["byte_cache_evictions"] == 1
    assert remote.fetches == [a, b, c, d]  # the hit on a fetched nothing


def test_pinned_files_are_never_evicted(tmp_path):
    cache = ByteCache(tmp_path, max_bytes=250)
    remote = FakeRemote()
    a, b, c, d = (key(x) for x in "abcd")
    for k in (a, b, c, d):
        remote.put(k, os.urandom(100))
    pin_a = remote.acquire(cache, a)  # held, like an open decoder
    remote.acquire(cache, b).release()
    pin_c = remote.acquire(cache, c)  # needs room: evicts b (unpinned), not a
    assert cache.contains(a, ".bin") and not cache.contains(b, ".bin")
    with pytest.raises(CacheFullError):
        remote.acquire(cache, d)  # a and c pinned: no room without breaking a reader
    assert read(pin_a) == remote.objects[a][0] and read(pin_c) == remote.objects[c][0]
    assert cache.usage() <= 250
    pin_a.release()
    remote.acquire(cache, d).release()  # now a can go
    assert not cache.contains(a, ".bin") and cache.contains(d, ".bin")
    pin_c.release()


def test_file_larger_than_the_cache_is_refused(tmp_path):
    cache = ByteCache(tmp_path, max_bytes=50)
    remote = FakeRemote()
    remote.put(key("big"), b"x" * 51)
    with pytest.raises(CacheFullError, match="larger than the cache"):
        remote.acquire(cache, key("big"))
    assert remote.fetches == [] and cache.usage() == 0


def test_failed_fetch_leaves_no_file(tmp_path):
    cache = ByteCache(tmp_path, max_bytes=1000)
    remote = FakeRemote()
    k = key("f")
    remote.put(k, b"0123456789" * 10)
    remote.fail_after = 37
    with pytest.raises(OSError, match="mid-download"):
        remote.acquire(cache, k)
    assert not cache.contains(k, ".bin")
    assert cache.usage() == 0 and not any((tmp_path / "tmp").iterdir())
    remote.fail_after = None
    pin = remote.acquire(cache, k)
    assert read(pin) == b"0123456789" * 10
    pin.release()


def test_changed_remote_replaces_the_cached_copy(tmp_path):
    cache = ByteCache(tmp_path, max_bytes=1000)
    remote = FakeRemote()
    k = key("v")
    remote.put(k, b"old" * 10, etag="e1")
    remote.acquire(cache, k).release()
    remote.acquire(cache, k).release()
    assert remote.fetches == [k]
    remote.put(k, b"new" * 10, etag="e2")
    pin = remote.acquire(cache, k)
    assert read(pin) == b"new" * 10 and remote.fetches == [k, k]
    pin.release()


def test_stale_download_of_a_dead_process_is_cleaned(tmp_path):
    cache = ByteCache(tmp_path, max_bytes=600)
    dead = tmp_path / "tmp" / f"{key('dead')}.999999.0.part"
    dead.write_bytes(b"\0" * 500)  # no process holds its lock: a crashed download
    remote = FakeRemote()
    remote.put(key("n"), b"n" * 200)
    remote.acquire(cache, key("n")).release()
    assert not dead.exists() and cache.usage() == 200


def _worker(root: str, k: str, log: str, barrier, out) -> None:
    cache = ByteCache(root, max_bytes=10_000_000)
    data = hashlib.sha256(b"seed").digest() * 20_000  # 640 KB

    def fetch(tmp: str, info: RemoteInfo) -> None:
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        with open(tmp, "r+b") as f:
            step = len(data) // 20
            for i in range(0, len(data), step):  # a download that takes a while (~0.1 s)
                f.write(data[i : i + step])
                f.flush()
                time.sleep(0.005)

    barrier.wait(timeout=30)
    pin = cache.acquire(
        k,
        ".bin",
        remote_info=lambda required: RemoteInfo(len(data), "e"),
        fetch=fetch,
        describe="shared",
    )
    out.put(hashlib.sha256(Path(pin.path).read_bytes()).hexdigest())
    pin.release()


def test_processes_share_one_download(tmp_path):
    ctx = mp.get_context("fork")
    n = 4
    barrier, out = ctx.Barrier(n), ctx.Queue()
    log = tmp_path / "fetches.log"
    args = (str(tmp_path / "cache"), key("shared"), str(log), barrier, out)
    procs = [ctx.Process(target=_worker, args=args) for _ in range(n)]
    for p in procs:
        p.start()
    digests = [out.get(timeout=60) for _ in range(n)]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    want = hashlib.sha256(hashlib.sha256(b"seed").digest() * 20_000).hexdigest()
    assert digests == [want] * n  # every process read the whole, correct file
    assert len(log.read_text().splitlines()) == 1  # and only one downloaded it


# --------------------------------------------------------------------- with a real server
@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return small_dataset(tmp_path_factory)


@pytest.fixture()
def server(root):
    with serve("http", root) as srv:
        yield srv


def test_epoch_larger_than_the_cache(server, root, tmp_path):
    files = dataset_files(root)
    total = sum(n for r, n in files.items() if r.startswith(("data/", "videos/")))
    limit = int(total * 0.6)
    ds = StreamingLeRobotDataset(
        server.url,
        return_uint8=True,
        shuffle=False,
        prefetch=1,
        cache_dir=tmp_path,
        cache_max_bytes=limit,
        video_decoder_cache_size=2,
    )
    cache = ds.meta.source.cache
    got = []
    for s in ds:
        check_frames(s, ds.meta.video_keys)
        assert cache.usage() <= limit
        got.append(s)
    assert_same_samples(
        got, list(StreamingLeRobotDataset(str(root), return_uint8=True, shuffle=False))
    )
    st = ds.stats()
    assert st["byte_cache_evictions"] > 0
    assert cache.usage() <= limit


def test_prewarm_then_read_from_the_cache(server, root, tmp_path, capsys):
    rc = cli_main(
        ["prewarm", server.url, "--cache", str(tmp_path), "--episodes", "0", "2-3", "--json"]
    )
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("{") :])
    assert rc == 0 and summary["episodes"] == 3 and summary["did_not_fit"] == 0
    assert summary["bytes_fetched"] > 0
    ds = StreamingLeRobotDataset(server.url, episodes=[0, 2, 3], cache_dir=tmp_path, prefetch=0)
    n = len(stream(ds))
    st = ds.stats()
    assert n == ds.num_samples()
    assert st["bytes_fetched"] == 0 and st["byte_cache_misses"] == 0 and st["byte_cache_hits"] > 0


def test_prewarm_argument_parsing():
    assert parse_episodes(["0", "3-5", "7,9", "3"]) == [0, 3, 4, 5, 7, 9]
    assert parse_episodes(None) is None
    assert parse_size("500M") == 500 * 2**20 and parse_size("2GiB") == 2 * 2**30
    assert parse_size("1234") == 1234
