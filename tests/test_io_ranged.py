"""framestream.io.ranged: decoding (torchcodec, PyAV) from an episode's fetched byte ranges
only, bit for bit equal to decoding the whole file; reads outside them fail loudly."""

from __future__ import annotations

import numpy as np
import pytest
from mp4_helpers import (
    EPISODES,
    ODD_RANGES,
    Counting,
    index_of,
    needs_ffmpeg,
)

from framestream.io.mp4boxes import read_moov
from framestream.io.mp4index import Mp4Index, needed_samples, sample_span
from framestream.io.ranged import (
    OutsideFetchedRangeError,
    RangedFile,
    decode_pyav,
    fetch_ranges,
    needed_ranges,
    open_episode,
)

pytest.importorskip("av")
torch = pytest.importorskip("torch")
try:
    from torchcodec.decoders import VideoDecoder
except Exception as exc:  # noqa: BLE001 - torchcodec raises RuntimeError without FFmpeg libs
    pytest.skip(f"torchcodec unusable: {exc}", allow_module_level=True)

pytestmark = needs_ffmpeg


def _ranged(idx: Mp4Index, data: bytes, spans) -> RangedFile:
    return RangedFile(len(data), fetch_ranges(Counting(data), needed_ranges(idx, spans)))


def test_torchcodec_from_ranges_bit_identical(video):
    data = video.read_bytes()
    idx, _ = index_of(video)
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
    idx, _ = index_of(video)
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
    idx, _ = index_of(video)
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
    idx, _ = index_of(video)
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
