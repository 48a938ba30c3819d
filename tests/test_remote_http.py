"""Reading a dataset over HTTP (range requests, no listings) from a loopback server.

Covers: a full epoch equal to the local run, workers sharing the cache, listing by probing,
reading in place without a cache, and faults: 5xx for a while, a slow server, truncated
transfers and objects, an object that changes, and a server that stops mid-epoch.
"""

from __future__ import annotations

import shutil
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from remote_helpers import (
    FAST,
    assert_same_samples,
    check_frames,
    dataset_files,
    small_dataset,
    stream,
)

from framestream import SourceError, StreamingLeRobotDataset
from framestream.format.meta import DatasetMeta
from framestream.io.source import RemoteChangedError, Source
from framestream.testing.servers import serve

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return small_dataset(tmp_path_factory)


@pytest.fixture()
def server(root):
    with serve("http", root) as srv:
        yield srv


@pytest.fixture(scope="module")
def local_samples(root):
    return list(StreamingLeRobotDataset(str(root), return_uint8=True, seed=5, shuffle_chunk=0))


def test_full_epoch_equals_local(server, root, local_samples, tmp_path):
    ds = StreamingLeRobotDataset(server.url, return_uint8=True, seed=5, cache_dir=tmp_path)
    got = stream(ds)
    for s in got:
        check_frames(s, ds.meta.video_keys)
    assert_same_samples(got, local_samples)
    st = ds.stats()
    read = {
        rel: size
        for rel, size in dataset_files(root).items()
        if rel.startswith(("data/", "videos/"))
    }
    # every data and video file came over the network exactly once, whole
    assert st["bytes_fetched"] == sum(read.values())
    assert st["byte_cache_misses"] == len(read)
    assert st["remote_requests"] >= 2 * len(read)  # at least HEAD + GET per file


def test_workers_share_the_cache(server, root, local_samples, tmp_path):
    ds = StreamingLeRobotDataset(server.url, return_uint8=True, seed=5, cache_dir=tmp_path)
    got = stream(ds, num_workers=2)
    for s in got:
        check_frames(s, ds.meta.video_keys)
    assert sorted(int(s["index"]) for s in got) == sorted(int(s["index"]) for s in local_samples)
    st = ds.stats()
    n_files = sum(1 for rel in dataset_files(root) if rel.startswith(("data/", "videos/")))
    # two workers and their prefetchers, yet each file was downloaded once
    assert st["byte_cache_misses"] == n_files
    assert st["byte_cache_misses"] + st["byte_cache_hits"] >= n_files
    # a second epoch reads the cache only
    ds.reset_stats()
    again = stream(ds, num_workers=2)
    assert len(again) == len(got)
    st = ds.stats()
    assert st["bytes_fetched"] == 0 and st["byte_cache_misses"] == 0
    assert st["byte_cache_hits"] > 0


def test_episode_files_are_found_by_probing(server, root, tmp_path):
    src = Source(server.url, cache_dir=str(tmp_path))
    want = sorted(r for r in dataset_files(root) if r.startswith("meta/episodes/"))
    assert src.list("meta/episodes") == want
    with pytest.raises(SourceError, match="cannot list folders"):
        src.list("videos")
    assert src.exists("meta/info.json") and not src.exists("meta/nope.json")


def test_large_episode_index_reads_only_the_needed_columns(root, tmp_path):
    # LeRobot's episodes files carry hundreds of stats/* columns that streaming never reads
    bloated = tmp_path / "ds"
    shutil.copytree(root, bloated)
    rel = "meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(bloated / rel)
    rng = np.random.default_rng(0)
    for i in range(200):
        values = rng.random((table.num_rows, 64)).tolist()
        table = table.append_column(f"stats/extra_{i}/mean", pa.array(values))
    pq.write_table(table, bloated / rel)
    size = (bloated / rel).stat().st_size
    assert size > 500_000
    with serve("http", bloated) as srv:
        src = Source(
            srv.url, cache_dir=str(tmp_path / "cache"), remote={"metadata_in_place_bytes": 0}
        )
        meta = DatasetMeta(src)
        assert len(meta.episodes) == 6
        fetched = src.io_stats()["bytes_fetched"]
        assert fetched < size / 4  # footer and the needed columns only
        assert not src.cache.contains(_key(src, rel), ".parquet")
        whole = Source(srv.url, cache_dir=str(tmp_path / "cache2"))  # default: small, cached
        DatasetMeta(whole)
        assert whole.io_stats()["bytes_fetched"] > size
        assert whole.cache.contains(_key(whole, rel), ".parquet")


def test_read_in_place_without_cache(server, local_samples, tmp_path):
    ds = StreamingLeRobotDataset(
        server.url,
        return_uint8=True,
        seed=5,
        cache_max_bytes=0,
        remote_options={"read_buffer_size": 4096},
    )
    assert ds.meta.source.cache is None
    got = stream(ds)
    assert_same_samples(got, local_samples)
    st = ds.stats()
    assert st["byte_cache_misses"] == 0 and st["byte_cache_hits"] == 0
    assert st["bytes_fetched"] > 0 and st["remote_requests"] > 0
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------ faults
def test_errors_for_a_while_then_recovery(server, local_samples, tmp_path):
    meta = DatasetMeta(Source(server.url, cache_dir=str(tmp_path), remote=FAST))
    server.faults.match = "/videos/"
    server.faults.error_status = 503
    server.faults.errors = 2  # within the 2 retries of one request
    ds = StreamingLeRobotDataset(server.url, return_uint8=True, seed=5, meta=meta, prefetch=0)
    got = stream(ds)
    assert_same_samples(got, local_samples)
    st = ds.stats()
    assert server.faults.errors == 0
    assert st["remote_retries"] >= 2


def test_persistent_errors_fail_with_the_url(server, tmp_path):
    src = Source(server.url, cache_dir=str(tmp_path), remote=FAST)
    server.faults.errors = 1000
    server.faults.error_status = 500
    rel = "meta/info.json"
    with pytest.raises(SourceError, match=rf"{server.url}meta/info.json.*3 attempts.*500"):
        src.read_json(rel)
    assert server.faults.requests == 3  # first try + 2 retries, then stop


def test_slow_server_times_out_with_a_clear_error(server, tmp_path):
    src = Source(server.url, cache_dir=str(tmp_path), remote={**FAST, "retries": 1})
    server.faults.delay_s = 2.0  # beyond the 0.5 s read timeout
    t0 = time.monotonic()
    with pytest.raises(SourceError, match=r"meta/info\.json.*2 attempts.*Timeout"):
        src.read_json("meta/info.json")
    assert time.monotonic() - t0 < 30  # bounded: timeouts, not a hang (generous bound)
    server.faults.delay_s = 0.0


def test_truncated_transfer_is_retried_then_reported(server, tmp_path):
    src = Source(server.url, cache_dir=str(tmp_path), remote=FAST)
    rel = "videos/observation.images.cam0/chunk-000/file-000.mp4"
    server.faults.match = rel
    server.faults.truncate_transfer = True
    with pytest.raises(SourceError, match=rf"{rel}.*3 attempts"):
        src.pin(rel)
    assert not src.cache.contains(_key(src, rel), ".mp4")
    assert src.cache.usage() == 0  # no partial file left counted or visible
    server.faults.truncate_transfer = False
    pin = src.pin(rel)  # the server is healthy again: the next read succeeds
    assert pin is not None and pin.size > 0
    pin.release()


def test_truncated_object_is_never_read_as_whole(server, root, tmp_path):
    src = Source(server.url, cache_dir=str(tmp_path), remote=FAST)
    rel = "data/chunk-000/file-000.parquet"
    server.faults.match = rel
    server.faults.truncate_object = True  # HEAD says N bytes, GET serves N/2
    with pytest.raises(SourceError, match=rf"{rel}.*got \d+ of \d+ bytes"):
        with src.open(rel) as f:
            f.read()
    assert src.cache.usage() == 0


def test_changing_object_is_detected(server, tmp_path):
    src = Source(server.url, cache_dir=str(tmp_path), remote=FAST)
    rel = "meta/tasks.parquet"
    server.faults.match = rel
    server.faults.change_etag = True  # every response carries a new ETag
    with pytest.raises(RemoteChangedError, match=rf"{rel}.*changed while it was fetched"):
        src.pin(rel)
    assert src.cache.usage() == 0


def test_server_stops_mid_epoch(server, root, tmp_path):
    ds = StreamingLeRobotDataset(
        server.url,
        return_uint8=True,
        shuffle=False,
        prefetch=0,
        cache_dir=tmp_path,
        remote_options=FAST,
    )
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=1, timeout=60)
    seen = 0
    t0 = time.monotonic()
    with pytest.raises(SourceError, match=server.url):
        for _ in loader:
            seen += 1
            if seen == 5:
                server.stop()
    assert 5 <= seen < ds.meta.total_frames
    assert time.monotonic() - t0 < 60


def _key(src: Source, rel: str) -> str:
    from framestream.io.cache import cache_key

    return cache_key(src._identity(rel))
