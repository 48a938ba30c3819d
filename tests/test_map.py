"""The map-style reader: the sample contract, identifiable frames, windows and padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from framestream import MapDataset, TimestampToleranceError
from framestream.format.meta import DatasetMeta
from framestream.testing import decode_frame_id, state_ids


@pytest.mark.parametrize("backend", ["torchcodec", "pyav"])
@pytest.mark.parametrize("which", ["small_root", "small_av1_root"])
def test_every_frame_is_the_right_one(request, which, backend):
    root = request.getfixturevalue(which)
    meta = DatasetMeta(str(root))
    # the fixture really spans several files per camera, with different boundaries
    files = {k: tuple(v.file) for k, v in meta.episodes.videos.items()}
    assert all(len(set(f)) > 1 for f in files.values())
    assert len(set(files.values())) > 1 and len(set(meta.episodes.data_file)) > 1
    assert all(f != tuple(meta.episodes.data_file) for f in files.values())
    ds = MapDataset(str(root), return_uint8=True, video_backend=backend)
    assert len(ds) == meta.total_frames
    for i in range(len(ds)):
        s = ds[i]
        ep, fr = int(s["episode_index"]), int(s["frame_index"])
        assert (ep, fr) == ds.locate(i)
        assert state_ids(s["observation.state"])[:2] == (ep, fr)
        for cam, key in enumerate(meta.video_keys):
            fid = decode_frame_id(s[key])
            assert (fid.episode, fid.frame, fid.camera) == (ep, fr, cam), (i, key)


def test_sample_contract(small_root):
    ds = MapDataset(str(small_root))
    s = ds[5]
    for key in ("index", "episode_index", "frame_index", "task_index"):
        assert s[key].dtype == torch.int64 and s[key].ndim == 0
    assert s["timestamp"].dtype == torch.float32 and s["timestamp"].ndim == 0
    assert s["observation.state"].dtype == torch.float32 and s["observation.state"].shape == (6,)
    cam = s["observation.images.cam0"]
    assert cam.shape == (3, 64, 96) and cam.dtype == torch.float32
    assert 0.0 <= float(cam.min()) and float(cam.max()) <= 1.0
    assert isinstance(s["task"], str) and s["task"] == ds.meta.tasks[int(s["task_index"])]
    u8 = MapDataset(str(small_root), return_uint8=True)[5]["observation.images.cam0"]
    assert u8.dtype == torch.uint8
    assert torch.equal(u8.float() / 255.0, cam)


def test_windows_pad_by_repeating_the_edge_frame(small_root):
    fps = DatasetMeta(str(small_root)).fps
    deltas = [-3 / fps, -1 / fps, 0.0, 2 / fps]
    keys = ["observation.images.cam1", "observation.state", "action"]
    ds = MapDataset(str(small_root), return_uint8=True, delta_timestamps={k: deltas for k in keys})
    ep0_len = int(ds.meta.episodes.length[0])
    for i, want_pad in [
        (0, [1, 1, 0, 0]),
        (1, [1, 0, 0, 0]),
        (ep0_len - 1, [0, 0, 0, 1]),
        (ep0_len - 2, [0, 0, 0, 1]),
        (ep0_len - 3, [0, 0, 0, 0]),
    ]:
        s = ds[i]
        frame = int(s["frame_index"])
        expect = np.clip(frame + np.array([-3, -1, 0, 2]), 0, ep0_len - 1)
        for k in keys:
            assert s[f"{k}_is_pad"].tolist() == [bool(x) for x in want_pad], (i, k)
        assert [state_ids(v)[1] for v in s["observation.state"]] == expect.tolist()
        frames = [decode_frame_id(img) for img in s["observation.images.cam1"]]
        assert [(f.episode, f.frame, f.camera) for f in frames] == [(0, int(e), 1) for e in expect]
        assert all(int(a[1]) == 0 for a in s["action"])
    # a key without a window stays a single frame
    assert ds[3]["observation.images.cam0"].shape == (3, 64, 96)
    assert "observation.images.cam0_is_pad" not in ds[3]


def test_long_window_reaches_real_frames_mid_episode(long_root):
    meta = DatasetMeta(str(long_root))
    offs = np.arange(-120, 121, 30)  # 9 entries spanning 241 frames
    key = meta.video_keys[0]
    ds = MapDataset(
        str(long_root),
        return_uint8=True,
        delta_timestamps={
            key: (offs / meta.fps).tolist(),
            "observation.state": (offs / meta.fps).tolist(),
        },
    )
    length = int(meta.episodes.length[0])
    mid = 130
    s = ds[mid]
    assert not s[f"{key}_is_pad"].any()
    got = [decode_frame_id(img).frame for img in s[key]]
    assert got == (mid + offs).tolist()
    s = ds[10]
    assert s[f"{key}_is_pad"].tolist() == (10 + offs < 0).tolist()
    assert [decode_frame_id(img).frame for img in s[key]] == np.clip(
        10 + offs, 0, length - 1
    ).tolist()


def test_deltas_must_be_multiples_of_the_frame_period(small_root):
    with pytest.raises(ValueError, match="multiple of 1/fps"):
        MapDataset(str(small_root), delta_timestamps={"action": [0.0, 0.01]})
    with pytest.raises(ValueError, match="not a feature"):
        MapDataset(str(small_root), delta_timestamps={"nope": [0.0]})


def test_episode_subset_and_positions(small_root):
    ds = MapDataset(str(small_root), episodes=[4, 1])
    meta = ds.meta
    assert len(ds) == int(meta.episodes.length[4] + meta.episodes.length[1])
    assert int(ds[0]["episode_index"]) == 1  # LeRobot reads the episodes in ascending order
    assert ds.episodes == [1, 4]
    first_of_1 = int(meta.episodes.from_index[1])
    assert int(ds[ds.position_of(first_of_1)]["index"]) == first_of_1
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_timestamp_outside_tolerance_is_an_error(small_root, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.conftest import copy_dataset

    root = copy_dataset(small_root, tmp_path / "ds")
    ep_file = next((root / "meta" / "episodes").rglob("*.parquet"))
    t = pq.read_table(ep_file)
    col = "videos/observation.images.cam0/from_timestamp"
    shifted = pa.array(np.asarray(t.column(col).to_numpy()) + 0.4 / 30)
    pq.write_table(t.set_column(t.column_names.index(col), col, shifted), ep_file)
    ds = MapDataset(str(root))
    with pytest.raises(TimestampToleranceError, match=r"cam0.*episode 0.*tolerance_s"):
        ds[0]
