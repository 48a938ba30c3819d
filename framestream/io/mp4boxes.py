"""MP4 box walking: box headers (64-bit sizes too), child boxes, and finding the ``moov``.

Why its own module: locating the ``moov`` is the only part of indexing an mp4 that talks to
the remote (a few ranged reads); everything after works on the ``moov`` bytes alone
(:mod:`framestream.io.mp4tables`, :mod:`framestream.io.mp4index`).

* :func:`locate_moov` finds the ``moov`` box in one read (the first 64 KiB) when it is at
  the front, two when it is at the end (one more read where ``mdat`` ends), and
  :func:`read_moov` needs a third only when the ``moov`` did not fit in the last read.

Fragmented MP4 (``moof``/``sidx``/``styp`` before any ``moov``) is refused with
:class:`Mp4Error`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator

ReadAt = Callable[[int, int], bytes]
"""``read_at(offset, length) -> bytes``: one ranged read (may return fewer at end of file)."""

HEAD_PROBE = 64 * 1024
"""Bytes read from the start of the file by :func:`locate_moov`."""

Buffer = bytes | memoryview


class Mp4Error(ValueError):
    """The file is not an MP4 this module can index (or it is damaged)."""


def box_header(buf: Buffer, pos: int, end: int) -> tuple[bytes, int, int] | None:
    """``(type, header_len, box_size)`` of the box at ``pos`` (size 0 in the file: to ``end``).

    None when the header itself lies (partly) beyond ``buf``.
    """
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


def children(buf: memoryview, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """``(type, payload_start, payload_end)`` of each box in ``buf[start:end]``."""
    pos = start
    while pos + 8 <= end:
        h = box_header(buf, pos, end)
        if h is None:
            break
        typ, hdr, size = h
        if pos + size > end:
            raise Mp4Error(f"box {typ!r} at {pos} overruns its parent ({pos + size} > {end})")
        yield typ, pos + hdr, pos + size
        pos += size


def find_child(buf: memoryview, start: int, end: int, typ: bytes) -> tuple[int, int] | None:
    """``(payload_start, payload_end)`` of the first ``typ`` box in ``buf[start:end]``."""
    for t, s, e in children(buf, start, end):
        if t == typ:
            return s, e
    return None


def full_box(buf: memoryview, s: int) -> tuple[int, int]:
    """``(version, flags)`` of the full box whose payload starts at ``s``."""
    return buf[s], int.from_bytes(buf[s + 1 : s + 4], "big")


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
        h = box_header(buf, pos - base, size - base)
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
