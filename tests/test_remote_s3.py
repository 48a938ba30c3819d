"""Reading a dataset from S3: moto's S3 server on loopback, started by the tests.

Covers: a full epoch with two workers equal to the local run and counted, the endpoint and
credentials taken from the AWS environment variables, and faults: 503 for a while (recovered
by retrying), a slow server (timeout) and a server that stops mid-epoch (clear error).
"""

from __future__ import annotations

import time

import pytest
import torch
from remote_helpers import FAST, assert_same_samples, check_frames, dataset_files, small_dataset

from framestream import SourceError, StreamingLeRobotDataset
from framestream.format.meta import DatasetMeta
from framestream.io.source import Source
from framestream.testing.servers import serve

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return small_dataset(tmp_path_factory)


@pytest.fixture(scope="module")
def server(root):
    with serve("s3", root) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _healthy(server):
    server.faults.clear()
    yield
    server.faults.clear()


@pytest.fixture(scope="module")
def local_samples(root):
    return list(StreamingLeRobotDataset(str(root), return_uint8=True, seed=2, shuffle_chunk=0))


def test_epoch_with_workers_equals_local(server, root, local_samples, tmp_path):
    ds = StreamingLeRobotDataset(
        server.url,
        storage_options=server.storage_options,
        return_uint8=True,
        seed=2,
        cache_dir=tmp_path,
    )
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, timeout=60)
    got = list(loader)
    for s in got:
        check_frames(s, ds.meta.video_keys)
    by_index = {int(s["index"]): s for s in got}
    assert len(by_index) == len(got)
    assert_same_samples([by_index[int(s["index"])] for s in local_samples], local_samples)
    st = ds.stats()
    read = {r: n for r, n in dataset_files(root).items() if r.startswith(("data/", "videos/"))}
    assert st["byte_cache_misses"] == len(read)  # each file fetched once by one of the workers
    assert st["bytes_fetched"] == sum(read.values())
    assert st["remote_requests"] >= 2 * len(read)
    assert st["byte_cache_evictions"] == 0 and st["byte_cache_bypass"] == 0


def test_endpoint_and_credentials_from_environment(server, root, tmp_path, monkeypatch):
    endpoint = server.storage_options["client_kwargs"]["endpoint_url"]
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    meta = DatasetMeta(Source(server.url, cache_dir=str(tmp_path)))  # no storage_options
    assert meta.total_frames == DatasetMeta(str(root)).total_frames
    assert meta.source.list("meta/episodes") == sorted(
        r for r in dataset_files(root) if r.startswith("meta/episodes/")
    )


def test_503_for_a_while_is_retried(server, local_samples, tmp_path):
    src = Source(server.url, server.storage_options, cache_dir=str(tmp_path), remote=FAST)
    meta = DatasetMeta(src)
    server.faults.match = "/videos/"
    server.faults.errors = 2
    server.faults.error_status = 503
    ds = StreamingLeRobotDataset(server.url, meta=meta, return_uint8=True, seed=2, prefetch=0)
    got = list(ds)
    assert_same_samples(got, local_samples)
    assert server.faults.errors == 0
    assert ds.stats()["remote_retries"] >= 2


def test_slow_server_is_a_timeout_error(server, tmp_path):
    src = Source(
        server.url,
        server.storage_options,
        cache_dir=str(tmp_path),
        remote={**FAST, "retries": 1},
    )
    server.faults.delay_s = 2.0  # beyond the 0.5 s read timeout
    t0 = time.monotonic()
    with pytest.raises(SourceError, match=rf"{server.url}/meta/info\.json.*2 attempts"):
        src.read_json("meta/info.json")
    assert time.monotonic() - t0 < 30


def test_server_stops_mid_epoch(root, tmp_path):
    with serve("s3", root) as srv:
        ds = StreamingLeRobotDataset(
            srv.url,
            storage_options=srv.storage_options,
            return_uint8=True,
            shuffle=False,
            prefetch=0,
            cache_dir=tmp_path,
            remote_options=FAST,
        )
        seen = 0
        with pytest.raises(SourceError, match=srv.url):
            for _ in ds:
                seen += 1
                if seen == 5:
                    srv.stop()
        assert 5 <= seen < ds.meta.total_frames
