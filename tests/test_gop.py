"""framestream.decode.gop: keyframe spacing from the mp4 index."""

from __future__ import annotations

import shutil

from framestream.decode import gop
from framestream.format.meta import DatasetMeta


def test_reads_the_keyframe_interval_of_a_gop_2_dataset(small_root):
    meta = DatasetMeta(str(small_root))
    assert gop.keyframe_interval(meta, 0) == 2  # conftest encodes H.264 with GOP 2


def test_an_unreadable_file_gives_0(small_root, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(small_root, root)
    meta = DatasetMeta(str(root))
    for key in meta.video_keys:
        (root / meta.video_file(0, key)).write_bytes(b"not an mp4 at all")
    assert gop.keyframe_interval(meta, 0) == 0
