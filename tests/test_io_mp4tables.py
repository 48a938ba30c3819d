"""framestream.io.mp4tables (through parse_moov): the per-sample tables of the video track
equal what PyAV demuxes and torchcodec reports, with B-frames, edit lists and co64."""

from __future__ import annotations

import struct
import subprocess

import numpy as np
import pytest
from mp4_helpers import (
    EPISODES,
    FFMPEG,
    ODD_RANGES,
    SRC,
    Counting,
    encoders,
    index_of,
    needs_ffmpeg,
    pick,
)

from framestream.io.mp4boxes import Mp4Error, read_moov
from framestream.io.mp4index import index_file, needed_samples, parse_moov
from framestream.io.mp4tables import video_track

av = pytest.importorskip("av")
pytest.importorskip("torch")
try:
    from torchcodec.decoders import VideoDecoder
except Exception as exc:  # noqa: BLE001 - torchcodec raises RuntimeError without FFmpeg libs
    pytest.skip(f"torchcodec unusable: {exc}", allow_module_level=True)

pytestmark = needs_ffmpeg


def test_index_matches_pyav_demux(video):
    idx, _ = index_of(video)
    with av.open(str(video)) as c:
        st = c.streams.video[0]
        pk = [p for p in c.demux(st) if p.size]
        assert st.time_base.denominator == idx.timescale and st.time_base.numerator == 1
    assert len(pk) == len(idx) == 120
    np.testing.assert_array_equal([p.pts for p in pk], idx.pts)
    np.testing.assert_array_equal([p.dts for p in pk], idx.dts)
    np.testing.assert_array_equal([p.pos for p in pk], idx.offset)
    np.testing.assert_array_equal([p.size for p in pk], idx.size)
    np.testing.assert_array_equal([p.is_keyframe for p in pk], idx.is_sync)
    assert idx.is_sync.sum() >= 10


def test_pts_match_torchcodec(video):
    idx, _ = index_of(video)
    frames = VideoDecoder(str(video), seek_mode="approximate").get_frames_played_in_range(0, 4)
    np.testing.assert_allclose(frames.pts_seconds.numpy(), np.sort(idx.pts_seconds), atol=1e-9)


def _elst_media_time(moov: bytes) -> int | None:
    at = moov.find(b"elst")
    if at < 0:
        return None
    version = moov[at + 4]
    fmt = ">Qq" if version == 1 else ">Ii"
    return struct.unpack_from(fmt, moov, at + 12)[1]


def test_b_frames_and_edit_list(videos):
    path = pick(videos, "h264")
    _, moov = read_moov(Counting(path.read_bytes()), path.stat().st_size)
    media_time = _elst_media_time(moov)
    assert media_time is not None and media_time > 0  # the edit list hides the B-frame delay
    idx = parse_moov(moov)
    assert idx.pts.min() == 0 and idx.dts[0] == -media_time
    assert (idx.pts != idx.dts).any() and idx.reorder_depth >= 1
    # a range whose last presented frame is not its last packet in decode order
    hits = 0
    for a, b in EPISODES + ODD_RANGES:
        need = needed_samples(idx, a, b)
        last_presented = need[np.argmax(idx.pts[need])]
        hits += int(need.max() > last_presented)
    assert hits > 0


def _stco_to_co64(buf: bytes, shift: int) -> bytes:
    """Rewrite every ``stco`` in a box tree as ``co64`` (offsets + ``shift``), sizes fixed."""
    out, pos = b"", 0
    while pos < len(buf):
        size, typ = struct.unpack_from(">I4s", buf, pos)
        payload = buf[pos + 8 : pos + size]
        if typ in (b"moov", b"trak", b"mdia", b"minf", b"stbl"):
            payload = _stco_to_co64(payload, shift)
        elif typ == b"stco":
            (n,) = struct.unpack_from(">I", payload, 4)
            offsets = [o + shift for o in struct.unpack_from(f">{n}I", payload, 8)]
            typ, payload = b"co64", payload[:8] + struct.pack(f">{n}Q", *offsets)
        out += struct.pack(">I4s", 8 + len(payload), typ) + payload
        pos += size
    return out


def test_co64_offsets(videos):
    name = next(iter(videos))
    _, moov = read_moov(Counting(videos[name].read_bytes()), videos[name].stat().st_size)
    tables, size = video_track(moov)
    assert size == len(moov)
    moov64 = _stco_to_co64(moov, 5 << 32)
    assert b"co64" in moov64 and b"stco" not in moov64
    tables64, size64 = video_track(moov64)
    np.testing.assert_array_equal(tables64.offset, tables.offset + (5 << 32))
    np.testing.assert_array_equal(tables64.pts, tables.pts)
    assert size64 == len(moov64)


def test_no_video_track_and_not_a_moov(videos):
    name = next(iter(videos))
    _, moov = read_moov(Counting(videos[name].read_bytes()), videos[name].stat().st_size)
    with pytest.raises(Mp4Error, match="expected a moov"):
        video_track(b"\0\0\0\x08free")
    # the video track's handler renamed: no video track is left
    at = moov.find(b"vide")
    with pytest.raises(Mp4Error, match="no video track"):
        video_track(moov[:at] + b"soun" + moov[at + 4 :])


def test_fragmented_refused(tmp_path):
    if " mpeg4 " not in encoders():
        pytest.skip("mpeg4 encoder not available")
    path = tmp_path / "frag.mp4"
    subprocess.run(
        [FFMPEG, "-y", "-loglevel", "error", *SRC, "-c:v", "mpeg4", "-g", "10",
         "-movflags", "frag_keyframe+empty_moov", str(path)],
        check=True,
    )  # fmt: skip
    data = path.read_bytes()
    with pytest.raises(Mp4Error, match="fragmented"):
        index_file(Counting(data), len(data))
