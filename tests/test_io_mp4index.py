"""framestream.io.mp4index: the index object (serialisation, reorder/leading depths) and the
packets and byte ranges a time range needs."""

from __future__ import annotations

import numpy as np
import pytest
from mp4_helpers import (
    EPISODES,
    FPS,
    ODD_RANGES,
    index_of,
    needs_ffmpeg,
    pick,
)

from framestream.io.mp4index import (
    Mp4Index,
    coalesce,
    episode_ranges,
    needed_samples,
    sample_span,
)
from framestream.io.ranged import needed_ranges

pytestmark = needs_ffmpeg


def test_serialise_roundtrip(video):
    idx, _ = index_of(video)
    blob = idx.to_bytes()
    assert len(blob) < 16 * len(idx) + 2048
    back = Mp4Index.from_bytes(blob)
    for f in ("offset", "size", "dts", "pts", "duration", "is_sync"):
        np.testing.assert_array_equal(getattr(back, f), getattr(idx, f))
    assert (back.timescale, back.codec, back.track_id) == (idx.timescale, idx.codec, idx.track_id)
    assert (back.file_size, back.etag, back.moov_range) == (idx.file_size, "etag-1", idx.moov_range)
    assert back.matches(idx.file_size, "etag-1") and not back.matches(idx.file_size, "etag-2")
    assert not back.matches(idx.file_size + 1)


def test_leading_pictures_and_open_gop_look_ahead(videos):
    for name, expect in (("mpeg4", True), ("av1", False), ("h264", False)):
        if name not in videos:
            continue
        idx, _ = index_of(videos[name])
        assert (idx.leading_depth > 0) == expect, name


def test_open_gop_leading_picture_steps_back(videos):
    idx, _ = index_of(pick(videos, "hevc"))
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
    idx, _ = index_of(video)
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
    assert sample_span(idx, 2.0, 2.0) == (0, 0) and episode_ranges(idx, 9.0, 10.0) == []


def test_coalesce():
    assert coalesce([(50, 60), (0, 10), (12, 20)], gap=3) == [(0, 20), (50, 60)]
    assert coalesce([(0, 10), (5, 8), (10, 11)], gap=0) == [(0, 11)]
    assert coalesce([(0, 10), (13, 20)], gap=3) == [(0, 10), (13, 20)]


def _span_bytes(idx: Mp4Index, a: float, b: float, lookahead: bool) -> int:
    s, e = sample_span(idx, a, b, lookahead=lookahead)
    return int(idx.offset[e - 1] + idx.size[e - 1] - idx.offset[s])  # one track: file order


@pytest.mark.parametrize("a,b", EPISODES[1:3])
def test_fetched_bytes_bound(video, a, b):
    data = video.read_bytes()
    idx, _ = index_of(video)
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
