"""framestream.io.mp4boxes: box headers and finding the moov in few ranged reads."""

from __future__ import annotations

import struct

import pytest
from mp4_helpers import Counting, box, needs_ffmpeg

from framestream.io.mp4boxes import (
    Mp4Error,
    box_header,
    children,
    find_child,
    locate_moov,
    read_moov,
)
from framestream.io.mp4index import index_file

pytestmark = needs_ffmpeg


def test_box_headers():
    data = box(b"free", b"abc") + box(b"mdat", b"x" * 20, large=True)
    assert box_header(data, 0, len(data)) == (b"free", 8, 11)
    assert box_header(data, 11, len(data)) == (b"mdat", 16, 36)
    # size 0: the box runs to the end of its parent
    open_ended = struct.pack(">I4s", 0, b"mdat") + b"\0" * 12
    assert box_header(open_ended, 0, 100) == (b"mdat", 8, 100)
    assert box_header(data, len(data) - 4, len(data)) is None  # header not all there
    with pytest.raises(Mp4Error, match="bad box size 3"):
        box_header(struct.pack(">I4s", 3, b"free"), 0, 8)
    buf = memoryview(box(b"moov", box(b"mvhd", b"1") + box(b"trak", b"22")))
    assert [t for t, _, _ in children(buf, 8, len(buf))] == [b"mvhd", b"trak"]
    s, e = find_child(buf, 8, len(buf), b"trak")
    assert bytes(buf[s:e]) == b"22" and find_child(buf, 8, len(buf), b"udta") is None
    with pytest.raises(Mp4Error, match="overruns its parent"):
        list(children(buf, 8, len(buf) - 1))


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
    big = data[: off + length] + box(b"free", b"\0" * 70_000) + data[off + length :]
    big = big[:off] + struct.pack(">I", length + 70_008) + big[off + 4 :]
    ra = Counting(big)
    off2, moov2 = read_moov(ra, len(big))
    assert off2 == off and len(moov2) == length + 70_008
    assert len(ra.calls) == (1 if faststart else 2) + 1


def test_locate_moov_largesize_and_errors(videos):
    name = next(iter(videos))
    _, moov = read_moov(Counting(videos[name].read_bytes()), videos[name].stat().st_size)
    ftyp = box(b"ftyp", b"isom\0\0\2\0isomiso2")
    data = ftyp + box(b"free", b"") + box(b"mdat", b"\0" * 300_000, large=True) + moov
    ra = Counting(data)
    assert locate_moov(ra, len(data)) == (len(data) - len(moov), len(moov))
    assert len(ra.calls) == 2
    # boxes between mdat and moov (free, udta...) come with the same read
    data2 = data[: -len(moov)] + box(b"free", b"\0" * 100) + moov
    ra = Counting(data2)
    assert read_moov(ra, len(data2)) == (len(data2) - len(moov), moov)
    assert len(ra.calls) == 2
    # mdat with size 0 runs to the end of the file: no moov after it
    with pytest.raises(Mp4Error, match="no moov"):
        locate_moov(Counting(ftyp + struct.pack(">I4s", 0, b"mdat") + b"\0" * 100), 140)
    with pytest.raises(Mp4Error, match="not an MP4"):
        locate_moov(Counting(b"\0\0\0\x10junkjunkjunk"), 16)
    # a moof before any moov: a fragmented file
    frag = ftyp + box(b"moof", b"\0" * 8) + box(b"mdat", b"\0" * 8)
    with pytest.raises(Mp4Error, match="fragmented MP4 \\(moof"):
        locate_moov(Counting(frag), len(frag))
