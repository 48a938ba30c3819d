"""Generate a synthetic LeRobot v3.0 dataset in which every frame and row says which it is.

Why: framestream's tests and benchmarks need datasets with real encoded mp4s, many episodes per
file and cameras that roll over to new files at *different* episodes (the layout that breaks
loaders mapping frames by the global index), without downloading anything. Every video frame
carries ``(episode, frame, camera)`` in a compression-proof pixel code and every tabular row
carries ``(episode, frame, index)`` in its values (see :mod:`framestream.testing.framecode` for the
exact encoding, :mod:`framestream.testing` to decode it), so a test can prove a reader
returned exactly the frame it asked for.

How: each (episode, camera) is encoded to its own temporary mp4 in a process pool, then each
camera's episodes are concatenated by remuxing packets (no re-encoding) into files that roll
over on ``video_files_size_in_mb``. Camera ``k`` rolls over at
``video_files_size_in_mb * (1 + 0.37 * k)``, so the cameras' file boundaries differ even
though their episodes encode to nearly the same size; ``info.json`` records the base value.
Encoders run without B-frames, so packets are in presentation order and frame ``k`` of a file
is at exactly ``k / fps`` seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from framestream.testing.framecode import (
    MAX_CAMERA,
    MAX_EPISODE,
    MAX_FRAME,
    action_rows,
    cell_size,
    state_rows,
)
from framestream.testing.synth_tables import (
    hf_features,
    image_stats,
    table_stats,
    task_string,
    write_episodes,
    write_tasks,
)
from framestream.testing.synth_video import (
    ENCODERS,
    Segment,
    SegmentJob,
    concat_segments,
    run_jobs,
)

__all__ = ["CAMERA_FILE_FACTOR", "camera_key", "generate_synthetic_dataset", "task_string"]

DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
ROBOT_TYPE = "framestream_synthetic"
# Camera k's file size limit is video_files_size_in_mb * (1 + CAMERA_FILE_FACTOR * k).
CAMERA_FILE_FACTOR = 0.37
_INDEX_COLUMNS = ("frame_index", "episode_index", "index", "task_index")


def camera_key(camera: int) -> str:
    """Feature name of synthetic camera ``camera`` (``observation.images.cam<k>``)."""
    return f"observation.images.cam{camera}"


def _next_file(chunk: int, file: int, chunks_size: int) -> tuple[int, int]:
    """The (chunk, file) index after ``(chunk, file)``: files fill a chunk, then chunks advance."""
    return (chunk, file + 1) if file + 1 < chunks_size else (chunk + 1, 0)


def _assign_files(
    sizes: Iterable[float], limit: float, chunks_size: int
) -> list[tuple[int, int, int]]:
    """Place items in order into files of at most ``limit``: (chunk, file, position) per item.

    A file always takes at least one item; the next item starts a new file when adding it
    would exceed ``limit`` (LeRobot's rule).
    """
    placement: list[tuple[int, int, int]] = []
    chunk, file, used, position = 0, 0, 0.0, 0
    for size in sizes:
        if position > 0 and used + size > limit:
            chunk, file = _next_file(chunk, file, chunks_size)
            used, position = 0.0, 0
        placement.append((chunk, file, position))
        used += size
        position += 1
    return placement


def _prepare_root(root: Path, overwrite: bool) -> None:
    """Refuse to clobber an existing folder unless asked to, and never one that is no dataset."""
    if not root.exists():
        return
    if not root.is_dir():
        raise FileExistsError(f"{root} exists and is not a folder")
    if not any(root.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(f"{root} is not empty; pass overwrite=True to replace it")
    if not (root / "meta" / "info.json").is_file():
        raise FileExistsError(
            f"{root} is not empty and holds no meta/info.json; refusing to delete a folder that "
            "does not look like a dataset"
        )


@dataclass(frozen=True)
class _Spec:
    """The options of :func:`generate_synthetic_dataset` that shape the dataset, in one value."""

    num_episodes: int
    min_length: int
    max_length: int
    num_cameras: int
    height: int
    width: int
    fps: int
    codec: str
    gop: int
    state_dim: int
    action_dim: int
    num_tasks: int
    data_files_size_in_mb: float
    video_files_size_in_mb: float
    chunks_size: int

    def validate(self) -> None:
        """Reject options the format or the identity codes cannot represent, before any work."""
        checks = [
            (
                1 <= self.num_episodes <= MAX_EPISODE + 1,
                f"num_episodes must be in [1, {MAX_EPISODE + 1}]",
            ),
            (1 <= self.min_length <= self.max_length, "need 1 <= min_length <= max_length"),
            (self.max_length <= MAX_FRAME + 1, f"max_length must be at most {MAX_FRAME + 1}"),
            (
                self.num_episodes * self.max_length < 2**23,
                "num_episodes * max_length must stay below 2**23 (float32-exact indices)",
            ),
            (
                0 <= self.num_cameras <= MAX_CAMERA + 1,
                f"num_cameras must be in [0, {MAX_CAMERA + 1}]",
            ),
            (
                self.height % 2 == 0 and self.width % 2 == 0,
                "height and width must be even (yuv420p)",
            ),
            (self.fps >= 1, "fps must be >= 1"),
            (self.codec in ENCODERS, f"codec must be one of {sorted(ENCODERS)}"),
            (self.gop >= 1, "gop must be >= 1"),
            (self.state_dim >= 3, "state_dim must be >= 3 (episode, frame, index)"),
            (self.action_dim >= 1, "action_dim must be >= 1"),
            (self.num_tasks >= 1, "num_tasks must be >= 1"),
            (self.data_files_size_in_mb > 0, "data_files_size_in_mb must be > 0"),
            (self.video_files_size_in_mb > 0, "video_files_size_in_mb must be > 0"),
            (self.chunks_size >= 1, "chunks_size must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if self.num_cameras:
            cell_size(self.height, self.width)  # raises a clear ValueError when the code cannot fit


def generate_synthetic_dataset(
    root: str | os.PathLike[str],
    *,
    num_episodes: int = 40,
    min_length: int = 120,
    max_length: int = 300,
    num_cameras: int = 2,
    height: int = 240,
    width: int = 320,
    fps: int = 30,
    codec: Literal["av1", "h264"] = "av1",
    gop: int = 2,
    state_dim: int = 6,
    action_dim: int = 6,
    num_tasks: int = 3,
    data_files_size_in_mb: float = 0.25,
    video_files_size_in_mb: float = 1.0,
    chunks_size: int = 1000,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic LeRobot v3.0 dataset to ``root`` and return its path.

    Episode lengths are drawn uniformly from ``[min_length, max_length]`` with ``seed``;
    episode ``e`` has task ``e % num_tasks``. The small default file size limits give several
    data and video files per camera, on purpose: multi-file layouts are what readers get wrong.
    Pass LeRobot's defaults (100 and 500 MB) for a single-file layout. ``workers`` processes
    encode in parallel (default: every CPU). The dataset is built in a sibling folder and
    moved into place at the end, so a failure leaves no half-written dataset at ``root``.
    """
    spec = _Spec(
        num_episodes,
        min_length,
        max_length,
        num_cameras,
        height,
        width,
        fps,
        codec,
        gop,
        state_dim,
        action_dim,
        num_tasks,
        data_files_size_in_mb,
        video_files_size_in_mb,
        chunks_size,
    )
    spec.validate()
    root = Path(root).expanduser().absolute()
    _prepare_root(root, overwrite)
    root.parent.mkdir(parents=True, exist_ok=True)
    workers = (os.cpu_count() or 1) if workers is None else workers
    rng = np.random.default_rng(seed)
    lengths = [int(n) for n in rng.integers(min_length, max_length + 1, size=num_episodes)]
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.synth-", dir=root.parent))
    try:
        _write_dataset(staging, spec, lengths=lengths, workers=workers, progress=progress)
        if root.exists():
            shutil.rmtree(root)
        staging.rename(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root


def _write_dataset(
    root: Path, spec: _Spec, *, lengths: list[int], workers: int, progress: bool
) -> None:
    """Write every file of the dataset into the (empty) folder ``root``."""
    num_episodes = len(lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    cameras = [camera_key(k) for k in range(spec.num_cameras)]
    features = _features(cameras, spec)

    # Videos: encode every (episode, camera) in parallel, then concatenate per camera.
    segment_dir = root / ".segments"
    segment_dir.mkdir()
    jobs = [
        SegmentJob(
            e,
            k,
            lengths[e],
            spec.height,
            spec.width,
            spec.fps,
            spec.codec,
            spec.gop,
            str(segment_dir / f"ep{e:06d}-cam{k:02d}.mp4"),
        )
        for e in range(num_episodes)
        for k in range(spec.num_cameras)
    ]
    segments: dict[tuple[int, int], Segment] = {}
    for segment in run_jobs(jobs, workers, progress):
        if segment.frames != lengths[segment.episode]:
            raise RuntimeError(
                f"{segment.path}: {segment.frames} frames, expected {lengths[segment.episode]}"
            )
        segments[segment.episode, segment.camera] = segment

    columns: dict[str, list[Any]] = {}
    video_files: dict[Path, list[Segment]] = {}
    for k, key in enumerate(cameras):
        limit = spec.video_files_size_in_mb * (1 + CAMERA_FILE_FACTOR * k) * 1024 * 1024
        row = [segments[e, k] for e in range(num_episodes)]
        placement = _assign_files((s.size for s in row), limit, spec.chunks_size)
        frames_before = 0
        for e, (chunk, file, position) in enumerate(placement):
            frames_before = 0 if position == 0 else frames_before
            path = root / VIDEO_PATH.format(video_key=key, chunk_index=chunk, file_index=file)
            video_files.setdefault(path, []).append(row[e])
            columns.setdefault(f"videos/{key}/chunk_index", []).append(chunk)
            columns.setdefault(f"videos/{key}/file_index", []).append(file)
            columns.setdefault(f"videos/{key}/from_timestamp", []).append(frames_before / spec.fps)
            frames_before += lengths[e]
            columns.setdefault(f"videos/{key}/to_timestamp", []).append(frames_before / spec.fps)
    with tqdm(
        total=len(video_files), desc="writing videos", unit="file", disable=not progress
    ) as bar:
        for path, parts in video_files.items():
            concat_segments(parts, path, spec.fps)
            bar.update()
    shutil.rmtree(segment_dir)

    # Tabular data: one table per episode, one row group per episode.
    tables = [_episode_table(e, int(starts[e]), lengths[e], spec) for e in range(num_episodes)]
    schema = tables[0].schema.with_metadata(
        {"huggingface": json.dumps({"info": {"features": hf_features(features)}})}
    )
    limit = spec.data_files_size_in_mb * 1024 * 1024
    placement = _assign_files((t.nbytes for t in tables), limit, spec.chunks_size)
    writer: pq.ParquetWriter | None = None
    for e, (chunk, file, position) in enumerate(placement):
        if position == 0:
            if writer is not None:
                writer.close()
            path = root / DATA_PATH.format(chunk_index=chunk, file_index=file)
            path.parent.mkdir(parents=True, exist_ok=True)
            writer = pq.ParquetWriter(path, schema)
        assert writer is not None
        writer.write_table(
            tables[e].replace_schema_metadata(schema.metadata), row_group_size=lengths[e]
        )
        columns.setdefault("data/chunk_index", []).append(chunk)
        columns.setdefault("data/file_index", []).append(file)
    if writer is not None:
        writer.close()

    # Episode index, stats and the rest of meta/.
    episode_stats = [table_stats(t, quantiles=False) for t in tables]
    for k, key in enumerate(cameras):
        for e in range(num_episodes):
            episode_stats[e][key] = image_stats([segments[e, k].stats])
    write_episodes(root, lengths, starts, spec.num_tasks, columns, episode_stats, cameras)
    stats = table_stats(pa.concat_tables(tables), quantiles=True)
    for k, key in enumerate(cameras):
        stats[key] = image_stats([segments[e, k].stats for e in range(num_episodes)])
    (root / "meta").mkdir(exist_ok=True)
    (root / "meta" / "stats.json").write_text(json.dumps(stats, indent=4))
    write_tasks(root, spec.num_tasks)
    info = {
        "codebase_version": "v3.0",
        "robot_type": ROBOT_TYPE,
        "total_episodes": num_episodes,
        "total_frames": int(starts[-1]),
        "total_tasks": spec.num_tasks,
        "chunks_size": spec.chunks_size,
        "data_files_size_in_mb": spec.data_files_size_in_mb,
        "video_files_size_in_mb": spec.video_files_size_in_mb,
        "fps": spec.fps,
        "splits": {"train": f"0:{num_episodes}"},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if cameras else None,
        "features": features,
    }
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))


def _features(cameras: list[str], spec: _Spec) -> dict[str, dict[str, Any]]:
    """The ``features`` block of info.json; names document the tabular identity code."""
    state_names = ["episode_index", "frame_index", "index"]
    state_names += [f"sin_{j}" for j in range(3, spec.state_dim)]
    action_names = ["index_plus_half", "episode_index", "frame_index"]
    action_names += [f"cos_{j}" for j in range(3, spec.action_dim)]
    features: dict[str, dict[str, Any]] = {
        "action": {
            "dtype": "float32",
            "shape": [spec.action_dim],
            "names": action_names[: spec.action_dim],
        },
        "observation.state": {"dtype": "float32", "shape": [spec.state_dim], "names": state_names},
    }
    for key in cameras:
        features[key] = {
            "dtype": "video",
            "shape": [spec.height, spec.width, 3],
            "names": ["height", "width", "channels"],
            "info": {
                "video.height": spec.height,
                "video.width": spec.width,
                "video.codec": spec.codec,
                "video.pix_fmt": "yuv420p",
                "video.is_depth_map": False,
                "video.fps": spec.fps,
                "video.channels": 3,
                "has_audio": False,
            },
        }
    features["timestamp"] = {"dtype": "float32", "shape": [1], "names": None}
    for name in _INDEX_COLUMNS:
        features[name] = {"dtype": "int64", "shape": [1], "names": None}
    return features


def _episode_table(episode: int, start: int, length: int, spec: _Spec) -> pa.Table:
    """The data rows of one episode, with LeRobot's column order and types."""
    frames = np.arange(length, dtype=np.int64)
    index = start + frames

    def vectors(values: np.ndarray) -> pa.Array:
        kind = pa.list_(pa.field("element", pa.float32()), values.shape[1])
        return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), type=kind)

    return pa.table(
        {
            "action": vectors(action_rows(episode, frames, index, spec.action_dim)),
            "observation.state": vectors(state_rows(episode, frames, index, spec.state_dim)),
            "timestamp": pa.array((frames / spec.fps).astype(np.float32)),
            "frame_index": pa.array(frames),
            "episode_index": pa.array(np.full(length, episode, dtype=np.int64)),
            "index": pa.array(index),
            "task_index": pa.array(np.full(length, episode % spec.num_tasks, dtype=np.int64)),
        }
    )
