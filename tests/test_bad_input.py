"""Issue 18, items 3, 7 and 9: bad input is refused by name, never read as wrong data, and a
full cache disk falls back to reading in place.

The broken datasets themselves are in the corpus (tests/test_robustness.py, which checks
every policy and ``validate`` for each); here are the checks' units, the variants that must
*read correctly* (a float64 timestamp with the right values), the batch-level failure of a
camera file at another resolution, and the byte cache on a full disk.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from remote_helpers import FAST, assert_same_samples, check_frames, small_dataset
from test_cache import FakeRemote, key
from test_robustness import _rewrite_data_column, check_sample, wrong_resolution

from framestream import DatasetFormatError, MapDataset, StreamingLeRobotDataset, VideoDecodeError
from framestream.format import checks
from framestream.format.episodes import EpisodeIndex, overlapping_ranges
from framestream.format.meta import DatasetMeta, Feature
from framestream.io import cache as cache_mod
from framestream.io.cache import ByteCache, CacheFullError
from framestream.testing.servers import serve
from framestream.validate.dataset import validate_dataset

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return small_dataset(tmp_path_factory)


@pytest.fixture(scope="module")
def meta(root) -> DatasetMeta:
    return DatasetMeta(str(root))


@pytest.fixture()
def copy(root, tmp_path) -> Path:
    dst = tmp_path / "ds"
    shutil.copytree(root, dst)
    return dst


def _one_episode_file(meta: DatasetMeta) -> int:
    """An episode alone in its data file (the corpus helpers rewrite whole files)."""
    eps = [int(e) for e in meta.episodes.episode_index]
    files = [meta.data_file(e) for e in eps]
    return next(e for e, f in zip(eps, files, strict=True) if files.count(f) == 1)


# ------------------------------------------------------------------ 18.3: timestamps
def test_timestamp_check_against_frame_index():
    fps, tol = 30, 1e-4
    right = (np.arange(40) / fps).astype(np.float32)
    assert checks.timestamps(right, fps, tol) is None
    assert checks.timestamps(right.astype(np.float64), fps, tol) is None
    late = checks.timestamps(right + np.float32(1 / fps), fps, tol)
    assert late and "timestamp of frame 0" in late.message and "40 frames" in late.message
    whole_seconds = checks.timestamps((np.arange(40) // fps).astype(np.int64), fps, tol)
    assert whole_seconds and "frame 1 " in whole_seconds.message
    with_nan = right.copy()
    with_nan[7] = np.nan
    assert "frame 7 " in checks.timestamps(with_nan, fps, tol).message
    # float32 rounding of long episodes is not an error (10 hours at 30 fps)
    long = (np.arange(1_080_000) / fps).astype(np.float32)
    assert checks.timestamps(long, fps, tol) is None


def test_float64_timestamps_with_the_right_values_read_correctly(copy, meta):
    """A float column of another width than declared is accepted when its values are right."""
    episode = _one_episode_file(meta)
    _rewrite_data_column(
        copy,
        meta,
        episode,
        "timestamp",
        lambda t: pa.array(t.column("frame_index").to_numpy() / meta.fps, pa.float64()),
    )
    assert pq.read_schema(copy / meta.data_file(episode)).field("timestamp").type == pa.float64()
    ds = StreamingLeRobotDataset(str(copy), episodes=[episode], shuffle=False, return_uint8=True)
    got = [check_sample(s, meta) for s in ds]
    assert len(got) == int(meta.episodes.length[meta.episodes.row(episode)])
    mp = MapDataset(str(copy), episodes=[episode], return_uint8=True)
    assert check_sample(mp[len(mp) - 1], meta) == (episode, len(mp) - 1)
    report = validate_dataset(str(copy), decode=False)
    assert report.ok() and not report.problems, report.format()


def test_shifted_timestamps_fail_in_the_map_dataset_and_through_workers(copy, meta):
    episode = _one_episode_file(meta)
    rel = _rewrite_data_column(
        copy,
        meta,
        episode,
        "timestamp",
        lambda t: pa.array((t.column("frame_index").to_numpy() + 1) / meta.fps, pa.float32()),
    )
    mp = MapDataset(str(copy), episodes=[episode], return_uint8=True)
    with pytest.raises(DatasetFormatError, match=f"{rel}: episode {episode}: timestamp of frame 0"):
        mp[len(mp) - 1]  # the last sample would have been the next episode's first frame
    ds = StreamingLeRobotDataset(str(copy), on_error="skip", return_uint8=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, timeout=120)
    got = [check_sample(s, meta) for s in loader]
    assert {e for e, _ in got} == set(meta.episodes.episode_index.tolist()) - {episode}
    st = ds.stats()
    assert st["skipped_episodes"] == 1 and st["skipped_data_errors"] == 1


# ------------------------------------------------------------------ 18.9: types and shapes
def _schema(**types: pa.DataType) -> pa.Schema:
    return pa.schema([pa.field(k, t) for k, t in types.items()])


def test_column_kinds_against_declared_dtypes(meta):
    ok = _schema(
        **{
            "observation.state": pa.list_(pa.float64(), 6),  # wider float: read as declared
            "index": pa.int32(),  # narrower int: read as declared
            "timestamp": pa.float64(),
        }
    )
    assert checks.column_types(ok, meta, ok.names) == {}
    bad = _schema(
        **{
            "observation.state": pa.list_(pa.string()),
            "action": pa.list_(pa.int64(), 6),
            "index": pa.float64(),
            "timestamp": pa.int64(),
            "frame_index": pa.string(),
        }
    )
    found = checks.column_types(bad, meta, bad.names)
    assert set(found) == set(bad.names)
    msg = found["observation.state"].message
    assert "string (in a list)" in msg and "float32" in msg and "'observation.state'" in msg
    assert "float64" in found["index"].message and "int64" in found["index"].message
    assert all(p.check == "dtype" for p in found.values())


def test_inf_is_refused_like_nan():
    values = np.zeros((10, 3), np.float32)
    assert checks.nan_values("s", values, 10) is None
    values[4, 1] = np.inf
    assert "is Inf at frame 4" in checks.nan_values("s", values, 10).message
    values[2, 0] = -np.inf
    assert "is -Inf at frame 2" in checks.nan_values("s", values, 10).message
    values[1, 2] = np.nan
    p = checks.nan_values("s", values, 10)
    assert "is NaN at frame 1" in p.message and "3 of its 10 frames" in p.message
    assert checks.nan_values("i", np.arange(10), 10) is None  # integers hold neither


def test_declared_frame_shape_reads_the_names():
    hwc = Feature("c", "video", (48, 80, 3), ["height", "width", "channels"])
    chw = Feature("c", "video", (3, 48, 80), ["channels", "height", "width"])
    unnamed = Feature("c", "video", (48, 80, 3), None)
    assert {checks.declared_frame_shape(f) for f in (hwc, chw, unnamed)} == {(48, 80, 3)}
    assert checks.declared_frame_shape(Feature("s", "float32", (6,))) is None
    assert checks.frame_size((48, 80, 3), (48, 80, 3)) is None
    assert "32x64x3 (HxWxC)" in checks.frame_size((32, 64, 3), (48, 80, 3))


def _index(ranges: list[tuple[int, int]]) -> EpisodeIndex:
    lo = np.array([a for a, _ in ranges])
    hi = np.array([b for _, b in ranges])
    n = len(ranges)
    z = np.zeros(n, np.int64)
    return EpisodeIndex(np.arange(n), hi - lo, z, z, lo, hi, [[] for _ in range(n)], {})


def test_overlapping_global_ranges_name_both_episodes():
    assert overlapping_ranges(_index([(0, 10), (10, 15), (15, 15), (15, 20)])) == []
    assert overlapping_ranges(_index([(0, 10), (8, 15), (15, 20)])) == [(0, 1)]
    assert overlapping_ranges(_index([(0, 10), (10, 20), (0, 10)])) == [(0, 2)]
    # a long range swallowing two later ones: both pairs name the long one
    assert overlapping_ranges(_index([(0, 30), (5, 10), (10, 20)])) == [(0, 1), (0, 2)]


def test_camera_file_at_another_resolution_fails_by_name_in_batches(copy, meta):
    """Before: delivered silently, then torch's 'Trying to resize storage that is not
    resizable' in the collation of a batch that mixed sizes."""
    out = wrong_resolution(copy, meta)
    ds = StreamingLeRobotDataset(str(copy), return_uint8=True, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=1, timeout=120)
    with pytest.raises(VideoDecodeError) as info:
        for _ in loader:
            pass
    msg = str(info.value)
    h, w, c = meta.features[meta.video_keys[1]].shape
    assert all(m in msg for m in out.match[:3]) and f"declares {h}x{w}x{c}" in msg, msg
    assert any(f"episode {e}" in msg for e in out.bad), msg
    assert "resize storage" not in msg


# ------------------------------------------------------------------ 18.7: full cache disk
@pytest.fixture()
def tiny_fs(tmp_path):
    """A 96 KiB tmpfs (the dataset is ~170 KB): the cache's disk fills mid-epoch."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mnt)],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a tmpfs: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (not permitted here): {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=20)


def test_a_file_larger_than_the_free_disk_is_refused(tiny_fs):
    cache = ByteCache(tiny_fs, max_bytes=None)  # no byte limit: only the disk says no
    remote = FakeRemote()
    big, small = key("big"), key("small")
    remote.put(big, os.urandom(400_000))
    remote.put(small, b"s" * 1000)
    with pytest.raises(CacheFullError, match="no space"):
        remote.acquire(cache, big)
    assert not list((tiny_fs / "tmp").iterdir())  # nothing half-written left behind
    assert remote.fetches == []  # refused before downloading a byte
    with remote.acquire(cache, small) as pin:  # the disk still serves what fits
        assert Path(pin.path).read_bytes() == b"s" * 1000


@pytest.fixture()
def server(root):
    with serve("http", root) as srv:
        yield srv


def _read_remote(server, cache_dir: Path, root: Path) -> None:
    """Every sample through a remote source whose cache disk fills; correct, none lost."""
    opts = dict(return_uint8=True, shuffle=False)
    ds = StreamingLeRobotDataset(
        server.url, cache_dir=str(cache_dir), prefetch=1, remote_options=FAST, **opts
    )
    got = []
    for s in ds:
        check_frames(s, ds.meta.video_keys)
        got.append(s)
    assert_same_samples(got, list(StreamingLeRobotDataset(str(root), **opts)))
    st = ds.stats()
    assert st["byte_cache_bypass"] > 0, st
    assert st["errors"] == 0 and st["skipped_episodes"] == 0


def test_a_full_cache_disk_falls_back_to_reading_in_place(tiny_fs, server, root):
    _read_remote(server, tiny_fs, root)


def test_no_space_from_fallocate_falls_back(server, root, tmp_path, monkeypatch):
    """The same without a tmpfs: the disk says ENOSPC when space is reserved."""

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cache_mod.os, "posix_fallocate", full)
    cache = ByteCache(tmp_path / "c", max_bytes=None)
    remote = FakeRemote()
    remote.put(key("a"), b"a" * 100)
    with pytest.raises(CacheFullError):
        remote.acquire(cache, key("a"))
    assert remote.fetches == [] and not list((tmp_path / "c" / "tmp").iterdir())
    _read_remote(server, tmp_path / uuid.uuid4().hex, root)


def test_no_space_while_writing_falls_back(server, root, tmp_path, monkeypatch):
    """A disk that grants the reservation, then fails the write (copy-on-write or
    compressing filesystems, quotas): the same fallback, never the dataset blamed."""
    real = os.pwrite

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".part"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    cache_dir = tmp_path / "c"
    _read_remote(server, cache_dir, root)
    leftovers = [p for p in (cache_dir / "tmp").iterdir()] if (cache_dir / "tmp").exists() else []
    assert not leftovers
