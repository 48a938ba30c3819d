"""The metadata surface LeRobot 0.6.1's training stack reads, with LeRobot's types.

:class:`~framestream.format.meta.DatasetMeta` inherits :class:`LeRobotMetaSurface`, so a
``ds.meta`` can be handed to ``make_policy(ds_meta=...)``, the pre/post-processors
(normalization ``stats``), ``EpisodeAwareSampler`` and ``lerobot_train.py`` unchanged:

- ``features``: ``{name: Feature}``, each a ``dict`` with ``"dtype"``, ``"shape"`` (a tuple),
  ``"names"``, optional ``"info"``;
- ``stats``: ``{feature: {stat: np.ndarray}}`` or None (see ``DatasetMeta.stats``);
- ``episodes``: positional rows; ``meta.episodes["dataset_from_index"]`` is a list,
  ``meta.episodes[i]`` a dict of Python values (:class:`EpisodeColumns`);
- ``info``: the ``info.json`` dict, also readable by attribute (``meta.info.fps``);
- ``robot_type``, ``total_episodes``, ``total_frames``, ``total_tasks``, ``shapes``,
  ``names``, ``camera_keys``, ``video_keys``, ``image_keys``, ``depth_keys``,
  ``has_language_columns``, ``repo_id``, ``root``, ``revision``; ``bool(meta)`` is True.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

LANGUAGE_COLUMNS = ("language_persistent", "language_events")

__all__ = ["EpisodeColumns", "InfoDict", "LeRobotMetaSurface", "stats_to_numpy"]


class InfoDict(dict):
    """``info.json``: a dict (``info["fps"]``) that also reads by attribute (``info.fps``),
    as LeRobot's ``DatasetInfo`` dataclass does."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"info.json has no field {name!r}") from None


def stats_to_numpy(raw: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``stats.json`` values as numpy arrays, like LeRobot's ``cast_stats_to_numpy``."""
    out: dict[str, dict[str, Any]] = {}
    for key, stats in raw.items():
        if isinstance(stats, Mapping):
            out[key] = {name: np.array(value) for name, value in stats.items()}
    return out


class EpisodeColumns:
    """LeRobot's view of the episodes table (an HF ``datasets.Dataset`` there).

    ``index["dataset_from_index"]`` is the column as a list (row = position, sorted by
    episode), ``index[i]`` the row as a dict of Python values, ``column_names`` the names.
    Only the columns framestream reads are held (no ``stats/*``; LeRobot drops them too).
    """

    # Attributes of the concrete EpisodeIndex this mixin reads.
    episode_index: np.ndarray
    length: np.ndarray
    data_chunk: np.ndarray
    data_file: np.ndarray
    from_index: np.ndarray
    to_index: np.ndarray
    tasks: list[list[str]]
    videos: dict[str, Any]

    def _columns(self) -> dict[str, Any]:
        cols: dict[str, Any] = {
            "episode_index": self.episode_index,
            "tasks": self.tasks,
            "length": self.length,
            "data/chunk_index": self.data_chunk,
            "data/file_index": self.data_file,
            "dataset_from_index": self.from_index,
            "dataset_to_index": self.to_index,
        }
        for key, vid in self.videos.items():
            cols[f"videos/{key}/chunk_index"] = vid.chunk
            cols[f"videos/{key}/file_index"] = vid.file
            cols[f"videos/{key}/from_timestamp"] = vid.from_ts
            cols[f"videos/{key}/to_timestamp"] = vid.to_ts
        return cols

    @property
    def column_names(self) -> list[str]:
        return list(self._columns())

    @property
    def num_rows(self) -> int:
        return len(self.episode_index)

    def __getitem__(self, key: str | int) -> Any:
        cols = self._columns()
        if isinstance(key, str):
            if key not in cols:
                raise KeyError(
                    f"episodes column {key!r} is not held (columns: {sorted(cols)}; "
                    "stats/* columns are dropped, as LeRobot does)"
                )
            value = cols[key]
            return value.tolist() if isinstance(value, np.ndarray) else list(value)
        n = self.num_rows
        i = int(key)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"episode row {key} out of range ({n} episodes)")
        return {
            name: (value[i].item() if isinstance(value, np.ndarray) else list(value[i]))
            for name, value in cols.items()
        }

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(self.num_rows):
            yield self[i]


class LeRobotMetaSurface:
    """LeRobot's ``LeRobotDatasetMetadata`` attributes, computed from ``info`` and ``features``."""

    info: dict[str, Any]
    features: dict[str, Any]
    tasks: dict[int, str]
    source: Any

    def __bool__(self) -> bool:  # policies/factory.py compares bool(ds_meta) with bool(env_cfg)
        return True

    @property
    def repo_id(self) -> str:
        return self.__dict__.get("_repo_id") or self.source.url

    @repo_id.setter
    def repo_id(self, value: str) -> None:
        self.__dict__["_repo_id"] = value

    @property
    def root(self) -> Path | str:
        return Path(self.source.path("")) if self.source.is_local else self.source.url

    @property
    def revision(self) -> str | None:
        return getattr(self.source, "revision", None)

    @property
    def robot_type(self) -> str | None:
        return self.info.get("robot_type")

    @property
    def total_episodes(self) -> int:
        return int(self.info["total_episodes"])

    @property
    def total_tasks(self) -> int:
        return int(self.info.get("total_tasks", len(self.tasks)))

    @property
    def chunks_size(self) -> int:
        return int(self.info.get("chunks_size", 1000))

    @property
    def data_path(self) -> str:
        return self.info["data_path"]

    @property
    def video_path(self) -> str | None:
        return self.info.get("video_path")

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(f["shape"]) for k, f in self.features.items()}

    @property
    def names(self) -> dict[str, Any]:
        return {k: f["names"] for k, f in self.features.items()}

    @property
    def depth_keys(self) -> list[str]:
        return [
            k
            for k, f in self.features.items()
            if f.get("dtype") in ("video", "image") and f.is_depth
        ]

    @property
    def has_language_columns(self) -> bool:
        return any(k in self.features for k in LANGUAGE_COLUMNS)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(repo_id={self.repo_id!r}, total_episodes="
            f"{self.total_episodes}, total_frames={self.info.get('total_frames')}, "
            f"fps={self.info.get('fps')}, features={list(self.features)})"
        )
