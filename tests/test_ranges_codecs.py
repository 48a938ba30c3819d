"""fetch="ranges" on videos re-encoded as LeRobot files come: H.264 with B-frames (x264's
defaults: B-frames, an edit list), the same with the moov at the front, HEVC (open GOPs) and
MPEG-4 Part 2 with B-frames. Every sample of every rank (world size 2, in-process ranks with
their own caches) equals the local run, pixel for pixel, and each rank fetches little more
than its episodes' ranges.
"""

from __future__ import annotations

import shutil

import pytest
from ranges_helpers import VARIANTS, ranges_dataset, reencode, stream_rank
from test_ranges_dist import io_of, needed_bytes

from framestream.io.spans import SHORT_SEEK_FILL
from framestream.testing.servers import serve

pytestmark = [
    pytest.mark.timeout(900),
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg CLI not installed"),
]


@pytest.mark.parametrize(
    "variant",
    [
        "h264_bframes",
        pytest.param("h264_faststart", marks=pytest.mark.slow),
        pytest.param("hevc", marks=pytest.mark.slow),
        pytest.param("mpeg4", marks=pytest.mark.slow),
    ],
)
def test_codec_ranges_equal_local(tmp_path_factory, tmp_path, variant):
    assert variant in VARIANTS
    base = tmp_path_factory.getbasetemp()
    root = reencode(ranges_dataset(base), base / f"ranges-{variant}", variant)
    n_vid = len(list((root / "videos").rglob("*.mp4")))
    with serve("http", root) as srv:
        for rank in range(2):
            got = stream_rank(srv.url, {}, rank, 2, str(tmp_path / f"c{rank}"))
            want = stream_rank(str(root), {}, rank, 2, None)
            assert got["rows"] == want["rows"], (variant, rank)
            io = io_of(got)
            need = needed_bytes(root, got["episodes"])
            assert io["range_bytes_fetched"] <= 1.1 * need + SHORT_SEEK_FILL * n_vid, io
            print(variant, rank, io["range_bytes_fetched"], need, io["range_requests"])
