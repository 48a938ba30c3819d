"""A read-only file object over the few byte ranges of a remote file that were fetched.

:class:`RangedFile` presents a file of a known total size of which only some byte ranges are
held in memory (the ``moov`` box and the ranges :func:`framestream.io.mp4index.episode_ranges`
gave). It is what torchcodec's ``VideoDecoder`` or PyAV's ``av.open`` get instead of the
whole file.

Reads never invent bytes: a read that starts inside a fetched range returns the bytes up to
that range's end (a short read, as a socket would give; FFmpeg's I/O layer asks again for
the rest), and a read that starts outside every fetched range raises
:class:`OutsideFetchedRangeError`. Every read is recorded in :attr:`RangedFile.reads` so a
caller (or a test) can see what a demuxer touched.
"""

from __future__ import annotations

import bisect
import io
from collections.abc import Callable, Iterable, Mapping

from framestream.io.mp4index import Mp4Index, coalesce, episode_ranges, read_moov

__all__ = ["OutsideFetchedRangeError", "RangedFile", "fetch_ranges", "open_episode"]


class OutsideFetchedRangeError(OSError):
    """A read at a byte position that was not fetched."""


class RangedFile(io.RawIOBase):
    """A seekable, read-only view of a ``size``-byte file made of fetched ``{offset: bytes}``.

    Args:
        size: the whole file's size (``seek(0, SEEK_END)`` goes there).
        ranges: ``{start offset: bytes}``; overlapping or touching ranges are merged.
        name: shown in errors.
        eof_at: optional byte position from which reads report end of file instead of
            raising (see :meth:`read_past_end`); ``None``: never.
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
                blobs.append(bytes(data))
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
    """A :class:`RangedFile` holding the ``moov`` and the bytes the time ``spans`` need."""
    ranges = needed_ranges(index, spans, gap=gap)
    if moov is not None:
        ranges = [r for r in ranges if r != index.moov_range]
    data = fetch_ranges(read_at, ranges)
    if moov is not None:
        data[index.moov_offset] = moov
    return RangedFile(index.file_size, data)


__all__ += ["needed_ranges", "read_moov"]
