"""Helpers shared by the remote-source tests (test_remote_*, test_cache, test_hub).

The dataset is generated once per test session into pytest's base temp folder (keyed by its
parameters, atomically), so every test file that asks for it gets the same folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from framestream import StreamingLeRobotDataset
from framestream.testing import decode_frame_id
from framestream.testing.default_data import synthetic_dataset

# 6 episodes, 2 cameras, several data and video files per camera (~170 KB in all).
REMOTE_SMALL = dict(
    num_episodes=6,
    min_length=20,
    max_length=40,
    num_cameras=2,
    height=64,
    width=96,
    codec="h264",
    data_files_size_in_mb=0.002,
    video_files_size_in_mb=0.02,
    seed=3,
)

# Fast failure settings for fault tests: every case ends within a few seconds.
FAST = {"connect_timeout_s": 1.0, "read_timeout_s": 0.5, "retries": 2, "backoff_s": 0.05}


def small_dataset(tmp_path_factory: Any) -> Path:
    return synthetic_dataset(REMOTE_SMALL, root=tmp_path_factory.getbasetemp(), progress=False)


def dataset_files(root: Path) -> dict[str, int]:
    """Relative path -> size of every file of a local dataset."""
    return {
        p.relative_to(root).as_posix(): p.stat().st_size
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "framestream-synthetic.json"
    }


def stream(ds: StreamingLeRobotDataset, num_workers: int = 0) -> list[dict[str, Any]]:
    if num_workers == 0:
        return list(ds)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=num_workers, timeout=60)
    return list(loader)


def check_frames(sample: dict[str, Any], video_keys: list[str]) -> None:
    """The pixels of every camera are the frame the sample says it is."""
    ep, fr = int(sample["episode_index"]), int(sample["frame_index"])
    for cam, key in enumerate(video_keys):
        fid = decode_frame_id(sample[key])
        assert (fid.episode, fid.frame, fid.camera) == (ep, fr, cam), (key, ep, fr)


def assert_same_samples(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    """Same samples in the same order, every tensor equal."""
    assert len(got) == len(want) and len(want) > 0
    for a, b in zip(got, want, strict=True):
        assert a.keys() == b.keys()
        for k in b:
            if isinstance(b[k], torch.Tensor):
                assert torch.equal(a[k], b[k]), (k, int(b["index"]))
            else:
                assert a[k] == b[k], k
