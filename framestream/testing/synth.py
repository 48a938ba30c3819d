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
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import av
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
    encode_frame,
    state_rows,
)

__all__ = ["CAMERA_FILE_FACTOR", "camera_key", "generate_synthetic_dataset", "task_string"]

DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"
ROBOT_TYPE = "framestream_synthetic"
# Camera k's file size limit is video_files_size_in_mb * (1 + CAMERA_FILE_FACTOR * k).
CAMERA_FILE_FACTOR = 0.37
_ENCODERS: dict[str, tuple[str, dict[str, str]]] = {
    # Preset 12 is SVT-AV1's fastest (mapped to 11 by newer releases); B-frames do not exist
    # at the container level in AV1, every temporal unit shows exactly one frame.
    "av1": ("libsvtav1", {"preset": "12"}),
    "h264": ("libx264", {"preset": "ultrafast", "bf": "0"}),
}
_TASKS = (
    "Pick up the red cube and place it in the bowl",
    "Push the blue block to the left edge of the table",
    "Open the top drawer",
    "Stack the green cube on the yellow cube",
    "Wipe the table with the sponge",
    "Put the marker in the cup",
    "Close the laptop lid",
    "Fold the towel in half",
)
_STATS_QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
_INDEX_COLUMNS = ("frame_index", "episode_index", "index", "task_index")


def camera_key(camera: int) -> str:
    """Feature name of synthetic camera ``camera`` (``observation.images.cam<k>``)."""
    return f"observation.images.cam{camera}"


def task_string(task_index: int) -> str:
    """Human-readable text of synthetic task ``task_index``."""
    if task_index < len(_TASKS):
        return _TASKS[task_index]
    return f"Move object {task_index} to target {task_index % 7}"


@dataclass(frozen=True)
class _SegmentJob:
    """One (episode, camera) video to encode in a worker process."""

    episode: int
    camera: int
    length: int
    height: int
    width: int
    fps: int
    codec: str
    gop: int
    path: str


@dataclass(frozen=True)
class _Segment:
    """An encoded (episode, camera) mp4: where it is, its size and pixel statistics."""

    episode: int
    camera: int
    path: str
    frames: int
    size: int
    stats: dict[str, Any] = field(repr=False)


def _encode_segment(job: _SegmentJob) -> _Segment:
    """Encode one episode of one camera; runs in a worker process, so it must be top level."""
    # SVT-AV1 prints a banner per encoder unless told to log errors only.
    os.environ.setdefault("SVT_LOG", "1")
    codec_name, options = _ENCODERS[job.codec]
    sums = np.zeros(3)
    sq_sums = np.zeros(3)
    lo = np.full(3, np.inf)
    hi = np.full(3, -np.inf)
    pixels = 0
    sampled = 0
    stride = max(1, job.length // 10)
    with av.open(job.path, "w", format="mp4") as out:
        stream = out.add_stream(codec_name, rate=job.fps, options=dict(options))
        stream.width, stream.height, stream.pix_fmt = job.width, job.height, "yuv420p"
        stream.time_base = Fraction(1, job.fps)
        stream.codec_context.time_base = Fraction(1, job.fps)
        stream.codec_context.gop_size = job.gop
        stream.codec_context.max_b_frames = 0
        for k in range(job.length):
            image = encode_frame(job.episode, k, job.camera, job.height, job.width)
            if k % stride == 0:
                sample = image[::4, ::4].reshape(-1, 3).astype(np.float64) / 255.0
                sums += sample.sum(0)
                sq_sums += (sample**2).sum(0)
                lo = np.minimum(lo, sample.min(0))
                hi = np.maximum(hi, sample.max(0))
                pixels += len(sample)
                sampled += 1
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = k
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    frames = _check_packets(job.path, job.length, job.fps)
    mean = sums / pixels
    std = np.sqrt(np.maximum(sq_sums / pixels - mean**2, 0.0))
    stats = {"min": lo, "max": hi, "mean": mean, "std": std, "count": sampled, "pixels": pixels}
    return _Segment(
        job.episode, job.camera, job.path, frames, os.path.getsize(job.path), stats=stats
    )


def _check_packets(path: str, expected: int, fps: int) -> int:
    """Check ``path`` holds ``expected`` packets, packet ``k`` at exactly ``k / fps``.

    Why: the whole dataset relies on frame k of a file being at k / fps; an encoder that
    reordered frames or dropped one would silently shift every later episode.
    """
    with av.open(path) as container:
        stream = container.streams.video[0]
        ticks = Fraction(1, fps) / stream.time_base
        if ticks.denominator != 1:
            raise RuntimeError(f"{path}: time base {stream.time_base} cannot express 1/{fps} s")
        count = 0
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            if packet.pts != count * ticks or packet.dts != packet.pts:
                raise RuntimeError(
                    f"{path}: packet {count} has pts={packet.pts} dts={packet.dts}, expected "
                    f"{count * ticks} for both (frames must be in presentation order)"
                )
            count += 1
    if count != expected:
        raise RuntimeError(f"{path}: {count} packets written, expected {expected}")
    return count


def _concat_segments(segments: list[_Segment], path: Path, fps: int) -> None:
    """Concatenate segment mp4s into ``path`` by remuxing, shifting each by the frames before.

    Why remux: re-encoding would cost as much as the first encode and could change pixels.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with av.open(str(path), "w", format="mp4") as out:
        out_stream = None
        extradata = None
        for segment in segments:
            with av.open(segment.path) as source:
                in_stream = source.streams.video[0]
                if out_stream is None:
                    out_stream = out.add_stream_from_template(in_stream, opaque=True)
                    extradata = in_stream.codec_context.extradata
                elif in_stream.codec_context.extradata != extradata:
                    raise RuntimeError(
                        f"{segment.path}: codec parameters differ from the first episode of "
                        f"{path}; the episodes cannot be concatenated without re-encoding"
                    )
                ticks = Fraction(1, fps) / in_stream.time_base
                shift = int(written * ticks)
                for packet in source.demux(in_stream):
                    if packet.size == 0:
                        continue
                    packet.pts += shift
                    packet.dts += shift
                    packet.stream = out_stream
                    out.mux(packet)
            written += segment.frames
    _check_packets(str(path), written, fps)


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


def _list_type(value_type: pa.DataType, depth: int = 1) -> pa.DataType:
    """Nested ``list<element: ...>`` type, named like the lists LeRobot writes."""
    for _ in range(depth):
        value_type = pa.list_(pa.field("element", value_type))
    return value_type


def _numeric_stats(values: np.ndarray, integer: bool, quantiles: bool) -> dict[str, list]:
    """min/max/mean/std/count (and quantiles) per column of a ``(n, d)`` array."""
    cast: Callable[[Any], Any] = int if integer else float
    stats: dict[str, list] = {
        "min": [cast(v) for v in values.min(0)],
        "max": [cast(v) for v in values.max(0)],
        "mean": [float(v) for v in values.mean(0, dtype=np.float64)],
        "std": [float(v) for v in values.std(0, dtype=np.float64)],
        "count": [int(len(values))],
    }
    if quantiles:
        for name, q in _STATS_QUANTILES.items():
            stats[name] = [float(v) for v in np.quantile(values.astype(np.float64), q, axis=0)]
    return stats


def _image_stats(parts: list[dict[str, Any]]) -> dict[str, list]:
    """Per-channel image stats, ``(3, 1, 1)`` nested lists like LeRobot's, merged over parts."""
    pixels = np.array([p["pixels"] for p in parts], dtype=np.float64)
    means = np.stack([p["mean"] for p in parts])
    variances = np.stack([p["std"] for p in parts]) ** 2
    mean = (means * pixels[:, None]).sum(0) / pixels.sum()
    var = ((variances + (means - mean) ** 2) * pixels[:, None]).sum(0) / pixels.sum()

    def nest(v: np.ndarray) -> list:
        return [[[float(x)]] for x in v]

    return {
        "min": nest(np.min([p["min"] for p in parts], axis=0)),
        "max": nest(np.max([p["max"] for p in parts], axis=0)),
        "mean": nest(mean),
        "std": nest(np.sqrt(var)),
        "count": [int(sum(p["count"] for p in parts))],
    }


def _hf_features(features: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The ``huggingface`` schema metadata LeRobot's parquet files carry (non-video columns)."""
    out: dict[str, Any] = {}
    for name, spec in features.items():
        if spec["dtype"] == "video":
            continue
        value = {"dtype": spec["dtype"], "_type": "Value"}
        if spec["shape"] == [1] and spec["names"] is None:
            out[name] = value
        else:
            out[name] = {"feature": value, "length": spec["shape"][0], "_type": "List"}
    return out


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
            (self.codec in _ENCODERS, f"codec must be one of {sorted(_ENCODERS)}"),
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


def _run_jobs(jobs: list[_SegmentJob], workers: int, progress: bool) -> Iterator[_Segment]:
    """Encode segments, in a process pool when it can help; yields them as they finish."""
    with tqdm(total=len(jobs), desc="encoding", unit="video", disable=not progress) as bar:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                yield _encode_segment(job)
                bar.update()
            return
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
            futures = [pool.submit(_encode_segment, job) for job in jobs]
            try:
                for future in as_completed(futures):
                    yield future.result()
                    bar.update()
            except BaseException:
                # Do not encode the rest of the dataset just to throw it away.
                for future in futures:
                    future.cancel()
                raise


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
        _SegmentJob(
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
    segments: dict[tuple[int, int], _Segment] = {}
    for segment in _run_jobs(jobs, workers, progress):
        if segment.frames != lengths[segment.episode]:
            raise RuntimeError(
                f"{segment.path}: {segment.frames} frames, expected {lengths[segment.episode]}"
            )
        segments[segment.episode, segment.camera] = segment

    columns: dict[str, list[Any]] = {}
    video_files: dict[Path, list[_Segment]] = {}
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
            _concat_segments(parts, path, spec.fps)
            bar.update()
    shutil.rmtree(segment_dir)

    # Tabular data: one table per episode, one row group per episode.
    tables = [_episode_table(e, int(starts[e]), lengths[e], spec) for e in range(num_episodes)]
    schema = tables[0].schema.with_metadata(
        {"huggingface": json.dumps({"info": {"features": _hf_features(features)}})}
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
    episode_stats = [_table_stats(t, quantiles=False) for t in tables]
    for k, key in enumerate(cameras):
        for e in range(num_episodes):
            episode_stats[e][key] = _image_stats([segments[e, k].stats])
    _write_episodes(root, lengths, starts, spec.num_tasks, columns, episode_stats, cameras)
    stats = _table_stats(pa.concat_tables(tables), quantiles=True)
    for k, key in enumerate(cameras):
        stats[key] = _image_stats([segments[e, k].stats for e in range(num_episodes)])
    (root / "meta").mkdir(exist_ok=True)
    (root / "meta" / "stats.json").write_text(json.dumps(stats, indent=4))
    _write_tasks(root, spec.num_tasks)
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


def _table_stats(table: pa.Table, quantiles: bool) -> dict[str, dict[str, list]]:
    """Stats of every data column of ``table``."""
    stats = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if pa.types.is_fixed_size_list(column.type):
            values = column.flatten().to_numpy().reshape(len(column), column.type.list_size)
        else:
            values = column.to_numpy().reshape(-1, 1)
        stats[name] = _numeric_stats(values, np.issubdtype(values.dtype, np.integer), quantiles)
    return stats


def _write_episodes(
    root: Path,
    lengths: list[int],
    starts: np.ndarray,
    num_tasks: int,
    columns: dict[str, list[Any]],
    episode_stats: list[dict[str, dict[str, list]]],
    cameras: list[str],
) -> None:
    """meta/episodes/chunk-000/file-000.parquet: one row per episode, LeRobot's columns."""
    n = len(lengths)
    int64, float64 = pa.int64(), pa.float64()
    arrays: dict[str, pa.Array] = {
        "episode_index": pa.array(range(n), int64),
        "tasks": pa.array(
            [[task_string(e % num_tasks)] for e in range(n)], _list_type(pa.string())
        ),
        "length": pa.array(lengths, int64),
        "data/chunk_index": pa.array(columns["data/chunk_index"], int64),
        "data/file_index": pa.array(columns["data/file_index"], int64),
        "dataset_from_index": pa.array(starts[:-1], int64),
        "dataset_to_index": pa.array(starts[1:], int64),
    }
    for key in cameras:
        for part, kind in [
            ("chunk_index", int64),
            ("file_index", int64),
            ("from_timestamp", float64),
            ("to_timestamp", float64),
        ]:
            name = f"videos/{key}/{part}"
            arrays[name] = pa.array(columns[name], kind)
    for feature in episode_stats[0]:
        depth = 3 if feature in cameras else 1
        for stat in ("min", "max", "mean", "std", "count"):
            integer = stat == "count" or (
                stat in ("min", "max") and isinstance(episode_stats[0][feature][stat][0], int)
            )
            kind = _list_type(int64 if integer else float64, 1 if stat == "count" else depth)
            values = [s[feature][stat] for s in episode_stats]
            arrays[f"stats/{feature}/{stat}"] = pa.array(values, kind)
    arrays["meta/episodes/chunk_index"] = pa.array([0] * n, int64)
    arrays["meta/episodes/file_index"] = pa.array([0] * n, int64)
    path = root / EPISODES_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(arrays), path)


def _write_tasks(root: Path, num_tasks: int) -> None:
    """meta/tasks.parquet the way LeRobot writes it: the task string as the pandas index."""
    table = pa.table(
        {
            "task_index": pa.array(range(num_tasks), pa.int64()),
            "__index_level_0__": pa.array([task_string(t) for t in range(num_tasks)], pa.string()),
        }
    )
    pandas_meta = {
        "index_columns": ["__index_level_0__"],
        "column_indexes": [
            {
                "name": None,
                "field_name": None,
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": {"encoding": "UTF-8"},
            }
        ],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {
                "name": None,
                "field_name": "__index_level_0__",
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": None,
            },
        ],
        "attributes": {},
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }
    table = table.replace_schema_metadata({"pandas": json.dumps(pandas_meta)})
    pq.write_table(table, root / "meta" / "tasks.parquet")
