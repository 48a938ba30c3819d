"""LeRobot 0.6.1's constructor arguments, as both datasets accept them.

LeRobot names a dataset by ``repo_id`` and finds its files at ``root`` (default: LeRobot's
cache, ``$HF_LEROBOT_HOME/<repo_id>``, filled from the Hub). framestream names it by where its
bytes are (a folder or URL). :func:`resolve_location` reconciles the two call forms:

- ``Dataset("org/name", root=PATH)``: the files are at ``PATH``; ``repo_id`` is only a name;
- ``Dataset(PATH_OR_URL)``: framestream's own form (``"s3://bucket/ds"``, ``"/data/ds"``);
- ``Dataset("org/name")``: LeRobot's cache if the dataset is there, else the Hub
  (``hf://datasets/org/name``, at ``revision``).

A local path that does not exist raises FileNotFoundError saying so; it never becomes a Hub
lookup. Keywords that only mean something to LeRobot's writer or downloader are accepted and
ignored (:data:`IGNORED`), the others are used or refused with the reason.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from framestream._errors import DatasetNotFoundError
from framestream.io.remote import is_hub_repo_id

__all__ = [
    "IGNORED",
    "check_ignored",
    "lerobot_home",
    "normalize_video_backend",
    "resolve_location",
    "sorted_episodes",
]


# keyword -> (LeRobot's default, why it means nothing to a reader that streams).
IGNORED: dict[str, tuple[Any, str]] = {
    "force_cache_sync": (
        False,
        "framestream reads the files in place (remote bytes through "
        "its own byte cache); there is no local copy to re-sync",
    ),
    "download_videos": (
        True,
        "videos are read when a sample needs them, never downloaded up front",
    ),
    "batch_encoding_size": (1, "a writer option (LeRobot deprecated it in the reader)"),
    "rgb_encoder": (None, "a writer option"),
    "depth_encoder": (None, "a writer option"),
    "encoder_threads": (None, "a writer option"),
    "streaming_encoding": (False, "a writer option (LeRobot deprecated it in the reader)"),
    "encoder_queue_maxsize": (30, "a writer option"),
    "metadata_buffer_size": (10, "a writer option"),
    "streaming": (
        True,
        "the streaming class always streams; use framestream.LeRobotDataset for random access",
    ),
    "max_num_shards": (
        16,
        "framestream splits episodes across ranks and DataLoader workers "
        "itself and keeps `active_shards` episodes open per worker; LeRobot's "
        "shard count (lerobot-train passes num_workers) is not needed",
    ),
}


# LeRobot's own factory passes these with other values on every call (max_num_shards =
# num_workers): warning would only be noise.
_SILENT = frozenset({"max_num_shards"})


def check_ignored(given: Mapping[str, Any]) -> None:
    """Warn about an ignored keyword given a value other than LeRobot's default."""
    for name, value in given.items():
        default, why = IGNORED[name]
        if name in _SILENT or value is default or value == default:
            continue
        warnings.warn(
            f"{name}={value!r} is accepted for LeRobot compatibility and ignored: {why}",
            UserWarning,
            stacklevel=3,
        )


def lerobot_home() -> Path:
    """LeRobot's dataset cache: ``$HF_LEROBOT_HOME``, else ``$HF_HOME/lerobot``."""
    if os.environ.get("HF_LEROBOT_HOME"):
        return Path(os.environ["HF_LEROBOT_HOME"]).expanduser()
    hf_home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return Path(hf_home).expanduser() / "lerobot"


def _is_url(s: str) -> bool:
    return "://" in s


def _local_must_exist(path: str, what: str) -> str:
    p = Path(path).expanduser()
    if not p.exists():
        raise DatasetNotFoundError(f"{what} {str(p)!r} does not exist (a local folder was given)")
    if not p.is_dir():
        raise NotADirectoryError(f"{what} {str(p)!r} is not a folder")
    return str(p)


def resolve_location(
    repo_id: str | os.PathLike | None, root: str | os.PathLike | None, *, repo_type: str = "dataset"
) -> tuple[str, str | None]:
    """``(where the bytes are, the repo_id to report)`` for LeRobot's and framestream's forms."""
    if repo_type != "dataset":
        raise ValueError(
            f"repo_type={repo_type!r} is not supported: framestream reads Hub datasets "
            "(repo_type='dataset'), local folders and fsspec URLs"
        )
    if root is not None:
        root_s = os.fspath(root)
        where = root_s if _is_url(root_s) else _local_must_exist(root_s, "dataset root")
        return where, None if repo_id is None else os.fspath(repo_id)
    if repo_id is None:
        raise ValueError("a dataset is required: a repo_id with root=, a folder or a URL")
    s = os.fspath(repo_id)
    if _is_url(s):
        return s, None
    if Path(s).expanduser().exists():
        return _local_must_exist(s, "dataset root"), None
    if isinstance(repo_id, os.PathLike) or not is_hub_repo_id(s):
        raise DatasetNotFoundError(
            f"dataset root {s!r} does not exist (a local path was given; a Hub dataset is "
            "named 'org/name')"
        )
    cached = lerobot_home() / s
    if (cached / "meta" / "info.json").exists():
        return str(cached), s
    return f"hf://datasets/{s}", s


def normalize_video_backend(backend: str | None) -> str | None:
    """LeRobot's names: ``"video_reader"`` is its alias for PyAV."""
    return "pyav" if backend == "video_reader" else backend


def sorted_episodes(
    meta: Any,
    episodes: Sequence[int] | None,
    episode_filter: Callable[[dict], bool] | None = None,
) -> np.ndarray | None:
    """LeRobot's episode selection: ascending and without repeats (rows come back in file
    order there), filtered by ``episode_filter(row)`` when given; None: every episode.

    An episode that does not exist raises EpisodeNotFoundError (LeRobot only logs it).
    """
    if episodes is not None:
        episodes = sorted({int(e) for e in episodes})
        if not episodes:
            raise ValueError("episodes=[] selects no episode: nothing to stream (None means all)")
        for e in episodes:
            meta.episodes.row(e)  # raises EpisodeNotFoundError
    if episode_filter is not None:
        rows = meta.episodes
        candidates = episodes if episodes is not None else rows.episode_index.tolist()
        episodes = sorted(e for e in candidates if episode_filter(rows[rows.row(e)]))
        if not episodes:
            raise ValueError("episode_filter matched no episode")
    return None if episodes is None else np.asarray(episodes, dtype=np.int64)


def lerobot_stream_options(
    *,
    rng: Any,
    force_cache_sync: bool,
    streaming: bool,
    max_num_shards: int,
    **named: Any,
) -> dict[str, Any]:
    """The stream options given under LeRobot's names (None: not given); LeRobot's
    streaming-only keywords checked (ignored, or ``rng`` refused)."""
    check_ignored(
        {
            "force_cache_sync": force_cache_sync,
            "streaming": streaming,
            "max_num_shards": max_num_shards,
        }
    )
    if rng is not None:
        raise ValueError(
            "rng= is not supported: framestream's order is a pure function of (seed, "
            "epoch), which makes resume exact; pass seed= instead"
        )
    return {k: v for k, v in named.items() if v is not None}


class LeRobotStreamingSurface:
    """``num_frames``, ``num_episodes``, ``absolute_to_relative_idx`` and ``len()`` of the
    streaming dataset, as lerobot-train reads them."""

    lengths: np.ndarray
    episodes: Any

    @property
    def num_frames(self) -> int:
        """Frames of the streamed episodes (all ranks; LeRobot's ``num_frames``)."""
        return int(self.lengths.sum())

    @property
    def num_episodes(self) -> int:
        """Streamed episodes (LeRobot's ``num_episodes``)."""
        return len(self.episodes)

    @property
    def absolute_to_relative_idx(self) -> None:
        """None: a stream has no positions (lerobot-train reads it for map-style only)."""
        return None

    def __len__(self) -> int:
        """Samples this rank yields per epoch (whatever the number of DataLoader workers)."""
        return self.num_samples(num_workers=0)  # type: ignore[attr-defined]
