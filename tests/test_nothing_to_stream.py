"""Nothing to stream is an error, never a quiet empty epoch (issue 17)."""

from __future__ import annotations

import shutil

import pytest
from torch.utils.data import DataLoader

from framestream import DatasetFormatError, MapDataset, StreamingLeRobotDataset


def test_an_empty_episode_list_is_refused(small_root):
    for cls in (StreamingLeRobotDataset, MapDataset):
        with pytest.raises(ValueError, match="selects no episode"):
            cls(str(small_root), episodes=[])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_every_episode_skipped_is_an_error_with_counted_causes(small_root, tmp_path, num_workers):
    root = tmp_path / "ds"
    shutil.copytree(small_root, root)
    for mp4 in (root / "videos").rglob("*.mp4"):
        mp4.write_bytes(mp4.read_bytes()[:200])  # every video file truncated: nothing decodes
    ds = StreamingLeRobotDataset(str(root), on_error="skip", return_uint8=True)
    timeout = 120 if num_workers else 0
    loader = DataLoader(ds, batch_size=4, num_workers=num_workers, timeout=timeout)
    with pytest.raises(DatasetFormatError, match=r"skipped .*by cause: \{'video': \d+\}"):
        list(loader)


def test_some_episodes_skipped_still_streams(small_root, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(small_root, root)
    ds = StreamingLeRobotDataset(str(root), on_error="skip", return_uint8=True)
    first = ds.meta.video_file(int(ds.episodes[0]), ds.meta.video_keys[0])
    (root / first).write_bytes((root / first).read_bytes()[:200])
    got = list(ds)
    assert got and ds.stats()["skipped_episodes"] >= 1
