"""A read-only file object over the few byte ranges of a remote file that were fetched.

:class:`RangedFile` presents a file of a known total size of which only some byte ranges are
held in memory; it is what torchcodec's ``VideoDecoder`` or PyAV's ``av.open`` get instead
of the whole file. :func:`needed_ranges` says which ranges an episode needs.

Reads never invent bytes (no zeros): a read that starts inside a fetched range returns the
bytes up to that range's end (a short read, as a socket may give), and a read that starts
outside every fetched range raises :class:`OutsideFetchedRangeError`. One exception, for
torchcodec: its read callback loops until FFmpeg's 64 KiB buffer is full, so right after a
short read it asks again, at the range's end, for exactly the bytes it still lacks. That
continuation is FFmpeg filling its buffer ahead, not a need for those bytes, and is
answered ``b""`` (which ends the loop; FFmpeg gets the partial buffer and no end of file).
If FFmpeg then really needs the next byte it issues a new read there, which raises.

What FFmpeg's mov demuxer reads (measured with torchcodec 0.13 on FFmpeg 5.1 and PyAV 18 on
FFmpeg 8), all of which :func:`needed_ranges` includes:

* the first 2048 bytes (format probe) and the top-level box headers up to the ``mdat``
  payload (:attr:`Mp4Index.head_range`);
* the ``moov`` box (it seeks there from the ``mdat`` header, or reads on at the front);
* the first packet of the file (``avformat_find_stream_info`` demuxes and decodes one);
* for a time range: the packets from the sync sample at or before the first needed frame
  to the last needed one in decode order, plus, for torchcodec, the decoder's reorder depth
  in further packets (see :func:`framestream.io.mp4index.sample_span`).

Every read is recorded in :attr:`RangedFile.reads` so a caller (or a test) can see what a
demuxer touched. Gaps left between fetched ranges are at least ``gap`` (64 KiB) wide, more
than FFmpeg's short-seek threshold (32 KiB past its buffer), so FFmpeg seeks across them
instead of reading through.
"""

from __future__ import annotations

import bisect
import io
import mmap
from collections.abc import Callable, Iterable, Mapping

from framestream.io.mp4index import Mp4Index, coalesce, episode_ranges

__all__ = [
    "OutsideFetchedRangeError",
    "RangedFile",
    "decode_pyav",
    "fetch_ranges",
    "needed_ranges",
    "open_episode",
]


class OutsideFetchedRangeError(OSError):
    """A read at a byte position that was not fetched."""


class SizedRaw(io.RawIOBase):
    """A read-only, seekable raw file of known ``_size`` with a ``_pos``: subclasses only
    implement ``readinto`` (remote in-place reads, ranged parquet)."""

    _size: int
    _pos: int

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos


class RangedFile(io.RawIOBase):
    """A seekable, read-only view of a ``size``-byte file made of fetched ``{offset: bytes}``.

    Args:
        size: the whole file's size (``seek(0, SEEK_END)`` goes there).
        ranges: ``{start offset: bytes}``; overlapping or touching ranges are merged.
        name: shown in errors.
    """

    def __init__(
        self,
        size: int,
        ranges: Mapping[int, bytes] | Iterable[tuple[int, bytes]],
        *,
        name: str = "<ranged>",
    ) -> None:
        super().__init__()
        self._size = int(size)
        self.name = name
        items = sorted(ranges.items() if isinstance(ranges, Mapping) else ranges)
        starts: list[int] = []
        blobs: list[bytes] = []
        for off, data in items:
            if off < 0 or off + len(data) > self._size:
                raise ValueError(f"range [{off}, {off + len(data)}) is outside [0, {self._size})")
            if not data:
                continue
            if starts and off <= starts[-1] + len(blobs[-1]):
                prev = blobs[-1]
                end = max(starts[-1] + len(prev), off + len(data))
                merged = bytearray(end - starts[-1])
                merged[: len(prev)] = prev
                merged[off - starts[-1] : off - starts[-1] + len(data)] = data
                blobs[-1] = bytes(merged)
            else:
                starts.append(off)
                # bytes and memory maps (cache entries) are kept as they are, not copied
                blobs.append(data if isinstance(data, (bytes, mmap.mmap)) else bytes(data))
        self._starts = starts
        self._blobs = blobs
        self._pos = 0
        self._last: tuple[int, int] | None = None
        self.readahead_stops = 0
        """How many reads past a range's end were answered ``b""`` as read-ahead."""
        self.reads: list[tuple[int, int]] = []
        """``(position, bytes returned)`` of every read, in order."""

    # -- io.RawIOBase ------------------------------------------------------------------

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        if pos != self._pos:
            self._last = None
        self._pos = pos
        return pos

    def readinto(self, b) -> int:  # type: ignore[override]
        if self.closed:
            raise ValueError("I/O operation on closed file")
        want = len(b)
        pos = self._pos
        last, self._last = self._last, None
        if want == 0 or pos >= self._size:
            self.reads.append((pos, 0))
            return 0
        i = bisect.bisect_right(self._starts, pos) - 1
        if i < 0 or pos >= self._starts[i] + len(self._blobs[i]):
            if last is not None and last == (pos, want):
                # The caller asks again, right where a short read stopped, for exactly what
                # it still lacked: torchcodec's read callback loops until its buffer is full
                # or read() returns b"". This is FFmpeg's read-ahead, not a need for these
                # bytes: end the loop (the partial buffer goes to FFmpeg, no EOF is set).
                self.reads.append((pos, 0))
                self.readahead_stops += 1
                return 0
            raise OutsideFetchedRangeError(
                f"{self.name}: read of {want} bytes at {pos} is outside the fetched ranges "
                f"{self.fetched_ranges()}"
            )
        blob = self._blobs[i]
        rel = pos - self._starts[i]
        n = min(want, len(blob) - rel)
        memoryview(b)[:n] = blob[rel : rel + n]
        self._pos = pos + n
        self.reads.append((pos, n))
        if n < want:
            self._last = (pos + n, want - n)
        return n

    on_close: Callable[[], None] | None = None
    """Called once when the file is closed (releases what backs the fetched ranges)."""

    def close(self) -> None:
        if not self.closed:
            self._blobs, self._starts = [], []
            hook, self.on_close = self.on_close, None
            if hook is not None:
                hook()
        super().close()

    # -- extras --------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self._size

    def fetched_ranges(self) -> list[tuple[int, int]]:
        return [(s, s + len(b)) for s, b in zip(self._starts, self._blobs, strict=True)]

    @property
    def fetched_bytes(self) -> int:
        return sum(len(b) for b in self._blobs)


def fetch_ranges(
    read_at: Callable[[int, int], bytes], ranges: Iterable[tuple[int, int]]
) -> dict[int, bytes]:
    """``{start: read_at(start, stop - start)}`` for each range (one read per range)."""
    out: dict[int, bytes] = {}
    for a, b in ranges:
        data = read_at(a, b - a)
        if len(data) != b - a:
            raise OSError(f"short read at {a}: {len(data)} of {b - a} bytes")
        out[a] = data
    return out


def needed_ranges(
    index: Mp4Index,
    spans: Iterable[tuple[float, float]],
    *,
    gap: int = 64 * 1024,
) -> list[tuple[int, int]]:
    """The head of the file, the ``moov`` box and the episode ranges of the time spans.

    Coalesced: ranges less than ``gap`` bytes apart become one.
    """
    out = list(index.open_ranges)
    for a, b in spans:
        out.extend(episode_ranges(index, a, b, gap=gap))
    return coalesce(out, gap)


def open_episode(
    read_at: Callable[[int, int], bytes],
    index: Mp4Index,
    spans: Iterable[tuple[float, float]],
    *,
    gap: int = 64 * 1024,
    moov: bytes | None = None,
) -> RangedFile:
    """A :class:`RangedFile` holding what decoding the time ``spans`` needs.

    One ``read_at`` per coalesced range; pass ``moov`` (the box's bytes, e.g. from
    :func:`framestream.io.mp4boxes.read_moov`) to not fetch it again.
    """
    ranges = needed_ranges(index, spans, gap=gap)
    if moov is not None:
        if len(moov) != index.moov_size:
            raise ValueError(f"moov of {len(moov)} bytes, the index says {index.moov_size}")
        a, b = index.moov_range
        ranges = [p for r in ranges for p in ((r[0], min(r[1], a)), (max(r[0], b), r[1]))]
        ranges = [(x, y) for x, y in ranges if y > x]
    data = fetch_ranges(read_at, ranges)
    if moov is not None:
        data[index.moov_offset] = bytes(moov)
    return RangedFile(index.file_size, data)


def decode_pyav(file, index: Mp4Index, from_ts: float, to_ts: float, *, fmt: str = "yuv420p"):
    """Frames shown during ``[from_ts, to_ts)`` decoded with PyAV: ``[(pts_seconds, ndarray)]``.

    Seeks to the span's sync sample (by its pts: PyAV/FFmpeg seek to the keyframe at or
    before a presentation time), demuxes exactly the span's packets
    (``sample_span(..., lookahead=False)``), then flushes the decoder, so no byte after the
    span's last packet is needed (unlike torchcodec, which keeps demuxing until the decoder
    hands out the range's last frame).
    """
    import av

    from framestream.io.mp4index import needed_samples, sample_span

    start, stop = sample_span(index, from_ts, to_ts, lookahead=False)
    want = set(index.pts[needed_samples(index, from_ts, to_ts)].tolist())
    out: dict[int, object] = {}
    if start == stop:
        return []
    with av.open(file) as container:
        stream = container.streams.video[0]
        container.seek(int(index.pts[start]), stream=stream, backward=True, any_frame=False)
        frames = []
        seen = 0
        for packet in container.demux(stream):
            if packet.size == 0:
                break
            if seen == 0 and packet.dts != int(index.dts[start]):
                raise RuntimeError(
                    f"seek landed at dts {packet.dts}, expected {int(index.dts[start])}"
                )
            frames.extend(packet.decode())
            seen += 1
            if seen >= stop - start:
                break
        frames.extend(stream.codec_context.decode(None))
        for fr in frames:
            if fr.pts in want:
                out[fr.pts] = fr.to_ndarray(format=fmt)
    return [(p / index.timescale, out[p]) for p in sorted(out)]
