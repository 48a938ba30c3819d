"""framestream's datasets against LeRobot 0.6.1 itself, on datasets written by LeRobot's writer.

LeRobot runs in its own environment (a subprocess, see lerobot_helpers.py) and dumps its
samples; the same indices and windows from framestream's MapDataset (alias LeRobotDataset) and
StreamingLeRobotDataset must have the same keys, dtypes, shapes and values. The fixture holds
RGB videos in several mp4 files per camera, a PNG image camera, a depth video, the language
columns, float64 / uint8 / uint16 / bool / scalar features. Skips when LeRobot is absent.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from lerobot_helpers import lerobot_fixture, reference, require_lerobot

from framestream import LeRobotDataset, StreamingLeRobotDataset

FPS = 30
DELTA = {
    "observation.images.cam_high": [0.0],  # a one-step video window: squeezed
    "observation.images.cam_wrist": [-2 / FPS, 0.0, 3 / FPS],
    "observation.images.depth": [-1 / FPS, 0.0],
    "observation.images.png_cam": [0.0, 1 / FPS],
    "observation.state": [-3 / FPS, -1 / FPS, 0.0],
    "action": [i / FPS for i in range(5)],
    "next.reward": [0.0, 1 / FPS],
}


@pytest.fixture(scope="module")
def full():
    require_lerobot()
    return lerobot_fixture("full")


def _indices(n: int, boundaries: list[int], k: int = 8, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    picks = set(boundaries) | set(rng.sample(range(n), k))
    return sorted(i for i in picks if 0 <= i < n)


def assert_same_sample(ours: dict, ref: dict, *, where: str, scalars_as_python: bool = False):
    assert set(ours) == set(ref), f"{where}: keys differ: {set(ours) ^ set(ref)}"
    for key, want in ref.items():
        got = ours[key]
        if isinstance(want, torch.Tensor):
            if scalars_as_python and want.dim() == 0:
                assert isinstance(got, int | float | bool), f"{where} {key}: {type(got)}"
                got = torch.tensor(got, dtype=want.dtype)
            assert isinstance(got, torch.Tensor), f"{where} {key}: {type(got).__name__}"
            assert got.dtype == want.dtype, f"{where} {key}: {got.dtype} != {want.dtype}"
            assert got.shape == want.shape, (
                f"{where} {key}: {tuple(got.shape)} != {tuple(want.shape)}"
            )
            assert torch.equal(got, want), (
                f"{where} {key}: values differ (max abs diff "
                f"{(got.double() - want.double()).abs().max().item()})"
            )
        else:
            assert got == want, f"{where} {key}: {got!r} != {want!r}"


def _stream_by_index(root, wanted: set[int], **kw) -> dict[int, dict]:
    ds = StreamingLeRobotDataset("local/x", root=root, shuffle=False, **kw)
    out = {}
    for s in ds:
        if s["index"] in wanted:
            out[s["index"]] = s
    return out


def _compare_both(root, ref: dict, *, episodes=None, **kw):
    mp = LeRobotDataset("local/x", root=root, episodes=episodes, **kw)
    assert len(mp) == ref["len"] and mp.num_episodes == ref["num_episodes"]
    positions = list(ref["samples"])
    for pos in positions:
        assert_same_sample(mp[pos], ref["samples"][pos], where=f"map[{pos}]")
    stream_kw = {k: v for k, v in kw.items() if k != "video_backend"}
    wanted = {int(ref["samples"][p]["index"]) for p in positions}
    streamed = _stream_by_index(root, wanted, episodes=episodes, **stream_kw)
    assert set(streamed) == wanted
    for pos in positions:
        want = ref["samples"][pos]
        assert_same_sample(
            streamed[int(want["index"])], want, where=f"stream[{pos}]", scalars_as_python=True
        )


def test_single_frames_equal_lerobot(full):
    starts = [0, 24, 55, 75, 112, 140]
    idx = _indices(173, starts + [s - 1 for s in starts] + [172])
    ref = reference(full, "--indices", ",".join(map(str, idx)))
    _compare_both(full, ref)


def test_windows_subset_uint8_equal_lerobot(full):
    # episodes given unsorted: LeRobot reads them in ascending order
    idx = [0, 1, 19, 20, 21, 47, 48, 80]
    ref = reference(
        full,
        "--indices", ",".join(map(str, idx)),
        "--episodes", "5,2,4",
        "--delta", json.dumps(DELTA),
        "--return-uint8",
    )  # fmt: skip
    _compare_both(full, ref, episodes=[5, 2, 4], delta_timestamps=DELTA, return_uint8=True)
    sample = ref["samples"][0]
    assert sample["observation.images.cam_high"].shape == (3, 48, 64)  # squeezed
    assert sample["observation.images.png_cam"].dtype == torch.float32  # PNG stays float


def test_depth_in_metres_and_large_tolerance_equal_lerobot(full):
    delta = {"action": [0.0, 0.01, 0.045], "observation.images.cam_wrist": [0.01, 0.045]}
    idx = [0, 30, 100, 172]
    ref = reference(
        full,
        "--indices", ",".join(map(str, idx)),
        "--delta", json.dumps(delta),
        "--tolerance-s", "0.02",
        "--depth-output-unit", "m",
    )  # fmt: skip
    _compare_both(full, ref, delta_timestamps=delta, tolerance_s=0.02, depth_output_unit="m")


def test_streaming_types_equal_lerobot_streaming(full):
    """LeRobot's streaming class gives scalar features as Python numbers; so does ours."""
    ref = reference(
        full, "--cls", "stream", "--max-samples", "4", "--no-shuffle",
        "--buffer-size", "1", "--max-num-shards", "1",
    )  # fmt: skip
    ds = StreamingLeRobotDataset("local/x", root=full, shuffle=False)
    ours = {s["index"]: s for _, s in zip(range(4), ds, strict=False)}
    assert set(ours) == set(ref["samples"])
    for i, want in ref["samples"].items():
        types = ref["py_types"][i]
        for key, value in ours[i].items():
            assert type(value).__name__ == types[key], (key, type(value), types[key])
        assert_same_sample(ours[i], want, where=f"stream index {i}")


def test_meta_equals_lerobot_meta(full):
    ref = reference(full, "--indices", "0")["meta"]
    meta = LeRobotDataset("local/x", root=full).meta
    assert json.loads(json.dumps(meta.features, default=list)) == ref["features"]
    assert all(isinstance(f["shape"], tuple) for f in meta.features.values())
    for name in (
        "fps", "robot_type", "total_episodes", "total_frames", "total_tasks",
        "camera_keys", "video_keys", "image_keys", "depth_keys", "has_language_columns",
        "shapes", "names",
    ):  # fmt: skip
        got = getattr(meta, name)
        assert (list(got) if isinstance(got, list) else got) == ref[name], name
    assert set(meta.stats) == set(ref["stats"])
    for key, stats in ref["stats"].items():
        for stat, want in stats.items():
            got = meta.stats[key][stat]
            assert isinstance(got, np.ndarray), (key, stat)
            assert np.array_equal(got, want.numpy()) and got.dtype == want.numpy().dtype
    for col in ("dataset_from_index", "dataset_to_index", "episode_index", "length", "tasks"):
        assert meta.episodes[col] == ref["episodes"][col], col
    for key in meta.video_keys:
        col = f"videos/{key}/from_timestamp"
        assert meta.episodes[col] == ref["episodes"][col]
    assert bool(meta)
