"""Metadata loading and validation, on synthetic and real third-party files."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from framestream import (
    DatasetFormatError,
    EpisodeNotFoundError,
    MapDataset,
    StreamingLeRobotDataset,
    VideoDecodeError,
)
from framestream.format.meta import DatasetMeta
from tests.conftest import copy_dataset


def test_real_dataset_metadata(real_root):
    meta = DatasetMeta(str(real_root))
    assert meta.fps == 30
    assert meta.video_keys == ["observation.images.front", "observation.images.top"]
    assert meta.tasks == {0: "Pick the orange cube and place it in the box"}  # unnamed index
    assert meta.episodes.length.tolist() == [373, 374, 372, 373]
    assert meta.total_frames == 1492
    assert meta.video_from_timestamp(1, "observation.images.top") == pytest.approx(373 / 30)
    assert meta.data_file(3) == "data/chunk-000/file-000.parquet"


def test_real_dataset_tabular_windows_and_missing_video(real_root):
    ds = MapDataset(str(real_root), delta_timestamps={"action": [-1 / 30, 0.0, 1 / 30]})
    meta = ds.meta
    ep_tab = ds._episode(1)
    row = 373 + 10
    assert ep_tab.columns["index"][10] == row
    # tabular windows come from the real parquet rows
    s_action = ds._episode(1).columns["action"][9:12]
    with pytest.raises(
        VideoDecodeError, match=r"observation\.images\.front.*file-000\.mp4.*not found"
    ):
        ds[row]
    # without video keys in the query path the tabular part is still checked
    assert s_action.shape == (3, 6) and meta.features["action"].shape == (6,)


def test_real_dataset_streaming_reports_missing_video(real_root):
    ds = StreamingLeRobotDataset(str(real_root), shuffle=False)
    with pytest.raises(VideoDecodeError, match=r"episode 0.*file-000\.mp4: video file not found"):
        next(iter(ds))


def _edit_info(root, **changes):
    path = root / "meta" / "info.json"
    info = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            info.pop(k, None)
        else:
            info[k] = v
    path.write_text(json.dumps(info))
    return info


def test_v2_dataset_is_refused(small_root, tmp_path):
    root = copy_dataset(small_root, tmp_path / "ds")
    _edit_info(root, codebase_version="v2.1")
    with pytest.raises(DatasetFormatError, match=r"info\.json.*v2\.1.*v3\.0"):
        DatasetMeta(str(root))


def test_unknown_dtype_names_the_feature(small_root, tmp_path):
    root = copy_dataset(small_root, tmp_path / "ds")
    info = json.loads((root / "meta" / "info.json").read_text())
    info["features"]["action"]["dtype"] = "float8"
    (root / "meta" / "info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetFormatError, match=r"'action'.*unknown dtype 'float8'"):
        DatasetMeta(str(root))


def test_missing_field_and_wrong_totals(small_root, tmp_path):
    root = copy_dataset(small_root, tmp_path / "a")
    _edit_info(root, fps=None)
    with pytest.raises(DatasetFormatError, match="missing required field 'fps'"):
        DatasetMeta(str(root))
    root = copy_dataset(small_root, tmp_path / "b")
    _edit_info(root, total_frames=5)
    with pytest.raises(DatasetFormatError, match="total_frames is 5"):
        DatasetMeta(str(root))


def test_unknown_top_level_keys_are_tolerated(small_root, tmp_path):
    root = copy_dataset(small_root, tmp_path / "ds")
    _edit_info(root, some_future_key={"x": 1})
    assert DatasetMeta(str(root)).fps == 30


def test_truncated_parquet_is_a_clear_error(small_root, tmp_path):
    root = copy_dataset(small_root, tmp_path / "ds")
    meta = DatasetMeta(str(root))
    rel = meta.data_file(2)
    path = root / rel
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    ds = MapDataset(str(root), episodes=[2])
    with pytest.raises(DatasetFormatError, match=rf"{rel}.*unreadable parquet"):
        ds[0]


def test_corrupt_mp4_is_a_clear_error(small_root, tmp_path):
    root = copy_dataset(small_root, tmp_path / "ds")
    meta = DatasetMeta(str(root))
    rel = meta.video_file(0, "observation.images.cam0")
    (root / rel).write_bytes(b"\x00" * 4096)
    for backend in ("torchcodec", "pyav"):
        ds = MapDataset(str(root), video_backend=backend)
        with pytest.raises(
            VideoDecodeError, match=rf"{rel}.*camera 'observation.images.cam0'.*episode 0"
        ):
            ds[0]


def test_missing_episode_columns_and_episode_not_found(small_root, tmp_path):
    ds = MapDataset(str(small_root))
    with pytest.raises(EpisodeNotFoundError, match="episode 99 does not exist"):
        MapDataset(str(small_root), episodes=[0, 99])
    with pytest.raises(EpisodeNotFoundError):
        StreamingLeRobotDataset(str(small_root), episodes=[99])
    root = copy_dataset(small_root, tmp_path / "ds")
    ep_file = next((root / "meta" / "episodes").rglob("*.parquet"))
    t = pq.read_table(ep_file)
    pq.write_table(t.drop_columns(["dataset_to_index"]), ep_file)
    with pytest.raises(DatasetFormatError, match=r"file-000\.parquet.*dataset_to_index"):
        DatasetMeta(str(root))
    assert len(ds) > 0


def test_episode_rows_must_match_the_index(small_root, tmp_path):
    root = copy_dataset(small_root, tmp_path / "ds")
    ep_file = next((root / "meta" / "episodes").rglob("*.parquet"))
    t = pq.read_table(ep_file)
    lengths = np.asarray(t.column("length").to_numpy()).copy()
    to_idx = np.asarray(t.column("dataset_to_index").to_numpy()).copy()
    from_idx = np.asarray(t.column("dataset_from_index").to_numpy()).copy()
    lengths[1] += 1
    to_idx[1:] += 1  # the later episodes move up one: global ranges must not overlap
    from_idx[2:] += 1
    t = t.set_column(t.column_names.index("length"), "length", pa.array(lengths))
    t = t.set_column(t.column_names.index("dataset_to_index"), "dataset_to_index", pa.array(to_idx))
    i = t.column_names.index("dataset_from_index")
    t = t.set_column(i, "dataset_from_index", pa.array(from_idx))
    pq.write_table(t, ep_file)
    _edit_info(root, total_frames=int(lengths.sum()))
    ds = MapDataset(str(root), episodes=[1])
    with pytest.raises(DatasetFormatError, match=r"episode 1: the episode index says \d+ frames"):
        ds[0]
