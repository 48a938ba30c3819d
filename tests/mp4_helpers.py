"""Helpers of the mp4 index tests (test_io_mp4boxes/mp4tables/mp4index/ranged): small videos.

Small videos (64x48, 30 fps, 120 frames = four 1-second "episodes" in one file, a keyframe
every 10 frames) are encoded with the ffmpeg CLI in AV1, H.264 and HEVC with B-frames, and
MPEG-4 Part 2 with B-frames, moov at the end (ffmpeg's default) and at the front
(``+faststart``). Noise keeps every frame a few KiB, so a 1-second episode is ~120 KiB and
the 64 KiB coalescing gap does not swallow the whole file. They are encoded once per test
session (into the session's temporary folder) and shared by the modules.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from framestream.io.mp4index import Mp4Index, index_file

FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(FFMPEG is None, reason="ffmpeg CLI not installed")

FPS = 30
SRC = ["-f", "lavfi", "-i", f"testsrc2=size=64x48:rate={FPS}:duration=4",
       "-vf", "noise=alls=80:allf=t+u", "-pix_fmt", "yuv420p"]  # fmt: skip
# fmt: off
CODECS = {
    # B-frames forced (noise makes x264/x265's adaptive B-frame decision pick none).
    "h264": ["-c:v", "libx264", "-preset", "veryfast", "-crf", "4", "-g", "10",
             "-x264-params", "b-adapt=0"],
    "h264_faststart": ["-c:v", "libx264", "-preset", "veryfast", "-crf", "4", "-g", "10",
                       "-x264-params", "b-adapt=0", "-movflags", "+faststart"],
    # x265 makes open GOPs: CRA keyframes with leading pictures decoded after them
    "hevc": ["-c:v", "libx265", "-preset", "ultrafast", "-crf", "4",
             "-x265-params", "log-level=error:keyint=10:min-keyint=10:b-adapt=0"],
    "mpeg4": ["-c:v", "mpeg4", "-q:v", "1", "-bf", "2", "-g", "10"],
    "av1": ["-c:v", "libaom-av1", "-usage", "realtime", "-cpu-used", "8", "-crf", "10",
            "-g", "10"],
}
# fmt: on
ENCODER = {
    "h264": "libx264",
    "h264_faststart": "libx264",
    "hevc": "libx265",
    "mpeg4": "mpeg4",
    "av1": "libaom-av1",
}
EPISODES = [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 4.0)]
ODD_RANGES = [(1.5, 2.2), (0.5, 0.6), (2.9, 3.05), (8 / 30, 9 / 30)]


def encoders() -> str:
    assert FFMPEG is not None
    return subprocess.run(
        [FFMPEG, "-hide_banner", "-encoders"], capture_output=True, text=True, check=True
    ).stdout


def encode_videos(root: Path) -> dict[str, Path]:
    """``{codec name: mp4}`` for every codec whose encoder this ffmpeg has (encoded in
    parallel, once: files already in ``root`` are reused)."""
    root.mkdir(parents=True, exist_ok=True)
    have = encoders()
    jobs = {}
    out = {}
    for name, args in CODECS.items():
        if f" {ENCODER[name]} " not in have:
            continue
        path = root / f"{name}.mp4"
        if path.is_file():
            out[name] = path
            continue
        tmp = root / f"{name}.tmp.mp4"
        cmd = [FFMPEG, "-y", "-loglevel", "error", *SRC, *args, str(tmp)]
        jobs[name] = (tmp, path, subprocess.Popen(cmd, stderr=subprocess.PIPE))
    for name, (tmp, path, proc) in jobs.items():
        _, err = proc.communicate()
        assert proc.returncode == 0, err.decode(errors="replace")
        tmp.replace(path)
        out[name] = path
    return {name: out[name] for name in CODECS if name in out}


def session_videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return encode_videos(tmp_path_factory.getbasetemp() / "mp4-videos")


def pick(videos: dict[str, Path], name: str) -> Path:
    if name not in videos:
        pytest.skip(f"encoder {ENCODER[name]} not available")
    return videos[name]


class Counting:
    """``read_at`` over a file's bytes that counts (and records) requests."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.calls: list[tuple[int, int]] = []

    def __call__(self, offset: int, length: int) -> bytes:
        self.calls.append((offset, length))
        return self.data[offset : offset + length]


def index_of(path: Path) -> tuple[Mp4Index, Counting]:
    ra = Counting(path.read_bytes())
    return index_file(ra, len(ra.data), etag="etag-1"), ra


def box(typ: bytes, payload: bytes, large: bool = False) -> bytes:
    """One box (a 64-bit size with ``large``)."""
    if large:
        return struct.pack(">I4sQ", 1, typ, 16 + len(payload)) + payload
    return struct.pack(">I4s", 8 + len(payload), typ) + payload


# Fixtures of the four modules (tests/conftest.py makes them visible there).
@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Every codec's small videos, encoded once per session."""
    return session_videos(tmp_path_factory)


@pytest.fixture(params=list(CODECS))
def video(request, videos):
    """One codec's videos: the tests that take it run once per codec."""
    return pick(videos, request.param)
