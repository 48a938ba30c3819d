"""The parquet side of a synthetic dataset: tasks, per-episode statistics, the episodes index
(see :mod:`framestream.testing.synth`), laid out and typed the way LeRobot writes them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"
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


def task_string(task_index: int) -> str:
    """Human-readable text of synthetic task ``task_index``."""
    if task_index < len(_TASKS):
        return _TASKS[task_index]
    return f"Move object {task_index} to target {task_index % 7}"


def list_type(value_type: pa.DataType, depth: int = 1) -> pa.DataType:
    """Nested ``list<element: ...>`` type, named like the lists LeRobot writes."""
    for _ in range(depth):
        value_type = pa.list_(pa.field("element", value_type))
    return value_type


def numeric_stats(values: np.ndarray, integer: bool, quantiles: bool) -> dict[str, list]:
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


def image_stats(parts: list[dict[str, Any]]) -> dict[str, list]:
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


def hf_features(features: dict[str, dict[str, Any]]) -> dict[str, Any]:
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


def table_stats(table: pa.Table, quantiles: bool) -> dict[str, dict[str, list]]:
    """Stats of every data column of ``table``."""
    stats = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if pa.types.is_fixed_size_list(column.type):
            values = column.flatten().to_numpy().reshape(len(column), column.type.list_size)
        else:
            values = column.to_numpy().reshape(-1, 1)
        stats[name] = numeric_stats(values, np.issubdtype(values.dtype, np.integer), quantiles)
    return stats


def write_episodes(
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
        "tasks": pa.array([[task_string(e % num_tasks)] for e in range(n)], list_type(pa.string())),
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
            kind = list_type(int64 if integer else float64, 1 if stat == "count" else depth)
            values = [s[feature][stat] for s in episode_stats]
            arrays[f"stats/{feature}/{stat}"] = pa.array(values, kind)
    arrays["meta/episodes/chunk_index"] = pa.array([0] * n, int64)
    arrays["meta/episodes/file_index"] = pa.array([0] * n, int64)
    path = root / EPISODES_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(arrays), path)


def write_tasks(root: Path, num_tasks: int) -> None:
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
