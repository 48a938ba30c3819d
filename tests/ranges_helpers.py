"""Helpers of the fetch="ranges" tests (test_ranges_*): datasets, re-encoding, one rank.

The dataset: 16 episodes of 30-60 frames, 2 cameras, several episodes per mp4 (1-2 files per
camera of ~170-760 KB) and per data file, keyframe-aligned episodes (as LeRobot writes them).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import torch

from framestream import StreamingLeRobotDataset
from framestream.format.meta import DatasetMeta
from framestream.testing import decode_frame_id
from framestream.testing.default_data import synthetic_dataset

RANGES_DS = dict(
    num_episodes=16,
    min_length=30,
    max_length=60,
    num_cameras=2,
    height=288,
    width=384,
    codec="h264",
    gop=2,
    data_files_size_in_mb=0.01,
    video_files_size_in_mb=0.6,
    seed=11,
)
SEED = 7

# ffmpeg arguments per variant (every episode starts with a keyframe, as in LeRobot's files)
# fmt: off
VARIANTS = {
    "h264_bframes": ["-c:v", "libx264", "-preset", "veryfast", "-crf", "12"],  # x264 defaults
    "h264_faststart": ["-c:v", "libx264", "-preset", "veryfast", "-crf", "12",
                       "-movflags", "+faststart"],
    "hevc": ["-c:v", "libx265", "-preset", "ultrafast", "-crf", "8",
             "-x265-params", "log-level=error", "-tag:v", "hvc1"],
    "mpeg4": ["-c:v", "mpeg4", "-q:v", "2", "-bf", "2"],
}
CODEC_NAME = {"h264_bframes": "h264", "h264_faststart": "h264", "hevc": "hevc", "mpeg4": "mpeg4"}
# fmt: on


def ranges_dataset(base: Path) -> Path:
    return synthetic_dataset(RANGES_DS, root=base, progress=False)


def reencode(src: Path, dst: Path, variant: str) -> Path:
    """A copy of ``src`` whose videos are re-encoded (same timestamps, keyframe per episode)."""
    if (dst / "meta" / "info.json").is_file():
        return dst
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    meta = DatasetMeta(str(src))
    for key in meta.video_keys:
        files: dict[str, list[float]] = {}
        for ep in meta.episodes.episode_index.tolist():
            files.setdefault(meta.video_file(ep, key), []).append(
                meta.video_from_timestamp(ep, key)
            )
        for rel, starts in files.items():
            out = tmp / rel
            times = ",".join(f"{t:.6f}" for t in sorted(starts))
            subprocess.run(
                ["ffmpeg", "-y", "-loglevel", "error", "-i", str(src / rel),
                 *VARIANTS[variant], "-force_key_frames", times, "-fps_mode", "passthrough",
                 "-an", str(out) + ".mp4"],
                check=True,
            )  # fmt: skip
            Path(str(out) + ".mp4").replace(out)
    info = json.loads((tmp / "meta" / "info.json").read_text())
    for key in meta.video_keys:
        info["features"][key].setdefault("info", {})["video.codec"] = CODEC_NAME[variant]
    (tmp / "meta" / "info.json").write_text(json.dumps(info, indent=2))
    tmp.replace(dst)
    return dst


def digest(sample: dict[str, Any], video_keys: list[str]) -> tuple[Any, ...]:
    """What identifies a sample: its index, frame ids and pixel hashes of every camera."""
    out: list[Any] = [int(sample["index"])]
    for cam, key in enumerate(video_keys):
        img = sample[key]
        fid = decode_frame_id(img)
        ep, fr = int(sample["episode_index"]), int(sample["frame_index"])
        assert (fid.episode, fid.frame, fid.camera) == (ep, fr, cam), (key, ep, fr)
        out.append(hashlib.sha1(img.numpy().tobytes()).hexdigest())
    return tuple(out)


def stream_rank(
    url: str,
    storage_options: dict[str, Any],
    rank: int,
    world_size: int,
    cache_dir: str | None,
    num_workers: int = 0,
    **kwargs: Any,
) -> dict[str, Any]:
    # Remote sources read whole episodes (no shuffle pieces): so does the local reference.
    kwargs.setdefault("shuffle_chunk", 0)
    ds = StreamingLeRobotDataset(
        url,
        storage_options=storage_options or None,
        rank=rank,
        world_size=world_size,
        cache_dir=cache_dir,
        return_uint8=True,
        seed=SEED,
        **kwargs,
    )
    if num_workers:
        loader = torch.utils.data.DataLoader(
            ds, batch_size=None, num_workers=num_workers, timeout=120
        )
        samples = list(loader)
    else:
        samples = list(ds)
    nw = max(1, num_workers)
    episodes = sorted(
        {s.episode for w in range(nw) for s in ds.plan(worker=w, num_workers=nw).segments}
    )
    return {
        "rank": rank,
        "rows": [digest(s, ds.meta.video_keys) for s in samples],
        "stats": ds.stats(),
        "main_io": ds.meta.source.io_stats(),
        "episodes": episodes,
    }


def rank_process(queue: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Entry point of one rank's process (spawned): its result or its error on ``queue``."""
    try:
        queue.put(stream_rank(*args, **kwargs))
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        import traceback

        queue.put({"error": f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"})
