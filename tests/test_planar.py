from __future__ import annotations

import numpy as np
import pytest
import torch

from framestream import MapDataset, StreamingLeRobotDataset
from framestream.decode import planar as _planar

SHAPES = [(240, 320, 3), (7, 5, 3), (1, 1, 3), (9, 11, 4), (6, 4, 2), (5, 3, 1)]


@pytest.fixture
def numpy_only(monkeypatch):
    """The numpy fallback, as on a machine without OpenCV."""
    monkeypatch.setenv("FRAMESTREAM_OPENCV", "0")
    _planar._opencv_split.cache_clear()
    yield
    monkeypatch.delenv("FRAMESTREAM_OPENCV")
    _planar._opencv_split.cache_clear()


def _planes(shape, seed):
    src = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    out = np.full((shape[2], *shape[:2]), 7, dtype=np.uint8)
    return src, out


@pytest.mark.parametrize("shape", SHAPES)
def test_to_planar_is_the_transpose(shape):
    src, out = _planes(shape, 0)
    assert _planar.to_planar(src, out) is out
    np.testing.assert_array_equal(out, src.transpose(2, 0, 1))


@pytest.mark.parametrize("shape", SHAPES)
def test_numpy_fallback_gives_the_same_bytes(shape, numpy_only):
    assert _planar.backend() == "numpy"
    src, out = _planes(shape, 1)
    np.testing.assert_array_equal(_planar.to_planar(src, out), src.transpose(2, 0, 1))


def test_non_contiguous_frames_take_the_fallback():
    big = np.random.default_rng(2).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    src = big[::2, 1::3]  # a strided view: OpenCV is not handed it
    out = np.empty((3, *src.shape[:2]), dtype=np.uint8)
    np.testing.assert_array_equal(_planar.to_planar(src, out), src.transpose(2, 0, 1))


def test_opencv_is_used_when_installed():
    pytest.importorskip("cv2", reason="opencv-python-headless (framestream[fast]) not installed")
    _planar._opencv_split.cache_clear()
    assert _planar.backend() == "opencv"


def test_streaming_frames_identical_with_and_without_opencv(small_root, monkeypatch):
    """The decode path's deinterleave (either backend) against the map-style numpy path."""
    ref = MapDataset(str(small_root), return_uint8=True)
    seen = {}
    for setting in ("1", "0"):
        monkeypatch.setenv("FRAMESTREAM_OPENCV", setting)
        _planar._opencv_split.cache_clear()
        ds = StreamingLeRobotDataset(str(small_root), return_uint8=True, shuffle=False)
        for n, sample in enumerate(ds):
            if n % 7:
                continue
            expected = ref[ref.position_of(int(sample["index"]))]
            for cam in ("observation.images.cam0", "observation.images.cam1"):
                assert sample[cam].is_contiguous()
                assert torch.equal(sample[cam], expected[cam]), (setting, cam)
            seen[setting] = seen.get(setting, 0) + 1
    _planar._opencv_split.cache_clear()
    assert seen["1"] == seen["0"] > 0
