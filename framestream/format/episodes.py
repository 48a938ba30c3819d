"""The episodes index (``meta/episodes/*.parquet``): where every episode's rows and video
frames are, as flat numpy arrays (one row per episode, sorted by ``episode_index``).

LeRobot's episodes files carry hundreds of ``stats/*`` columns that streaming never needs;
only the columns below are read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from framestream._errors import DatasetFormatError, EpisodeNotFoundError, SourceError
from framestream.format.lerobot_meta import EpisodeColumns
from framestream.io.source import Source

EPISODES_DIR = "meta/episodes"
EPISODE_COLUMNS = (
    "episode_index",
    "length",
    "data/chunk_index",
    "data/file_index",
    "dataset_from_index",
    "dataset_to_index",
)


@dataclass
class VideoIndex:
    """Where each episode of one camera lives: file and seconds inside that file."""

    chunk: np.ndarray
    file: np.ndarray
    from_ts: np.ndarray
    to_ts: np.ndarray


@dataclass
class EpisodeIndex(EpisodeColumns):
    """The episodes table as arrays, one row per episode, sorted by ``episode_index``."""

    episode_index: np.ndarray
    length: np.ndarray
    data_chunk: np.ndarray
    data_file: np.ndarray
    from_index: np.ndarray
    to_index: np.ndarray
    tasks: list[list[str]]
    videos: dict[str, VideoIndex]

    def __post_init__(self) -> None:
        self._row = {int(e): i for i, e in enumerate(self.episode_index)}

    def __len__(self) -> int:
        return len(self.episode_index)

    def row(self, episode: int) -> int:
        """Row position of ``episode``; a clear error when it does not exist."""
        try:
            return self._row[int(episode)]
        except KeyError:
            lo, hi = (
                (int(self.episode_index.min()), int(self.episode_index.max()))
                if len(self)
                else (0, -1)
            )
            raise EpisodeNotFoundError(
                f"episode {episode} does not exist in this dataset "
                f"({len(self)} episodes, indices {lo}..{hi})"
            ) from None


def _episode_files(source: Source) -> list[str]:
    files = [p for p in source.list(EPISODES_DIR) if p.endswith(".parquet")]
    if not files:
        raise DatasetFormatError(
            f"{source.describe(EPISODES_DIR)}: no episodes parquet files found"
        )
    return files


def load_episode_index(source: Source, video_keys: list[str]) -> EpisodeIndex:
    """The episodes table of ``source``, read column-selectively, checked, sorted by episode."""
    wanted = list(EPISODE_COLUMNS) + ["tasks"]
    for key in video_keys:
        wanted += [
            f"videos/{key}/{c}"
            for c in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")
        ]
    tables = []
    for rel in _episode_files(source):
        where = source.describe(rel)
        try:
            with source.open(rel) as f:
                pf = pq.ParquetFile(f)
                names = set(pf.schema_arrow.names)
                missing = [c for c in wanted if c not in names and c != "tasks"]
                if missing:
                    raise DatasetFormatError(f"{where}: missing episode columns {missing}")
                cols = [c for c in wanted if c in names]
                tables.append(pf.read(columns=cols))
        except DatasetFormatError:
            raise
        except (pa.ArrowException, OSError) as exc:
            if isinstance(exc, (FileNotFoundError, SourceError)):
                raise  # a network failure is not a broken dataset
            raise DatasetFormatError(f"{where}: unreadable episodes parquet ({exc})") from exc
    table = pa.concat_tables(tables, promote_options="default")
    order = np.argsort(table.column("episode_index").to_numpy(), kind="stable")

    def col(name: str, dtype: Any) -> np.ndarray:
        arr = table.column(name)
        if arr.null_count:
            raise DatasetFormatError(
                f"{source.describe(EPISODES_DIR)}: column {name!r} has null values"
            )
        return np.asarray(arr.to_numpy(), dtype=dtype)[order]

    tasks: list[list[str]] = [[] for _ in range(table.num_rows)]
    if "tasks" in table.column_names:
        raw = table.column("tasks").to_pylist()
        tasks = [list(raw[i] or []) for i in order]
    videos = {
        key: VideoIndex(
            chunk=col(f"videos/{key}/chunk_index", np.int64),
            file=col(f"videos/{key}/file_index", np.int64),
            from_ts=col(f"videos/{key}/from_timestamp", np.float64),
            to_ts=col(f"videos/{key}/to_timestamp", np.float64),
        )
        for key in video_keys
    }
    index = EpisodeIndex(
        episode_index=col("episode_index", np.int64),
        length=col("length", np.int64),
        data_chunk=col("data/chunk_index", np.int64),
        data_file=col("data/file_index", np.int64),
        from_index=col("dataset_from_index", np.int64),
        to_index=col("dataset_to_index", np.int64),
        tasks=tasks,
        videos=videos,
    )
    if len(np.unique(index.episode_index)) != len(index):
        raise DatasetFormatError(f"{source.describe(EPISODES_DIR)}: duplicate episode_index values")
    bad = np.nonzero(index.to_index - index.from_index != index.length)[0]
    if len(bad):
        e = int(index.episode_index[bad[0]])
        raise DatasetFormatError(
            f"{source.describe(EPISODES_DIR)}: episode {e}: dataset_to_index - "
            f"dataset_from_index = {int(index.to_index[bad[0]] - index.from_index[bad[0]])} "
            f"but length = {int(index.length[bad[0]])}"
        )
    return index


def overlapping_ranges(index: EpisodeIndex) -> list[tuple[int, int]]:
    """Pairs of episodes whose global ``[dataset_from_index, dataset_to_index)`` ranges overlap.

    Why: a global ``index`` names one frame of the dataset; two episodes claiming the same
    indices make every lookup by index (and every sample's ``index``) ambiguous.
    """
    order = np.argsort(index.from_index, kind="stable").tolist()
    out: list[tuple[int, int]] = []
    reach, owner = None, None  # the furthest to_index so far, and its episode
    for row in order:
        lo, hi = int(index.from_index[row]), int(index.to_index[row])
        if hi <= lo:
            continue  # an empty range overlaps nothing
        if reach is not None and lo < reach:
            out.append((int(index.episode_index[owner]), int(index.episode_index[row])))
        if reach is None or hi > reach:
            reach, owner = hi, row
    return out
