"""Remote parquet files read as byte ranges (``RemoteOptions.fetch="ranges"``).

LeRobot writes one row group per episode; a worker reading some episodes of a data file needs
its footer and their row groups only. :class:`RangedParquet` is the file object pyarrow reads:
the footer in one request, each row group's whole byte span in one request
(:meth:`RangedParquet.prefetch_row_groups`, called by the table reader before pyarrow asks for
the column chunks one by one), each a byte-cache entry (:mod:`framestream.io.spans`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from framestream.io.mp4index import coalesce
from framestream.io.ranged import SizedRaw
from framestream.io.remote import RangeNotSupportedError

__all__ = ["RangedParquet", "row_group_span", "subtract"]


def subtract(ranges: Iterable[tuple[int, int]], have: Sequence[tuple[int, int]]):
    """``ranges`` minus the byte ranges in ``have`` (both lists of ``[start, stop)``)."""
    out: list[tuple[int, int]] = []
    for a, b in ranges:
        pieces = [(a, b)]
        for c, d in have:
            nxt = []
            for x, y in pieces:
                if d <= x or c >= y:
                    nxt.append((x, y))
                    continue
                if x < c:
                    nxt.append((x, c))
                if d < y:
                    nxt.append((d, y))
            pieces = nxt
        out.extend(pieces)
    return out


class RangedParquet(SizedRaw):
    """A remote parquet file for pyarrow that holds only the byte ranges it was asked for.

    A read outside what is held fetches exactly that (pyarrow's footer read: one request);
    :meth:`prefetch_row_groups` fetches whole row groups in one request each before pyarrow
    asks for their column chunks one by one.
    """

    def __init__(self, reader: Any, relative: str, size: int) -> None:
        super().__init__()
        self._reader, self._rel, self._size, self._pos = reader, relative, size, 0
        self.name = reader.source.describe(relative)
        self._held: dict[int, bytes] = {}

    def _fetch(self, a: int, b: int, kind: str) -> bytes:
        try:
            return self._fetch_range(a, b, kind)
        except RangeNotSupportedError as exc:
            pin = self._reader.source.whole_instead_of_ranges(self._rel, exc)
            try:
                data = Path(pin.path).read_bytes()
            finally:
                pin.release()
            self._held = {0: data}
            return data[a:b]

    def _fetch_range(self, a: int, b: int, kind: str) -> bytes:
        reader, src = self._reader, self._reader.source
        pin = src._remote_info(self._rel)
        assert pin is not None
        data = reader._bytes(
            reader._key(self._rel, pin, f"{a}-{b}"),
            ".range",
            lambda: src._read_range(self._rel, a, b, kind=kind),
            self.name,
        )
        self._held[a] = data
        return data

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self._size - self._pos)
        if n <= 0:
            return 0
        view = memoryview(buffer)
        done = 0
        while done < n:
            a, b = self._pos + done, self._pos + n
            data = None
            for off, held in self._held.items():
                if off <= a < off + len(held):
                    data = held[a - off : min(b, off + len(held)) - off]
                    break
            if data is None:
                nxt = min((o for o in self._held if a < o < b), default=b)
                data = self._fetch(a, nxt, "index")
            view[done : done + len(data)] = data
            done += len(data)
        self._pos += n
        return n

    def read_footer(self) -> None:
        """Fetch the last 64 KiB (what pyarrow reads first) now: network errors surface here,
        as :class:`SourceError`, not inside pyarrow as an unreadable file."""
        if self._size:
            self._fetch(max(0, self._size - 64 * 1024), self._size, "index")

    def prefetch_row_groups(
        self, metadata: Any, groups: Sequence[int] | None, *, count: bool = True
    ) -> None:
        """Fetch row groups ``groups`` (None: the whole file) in one request each."""
        if groups is None:
            ranges = [(0, self._size)]
        else:
            ranges = [row_group_span(metadata, g) for g in groups]
        have = [(o, o + len(d)) for o, d in self._held.items()]
        if count:
            self._reader.source.counters.add("bytes_needed", sum(b - a for a, b in ranges))
        for a, b in coalesce(subtract(ranges, have), self._reader.source.remote.range_gap):
            self._fetch(a, b, "range")


def row_group_span(metadata: Any, group: int) -> tuple[int, int]:
    """``[start, stop)`` bytes of every column chunk of a parquet row group."""
    rg = metadata.row_group(group)
    lo, hi = None, 0
    for i in range(rg.num_columns):
        col = rg.column(i)
        start = col.data_page_offset
        if col.has_dictionary_page and col.dictionary_page_offset is not None:
            start = min(start, col.dictionary_page_offset)
        lo = start if lo is None else min(lo, start)
        hi = max(hi, start + col.total_compressed_size)
    return int(lo or 0), int(hi)
