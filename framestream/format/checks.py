"""The row and column checks of the data parquet files, shared by the readers and ``validate``.

Why one implementation: the table reader refuses an episode for exactly the problems that
``framestream validate`` reports as errors, so the two must never drift apart. Each check
returns a :class:`RowProblem` (or None) instead of raising: :class:`~framestream.format.tables.
TableReader` raises :class:`~framestream.DatasetFormatError` on the first one (it cannot go on),
the validator collects every one of them.

Messages say *what* is wrong; the caller prefixes *where* (``<file>: episode <e>: ``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from framestream._errors import DatasetFormatError
from framestream.format.meta import TASKS_PATH, DatasetMeta, Feature

FLOAT_DTYPES = ("float16", "float32", "float64")


@dataclass(frozen=True)
class RowProblem:
    """One problem of one episode's rows; ``check`` is the validator's check name."""

    check: str  # "data" | "dtype" | "nan" | "task"
    message: str  # what is wrong, without the file and episode (the caller adds them)

    def error(self, where: str, episode: int) -> DatasetFormatError:
        """The reader's error for this problem, naming the file and the episode."""
        return DatasetFormatError(f"{where}: episode {episode}: {self.message}")


def data_columns(meta: DatasetMeta) -> list[str]:
    """The columns every data file must hold: the tabular features, then the image ones."""
    return meta.non_visual_keys() + meta.image_keys


def float_columns(meta: DatasetMeta, columns: Iterable[str]) -> list[str]:
    """Those of ``columns`` whose feature is a float (checked for NaN)."""
    return [c for c in columns if c in meta.features and meta.features[c].dtype in FLOAT_DTYPES]


def missing_columns(present: Collection[str], required: Sequence[str]) -> RowProblem | None:
    """The required columns absent from a data file's schema."""
    missing = [c for c in required if c not in present]
    return RowProblem("data", f"missing data columns {missing}") if missing else None


def _value_type(t: pa.DataType) -> tuple[pa.DataType, int]:
    """The element type under any list nesting, and the nesting depth."""
    depth = 0
    while pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        t, depth = t.value_type, depth + 1
    return t, depth


def _arrow_dtype_name(t: pa.DataType) -> str:
    """An arrow element type in info.json's words (``double`` is float64, ``utf8`` string)."""
    if pa.types.is_floating(t):
        return f"float{t.bit_width}"
    if pa.types.is_integer(t):
        return f"{'u' if pa.types.is_unsigned_integer(t) else ''}int{t.bit_width}"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    return str(t)


def _dtype_matches(declared: str, t: pa.DataType) -> bool | None:
    """Whether an arrow element type can hold the declared dtype (None: not checked).

    The kind must match (float, integer, bool, string); the width need not: a float64 column
    where float32 is declared is read as declared, and its values are checked like any other.
    """
    if declared.startswith("float"):
        return pa.types.is_floating(t)
    if declared.startswith(("int", "uint")):
        return pa.types.is_integer(t)
    if declared == "bool":
        return pa.types.is_boolean(t)
    if declared == "string":
        return pa.types.is_string(t) or pa.types.is_large_string(t)
    return None  # image, video, and kinds checked elsewhere


def column_types(
    schema: pa.Schema, meta: DatasetMeta, columns: Iterable[str]
) -> dict[str, RowProblem]:
    """Columns whose stored type is of another kind than info.json's dtype, by name.

    Why: a string or integer column where float32 is declared, or ``index`` stored as floats,
    would otherwise crash far away (a bare ``TypeError`` converting the sample) or be read
    silently as something it is not. Checked on the file's schema: no rows are read.
    """
    out: dict[str, RowProblem] = {}
    for name in columns:
        feature = meta.features.get(name)
        if feature is None or schema.get_field_index(name) < 0:
            continue
        value, depth = _value_type(schema.field(name).type)
        if _dtype_matches(feature.dtype, value) is False:
            found = _arrow_dtype_name(value) + (" (in a list)" if depth else "")
            out[name] = RowProblem(
                "dtype",
                f"feature {name!r} is stored as {found} but info.json declares dtype "
                f"{feature.dtype}",
            )
    return out


def row_count(rows: int, length: int) -> RowProblem | None:
    """The file must hold exactly the episode's ``length`` rows."""
    if rows == length:
        return None
    return RowProblem(
        "data",
        f"the episode index says {length} frames but the data file holds {rows} rows",
    )


def frame_order(
    frame_index: np.ndarray, length: int
) -> tuple[np.ndarray | None, RowProblem | None]:
    """The permutation that puts the rows in frame order (None: already in order).

    ``frame_index`` must be a permutation of ``0..length-1``; otherwise the problem.
    """
    frame_index = np.asarray(frame_index)
    if not length or np.array_equal(frame_index, np.arange(length)):
        return None, None
    order = np.argsort(frame_index, kind="stable")
    if not np.array_equal(frame_index[order], np.arange(length)):
        return None, RowProblem("data", f"frame_index is not 0..{length - 1}")
    return order, None


def global_index(index: np.ndarray, from_index: int, length: int) -> RowProblem | None:
    """``index`` (in frame order) must run ``from_index .. from_index + length - 1``."""
    index = np.asarray(index)
    if not length or np.array_equal(index, np.arange(from_index, from_index + length)):
        return None
    return RowProblem(
        "data",
        f"'index' runs {int(index[0])}..{int(index[-1])} but the episode index says "
        f"{from_index}..{from_index + length - 1}",
    )


def timestamps(ts: np.ndarray, fps: int, tolerance_s: float) -> RowProblem | None:
    """``timestamp`` (in frame order) must be ``frame_index / fps`` within ``tolerance_s``
    (plus the float32 rounding of the stored value)."""
    ts = np.asarray(ts).astype(np.float64)
    expected = np.arange(len(ts)) / fps
    slack = tolerance_s + np.spacing(np.abs(ts).astype(np.float32)).astype(np.float64)
    bad = np.nonzero(~(np.abs(ts - expected) <= slack))[0]  # NaN is off too
    if not len(bad):
        return None
    k = int(bad[0])
    return RowProblem(
        "data",
        f"timestamp of frame {k} is {ts[k]:.6f}s, expected {expected[k]:.6f}s (frame_index / "
        f"fps; {len(bad)} frames off by more than tolerance_s={tolerance_s})",
    )


def nan_values(name: str, values: Any, length: int) -> RowProblem | None:
    """NaN or Inf in a float feature is an error: a model fed either fails silently, far away."""
    if not isinstance(values, np.ndarray) or values.dtype.kind != "f":
        return None
    finite = np.isfinite(values)
    if finite.all():
        return None
    per_frame = ~finite.reshape(length, -1).all(axis=1)
    first = int(np.nonzero(per_frame)[0][0])
    bad = values.reshape(length, -1)[first][~finite.reshape(length, -1)[first]]
    what = "NaN" if np.isnan(bad[0]) else ("Inf" if bad[0] > 0 else "-Inf")
    return RowProblem(
        "nan",
        f"feature {name!r} is {what} at frame {first} ({int(per_frame.sum())} of its {length} "
        f"frames hold NaN or Inf)",
    )


def declared_frame_shape(feature: Feature) -> tuple[int, int, int] | None:
    """A camera's declared frame size as (height, width, channels); None if not declared.

    info.json's ``shape`` is (height, width, channels) in LeRobot v3.0; its ``names`` say so
    when present, and a shape whose names put the channels first is read that way.
    """
    shape = tuple(feature.shape)
    if len(shape) != 3:
        return None
    names = feature.names
    if isinstance(names, list | tuple) and sorted(map(str, names)) == [
        "channels",
        "height",
        "width",
    ]:
        pos = {str(n): i for i, n in enumerate(names)}
        return shape[pos["height"]], shape[pos["width"]], shape[pos["channels"]]
    return shape[0], shape[1], shape[2]


def frame_size(got: tuple[int, ...], declared: tuple[int, int, int] | None) -> str | None:
    """Decoded (height, width, channels) against the declared ones: what differs, or None."""
    if declared is None or tuple(got) == tuple(declared):
        return None
    return (
        f"decoded frames are {'x'.join(map(str, got))} (HxWxC) but info.json declares "
        f"{'x'.join(map(str, declared))}"
    )


def task_indices(meta: DatasetMeta, indices: Iterable[int]) -> list[RowProblem]:
    """Every ``task_index`` must name a usable task string in ``meta/tasks.parquet``."""
    out = []
    for t in sorted({int(t) for t in indices}):
        if t not in meta.tasks:
            why = meta.bad_tasks.get(t, "has no entry in " + TASKS_PATH)
            out.append(RowProblem("task", f"task_index {t}: {why}"))
    return out
