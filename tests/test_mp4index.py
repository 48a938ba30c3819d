"""framestream.io.mp4index + framestream.io.ranged: fetch only an episode's bytes of an mp4.

Small videos (64x48, 30 fps, 120 frames = four 1-second "episodes" in one file, a keyframe
every 10 frames) are encoded with the ffmpeg CLI in AV1, H.264 and HEVC with B-frames, and
MPEG-4 Part 2 with B-frames, moov at the end (ffmpeg's default) and at the front
(``+faststart``). Noise keeps every frame a few KiB, so a 1-second episode is ~120 KiB and
the 64 KiB coalescing gap does not swallow the whole file.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from framestream.io.mp4index import (
    Mp4Error,
    Mp4Index,
    episode_ranges,
    index_file,
    locate_moov,
    needed_samples,
    parse_moov,
    read_moov,
    sample_span,
)
from framestream.io.ranged import (
    OutsideFetchedRangeError,
    RangedFile,
    decode_pyav,
    fetch_ranges,
    needed_ranges,
    open_episode,
)

av = pytest.importorskip("av")
torch = pytest.importorskip("torch")
try:
    from torchcodec.decoders import VideoDecoder
except Exception as exc:  # noqa: BLE001 - torchcodec raises RuntimeError without FFmpeg libs
    pytest.skip(f"torchcodec unusable: {exc}", allow_module_level=True)

FFMPEG = shutil.which("ffmpeg")
pytestmark = pytest.mark.skipif(FFMPEG is None, reason="ffmpeg CLI not installed")

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


@pytest.fixture(scope="module")
def encoders() -> str:
    return subprocess.run(
        [FFMPEG, "-hide_banner", "-encoders"], capture_output=True, text=True, check=True
    ).stdout


@pytest.fixture(scope="module")
def videos(tmp_path_factory, encoders) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mp4index")
    jobs = {}
    for name, args in CODECS.items():  # encoded in parallel
        if f" {ENCODER[name]} " not in encoders:
            continue
        path = root / f"{name}.mp4"
        cmd = [FFMPEG, "-y", "-loglevel", "error", *SRC, *args, str(path)]
        jobs[name] = (path, subprocess.Popen(cmd, stderr=subprocess.PIPE))
    out = {}
    for name, (path, proc) in jobs.items():
        _, err = proc.communicate()
        assert proc.returncode == 0, err.decode(errors="replace")
        out[name] = path
    return out


@pytest.fixture(params=list(CODECS))
def video(request, videos) -> Path:
    if request.param not in videos:
        pytest.skip(f"encoder {ENCODER[request.param]} not available")
    return videos[request.param]


class Counting:
    """``read_at`` over a file's bytes that counts (and records) requests."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.calls: list[tuple[int, int]] = []

    def __call__(self, offset: int, length: int) -> bytes:
        self.calls.append((offset, length))
        return self.data[offset : offset + length]


def _index(path: Path) -> tuple[Mp4Index, Counting]:
    ra = Counting(path.read_bytes())
    return index_file(ra, len(ra.data), etag="etag-1"), ra


# -- the index ---------------------------------------------------------------------------


def test_index_matches_pyav_demux(video):
    idx, _ = _index(video)
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
    idx, _ = _index(video)
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
    if "h264" not in videos:
        pytest.skip("libx264 not available")
    _, moov = read_moov(Counting(videos["h264"].read_bytes()), videos["h264"].stat().st_size)
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


def test_leading_pictures_and_open_gop_look_ahead(videos):
    for name, expect in (("mpeg4", True), ("av1", False), ("h264", False)):
        if name not in videos:
            continue
        idx, _ = _index(videos[name])
        assert (idx.leading_depth > 0) == expect, name


def test_open_gop_leading_picture_steps_back(videos):
    if "hevc" not in videos:
        pytest.skip("libx265 not available")
    idx, _ = _index(videos["hevc"])
    # leading pictures: decoded after a sync sample, presented before it
    sync = np.flatnonzero(idx.is_sync)
    leading = [
        i
        for i in range(len(idx))
        if not idx.is_sync[i] and idx.pts[i] < idx.pts[sync[sync < i][-1]]
    ]
    if not leading:
        pytest.skip("x265 made closed GOPs")
    i = leading[0]
    t = idx.pts_seconds[i]
    start, stop = sample_span(idx, t, t + 1e-3)
    assert idx.is_sync[start] and idx.pts[start] <= idx.pts[i] and start < i < stop


def test_sample_span_covers_what_is_needed(video):
    idx, _ = _index(video)
    for a, b in EPISODES + ODD_RANGES:
        start, stop = sample_span(idx, a, b, lookahead=False)
        need = needed_samples(idx, a, b)
        assert idx.is_sync[start]
        assert start <= need.min() and need.max() == stop - 1
        # frames shown in the range: pts in [a - frame, b)
        assert np.all(idx.pts_seconds[need] < b) and np.all(idx.pts_seconds[need] > a - 1 / FPS)
        # no sync sample between start and the first needed one could have been used instead
        later = np.flatnonzero(idx.is_sync[start + 1 : need.min() + 1]) + start + 1
        assert all(idx.pts[k] > idx.pts[need].min() for k in later)
        start2, stop2 = sample_span(idx, a, b)
        assert start2 == start and stop <= stop2 <= min(len(idx), stop + 4 * idx.reorder_depth + 1)


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
    idx = parse_moov(moov)
    moov64 = _stco_to_co64(moov, 5 << 32)
    assert b"co64" in moov64 and b"stco" not in moov64
    idx64 = parse_moov(moov64)
    np.testing.assert_array_equal(idx64.offset, idx.offset + (5 << 32))
    np.testing.assert_array_equal(idx64.pts, idx.pts)
    assert idx64.moov_size == len(moov64)


def test_serialise_roundtrip(video):
    idx, _ = _index(video)
    blob = idx.to_bytes()
    assert len(blob) < 16 * len(idx) + 2048
    back = Mp4Index.from_bytes(blob)
    for f in ("offset", "size", "dts", "pts", "duration", "is_sync"):
        np.testing.assert_array_equal(getattr(back, f), getattr(idx, f))
    assert (back.timescale, back.codec, back.track_id) == (idx.timescale, idx.codec, idx.track_id)
    assert (back.file_size, back.etag, back.moov_range) == (idx.file_size, "etag-1", idx.moov_range)
    assert back.matches(idx.file_size, "etag-1") and not back.matches(idx.file_size, "etag-2")
    assert not back.matches(idx.file_size + 1)


# -- locating the moov --------------------------------------------------------------------


def test_locate_moov_reads(video):
    data = video.read_bytes()
    ra = Counting(data)
    off, length = locate_moov(ra, len(data))
    assert data[off + 4 : off + 8] == b"moov"
    assert struct.unpack(">I", data[off : off + 4])[0] == length
    faststart = "faststart" in video.name
    assert (off < 64 * 1024) == faststart
    assert len(ra.calls) == (1 if faststart else 2)
    if not faststart:  # the second read starts where mdat ends: at the moov
        assert ra.calls[1][0] == off
    ra.calls.clear()
    index_file(ra, len(data))
    assert len(ra.calls) == (1 if faststart else 2)  # a small moov comes with that read
    assert ra.calls[0] == (0, 64 * 1024)
    # a large moov (more than the 64 KiB read at its start) costs a third read
    big = data[: off + length] + _box(b"free", b"\0" * 70_000) + data[off + length :]
    big = big[:off] + struct.pack(">I", length + 70_008) + big[off + 4 :]
    ra = Counting(big)
    off2, moov2 = read_moov(ra, len(big))
    assert off2 == off and len(moov2) == length + 70_008
    assert len(ra.calls) == (1 if faststart else 2) + 1


def _box(typ: bytes, payload: bytes, large: bool = False) -> bytes:
    if large:
        return struct.pack(">I4sQ", 1, typ, 16 + len(payload)) + payload
    return struct.pack(">I4s", 8 + len(payload), typ) + payload


def test_locate_moov_largesize_and_errors(videos):
    name = next(iter(videos))
    _, moov = read_moov(Counting(videos[name].read_bytes()), videos[name].stat().st_size)
    ftyp = _box(b"ftyp", b"isom\0\0\2\0isomiso2")
    data = ftyp + _box(b"free", b"") + _box(b"mdat", b"\0" * 300_000, large=True) + moov
    ra = Counting(data)
    assert locate_moov(ra, len(data)) == (len(data) - len(moov), len(moov))
    assert len(ra.calls) == 2
    # boxes between mdat and moov (free, udta...) come with the same read
    data2 = data[: -len(moov)] + _box(b"free", b"\0" * 100) + moov
    ra = Counting(data2)
    assert read_moov(ra, len(data2)) == (len(data2) - len(moov), moov)
    assert len(ra.calls) == 2
    # mdat with size 0 runs to the end of the file: no moov after it
    with pytest.raises(Mp4Error, match="no moov"):
        locate_moov(Counting(ftyp + struct.pack(">I4s", 0, b"mdat") + b"\0" * 100), 140)
    with pytest.raises(Mp4Error, match="not an MP4"):
        locate_moov(Counting(b"\0\0\0\x10junkjunkjunk"), 16)


def test_fragmented_refused(tmp_path, encoders):
    if " mpeg4 " not in encoders:
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


# -- decoding from the fetched ranges only ------------------------------------------------


def _ranged(idx: Mp4Index, data: bytes, spans) -> RangedFile:
    return RangedFile(len(data), fetch_ranges(Counting(data), needed_ranges(idx, spans)))


def _span_bytes(idx: Mp4Index, a: float, b: float, lookahead: bool) -> int:
    s, e = sample_span(idx, a, b, lookahead=lookahead)
    return int(idx.offset[e - 1] + idx.size[e - 1] - idx.offset[s])  # one track: file order


def test_torchcodec_from_ranges_bit_identical(video):
    data = video.read_bytes()
    idx, _ = _index(video)
    rng = np.random.default_rng(7)
    durations = [0.05, 0.2, 0.45]
    starts = rng.uniform(0.0, 3.5, len(durations))
    ranges = EPISODES + ODD_RANGES
    ranges += [(float(a), float(a + d)) for a, d in zip(starts, durations, strict=True)]
    if "faststart" in video.name:  # the same stream as "h264": only the moov moved
        ranges = EPISODES[1:3]
    for a, b in ranges:
        # a fresh whole-file decoder per range: in approximate mode torchcodec's frames can
        # depend on where the decoder stood (whether it seeks), e.g. with open GOPs
        full = VideoDecoder(str(video), seek_mode="approximate")
        f = _ranged(idx, data, [(a, b)])
        dec = VideoDecoder(f, seek_mode="approximate")
        got, ref = dec.get_frames_played_in_range(a, b), full.get_frames_played_in_range(a, b)
        assert len(ref.pts_seconds) > 0
        assert torch.equal(got.pts_seconds, ref.pts_seconds), (a, b)
        assert torch.equal(got.data, ref.data), (a, b)
        ts = sorted(rng.uniform(a, b, 4).tolist())
        got, ref = dec.get_frames_played_at(ts), full.get_frames_played_at(ts)
        assert torch.equal(got.pts_seconds, ref.pts_seconds), (a, b)
        assert torch.equal(got.data, ref.data), (a, b)
        # everything read was inside what was fetched (RangedFile raises otherwise), and it
        # did read the span's last needed packet (FFmpeg may start later than the span's sync
        # sample: its seek picks an open-GOP CRA by dts where the span steps back a GOP)
        s, e = sample_span(idx, a, b, lookahead=False)
        read = [(p, p + n) for p, n in f.reads if n]
        assert any(p <= idx.offset[e - 1] < q for p, q in read), (a, b)


def test_several_episodes_one_decoder(video):
    data = video.read_bytes()
    idx, _ = _index(video)
    spans = [(0.5, 1.0), (3.0, 3.5)]
    ra = Counting(data)
    off, moov = read_moov(ra, len(data))
    f = open_episode(ra, idx, spans, moov=moov)
    full = VideoDecoder(str(video), seek_mode="approximate")
    dec = VideoDecoder(f, seek_mode="approximate")
    for a, b in reversed(spans):
        got, ref = dec.get_frames_played_in_range(a, b), full.get_frames_played_in_range(a, b)
        assert torch.equal(got.data, ref.data) and torch.equal(got.pts_seconds, ref.pts_seconds)
    assert f.fetched_bytes < len(data) * 0.75


def test_pyav_from_ranges_bit_identical(video):
    data = video.read_bytes()
    idx, _ = _index(video)
    for a, b in [(1.0, 2.0), (0.5, 0.6), (8 / 30, 9 / 30), (2.9, 3.05)]:
        f = _ranged(idx, data, [(a, b)])
        got = decode_pyav(f, idx, a, b)
        ref = decode_pyav(str(video), idx, a, b)
        assert [t for t, _ in got] == [t for t, _ in ref]
        assert len(got) == len(needed_samples(idx, a, b))
        for (_, x), (_, y) in zip(got, ref, strict=True):
            np.testing.assert_array_equal(x, y)


def test_reading_outside_raises(video):
    data = video.read_bytes()
    idx, _ = _index(video)
    f = _ranged(idx, data, [(1.0, 2.0)])
    (a0, b0), *_ = [r for r in f.fetched_ranges() if r[0] > 0]
    f.seek(a0 - 1)
    with pytest.raises(OutsideFetchedRangeError, match="outside the fetched ranges"):
        f.read(10)
    f.seek(b0 - 4)
    assert f.read(100) == data[b0 - 4 : b0]  # a short read up to the range's end
    with pytest.raises(OutsideFetchedRangeError):
        f.read(100)  # a new read there (not the continuation of the short one)
    f.seek(len(data))
    assert f.read(10) == b""
    f.seek(0)  # torchcodec reads from where the file object stands
    # a decoder asked for a frame whose bytes were not fetched fails, never returns garbage
    dec = VideoDecoder(f, seek_mode="approximate")
    with pytest.raises(Exception, match="outside the fetched ranges"):
        dec.get_frames_played_in_range(3.0, 3.5)


@pytest.mark.parametrize("a,b", EPISODES[1:3])
def test_fetched_bytes_bound(video, a, b):
    data = video.read_bytes()
    idx, _ = _index(video)
    ranges = needed_ranges(idx, [(a, b)])
    fetched = sum(q - p for p, q in ranges)
    # packets torchcodec demuxes: from the keyframe through the last needed packet, including
    # the decoder's reorder look-ahead; the rest is the 2 KiB probe + the first packet
    needed = _span_bytes(idx, a, b, lookahead=True) + idx.moov_size
    assert fetched < 1.1 * needed, (fetched, needed)
    # against the bare span (no look-ahead)
    bare = _span_bytes(idx, a, b, lookahead=False) + idx.moov_size
    s0, e0 = sample_span(idx, a, b, lookahead=False)
    s1, e1 = sample_span(idx, a, b)
    look = int(idx.size[e0:e1].sum())
    open_extra = sum(q - p for p, q in idx.open_ranges) - idx.moov_size
    assert fetched <= bare + look + open_extra
    assert fetched < 0.4 * len(data)
    # fetched = head + first packet + moov + span (+ reorder look-ahead), nothing else
    s, e = sample_span(idx, a, b)
    span = (int(idx.offset[s]), int(idx.offset[e - 1] + idx.size[e - 1]))
    assert episode_ranges(idx, a, b) == [span]
    assert span in ranges and len(ranges) <= 3
    print(
        f"{video.name} [{a}, {b}): fetched {fetched} B; keyframe..last needed + moov {bare} B "
        f"({fetched / bare:.3f}x); with look-ahead {needed} B ({fetched / needed:.3f}x); "
        f"file {len(data)} B"
    )
