"""The sample index of an MP4's video track, and the byte ranges a time range of it needs.

The point is to fetch only the bytes of some episodes of a camera's mp4 (LeRobot v3.0 packs
several episodes, one after the other, into one file): the ``moov`` box says where every
sample (packet) lies, how large it is, when it is decoded and presented and whether it is a
sync sample (keyframe). From that, :func:`episode_ranges` gives the byte ranges that a time
range of an episode needs: from the sync sample at or before its first needed frame through
the last packet (in decode order) of any frame presented in the range.

* :func:`index_file` reads the ``moov`` (:func:`framestream.io.mp4boxes.read_moov`, at most
  three reads) and :func:`parse_moov` builds an :class:`Mp4Index` of the first video track
  from its sample tables (:mod:`framestream.io.mp4tables`).
* :meth:`Mp4Index.to_bytes` / :meth:`Mp4Index.from_bytes` serialise it (an ``.npz``) for a
  cache, together with the file size and ETag it was built from.
* :func:`sample_span`, :func:`needed_samples` and :func:`episode_ranges` say which packets
  and bytes a time range needs; :func:`coalesce` merges byte ranges.
"""

from __future__ import annotations

import heapq
import io
from dataclasses import dataclass, fields

import numpy as np

from framestream.io.mp4boxes import Buffer, ReadAt, read_moov
from framestream.io.mp4tables import video_track

PROBE_MIN = 2048
"""Bytes FFmpeg reads from the start of a file to probe its format (``PROBE_BUF_MIN``)."""


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


def parse_moov(
    moov: Buffer,
    *,
    file_size: int = -1,
    etag: str | None = None,
    moov_offset: int = -1,
) -> Mp4Index:
    """The :class:`Mp4Index` of the first video track (``hdlr`` ``vide``) of a ``moov`` box.

    ``moov`` is the whole box, header included (as :func:`read_moov` returns it).
    """
    tables, size = video_track(moov)
    return Mp4Index(
        **{f.name: getattr(tables, f.name) for f in fields(tables)},
        file_size=file_size,
        etag=etag,
        moov_offset=moov_offset,
        moov_size=size,
    )


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


def keyframe_interval(read_at: ReadAt, size: int) -> int:
    """The longest run of frames from one keyframe to the next in a video file (its length
    when it has one keyframe): how far a seek may have to decode before its target."""
    index = index_file(read_at, size)
    sync = np.flatnonzero(index.is_sync)
    return int(np.diff(sync).max()) if len(sync) > 1 else len(index)
