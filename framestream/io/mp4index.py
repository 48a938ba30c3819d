"""The sample index of an MP4's video track, read from its ``moov`` box alone.

The point is to fetch only the bytes of some episodes of a camera's mp4 (LeRobot v3.0 packs
several episodes, one after the other, into one file): the ``moov`` box says where every
sample (packet) lies, how large it is, when it is decoded and presented and whether it is a
sync sample (keyframe). From that, :func:`episode_ranges` gives the byte ranges that a time
range of an episode needs: from the sync sample at or before its first needed frame through
the last packet (in decode order) of any frame presented in the range.

* :func:`locate_moov` finds the ``moov`` box in one read (the first 64 KiB) when it is at
  the front, two when it is at the end (one more read where ``mdat`` ends), and
  :func:`read_moov` needs a third only when the ``moov`` did not fit in the last read.
* :func:`parse_moov` builds an :class:`Mp4Index` of the first video track: offsets, sizes,
  decode/presentation timestamps (with the edit list applied the way FFmpeg's mov demuxer
  does, so ``pts`` matches the ``pts_seconds`` torchcodec reports) and sync flags.
* :meth:`Mp4Index.to_bytes` / :meth:`Mp4Index.from_bytes` serialise it (an ``.npz``) for a
  cache, together with the file size and ETag it was built from.

Fragmented MP4 (``moof`` boxes, ``mvex`` in ``moov``) is refused with :class:`Mp4Error`.
"""

from __future__ import annotations

import heapq
import io
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

ReadAt = Callable[[int, int], bytes]
"""``read_at(offset, length) -> bytes``: one ranged read (may return fewer at end of file)."""

HEAD_PROBE = 64 * 1024
"""Bytes read from the start of the file by :func:`locate_moov`."""

PROBE_MIN = 2048
"""Bytes FFmpeg reads from the start of a file to probe its format (``PROBE_BUF_MIN``)."""


class Mp4Error(ValueError):
    """The file is not an MP4 this module can index (or it is damaged)."""


# --------------------------------------------------------------------------------------
# boxes
# --------------------------------------------------------------------------------------


def _box_header(buf: bytes | memoryview, pos: int, end: int) -> tuple[bytes, int, int] | None:
    """``(type, header_len, box_size)`` of the box at ``pos`` (``box_size`` 0: to ``end``)."""
    if pos + 8 > len(buf):
        return None
    size, typ = struct.unpack_from(">I4s", buf, pos)
    hdr = 8
    if size == 1:
        if pos + 16 > len(buf):
            return None
        (size,) = struct.unpack_from(">Q", buf, pos + 8)
        hdr = 16
    elif size == 0:
        size = end - pos
    if size < hdr:
        raise Mp4Error(f"bad box size {size} for {typ!r} at {pos}")
    return bytes(typ), hdr, size


def _children(buf: memoryview, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """``(type, payload_start, payload_end)`` of each box in ``buf[start:end]``."""
    pos = start
    while pos + 8 <= end:
        h = _box_header(buf, pos, end)
        if h is None:
            break
        typ, hdr, size = h
        if pos + size > end:
            raise Mp4Error(f"box {typ!r} at {pos} overruns its parent ({pos + size} > {end})")
        yield typ, pos + hdr, pos + size
        pos += size


def _find(buf: memoryview, start: int, end: int, typ: bytes) -> tuple[int, int] | None:
    for t, s, e in _children(buf, start, end):
        if t == typ:
            return s, e
    return None


def locate_moov(read_at: ReadAt, size: int) -> tuple[int, int]:
    """``(offset, length)`` of the top-level ``moov`` box, in at most two reads.

    Reads the first :data:`HEAD_PROBE` bytes and walks the top-level boxes (``ftyp``,
    ``free``, ``mdat``, ``moov``...; 64-bit sizes too) by their headers. When a box header
    lies beyond what was read (the ``moov`` after a large ``mdat``: ``mdat``'s offset + size),
    one more read of up to :data:`HEAD_PROBE` bytes there brings it, and usually the boxes
    after it too (a small ``moov`` entirely). Raises :class:`Mp4Error` for a fragmented file
    (``moof``/``sidx``/``styp`` before any ``moov``) or when there is no ``moov``.
    """
    return _locate(read_at, size)[:2]


def _locate(read_at: ReadAt, size: int) -> tuple[int, int, bytes, int]:
    """``(moov offset, moov length, window, window offset)``: the last bytes read with it."""
    base, buf = 0, read_at(0, min(HEAD_PROBE, size))
    pos = 0
    while pos < size:
        if not (base <= pos and pos + min(16, size - pos) <= base + len(buf)):
            base, buf = pos, read_at(pos, min(HEAD_PROBE, size - pos))
        h = _box_header(buf, pos - base, size - base)
        if h is None:
            raise Mp4Error(f"truncated box header at {pos} (file size {size})")
        typ, _hdr, box = h
        if typ == b"moov":
            if pos + box > size:
                raise Mp4Error(f"moov at {pos} ({box} bytes) runs past the end ({size})")
            return pos, box, buf, base
        if typ in (b"moof", b"mfra", b"sidx", b"styp"):
            raise Mp4Error(f"fragmented MP4 ({typ.decode()} box at {pos}) is not supported")
        if pos == 0 and typ != b"ftyp":
            if typ not in (b"free", b"skip", b"wide", b"mdat", b"pdin", b"uuid"):
                raise Mp4Error(f"not an MP4 file (first box {typ!r})")
        pos += box
    raise Mp4Error("no moov box in the file")


def read_moov(read_at: ReadAt, size: int) -> tuple[int, bytes]:
    """``(offset, moov bytes)`` in at most three reads (fewer when a read already holds it)."""
    off, length, buf, base = _locate(read_at, size)
    if base <= off and off + length <= base + len(buf):
        return off, bytes(buf[off - base : off - base + length])
    data = read_at(off, length)
    if len(data) != length:
        raise Mp4Error(f"short read of moov: {len(data)} of {length} bytes")
    return off, data


# --------------------------------------------------------------------------------------
# the index
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Mp4Index:
    """Per-sample tables of one video track, in decode order.

    ``dts`` and ``pts`` are in ``timescale`` ticks and already shifted by the edit list
    (FFmpeg's convention: the first presented frame of a single edit is at ``pts`` 0 when
    its ``media_time`` is the first sample's composition time), so ``pts / timescale`` is
    the ``pts_seconds`` that FFmpeg, PyAV and torchcodec report.

    Attributes:
        timescale: ticks per second (``mdhd``).
        offset, size: byte position and length of each sample in the file.
        dts, pts: decode and presentation timestamps (ticks).
        duration: each sample's ``stts`` delta (ticks).
        is_sync: sync sample (keyframe); all ``True`` without an ``stss`` box.
        codec: the sample entry's four-character code (``avc1``, ``hvc1``, ``av01``...).
        track_id: the ``tkhd`` track id.
        file_size, etag: what the index was built from (for cache validation).
        moov_offset, moov_size: where the ``moov`` box is (a reader needs its bytes too).
    """

    timescale: int
    offset: np.ndarray
    size: np.ndarray
    dts: np.ndarray
    pts: np.ndarray
    duration: np.ndarray
    is_sync: np.ndarray
    codec: str = ""
    track_id: int = 0
    file_size: int = -1
    etag: str | None = None
    moov_offset: int = -1
    moov_size: int = 0

    def __len__(self) -> int:
        return len(self.offset)

    @property
    def pts_seconds(self) -> np.ndarray:
        return self.pts / self.timescale

    @property
    def dts_seconds(self) -> np.ndarray:
        return self.dts / self.timescale

    @property
    def moov_range(self) -> tuple[int, int]:
        return self.moov_offset, self.moov_offset + self.moov_size

    @property
    def head_range(self) -> tuple[int, int]:
        """The start of the file a demuxer reads when it opens it.

        FFmpeg probes the format on the first 2048 bytes (``PROBE_BUF_MIN``) and the mov
        demuxer then reads every top-level box header up to the ``mdat`` payload (where the
        first sample starts); both must be there, even though no packet in them is decoded.
        """
        first = int(self.offset.min()) if len(self.offset) else 0
        stop = max(PROBE_MIN, first)
        if self.file_size >= 0:
            stop = min(stop, self.file_size)
        return 0, stop

    @property
    def open_ranges(self) -> list[tuple[int, int]]:
        """What opening the file with FFmpeg (torchcodec, PyAV) reads, coalesced.

        The :attr:`head_range`, the ``moov`` box and the first packet in the file:
        ``avformat_find_stream_info`` reads (and decodes) one packet after the header.
        """
        out = [self.head_range, self.moov_range]
        if len(self.offset):
            first = int(np.argmin(self.offset))
            out.append((int(self.offset[first]), int(self.offset[first] + self.size[first])))
        return coalesce(out, 1)

    def to_bytes(self) -> bytes:
        """A compact ``.npz`` (compressed) of the index and what it was built from."""
        bio = io.BytesIO()
        np.savez_compressed(
            bio,
            offset=self.offset,
            size=self.size,
            dts=self.dts,
            pts=self.pts,
            duration=self.duration,
            is_sync=self.is_sync,
            meta=np.array(
                [self.timescale, self.track_id, self.file_size, self.moov_offset, self.moov_size],
                dtype=np.int64,
            ),
            codec=np.array(self.codec),
            etag=np.array("" if self.etag is None else self.etag),
            has_etag=np.array(self.etag is not None),
        )
        return bio.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Mp4Index:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            timescale, track_id, file_size, moov_offset, moov_size = (int(v) for v in z["meta"])
            return cls(
                timescale=timescale,
                offset=z["offset"],
                size=z["size"],
                dts=z["dts"],
                pts=z["pts"],
                duration=z["duration"],
                is_sync=z["is_sync"],
                codec=str(z["codec"]),
                track_id=track_id,
                file_size=file_size,
                etag=str(z["etag"]) if bool(z["has_etag"]) else None,
                moov_offset=moov_offset,
                moov_size=moov_size,
            )

    @property
    def reorder_depth(self) -> int:
        """The most frames decoded before a frame but presented after it (0 without B-frames).

        A decoder holds that many frames before it outputs one, so a frame is output only
        once this many more packets (in decode order) have been decoded, or at end of stream.
        Computed over a 32-packet window (reorders are short).
        """
        cached = self.__dict__.get("_reorder")
        if cached is None:
            p = self.pts
            depth = np.zeros(len(p), dtype=np.int64)
            for k in range(1, min(32, len(p))):
                depth[k:] += p[:-k] > p[k:]
            cached = int(depth.max()) if len(p) else 0
            object.__setattr__(self, "_reorder", cached)
        return cached

    @property
    def leading_depth(self) -> int:
        """The most leading pictures of a sync sample: decoded after it, presented before it."""
        cached = self.__dict__.get("_leading")
        if cached is None:
            sync = np.flatnonzero(self.is_sync)
            cached = 0
            if len(sync):
                prev = sync[np.maximum(np.searchsorted(sync, np.arange(len(self)), "right") - 1, 0)]
                lead = np.flatnonzero(~self.is_sync & (self.pts < self.pts[prev]))
                if len(lead):
                    cached = int(np.bincount(prev[lead]).max())
            object.__setattr__(self, "_leading", cached)
        return cached

    def matches(self, file_size: int, etag: str | None = None) -> bool:
        """Whether a cached index still describes a file of this size (and ETag, if known)."""
        if file_size != self.file_size:
            return False
        return etag is None or self.etag is None or etag == self.etag


def _full_box(buf: memoryview, s: int) -> tuple[int, int]:
    v = buf[s]
    flags = int.from_bytes(buf[s + 1 : s + 4], "big")
    return v, flags


def _table(buf: memoryview, s: int, e: int, *fields: str, skip: int = 0) -> np.ndarray:
    """An entry-count-prefixed table after a full-box header (+ ``skip`` bytes)."""
    (n,) = struct.unpack_from(">I", buf, s + 4 + skip)
    dt = np.dtype([(f"f{i}", ">" + c) for i, c in enumerate(fields)])  # e.g. ("u4", "i4")
    start = s + 8 + skip
    if start + n * dt.itemsize > e:
        raise Mp4Error(f"sample table of {n} entries overruns its box")
    return np.frombuffer(buf, dtype=dt, count=n, offset=start)


def _parse_trak(buf: memoryview, s: int, e: int, movie_timescale: int) -> Mp4Index | None:
    mdia = _find(buf, s, e, b"mdia")
    if mdia is None:
        return None
    hdlr = _find(buf, *mdia, b"hdlr")
    if hdlr is None or bytes(buf[hdlr[0] + 8 : hdlr[0] + 12]) != b"vide":
        return None
    track_id = 0
    tkhd = _find(buf, s, e, b"tkhd")
    if tkhd is not None:
        v, _ = _full_box(buf, tkhd[0])
        track_id = struct.unpack_from(">I", buf, tkhd[0] + (20 if v == 1 else 12))[0]
    mdhd = _find(buf, *mdia, b"mdhd")
    if mdhd is None:
        raise Mp4Error("video track without mdhd")
    v, _ = _full_box(buf, mdhd[0])
    timescale = struct.unpack_from(">I", buf, mdhd[0] + (20 if v == 1 else 12))[0]
    if timescale == 0:
        raise Mp4Error("mdhd timescale is 0")
    minf = _find(buf, *mdia, b"minf")
    stbl = _find(buf, *minf, b"stbl") if minf is not None else None
    if stbl is None:
        raise Mp4Error("video track without stbl")
    boxes = {t: (bs, be) for t, bs, be in _children(buf, *stbl)}

    codec = ""
    if b"stsd" in boxes:
        ss, se = boxes[b"stsd"]
        if ss + 16 <= se:
            codec = bytes(buf[ss + 12 : ss + 16]).decode("latin-1")

    # sizes
    if b"stsz" in boxes:
        ss, se = boxes[b"stsz"]
        fixed, n = struct.unpack_from(">II", buf, ss + 4)
        if fixed:
            sizes = np.full(n, fixed, dtype=np.int64)
        else:
            if ss + 12 + 4 * n > se:
                raise Mp4Error("stsz overruns its box")
            sizes = np.frombuffer(buf, ">u4", n, ss + 12).astype(np.int64)
    elif b"stz2" in boxes:
        ss, se = boxes[b"stz2"]
        field, n = buf[ss + 7], struct.unpack_from(">I", buf, ss + 8)[0]
        if field == 16:
            sizes = np.frombuffer(buf, ">u2", n, ss + 12).astype(np.int64)
        elif field == 8:
            sizes = np.frombuffer(buf, "u1", n, ss + 12).astype(np.int64)
        elif field == 4:
            raw = np.frombuffer(buf, "u1", (n + 1) // 2, ss + 12)
            sizes = np.stack([raw >> 4, raw & 15], 1).reshape(-1)[:n].astype(np.int64)
        else:
            raise Mp4Error(f"stz2 field size {field}")
    else:
        raise Mp4Error("no stsz/stz2 box")
    n = len(sizes)

    # chunk offsets
    if b"stco" in boxes:
        chunk_off = _table(buf, *boxes[b"stco"], "u4")["f0"].astype(np.int64)
    elif b"co64" in boxes:
        chunk_off = _table(buf, *boxes[b"co64"], "u8")["f0"].astype(np.int64)
    else:
        raise Mp4Error("no stco/co64 box")

    if n == 0:
        if b"mvex" in boxes or len(chunk_off) == 0:
            raise Mp4Error("the video track has no samples in moov (fragmented MP4?)")

    # sample -> chunk
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
    offsets = chunk_off[chunk_of] + (starts - starts[np.minimum(first_of_mine, n - 1)])

    # decode times
    if b"stts" not in boxes:
        raise Mp4Error("no stts box")
    stts = _table(buf, *boxes[b"stts"], "u4", "u4")
    deltas = np.repeat(stts["f1"].astype(np.int64), stts["f0"].astype(np.int64))
    if len(deltas) < n:
        deltas = np.append(deltas, np.full(n - len(deltas), deltas[-1] if len(deltas) else 1))
    deltas = deltas[:n]
    dts = np.concatenate([[0], np.cumsum(deltas)[:-1]]).astype(np.int64)

    # composition offsets (FFmpeg reads them as signed whatever the version)
    cts = np.zeros(n, dtype=np.int64)
    if b"ctts" in boxes:
        ctts = _table(buf, *boxes[b"ctts"], "u4", "i4")
        c = np.repeat(ctts["f1"].astype(np.int64), ctts["f0"].astype(np.int64))[:n]
        cts[: len(c)] = c
    pts = dts + cts

    if b"stss" in boxes:
        sync_idx = _table(buf, *boxes[b"stss"], "u4")["f0"].astype(np.int64) - 1
        is_sync = np.zeros(n, dtype=bool)
        is_sync[sync_idx[(sync_idx >= 0) & (sync_idx < n)]] = True
    else:
        is_sync = np.ones(n, dtype=bool)

    shift = _edit_shift(buf, s, e, timescale, movie_timescale, cts)
    return Mp4Index(
        timescale=int(timescale),
        offset=offsets.astype(np.int64),
        size=sizes,
        dts=dts - shift,
        pts=pts - shift,
        duration=deltas,
        is_sync=is_sync,
        codec=codec,
        track_id=int(track_id),
    )


def _edit_shift(
    buf: memoryview, s: int, e: int, timescale: int, movie_timescale: int, cts: np.ndarray
) -> int:
    """Ticks to subtract from dts/pts so they match FFmpeg's timestamps.

    Supported: no edit list; empty edits (``media_time`` -1, a presentation delay) followed by
    one edit at normal rate. More than one non-empty edit is refused.
    """
    edts = _find(buf, s, e, b"edts")
    elst = _find(buf, *edts, b"elst") if edts is not None else None
    if elst is None:
        # FFmpeg without an edit list: negative composition offsets shift dts (dts_shift);
        # pts stay as stored.
        return 0
    v, _ = _full_box(buf, elst[0])
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


def parse_moov(
    moov: bytes | memoryview,
    *,
    file_size: int = -1,
    etag: str | None = None,
    moov_offset: int = -1,
) -> Mp4Index:
    """The :class:`Mp4Index` of the first video track (``hdlr`` ``vide``) of a ``moov`` box.

    ``moov`` is the whole box, header included (as :func:`read_moov` returns it).
    """
    buf = memoryview(moov)
    h = _box_header(buf, 0, len(buf))
    if h is None or h[0] != b"moov":
        raise Mp4Error("expected a moov box")
    _, hdr, size = h
    end = min(size, len(buf))
    movie_timescale = 1000
    for typ, s, _e in _children(buf, hdr, end):
        if typ == b"mvex":
            raise Mp4Error("fragmented MP4 (mvex in moov) is not supported")
        if typ == b"mvhd":
            v, _ = _full_box(buf, s)
            movie_timescale = struct.unpack_from(">I", buf, s + (20 if v == 1 else 12))[0]
    for typ, s, e in _children(buf, hdr, end):
        if typ == b"trak":
            idx = _parse_trak(buf, s, e, movie_timescale)
            if idx is not None:
                return Mp4Index(
                    **{
                        **idx.__dict__,
                        "file_size": file_size,
                        "etag": etag,
                        "moov_offset": moov_offset,
                        "moov_size": size,
                    }
                )
    raise Mp4Error("no video track (hdlr 'vide') in moov")


def index_file(read_at: ReadAt, size: int, etag: str | None = None) -> Mp4Index:
    """:func:`read_moov` + :func:`parse_moov`: at most three reads."""
    off, moov = read_moov(read_at, size)
    return parse_moov(moov, file_size=size, etag=etag, moov_offset=off)


# --------------------------------------------------------------------------------------
# what a time range needs
# --------------------------------------------------------------------------------------


def sample_span(
    index: Mp4Index, from_ts: float, to_ts: float, *, lookahead: bool = True
) -> tuple[int, int]:
    """Decode-order span ``[first, stop)`` of the samples that frames in ``[from_ts, to_ts)`` need.

    A frame is needed when the time it is shown, ``[pts, next pts)``, overlaps the range (so
    the frame "played at" ``from_ts`` is included even if it starts a little earlier).

    * ``first`` is the last sync sample that is at or before every needed sample in decode
      order and presented no later than any needed frame (the second condition steps back
      one more GOP when a needed frame is an open-GOP leading picture of the sync sample).
    * ``stop - 1`` is the largest decode index of a needed frame: a frame's references are
      always decoded before it, so ``[first, stop)`` holds every packet the needed frames
      depend on (with B-frames that is past the last *presented* frame of the range).
    * ``lookahead`` (for torchcodec, which demuxes until the decoder has handed out the
      range's frames): a decoder with B-frames holds up to :attr:`Mp4Index.reorder_depth`
      frames and hands one out only when more wait (or at end of stream), so the span runs
      on until, by that model, every needed frame is out (:func:`_output_stop`). When a
      needed frame is an open-GOP leading picture (HEVC CRA), FFmpeg's seek may start at the
      CRA and the decoder drop the leading pictures; torchcodec then decodes on to the frame
      presented after the range, which the model also waits for. These extra packets are
      decoded, not returned. Pass ``False`` when the caller feeds exactly the span and
      flushes the decoder itself (:func:`framestream.io.ranged.decode_pyav`).

    Returns ``(0, 0)`` when no frame is shown in the range.
    """
    order, mask = _shown(index, from_ts, to_ts)
    if not mask.any():
        return 0, 0
    needed = order[mask]
    first_needed = int(needed.min())
    min_pts = int(index.pts[needed].min())
    stop = int(needed.max()) + 1
    head = slice(0, first_needed + 1)
    cand = np.flatnonzero(index.is_sync[head] & (index.pts[head] <= min_pts))
    start = int(cand[-1]) if len(cand) else 0
    if lookahead:
        targets = set(index.pts[needed].tolist())
        sync = np.flatnonzero(index.is_sync)
        prev = sync[np.maximum(np.searchsorted(sync, needed, side="right") - 1, 0)]
        after = int(np.flatnonzero(mask)[-1]) + 1  # the next frames in presentation order
        if len(sync) and bool((index.pts[needed] < index.pts[prev]).any()):
            # Open-GOP leading pictures (HEVC CRA, MPEG-4 B-frames after an I-frame): FFmpeg's
            # seek picks the keyframe by dts, which may be their keyframe; the decoder then
            # drops them and torchcodec's approximate mode hands out later frames instead
            # (shifted by up to the number of leading pictures, whole-file decode alike).
            extra = order[after : after + index.leading_depth]
            targets.update(index.pts[extra].tolist())
        stop = max(stop, _output_stop(index, start, targets))
    return start, stop


def _output_stop(index: Mp4Index, start: int, targets: set[int]) -> int:
    """How many packets (from ``start``) a decoder needs before it has output ``targets``.

    Models the DPB of H.264/HEVC decoders (and the one-frame delay of MPEG-4 B-frames):
    decoded frames wait, and whenever more than :attr:`Mp4Index.reorder_depth` wait, the one
    presented first is output. The end of the stream flushes them all.
    """
    depth = index.reorder_depth
    waiting: list[int] = []
    left = set(targets)
    pts = index.pts
    for i in range(start, len(index)):
        heapq.heappush(waiting, int(pts[i]))
        while len(waiting) > depth:
            left.discard(heapq.heappop(waiting))
        if not left:
            return i + 1
    return len(index)


def needed_samples(index: Mp4Index, from_ts: float, to_ts: float) -> np.ndarray:
    """Decode indices (ascending) of the frames shown during ``[from_ts, to_ts)`` seconds."""
    order, mask = _shown(index, from_ts, to_ts)
    return np.sort(order[mask])


def _shown(index: Mp4Index, from_ts: float, to_ts: float) -> tuple[np.ndarray, np.ndarray]:
    """``(order, mask)``: samples sorted by pts, and which of them are shown in the range."""
    if len(index) == 0 or not to_ts > from_ts:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    ts = index.timescale
    order = np.argsort(index.pts, kind="stable")
    p = index.pts[order]
    end = np.empty_like(p)
    end[:-1] = p[1:]
    end[-1] = p[-1] + index.duration[order[-1]]
    # a 1 µs tolerance so float rounding of the range's ends adds or drops no frame
    eps = 1e-6 * ts
    return order, (p < to_ts * ts - eps) & (end > from_ts * ts + eps)


def coalesce(ranges: list[tuple[int, int]], gap: int = 64 * 1024) -> list[tuple[int, int]]:
    """Sort and merge byte ranges whose gap is below ``gap`` bytes."""
    out: list[list[int]] = []
    for a, b in sorted(ranges):
        if out and (a <= out[-1][1] or a - out[-1][1] < gap):
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def episode_ranges(
    index: Mp4Index, from_ts: float, to_ts: float, *, gap: int = 64 * 1024
) -> list[tuple[int, int]]:
    """Byte ranges ``[(start, stop), ...]`` of the packets :func:`sample_span` selects.

    Packets of other tracks (audio) may be interleaved; ranges separated by less than
    ``gap`` bytes are merged into one, so an interleaved file still costs few requests.
    """
    a, b = sample_span(index, from_ts, to_ts)
    if a == b:
        return []
    off = index.offset[a:b]
    return coalesce(list(zip(off.tolist(), (off + index.size[a:b]).tolist(), strict=True)), gap)
