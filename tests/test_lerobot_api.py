"""LeRobot 0.6.1's call forms, metadata types and fork safety (no LeRobot needed)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from framestream import DatasetFormatError, LeRobotDataset, StreamingLeRobotDataset
from framestream.lerobot import LeRobotDatasetMetadata


def test_call_forms(small_root):
    a = LeRobotDataset("lerobot/pusht", root=small_root)
    b = LeRobotDataset(str(small_root))
    assert len(a) == len(b) and a.repo_id == "lerobot/pusht"
    s = StreamingLeRobotDataset(
        "lerobot/pusht", root=small_root, episodes=[1, 0], max_num_shards=0, revision=None,
        repo_type="dataset", tolerance_s=1e-4, return_uint8=True,
    )  # fmt: skip
    assert s.num_episodes == 2 and s.num_frames == len(s)
    assert StreamingLeRobotDataset(small_root).num_frames == len(b)
    meta = LeRobotDatasetMetadata("local/x", root=small_root)
    assert meta.total_frames == len(b) and bool(meta)
    with pytest.raises(ValueError, match="rng"):
        StreamingLeRobotDataset(small_root, rng=np.random.default_rng())
    with pytest.raises(ValueError, match="repo_type"):
        StreamingLeRobotDataset("x/y", root=small_root, repo_type="bucket")
    with pytest.warns(UserWarning, match="download_videos"):
        LeRobotDataset("x/y", root=small_root, download_videos=False)


def test_missing_local_path_says_so(tmp_path):
    for call in (
        lambda: LeRobotDataset("org/name", root=tmp_path / "nope"),
        lambda: LeRobotDataset(str(tmp_path / "nope")),
        lambda: StreamingLeRobotDataset(tmp_path / "nope"),
        lambda: StreamingLeRobotDataset("./not/here/at/all"),
    ):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            call()


def test_meta_has_lerobot_types(small_root):
    ds = LeRobotDataset("x/y", root=small_root, episodes=[4, 1])
    meta = ds.meta
    assert ds.episodes == [1, 4]  # sorted, as LeRobot reads them
    assert int(ds[0]["episode_index"]) == 1
    for f in meta.features.values():
        assert isinstance(f, dict) and isinstance(f["shape"], tuple)
    assert json.loads(json.dumps(meta.features))  # plain JSON, as LeRobot's
    assert isinstance(meta.episodes["dataset_from_index"], list)
    assert meta.episodes[1]["episode_index"] == 1
    assert meta.stats is None or all(
        isinstance(v, np.ndarray) for d in meta.stats.values() for v in d.values()
    )
    assert meta.depth_keys == [] and meta.has_language_columns is False
    assert meta.shapes and meta.names and meta.total_tasks >= 1 and meta.total_episodes == 6
    assert ds.num_episodes == 2 and ds.num_frames == len(ds)
    rel = ds.absolute_to_relative_idx
    first = int(meta.episodes.from_index[4])
    assert int(ds[rel[first]]["index"]) == first
    assert LeRobotDataset(small_root).absolute_to_relative_idx is None


def test_streaming_scalars_are_python_numbers_and_collate(small_root):
    ds = StreamingLeRobotDataset(small_root, shuffle=False, return_uint8=True)
    s = next(iter(ds))
    for key in ("index", "frame_index", "episode_index", "task_index"):
        assert type(s[key]) is int
    assert type(s["timestamp"]) is float
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["index"].dtype == torch.int64 and batch["index"].shape == (4,)
    assert batch["timestamp"].dtype == torch.float64


def test_declared_shape_mismatch_is_an_error(small_root, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(small_root, root)
    info = json.loads((root / "meta/info.json").read_text())
    key = "observation.state"
    declared = info["features"][key]["shape"][0]
    info["features"][key]["shape"] = [declared + 3]
    (root / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetFormatError, match=rf"episode 0: feature '{key}' has {declared} "):
        LeRobotDataset(root)[0]
    assert pa and pq  # (kept: data files untouched)


def _loader_indices(ds, **kw):
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2, **kw)
    out = []
    for batch in loader:
        out += [int(i) for i in batch["index"]]
    return out


def test_map_dataset_is_fork_safe(small_root):
    ds = LeRobotDataset(small_root, return_uint8=True)
    first = ds[0]  # opens parquet files and decoders in this process
    got = _loader_indices(ds, shuffle=True, multiprocessing_context="fork")
    assert sorted(got) == list(range(len(ds)))
    assert torch.equal(ds[0]["observation.state"], first["observation.state"])


def test_streaming_dataset_is_fork_safe(small_root):
    ds = StreamingLeRobotDataset(small_root, return_uint8=True)
    next(iter(ds))  # opens readers in this process
    got = _loader_indices(ds, multiprocessing_context="fork")
    assert sorted(got) == list(range(ds.num_frames))
