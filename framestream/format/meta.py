"""Dataset metadata: ``info.json``, the episode index and the tasks, loaded once and validated.

The episode index (:mod:`framestream.format.episodes`) is read column-selectively into flat
numpy arrays, so that a worker process holds a few kilobytes per thousand episodes and every
lookup is an array index.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from framestream._errors import DatasetFormatError
from framestream.format.episodes import (
    EPISODES_DIR,
    EpisodeIndex,
    load_episode_index,
    overlapping_ranges,
)
from framestream.format.lerobot_meta import InfoDict, LeRobotMetaSurface, stats_to_numpy
from framestream.io.source import Source

INFO_PATH = "meta/info.json"
TASKS_PATH = "meta/tasks.parquet"
STATS_PATH = "meta/stats.json"

KNOWN_DTYPES = frozenset(
    {
        "float32",
        "float64",
        "int64",
        "int32",
        "int16",
        "int8",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "bool",
        "language",
        "string",
        "image",
        "video",
    }
)
REQUIRED_FEATURES = {
    "timestamp": "float32",
    "frame_index": "int64",
    "episode_index": "int64",
    "index": "int64",
    "task_index": "int64",
}
REQUIRED_INFO = (
    "codebase_version",
    "fps",
    "features",
    "data_path",
    "total_episodes",
    "total_frames",
)


class Feature(dict):
    """One entry of ``info.json``'s ``features``.

    A ``dict`` as LeRobot gives it (``"dtype"``, ``"shape"`` as a tuple, ``"names"``, and
    ``"info"`` when present), so LeRobot's training stack reads it unchanged, with the
    attributes framestream uses (``.name``, ``.dtype``, ``.shape``, ``.names``, ``.info``).
    """

    def __init__(
        self,
        name: str,
        dtype: str,
        shape: tuple[int, ...],
        names: Any = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(dtype=dtype, shape=tuple(shape), names=names)
        if info:
            self["info"] = info
        self.name = name

    @property
    def dtype(self) -> str:
        return self["dtype"]

    @property
    def shape(self) -> tuple[int, ...]:
        return self["shape"]

    @property
    def names(self) -> Any:
        return self["names"]

    @property
    def info(self) -> dict[str, Any]:
        return self.get("info") or {}

    @property
    def is_video(self) -> bool:
        return self.dtype == "video"

    @property
    def is_visual(self) -> bool:
        return self.dtype in ("video", "image")

    @property
    def is_depth(self) -> bool:
        """A depth camera (``info.is_depth_map``, or LeRobot's legacy ``video.is_depth_map``)."""
        return bool(self.info.get("is_depth_map") or self.info.get("video.is_depth_map"))


class DatasetMeta(LeRobotMetaSurface):
    """Everything known about a dataset before reading any frame.

    Loaded once per process (and pickled to DataLoader workers as plain arrays).
    ``check_totals=False`` accepts ``info.json`` totals that disagree with the episodes index
    (the readers never need them) and overlapping global index ranges: ``framestream
    validate`` reports both instead.
    """

    def __init__(
        self,
        source: Source | str,
        *,
        storage_options: dict | None = None,
        check_totals: bool = True,
    ) -> None:
        self.source = (
            source if isinstance(source, Source) else Source(source, storage_options or {})
        )
        self.info = InfoDict(self.source.read_json(INFO_PATH))
        self._validate_info()
        self.fps: int = int(self.info["fps"])
        self.features: dict[str, Feature] = self._parse_features()
        self.video_keys: list[str] = [k for k, f in self.features.items() if f.is_video]
        self.image_keys: list[str] = [k for k, f in self.features.items() if f.dtype == "image"]
        self.camera_keys: list[str] = [k for k, f in self.features.items() if f.is_visual]
        if self.video_keys and not self.info.get("video_path"):
            raise DatasetFormatError(
                f"{self.source.describe(INFO_PATH)}: features {self.video_keys} are videos "
                "but 'video_path' is missing or null"
            )
        self.episodes: EpisodeIndex = load_episode_index(self.source, self.video_keys)
        self.tasks: dict[int, str] = self._load_tasks()
        if check_totals:
            self._validate_totals()
            self._validate_index_ranges()
        self._stats: dict[str, Any] | None = None

    # ----------------------------------------------------------------- info.json
    def _where(self, what: str = "") -> str:
        return f"{self.source.describe(INFO_PATH)}{': ' + what if what else ''}"

    def _validate_info(self) -> None:
        version = self.info.get("codebase_version")
        if version is None:
            raise DatasetFormatError(self._where("missing required field 'codebase_version'"))
        if not str(version).startswith("v3."):
            raise DatasetFormatError(
                self._where(
                    f"codebase_version is {version!r}; framestream reads LeRobot v3.0 datasets "
                    "only (v2.x stores one file per episode with JSONL metadata; convert it with "
                    "LeRobot's v2.1 -> v3.0 converter)"
                )
            )
        for key in REQUIRED_INFO:
            if key not in self.info:
                raise DatasetFormatError(self._where(f"missing required field {key!r}"))
        fps = self.info["fps"]
        if not isinstance(fps, int | float) or fps <= 0 or int(fps) != fps:
            raise DatasetFormatError(
                self._where(f"field 'fps' must be a positive integer, got {fps!r}")
            )
        if not isinstance(self.info["features"], dict):
            raise DatasetFormatError(self._where("field 'features' must be an object"))

    def _parse_features(self) -> dict[str, Feature]:
        out: dict[str, Feature] = {}
        for name, spec in self.info["features"].items():
            if not isinstance(spec, dict) or "dtype" not in spec:
                raise DatasetFormatError(self._where(f"feature {name!r} has no 'dtype'"))
            dtype = spec["dtype"]
            if dtype not in KNOWN_DTYPES:
                raise DatasetFormatError(
                    self._where(
                        f"feature {name!r} has unknown dtype {dtype!r} "
                        f"(known: {', '.join(sorted(KNOWN_DTYPES))})"
                    )
                )
            shape = spec.get("shape")
            if not isinstance(shape, list | tuple) or not all(isinstance(s, int) for s in shape):
                raise DatasetFormatError(
                    self._where(f"feature {name!r} has no valid 'shape' (got {shape!r})")
                )
            out[name] = Feature(
                name, dtype, tuple(shape), spec.get("names"), spec.get("info") or {}
            )
        for name in REQUIRED_FEATURES:
            if name not in out:
                raise DatasetFormatError(self._where(f"missing required feature {name!r}"))
        return out

    # ----------------------------------------------------------------- episodes
    def _validate_totals(self) -> None:
        n, frames = len(self.episodes), int(self.episodes.length.sum())
        if int(self.info["total_episodes"]) != n:
            raise DatasetFormatError(
                self._where(
                    f"total_episodes is {self.info['total_episodes']} but the episodes index "
                    f"has {n} episodes"
                )
            )
        if int(self.info["total_frames"]) != frames:
            raise DatasetFormatError(
                self._where(
                    f"total_frames is {self.info['total_frames']} but the episodes' lengths "
                    f"sum to {frames}"
                )
            )

    def _validate_index_ranges(self) -> None:
        pairs = overlapping_ranges(self.episodes)
        if pairs:
            a, b = pairs[0]
            eps = self.episodes
            ra, rb = eps.row(a), eps.row(b)
            more = f" ({len(pairs)} overlapping pairs)" if len(pairs) > 1 else ""
            raise DatasetFormatError(
                f"{self.source.describe(EPISODES_DIR)}: the global index ranges of episode {a} "
                f"(dataset_from_index {int(eps.from_index[ra])} .. dataset_to_index "
                f"{int(eps.to_index[ra])}) and episode {b} ({int(eps.from_index[rb])} .. "
                f"{int(eps.to_index[rb])}) overlap{more}: a global index would name two frames"
            )

    # ----------------------------------------------------------------- tasks
    def _load_tasks(self) -> dict[int, str]:
        self.bad_tasks: dict[int, str] = {}  # task_index -> why its string is unusable
        if not self.source.exists(TASKS_PATH):
            return {}
        where = self.source.describe(TASKS_PATH)
        try:
            with self.source.open(TASKS_PATH) as f:
                table = pq.read_table(f)
        except (pa.ArrowException, OSError) as exc:
            raise DatasetFormatError(f"{where}: unreadable tasks parquet ({exc})") from exc
        names = table.column_names
        if "task_index" not in names:
            raise DatasetFormatError(f"{where}: missing column 'task_index'")
        text_col = next((c for c in ("task", "__index_level_0__") if c in names), None)
        if text_col is None:
            raise DatasetFormatError(
                f"{where}: no task string column ('task' or the unnamed index "
                f"'__index_level_0__'); columns are {names}"
            )
        idx = table.column("task_index").to_pylist()
        text = table.column(text_col).to_pylist()
        tasks: dict[int, str] = {}
        for i, t in zip(idx, text, strict=True):
            # Why: str(b"...") or str(None) would hand a model a wrong task string; a bad
            # task is kept aside and raises in task_of, so only its episodes fail or skip.
            if isinstance(t, bytes):
                try:
                    t = t.decode("utf-8")
                except UnicodeDecodeError as exc:
                    self.bad_tasks[int(i)] = (
                        f"task string is not valid UTF-8 (byte {exc.start}: {t[:40]!r})"
                    )
                    continue
            if t is None:
                self.bad_tasks[int(i)] = "task string is missing (null)"
                continue
            tasks[int(i)] = str(t)
        return tasks

    @property
    def stats(self) -> dict[str, dict[str, Any]] | None:
        """``meta/stats.json`` as LeRobot gives it: ``{feature: {stat: np.ndarray}}`` (float64;
        ``count`` int64), or None when the file is absent. Loaded on first use, then the same
        mutable dict (LeRobot's factory writes ImageNet stats into it)."""
        if self._stats is None and not getattr(self, "_stats_loaded", False):
            raw = self.source.read_json(STATS_PATH) if self.source.exists(STATS_PATH) else None
            self._stats = None if raw is None else stats_to_numpy(raw)
            self._stats_loaded = True
        return self._stats

    # ----------------------------------------------------------------- paths
    @property
    def total_frames(self) -> int:
        return int(self.episodes.length.sum())

    def data_file(self, episode: int) -> str:
        row = self.episodes.row(episode)
        return self.info["data_path"].format(
            chunk_index=int(self.episodes.data_chunk[row]),
            file_index=int(self.episodes.data_file[row]),
        )

    def video_file(self, episode: int, key: str) -> str:
        row = self.episodes.row(episode)
        vid = self.episodes.videos[key]
        return self.info["video_path"].format(
            video_key=key, chunk_index=int(vid.chunk[row]), file_index=int(vid.file[row])
        )

    def video_from_timestamp(self, episode: int, key: str) -> float:
        """Where ``episode`` starts in ``key``'s file; refuses a position that cannot be trusted.

        Why: a from_timestamp off by whole frames still decodes frames within tolerance, of
        another episode; only the episode index's own consistency can reveal it.
        """
        row = self.episodes.row(episode)
        problem = self.video_position_problems(key).get(row)
        if problem is not None:
            raise DatasetFormatError(
                f"{self.source.describe(EPISODES_DIR)}: episode {episode}, camera {key!r}: "
                f"{problem}; the episode's video position is ambiguous"
            )
        return float(self.episodes.videos[key].from_ts[row])

    def video_position_problems(self, key: str) -> dict[int, str]:
        """Episode rows whose position in ``key``'s file cannot be trusted: errors.

        An episode's frames are ``from_timestamp + frame / fps`` (LeRobot never reads
        ``to_timestamp`` when decoding). Refused, with half a frame of slack: a start before 0,
        or a range ``[from_timestamp, from_timestamp + length / fps)`` that overlaps the
        previous episode's frames in the same file (it would show that episode's frames).
        A ``to_timestamp`` that disagrees with the length is only a warning
        (:meth:`video_position_warnings`); frames missing from the video fail when decoded.
        """
        cache: dict[str, dict[int, str]] = self.__dict__.setdefault("_video_problems", {})
        if key in cache:
            return cache[key]
        vid, eps = self.episodes.videos[key], self.episodes
        half, out = 0.5 / self.fps, {}
        end = vid.from_ts + eps.length / self.fps  # just after the episode's last frame
        order = np.lexsort((vid.from_ts, vid.file, vid.chunk)).tolist()
        for i, row in enumerate(order):
            prev = order[i - 1] if i else None
            same = prev is not None and (vid.chunk[prev], vid.file[prev]) == (
                vid.chunk[row],
                vid.file[row],
            )
            start = end[prev] if same else 0.0
            if vid.from_ts[row] >= start - half:
                continue
            if not same:
                out[row] = f"from_timestamp {vid.from_ts[row]:.6f}s is before 0"
                continue
            # Two episodes overlap: blame the one whose own to_timestamp disagrees with its
            # length while the other starts where that to_timestamp says (a moved start).
            prev_consistent = abs(vid.to_ts[prev] - end[prev]) <= half
            if not prev_consistent and abs(vid.from_ts[row] - vid.to_ts[prev]) <= half:
                out.setdefault(
                    prev,
                    (
                        f"from_timestamp {vid.from_ts[prev]:.6f}s + its {int(eps.length[prev])} "
                        f"frames ends at {end[prev]:.6f}s, after the start of episode "
                        f"{int(eps.episode_index[row])} ({vid.from_ts[row]:.6f}s) in the same file"
                    ),
                )
            else:
                out[row] = (
                    f"from_timestamp {vid.from_ts[row]:.6f}s is before the last frame of "
                    f"episode {int(eps.episode_index[prev])} (from_timestamp + length / fps = "
                    f"{start:.6f}s) in the same file"
                )
        cache[key] = out
        return out

    def video_position_warnings(self, key: str) -> dict[int, str]:
        """Episode rows whose ``to_timestamp`` disagrees with ``from_timestamp + length / fps``.

        LeRobot reads these fine (it never reads ``to_timestamp``), and so does framestream:
        a writer that stores the last frame's time, ``(length - 1) / fps``, or a longer range.
        """
        vid, eps = self.episodes.videos[key], self.episodes
        half, out = 0.5 / self.fps, {}
        span, need = vid.to_ts - vid.from_ts, eps.length / self.fps
        for row in np.nonzero(np.abs(span - need) > half)[0].tolist():
            if abs(span[row] - need[row] + 1 / self.fps) < half:
                what = "to_timestamp is the last frame's time"
            elif span[row] < need[row]:
                what = "less than its frames"
            else:
                what = "more than its frames (the extra video frames are never read)"
            out[row] = (
                f"from_timestamp {vid.from_ts[row]:.6f}s .. to_timestamp {vid.to_ts[row]:.6f}s "
                f"spans {span[row]:.6f}s for {int(eps.length[row])} frames at {self.fps} fps "
                f"({need[row]:.6f}s): {what}"
            )
        return out

    def task_of(self, task_index: int, *, episode: int | None = None) -> str:
        try:
            return self.tasks[int(task_index)]
        except KeyError:
            where = f"episode {episode}: " if episode is not None else ""
            bad = self.bad_tasks.get(int(task_index))
            why = f": {bad}" if bad else " has no task"
            raise DatasetFormatError(
                f"{self.source.describe(TASKS_PATH)}: {where}task_index {task_index}{why}"
            ) from None

    def non_visual_keys(self) -> list[str]:
        """Tabular features, read from the data parquet."""
        return [k for k, f in self.features.items() if not f.is_visual]
