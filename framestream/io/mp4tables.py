"""The sample tables of an MP4's first video track, read from its ``moov`` box.

Why its own module: turning ``stbl`` boxes into per-sample arrays is self-contained format
work (no I/O, no time ranges), and the part most likely to meet odd files. From the ``moov``
bytes alone, :func:`video_track` gives, in decode order, each sample's byte offset
(``stco``/``co64`` + ``stsc`` + ``stsz``/``stz2``), size, decode and presentation timestamps
(``stts`` + ``ctts``, shifted by the edit list ``elst`` the way FFmpeg's mov demuxer does, so
``pts`` matches the ``pts_seconds`` torchcodec reports) and sync flag (``stss``).
:class:`~framestream.io.mp4index.Mp4Index` wraps them with what they were built from.

Fragmented MP4 (``mvex`` in ``moov``) and edit lists with more than one media edit or a
rate other than 1 are refused with :class:`~framestream.io.mp4boxes.Mp4Error`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from framestream.io.mp4boxes import Buffer, Mp4Error, box_header, children, find_child, full_box

Boxes = dict[bytes, tuple[int, int]]
"""The boxes of an ``stbl`` by type: ``(payload_start, payload_end)``."""


@dataclass(frozen=True, eq=False)
class TrackTables:
    """Per-sample arrays of one video track, in decode order (see :class:`Mp4Index`)."""

    timescale: int
    offset: np.ndarray
    size: np.ndarray
    dts: np.ndarray
    pts: np.ndarray
    duration: np.ndarray
    is_sync: np.ndarray
    codec: str
    track_id: int


def video_track(moov: Buffer) -> tuple[TrackTables, int]:
    """``(tables, moov box size)`` of the first video track (``hdlr`` ``vide``) of ``moov``.

    ``moov`` is the whole box, header included.
    """
    buf = memoryview(moov)
    h = box_header(buf, 0, len(buf))
    if h is None or h[0] != b"moov":
        raise Mp4Error("expected a moov box")
    _, hdr, size = h
    end = min(size, len(buf))
    movie_timescale = 1000
    for typ, s, _e in children(buf, hdr, end):
        if typ == b"mvex":
            raise Mp4Error("fragmented MP4 (mvex in moov) is not supported")
        if typ == b"mvhd":
            v, _ = full_box(buf, s)
            movie_timescale = struct.unpack_from(">I", buf, s + (20 if v == 1 else 12))[0]
    for typ, s, e in children(buf, hdr, end):
        if typ == b"trak":
            tables = _parse_trak(buf, s, e, movie_timescale)
            if tables is not None:
                return tables, size
    raise Mp4Error("no video track (hdlr 'vide') in moov")


def _table(buf: memoryview, s: int, e: int, *fields: str, skip: int = 0) -> np.ndarray:
    """An entry-count-prefixed table after a full-box header (+ ``skip`` bytes)."""
    (n,) = struct.unpack_from(">I", buf, s + 4 + skip)
    dt = np.dtype([(f"f{i}", ">" + c) for i, c in enumerate(fields)])  # e.g. ("u4", "i4")
    start = s + 8 + skip
    if start + n * dt.itemsize > e:
        raise Mp4Error(f"sample table of {n} entries overruns its box")
    return np.frombuffer(buf, dtype=dt, count=n, offset=start)


def _parse_trak(buf: memoryview, s: int, e: int, movie_timescale: int) -> TrackTables | None:
    """The tables of a ``trak`` box, None when it is not a video track."""
    mdia = find_child(buf, s, e, b"mdia")
    if mdia is None:
        return None
    hdlr = find_child(buf, *mdia, b"hdlr")
    if hdlr is None or bytes(buf[hdlr[0] + 8 : hdlr[0] + 12]) != b"vide":
        return None
    track_id = 0
    tkhd = find_child(buf, s, e, b"tkhd")
    if tkhd is not None:
        v, _ = full_box(buf, tkhd[0])
        track_id = struct.unpack_from(">I", buf, tkhd[0] + (20 if v == 1 else 12))[0]
    mdhd = find_child(buf, *mdia, b"mdhd")
    if mdhd is None:
        raise Mp4Error("video track without mdhd")
    v, _ = full_box(buf, mdhd[0])
    timescale = struct.unpack_from(">I", buf, mdhd[0] + (20 if v == 1 else 12))[0]
    if timescale == 0:
        raise Mp4Error("mdhd timescale is 0")
    minf = find_child(buf, *mdia, b"minf")
    stbl = find_child(buf, *minf, b"stbl") if minf is not None else None
    if stbl is None:
        raise Mp4Error("video track without stbl")
    boxes: Boxes = {t: (bs, be) for t, bs, be in children(buf, *stbl)}

    codec = ""
    if b"stsd" in boxes:
        ss, se = boxes[b"stsd"]
        if ss + 16 <= se:
            codec = bytes(buf[ss + 12 : ss + 16]).decode("latin-1")

    sizes = _sizes(buf, boxes)
    offsets = _offsets(buf, boxes, sizes)
    n = len(sizes)
    dts, deltas = _decode_times(buf, boxes, n)
    cts = _composition_offsets(buf, boxes, n)
    is_sync = _sync(buf, boxes, n)
    shift = _edit_shift(buf, s, e, timescale, movie_timescale)
    return TrackTables(
        timescale=int(timescale),
        offset=offsets.astype(np.int64),
        size=sizes,
        dts=dts - shift,
        pts=dts + cts - shift,
        duration=deltas,
        is_sync=is_sync,
        codec=codec,
        track_id=int(track_id),
    )


def _sizes(buf: memoryview, boxes: Boxes) -> np.ndarray:
    """Each sample's size in bytes (``stsz``, or the compact ``stz2``)."""
    if b"stsz" in boxes:
        ss, se = boxes[b"stsz"]
        fixed, n = struct.unpack_from(">II", buf, ss + 4)
        if fixed:
            return np.full(n, fixed, dtype=np.int64)
        if ss + 12 + 4 * n > se:
            raise Mp4Error("stsz overruns its box")
        return np.frombuffer(buf, ">u4", n, ss + 12).astype(np.int64)
    if b"stz2" in boxes:
        ss, se = boxes[b"stz2"]
        field, n = buf[ss + 7], struct.unpack_from(">I", buf, ss + 8)[0]
        if field == 16:
            return np.frombuffer(buf, ">u2", n, ss + 12).astype(np.int64)
        if field == 8:
            return np.frombuffer(buf, "u1", n, ss + 12).astype(np.int64)
        if field == 4:
            raw = np.frombuffer(buf, "u1", (n + 1) // 2, ss + 12)
            return np.stack([raw >> 4, raw & 15], 1).reshape(-1)[:n].astype(np.int64)
        raise Mp4Error(f"stz2 field size {field}")
    raise Mp4Error("no stsz/stz2 box")


def _offsets(buf: memoryview, boxes: Boxes, sizes: np.ndarray) -> np.ndarray:
    """Each sample's file offset: its chunk's offset (``stco``/``co64``) plus the sizes of
    the samples before it in that chunk (``stsc`` maps samples to chunks)."""
    n = len(sizes)
    if b"stco" in boxes:
        chunk_off = _table(buf, *boxes[b"stco"], "u4")["f0"].astype(np.int64)
    elif b"co64" in boxes:
        chunk_off = _table(buf, *boxes[b"co64"], "u8")["f0"].astype(np.int64)
    else:
        raise Mp4Error("no stco/co64 box")

    if n == 0:
        if b"mvex" in boxes or len(chunk_off) == 0:
            raise Mp4Error("the video track has no samples in moov (fragmented MP4?)")

    stsc = _table(buf, *boxes[b"stsc"], "u4", "u4", "u4") if b"stsc" in boxes else None
    if stsc is None or len(stsc) == 0:
        raise Mp4Error("no stsc entries")
    first = stsc["f0"].astype(np.int64) - 1
    per = stsc["f1"].astype(np.int64)
    nchunks = len(chunk_off)
    runs = np.diff(np.append(first, nchunks))
    if np.any(runs < 0) or first[0] != 0:
        raise Mp4Error("malformed stsc")
    per_chunk = np.repeat(per, runs)
    chunk_of = np.repeat(np.arange(nchunks), per_chunk)
    if len(chunk_of) < n:
        raise Mp4Error(f"stsc/stco describe {len(chunk_of)} samples, stsz {n}")
    chunk_of = chunk_of[:n]
    ends = np.cumsum(sizes)
    starts = ends - sizes
    chunk_first_sample = np.searchsorted(chunk_of, np.arange(nchunks), side="left")
    first_of_mine = chunk_first_sample[chunk_of]
    return chunk_off[chunk_of] + (starts - starts[np.minimum(first_of_mine, n - 1)])


def _decode_times(buf: memoryview, boxes: Boxes, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(dts, deltas)`` from ``stts`` (a short table is padded with its last delta)."""
    if b"stts" not in boxes:
        raise Mp4Error("no stts box")
    stts = _table(buf, *boxes[b"stts"], "u4", "u4")
    deltas = np.repeat(stts["f1"].astype(np.int64), stts["f0"].astype(np.int64))
    if len(deltas) < n:
        deltas = np.append(deltas, np.full(n - len(deltas), deltas[-1] if len(deltas) else 1))
    deltas = deltas[:n]
    dts = np.concatenate([[0], np.cumsum(deltas)[:-1]]).astype(np.int64)
    return dts, deltas


def _composition_offsets(buf: memoryview, boxes: Boxes, n: int) -> np.ndarray:
    """``pts - dts`` per sample from ``ctts`` (FFmpeg reads them as signed whatever the
    version); zeros without one."""
    cts = np.zeros(n, dtype=np.int64)
    if b"ctts" in boxes:
        ctts = _table(buf, *boxes[b"ctts"], "u4", "i4")
        c = np.repeat(ctts["f1"].astype(np.int64), ctts["f0"].astype(np.int64))[:n]
        cts[: len(c)] = c
    return cts


def _sync(buf: memoryview, boxes: Boxes, n: int) -> np.ndarray:
    """Sync (key) samples from ``stss``; every sample without one."""
    if b"stss" not in boxes:
        return np.ones(n, dtype=bool)
    sync_idx = _table(buf, *boxes[b"stss"], "u4")["f0"].astype(np.int64) - 1
    is_sync = np.zeros(n, dtype=bool)
    is_sync[sync_idx[(sync_idx >= 0) & (sync_idx < n)]] = True
    return is_sync


def _edit_shift(buf: memoryview, s: int, e: int, timescale: int, movie_timescale: int) -> int:
    """Ticks to subtract from dts/pts so they match FFmpeg's timestamps.

    Supported: no edit list; empty edits (``media_time`` -1, a presentation delay) followed by
    one edit at normal rate. More than one non-empty edit is refused.
    """
    edts = find_child(buf, s, e, b"edts")
    elst = find_child(buf, *edts, b"elst") if edts is not None else None
    if elst is None:
        # FFmpeg without an edit list: negative composition offsets shift dts (dts_shift);
        # pts stay as stored.
        return 0
    v, _ = full_box(buf, elst[0])
    (count,) = struct.unpack_from(">I", buf, elst[0] + 4)
    fmt = ">QqhH" if v == 1 else ">IihH"
    esize = struct.calcsize(fmt)
    delay = 0
    media: list[tuple[int, int, int]] = []
    for i in range(count):
        dur, mtime, rate_i, _rate_f = struct.unpack_from(fmt, buf, elst[0] + 8 + i * esize)
        if mtime == -1:
            if media:
                raise Mp4Error("empty edit after a media edit is not supported")
            delay += dur
            continue
        media.append((dur, mtime, rate_i))
    if len(media) > 1:
        raise Mp4Error(f"edit list with {len(media)} media edits is not supported")
    if not media:
        return 0
    _dur, mtime, rate = media[0]
    if rate != 1:
        raise Mp4Error(f"edit list rate {rate} is not supported")
    delay_ticks = delay * timescale // max(movie_timescale, 1)
    return int(mtime) - int(delay_ticks)
