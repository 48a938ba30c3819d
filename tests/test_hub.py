"""Hugging Face Hub roots, without the network: URL and repo id resolution, and a full epoch
through a stand-in for ``HfFileSystem`` (a local folder per repo and revision, registered
under fsspec's ``hf`` protocol), which reads like any remote source: through the cache."""

from __future__ import annotations

import re
from urllib.parse import unquote

import pytest
from fsspec.implementations.local import LocalFileSystem
from fsspec.registry import _registry
from remote_helpers import assert_same_samples, check_frames, small_dataset

from framestream import StreamingLeRobotDataset
from framestream.io.source import Source, resolve_url
from framestream.testing.default_data import synthetic_dataset

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize(
    ("url", "revision", "want"),
    [
        ("lerobot/pusht", None, "hf://datasets/lerobot/pusht"),
        ("lerobot/pusht", "v3.0", "hf://datasets/lerobot/pusht@v3.0"),
        ("lerobot/pusht", "refs/pr/1", "hf://datasets/lerobot/pusht@refs%2Fpr%2F1"),
        ("hf://datasets/org/name", "main", "hf://datasets/org/name@main"),
        ("hf://datasets/org/name/sub/dir", "abc123", "hf://datasets/org/name@abc123/sub/dir"),
        ("hf://datasets/org/name@v1", "v1", "hf://datasets/org/name@v1"),
        ("hf://datasets/org/name@v1", None, "hf://datasets/org/name@v1"),
        ("s3://bucket/org/name", None, "s3://bucket/org/name"),
        ("/abs/org/name", None, "/abs/org/name"),
        ("./org/name", None, "./org/name"),
    ],
)
def test_resolve_url(url, revision, want):
    assert resolve_url(url, revision) == want


def test_existing_local_folder_wins_over_a_repo_id(tmp_path, monkeypatch):
    (tmp_path / "org" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert resolve_url("org/name") == "org/name"
    # Beside a local org/ folder, org/other is a local path too (issue 17: a missing local
    # folder must say so, not turn into a Hub lookup that fails after retries).
    assert resolve_url("org/other") == "org/other"
    assert resolve_url("elsewhere/other") == "hf://datasets/elsewhere/other"


@pytest.mark.parametrize(
    ("url", "revision", "match"),
    [
        ("hf://datasets/org/name@v1", "v2", "names revision 'v1'"),
        ("s3://bucket/ds", "main", "Hub datasets only"),
        ("/some/folder", "main", "Hub datasets only"),
    ],
)
def test_revision_errors(url, revision, match):
    with pytest.raises(ValueError, match=match):
        resolve_url(url, revision)


class FakeHub(LocalFileSystem):
    """``hf://datasets/ORG/NAME@REV/...`` served from local folders (``repos``)."""

    protocol = "hf"
    repos: dict[tuple[str, str], str] = {}

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        if path.startswith("hf://"):
            path = path[len("hf://") :]
        m = re.match(r"^datasets/([^/@]+/[^/@]+)(?:@([^/]+))?(/.*)?$", path)
        if m is None:
            return super()._strip_protocol(path)
        repo, rev, rest = m.groups()
        try:
            base = cls.repos[(repo, unquote(rev or "main"))]
        except KeyError:
            raise FileNotFoundError(f"no such repo/revision: {repo}@{rev}") from None
        return base + (rest or "")


@pytest.fixture()
def hub(tmp_path_factory, monkeypatch):
    v1 = small_dataset(tmp_path_factory)
    v2 = synthetic_dataset(
        dict(num_episodes=2, min_length=10, max_length=12, height=64, width=96, codec="h264"),
        root=tmp_path_factory.getbasetemp(),
        progress=False,
    )
    monkeypatch.setattr(
        FakeHub, "repos", {("org/robot", "main"): str(v1), ("org/robot", "v2"): str(v2)}
    )
    monkeypatch.setitem(_registry, "hf", FakeHub)
    return v1, v2


def test_repo_id_and_revision_stream_through_the_cache(hub, tmp_path):
    v1, v2 = hub
    ds = StreamingLeRobotDataset("org/robot", return_uint8=True, seed=4, cache_dir=tmp_path)
    src = ds.meta.source
    assert src.url == "hf://datasets/org/robot" and not src.is_local and src.cache is not None
    got = list(ds)
    for s in got:
        check_frames(s, ds.meta.video_keys)
    assert_same_samples(
        got, list(StreamingLeRobotDataset(str(v1), return_uint8=True, seed=4, shuffle_chunk=0))
    )
    st = ds.stats()
    assert st["byte_cache_misses"] > 0 and st["bytes_fetched"] > 0

    old = StreamingLeRobotDataset(
        "hf://datasets/org/robot", revision="v2", return_uint8=True, cache_dir=tmp_path
    )
    assert old.meta.source.url == "hf://datasets/org/robot@v2"
    assert len(old.meta.episodes) == 2 and len(ds.meta.episodes) == 6
    assert sorted(int(s["index"]) for s in old) == list(range(old.meta.total_frames))


def test_source_pickles_with_its_resolved_url(hub, tmp_path):
    import pickle

    src = Source("org/robot", revision="v2", cache_dir=str(tmp_path), cache_max_bytes=10**6)
    back = pickle.loads(pickle.dumps(src))
    assert back.url == "hf://datasets/org/robot@v2"
    assert back.cache is not None and back.cache.max_bytes == 10**6
    assert back.read_json("meta/info.json")["total_episodes"] == 2
