"""How far apart a dataset's video keyframes are, read from the mp4 index (no decoding).

How small shuffle pieces may be depends on it: a piece starts with a seek that decodes up to
a keyframe interval it does not use. LeRobot encodes every episode alike, so one file per
camera speaks for the dataset.
"""

from __future__ import annotations

from typing import Any

from framestream.format.meta import DatasetMeta
from framestream.io.mp4index import keyframe_interval as _file_interval

_CACHE: dict[tuple[str, str], int] = {}


def keyframe_interval(meta: DatasetMeta, episode: int) -> int:
    """The longest keyframe-to-keyframe run of frames over the camera video files of
    ``episode`` (a file with one keyframe: its length); 0 when a file cannot be indexed here
    (the readers report real problems themselves). Cached per file."""
    gop = 1
    for key in meta.video_keys:
        rel = meta.video_file(int(episode), key)
        known = _CACHE.get((meta.source.url, rel))
        if known is None:
            known = _read(meta, rel)
            _CACHE[(meta.source.url, rel)] = known
        if known == 0:
            return 0
        gop = max(gop, known)
    return gop


def _read(meta: DatasetMeta, rel: str) -> int:
    try:
        with meta.source.open(rel) as f:
            size = f.seek(0, 2)

            def read_at(offset: int, n: int, f: Any = f) -> bytes:
                f.seek(offset)
                return f.read(n)

            return _file_interval(read_at, size)
    except Exception:  # not an mp4 we can index
        return 0
