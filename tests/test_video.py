"""The video layer (framestream.decode.video) on its own: both backends, checked timestamps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from framestream import TimestampToleranceError, VideoDecodeError
from framestream.decode.video import (
    DecoderCache,
    VideoFile,
    decode_episode_frames,
    open_video,
    resolve_backend,
    torchcodec_available,
)
from framestream.format.meta import DatasetMeta
from framestream.io.source import Source
from framestream.testing import decode_frame_id

BACKENDS = [
    "pyav",
    pytest.param(
        "torchcodec",
        marks=pytest.mark.skipif(not torchcodec_available(), reason="torchcodec cannot load"),
    ),
]
CAMERA = "observation.images.cam1"


@pytest.fixture(scope="module")
def meta(small_root) -> DatasetMeta:
    return DatasetMeta(str(small_root))


def _episode_times(meta: DatasetMeta, episode: int) -> tuple[str, float, np.ndarray]:
    """The episode's file, its start in that file and its frames' times (episode-relative)."""
    row = meta.episodes.row(episode)
    length = int(meta.episodes.length[row])
    return (
        meta.video_file(episode, CAMERA),
        meta.video_from_timestamp(episode, CAMERA),
        np.arange(length) / meta.fps,
    )


def _episode_in_a_later_file_position(meta: DatasetMeta) -> int:
    """An episode that does not start its video file (its frames are shifted in the file)."""
    for e in meta.episodes.episode_index.tolist():
        if meta.video_from_timestamp(int(e), CAMERA) > 0:
            return int(e)
    raise AssertionError("every episode starts its own file: the fixture lost its layout")


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_is_a_video_file_giving_nhwc_uint8_and_pts(meta, backend):
    episode = _episode_in_a_later_file_position(meta)
    rel, start, times = _episode_times(meta, episode)
    video = open_video(meta.source, rel, backend=backend)
    try:
        for name in ("frames_at", "close"):  # the VideoFile protocol
            assert callable(getattr(video, name)), name
        assert set(VideoFile.__dict__) >= {"frames_at", "close"}
        query = start + times[[0, 3, len(times) - 1]]
        frames, pts = video.frames_at((query + 0.25 / meta.fps).tolist())
        height, width = meta.features[CAMERA].shape[:2]
        assert frames.dtype == torch.uint8 and tuple(frames.shape) == (3, height, width, 3)
        np.testing.assert_allclose(pts, query, atol=1e-6)
        ids = [tuple(decode_frame_id(f.numpy())) for f in frames]
        assert ids == [(episode, 0, 1), (episode, 3, 1), (episode, len(times) - 1, 1)]
    finally:
        video.close()


@pytest.mark.skipif(not torchcodec_available(), reason="torchcodec cannot load")
def test_both_backends_decode_the_same_pixels(meta):
    episode = _episode_in_a_later_file_position(meta)
    rel, start, times = _episode_times(meta, episode)
    out = {}
    for backend in ("pyav", "torchcodec"):
        cache = DecoderCache(meta.source, capacity=1, backend=backend)
        try:
            out[backend] = decode_episode_frames(
                cache,
                relative=rel,
                camera=CAMERA,
                episode=episode,
                from_timestamp=start,
                timestamps=times,
                tolerance_s=1e-4,
                fps=meta.fps,
            )
        finally:
            cache.close()
    assert out["pyav"].shape == out["torchcodec"].shape
    assert torch.equal(out["pyav"], out["torchcodec"])
    assert decode_frame_id(out["pyav"][-1].numpy()) == (episode, len(times) - 1, 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_timestamp_between_frames_raises_naming_file_camera_and_episode(meta, backend):
    episode = _episode_in_a_later_file_position(meta)
    rel, start, times = _episode_times(meta, episode)
    cache = DecoderCache(meta.source, capacity=1, backend=backend)
    try:
        with pytest.raises(TimestampToleranceError) as info:
            decode_episode_frames(
                cache,
                relative=rel,
                camera=CAMERA,
                episode=episode,
                from_timestamp=start,
                timestamps=np.array([times[2], times[4] + 0.4 / meta.fps]),  # 2nd is off-grid
                tolerance_s=1e-4,
                fps=meta.fps,
            )
    finally:
        cache.close()
    message = str(info.value)
    assert rel in message and f"episode {episode}" in message and CAMERA in message
    assert "tolerance_s=0.0001" in message


def test_a_missing_video_file_raises_naming_it(meta, tmp_path):
    source = Source(str(tmp_path))
    with pytest.raises(VideoDecodeError, match="videos/cam/file-000.mp4: video file not found"):
        open_video(source, "videos/cam/file-000.mp4", backend="pyav")


def test_resolve_backend():
    assert resolve_backend("pyav") == "pyav"
    assert resolve_backend(None) == ("torchcodec" if torchcodec_available() else "pyav")
    with pytest.raises(ValueError, match="video_backend"):
        resolve_backend("ffmpeg")
