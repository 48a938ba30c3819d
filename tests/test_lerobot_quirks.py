"""A dataset with a real third-party dataset's quirks streams, and equals LeRobot's samples.

The quirks (tests/lerobot_fixtures/quirks.py): one episode per mp4 per camera starting at 0,
``to_timestamp`` at the last frame's time, MPEG-4 Part 2 video while info.json says h264.
LeRobot 0.6.1 reads it; so must both framestream classes, with the same values; ``validate``
warns (grouped) and reports no error.
"""

from __future__ import annotations

import pytest
from lerobot_fixtures.quirks import make_quirky_copy
from lerobot_helpers import cache_dir, lerobot_fixture, reference, require_lerobot
from test_lerobot_parity import _compare_both

from framestream import LeRobotDataset, StreamingLeRobotDataset


@pytest.fixture(scope="module")
def quirky():
    require_lerobot()
    src = lerobot_fixture("train")
    return make_quirky_copy(src, cache_dir() / f"quirks-{src.name}")


def test_quirky_dataset_equals_lerobot(quirky):
    meta = LeRobotDataset("local/q", root=quirky).meta
    key = meta.video_keys[0]
    assert meta.episodes.videos[key].file.tolist() == meta.episodes.episode_index.tolist()
    assert meta.video_position_problems(key) == {}
    assert len(meta.video_position_warnings(key)) == len(meta.episodes)
    idx = [0, 5, 23, 24, 54, 55, 100, 172]
    ref = reference(quirky, "--indices", ",".join(map(str, idx)))
    _compare_both(quirky, ref)
    delta = {key: [-1 / 30, 0.0], "action": [0.0, 1 / 30]}
    ref = reference(quirky, "--indices", "0,24,80", "--delta", __import__("json").dumps(delta))
    _compare_both(quirky, ref, delta_timestamps=delta)


def test_quirky_dataset_streams_every_sample(quirky):
    ds = StreamingLeRobotDataset(quirky, shuffle=False, return_uint8=True)
    assert sorted(s["index"] for s in ds) == list(range(ds.num_frames))


def test_validate_warns_grouped_and_reports_no_error(quirky):
    from framestream.validate.dataset import validate_dataset

    report = validate_dataset(str(quirky))
    assert not report.errors, report.format()
    ranges = [w for w in report.warnings if w.check == "video_range"]
    # one grouped warning per camera, naming the episodes, not one per episode
    assert len(ranges) == 2, report.format()
    assert "last frame's time" in ranges[0].message and "episodes 0, 1" in ranges[0].message
