"""Exactness of the decode paths against torchcodec's plain RGB decode.

The default path (torchcodec, with the per-worker malloc settings of
``framestream.decode.memory``) must give torchcodec's bytes; the opt-in YUV path must give
them too after :func:`framestream.yuv_to_rgb` (largest difference 0). Test videos are made
with the ffmpeg command line: AV1, H.264 with B-frames, HEVC and MPEG-4 part 2.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from framestream import StreamingLeRobotDataset, StreamOptions, yuv_to_rgb
from framestream.decode import memory
from framestream.decode.video import open_video, torchcodec_available
from framestream.decode.yuv import colorspace_id, i420_to_rgb, sws_coefficients
from framestream.io.source import Source

pytestmark = pytest.mark.skipif(
    not torchcodec_available() or shutil.which("ffmpeg") is None,
    reason="needs torchcodec and the ffmpeg command line",
)

# name -> ffmpeg encoder arguments; 320x240: width a multiple of 32, torchcodec's swscale path
CODECS = {
    "av1": ["-c:v", "libsvtav1", "-preset", "12", "-g", "8"],
    "h264_bframes": ["-c:v", "libx264", "-preset", "veryfast", "-bf", "3", "-g", "12"],
    "hevc": ["-c:v", "libx265", "-preset", "ultrafast", "-x265-params", "log-level=error"],
    "mpeg4": ["-c:v", "mpeg4", "-q:v", "4", "-bf", "2", "-g", "12"],
    "h264_bt709": [
        *("-c:v", "libx264", "-preset", "veryfast", "-bf", "2"),
        *("-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709"),
    ],
}
FRAMES = 24


def _encoders() -> str:
    try:
        return subprocess.run(
            ["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    """One short clip per codec (moving test pattern plus noise, so every value range shows)."""
    out = tmp_path_factory.mktemp("codecs")
    have = _encoders()
    made = {}
    for name, args in CODECS.items():
        encoder = args[args.index("-c:v") + 1]
        if f" {encoder} " not in have:
            continue
        path = out / f"{name}.mp4"
        subprocess.run(
            [
                *("ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi"),
                *("-i", "testsrc2=size=320x240:rate=30,noise=alls=40:allf=t+u:all_seed=3"),
                *("-frames:v", str(FRAMES), "-pix_fmt", "yuv420p", *args, str(path)),
            ],
            check=True,
        )
        made[name] = path
    return made


def _torchcodec_rgb(path: Path) -> torch.Tensor:
    """torchcodec's plain decode of every frame: (N, H, W, 3) uint8."""
    from torchcodec.decoders import VideoDecoder

    dec = VideoDecoder(str(path))
    return dec.get_frames_in_range(0, len(dec)).data.permute(0, 2, 3, 1).contiguous()


def _times(path: Path) -> list[float]:
    from torchcodec.decoders import VideoDecoder

    dec = VideoDecoder(str(path))
    fps = dec.metadata.average_fps
    return [(i + 0.25) / fps for i in range(len(dec))]


@pytest.mark.parametrize("codec", list(CODECS))
def test_default_path_is_bit_identical_to_torchcodec(videos, codec, monkeypatch):
    if codec not in videos:
        pytest.skip(f"ffmpeg has no encoder for {codec}")
    path = videos[codec]
    monkeypatch.setenv("FRAMESTREAM_MALLOC", "1")  # the settings a DataLoader worker gets
    assert memory.prepare_decoding_process()
    video = open_video(Source(str(path.parent)), path.name, backend="torchcodec")
    times = _times(path)
    # in chunks, the way readers ask (several decode calls reusing freed memory)
    got = torch.cat([video.frames_at(times[i : i + 5])[0] for i in range(0, len(times), 5)])
    video.close()
    ref = _torchcodec_rgb(path)
    assert got.shape == ref.shape == (FRAMES, 240, 320, 3)
    assert torch.equal(got, ref)


@pytest.mark.parametrize("codec", list(CODECS))
def test_yuv420_output_converts_to_torchcodec_rgb_exactly(videos, codec):
    if codec not in videos:
        pytest.skip(f"ffmpeg has no encoder for {codec}")
    path = videos[codec]
    video = open_video(Source(str(path.parent)), path.name, backend="pyav", pixel_format="yuv420")
    yuv, _ = video.frames_at(_times(path))
    cs = video.colorspace
    video.close()
    assert yuv.dtype == torch.uint8 and yuv.shape == (FRAMES, 360, 320)  # 1.5 bytes per pixel
    assert cs == (1 if codec == "h264_bt709" else 2)
    rgb = i420_to_rgb(yuv, cs).permute(0, 2, 3, 1)
    ref = _torchcodec_rgb(path)
    diff = (rgb.int() - ref.int()).abs().max().item()
    assert diff == 0, f"{codec}: largest difference {diff}"
    if codec == "h264_bt709":  # the colour space matters: BT.601 coefficients would differ
        assert not torch.equal(i420_to_rgb(yuv, 2), rgb.permute(0, 3, 1, 2))


def test_conversion_matches_pyav_swscale_on_random_planes():
    """Every Y, U and V value (random planes) against FFmpeg's own swscale, via PyAV."""
    av = pytest.importorskip("av")
    rng = np.random.default_rng(0)
    h, w = 64, 96
    for cs in (2, 1):
        i420 = rng.integers(0, 256, size=(h * 3 // 2, w), dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(i420, format="yuv420p")
        frame.colorspace = cs
        ref = frame.reformat(format="rgb24", src_colorspace=cs, dst_colorspace=cs).to_ndarray()
        got = i420_to_rgb(torch.from_numpy(i420), cs).permute(1, 2, 0).numpy()
        assert np.array_equal(got, ref), f"colorspace {cs}: max diff " + str(
            np.abs(got.astype(int) - ref.astype(int)).max()
        )


def test_coefficients_and_names():
    assert sws_coefficients(2) == (9539, 13075, 16525, -6660, -3209, 128)
    assert sws_coefficients(1)[1:5] == (14686, 17305, -4366, -1747)
    assert sws_coefficients(8) == sws_coefficients(5) == sws_coefficients(99)
    assert colorspace_id("bt709") == 1 and colorspace_id("BT601") == 5
    with pytest.raises(ValueError, match="unknown colour space"):
        colorspace_id("xyz")
    with pytest.raises(ValueError, match="I420"):
        i420_to_rgb(torch.zeros(5, 4, dtype=torch.uint8))


def test_yuv_to_rgb_on_a_batch_with_two_colour_spaces():
    rng = np.random.default_rng(1)
    frames = torch.from_numpy(rng.integers(0, 256, size=(4, 2, 36, 32), dtype=np.uint8))
    marks = torch.tensor([2, 1, 1, 2])
    batch = {"cam": frames.clone(), "cam_yuv_colorspace": marks, "state": torch.zeros(4, 3)}
    out = yuv_to_rgb(batch)
    assert set(out) == {"cam", "state"} and out["cam"].shape == (4, 2, 3, 24, 32)
    for i, cs in enumerate(marks.tolist()):
        assert torch.equal(out["cam"][i], i420_to_rgb(frames[i], cs))
    as_float = yuv_to_rgb(frames[0], "bt709", dtype=torch.float32)
    assert torch.allclose(as_float * 255, i420_to_rgb(frames[0], 1).float())


def test_streaming_yuv420_batches_equal_rgb_batches(small_root):
    """Through a DataLoader: YUV batches, converted, are the RGB batches bit for bit."""
    common = dict(
        delta_timestamps={"observation.images.cam0": [-0.1, 0.0]},
        return_uint8=True,
        shuffle=False,
    )
    loader = lambda **kw: torch.utils.data.DataLoader(  # noqa: E731
        StreamingLeRobotDataset(small_root, **common, **kw), batch_size=8
    )
    n = 0
    for a, b in zip(loader(), loader(pixel_format="yuv420"), strict=True):
        cam = b["observation.images.cam1"]
        assert cam.shape[-2] * 2 == a["observation.images.cam1"].shape[-2] * 3  # (B, H*3/2, W)
        b = yuv_to_rgb(b)
        assert set(a) == set(b)
        for k, v in a.items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, b[k]), k
        n += 1
    assert n > 0


def test_yuv420_options_are_checked():
    with pytest.raises(ValueError, match="return_uint8"):
        StreamOptions(pixel_format="yuv420")
    with pytest.raises(ValueError, match="channels_last"):
        StreamOptions(pixel_format="yuv420", return_uint8=True, channels_last=True)
    assert StreamOptions().pixel_format == "rgb"


def test_malloc_settings_only_where_asked(monkeypatch):
    monkeypatch.setenv("FRAMESTREAM_MALLOC", "0")
    assert memory.prepare_decoding_process() is False
    monkeypatch.setenv("FRAMESTREAM_MALLOC", "auto")
    assert memory.prepare_decoding_process() is False  # not a DataLoader worker
