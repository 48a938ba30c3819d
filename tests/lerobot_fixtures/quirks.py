"""A copy of a LeRobot-written dataset with a real third-party dataset's quirks.

- every episode alone in its own mp4 per camera, starting at 0;
- ``videos/*/to_timestamp`` = the last frame's time, ``(length - 1) / fps`` (instead of
  ``from_timestamp + length / fps``);
- the videos re-encoded as MPEG-4 Part 2 (``mpeg4``) while ``info.json`` says ``h264``.

LeRobot 0.6.1 reads all of it; framestream must too, with the same samples.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def make_quirky_copy(src: Path, dst: Path) -> Path:
    import av

    from framestream import MapDataset

    if (dst / "meta" / "info.json").exists():
        return dst
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    ds = MapDataset(str(src), return_uint8=True)
    meta = ds.meta
    fps = meta.fps
    for key in meta.video_keys:
        shutil.rmtree(tmp / "videos" / key)
    for row, ep in enumerate(meta.episodes.episode_index.tolist()):
        start, n = int(ds._starts[row]), int(meta.episodes.length[row])
        samples = [ds[start + i] for i in range(n)]
        for key in meta.video_keys:
            path = tmp / meta.info["video_path"].format(video_key=key, chunk_index=0, file_index=ep)
            path.parent.mkdir(parents=True, exist_ok=True)
            with av.open(str(path), "w") as out:
                stream = out.add_stream("mpeg4", rate=fps)
                h, w = meta.features[key].shape[:2]
                stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
                stream.codec_context.gop_size = 2
                stream.options = {"qscale": "2"}
                for i, s in enumerate(samples):
                    img = np.ascontiguousarray(s[key].permute(1, 2, 0).numpy())
                    frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                    frame.pts = i
                    for packet in stream.encode(frame):
                        out.mux(packet)
                for packet in stream.encode():
                    out.mux(packet)
    for rel in sorted((tmp / "meta" / "episodes").rglob("*.parquet")):
        table = pq.read_table(rel)
        eps = table.column("episode_index").to_numpy()
        lengths = table.column("length").to_numpy()
        for key in meta.video_keys:
            cols = {
                "chunk_index": pa.array(np.zeros(len(eps), dtype=np.int64)),
                "file_index": pa.array(eps.astype(np.int64)),
                "from_timestamp": pa.array(np.zeros(len(eps), dtype=np.float64)),
                "to_timestamp": pa.array((lengths - 1) / fps),
            }
            for name, values in cols.items():
                col = f"videos/{key}/{name}"
                table = table.set_column(table.schema.get_field_index(col), col, values)
        pq.write_table(table, rel)
    info = json.loads((tmp / "meta" / "info.json").read_text())
    for key in meta.video_keys:
        info["features"][key].setdefault("info", {})["video.codec"] = "h264"
    (tmp / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    return dst
