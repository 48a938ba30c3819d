"""Reading one episode's rows from the data parquet files.

LeRobot writes one row group per episode, so an episode is normally a single row-group read;
that is checked from the row-group statistics, never assumed, and a file without them falls
back to reading and filtering. Parquet handles are kept in a small LRU so that consecutive
episodes of one file do not re-open it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from framestream._errors import DatasetFormatError
from framestream.format import checks
from framestream.format.meta import DatasetMeta


@dataclass
class EpisodeData:
    """One episode's tabular columns as arrays of length ``length`` (frame order)."""

    episode: int
    length: int
    from_index: int
    columns: dict[str, Any]  # np.ndarray (L, ...) or list (strings, image bytes)
    # Columns converted to their output dtype, once per episode (see _sample.typed_column).
    typed: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def timestamps(self) -> np.ndarray:
        return self.columns["timestamp"]


def _column_to_numpy(col: pa.ChunkedArray | pa.Array, n: int) -> Any:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    t = arr.type
    if pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t):
        inner = t.value_type
        if (
            not (
                pa.types.is_integer(inner)
                or pa.types.is_floating(inner)
                or pa.types.is_boolean(inner)
            )
            or arr.null_count
        ):
            return arr.to_pylist()  # rows of records (LeRobot's language columns), or nulls
        values = arr.flatten().to_numpy(zero_copy_only=False)
        return values.reshape(n, -1) if n else values.reshape(0, 0)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_struct(t):
        return arr.to_pylist()
    return arr.to_numpy(zero_copy_only=False)


KEEP_BYTES = 16 << 20  # rows of recently read episodes a TableReader keeps


def _nbytes(data: EpisodeData) -> int:
    """About what an episode's rows occupy (arrays, and bytes or strings in lists)."""
    total = 0
    for col in data.columns.values():
        if isinstance(col, np.ndarray):
            total += col.nbytes
        else:
            total += sum(_value_bytes(v) for v in col)
    return total


def _value_bytes(value: Any) -> int:
    if isinstance(value, bytes | str):
        return len(value)
    if isinstance(value, dict):  # an image cell {"bytes": ..., "path": ...}, a record
        return 64 + sum(_value_bytes(v) for v in value.values())
    if isinstance(value, list):
        return 64 + sum(_value_bytes(v) for v in value)
    return 64


class TableReader:
    """Reads episodes' rows; holds at most ``capacity`` open parquet files and the rows of
    the last ``keep`` episodes."""

    def __init__(
        self, meta: DatasetMeta, *, capacity: int = 4, tolerance_s: float = 1e-4, keep: int = 64
    ) -> None:
        self.meta = meta
        self.capacity = capacity
        self.keep = keep
        self._recent: OrderedDict[int, EpisodeData] = OrderedDict()
        self._recent_bytes = 0
        self.tolerance_s = tolerance_s  # for the timestamp check (the readers' tolerance)
        self._files: OrderedDict[str, tuple[Any, pq.ParquetFile, dict[int, int] | None]] = (
            OrderedDict()
        )
        self.columns = checks.data_columns(meta)
        self._floats = checks.float_columns(meta, self.columns)

    def _open(self, rel: str) -> tuple[pq.ParquetFile, dict[int, int] | None]:
        hit = self._files.get(rel)
        if hit is not None:
            self._files.move_to_end(rel)
            return hit[1], hit[2]
        where = self.meta.source.describe(rel)
        try:
            handle = self.meta.source.open(rel)
        except FileNotFoundError as exc:
            raise DatasetFormatError(f"{where}: data file not found") from exc
        try:
            pf = pq.ParquetFile(handle)
        except (pa.ArrowException, OSError) as exc:
            handle.close()
            raise DatasetFormatError(f"{where}: unreadable parquet file ({exc})") from exc
        self._files[rel] = (handle, pf, self._row_group_map(pf))
        while len(self._files) > self.capacity:
            _, (old, _, _) = self._files.popitem(last=False)
            old.close()
        return pf, self._files[rel][2]

    @staticmethod
    def _row_group_map(pf: pq.ParquetFile) -> dict[int, int] | None:
        """episode -> row group, when every row group holds exactly one episode."""
        md = pf.metadata
        try:
            col = pf.schema_arrow.get_field_index("episode_index")
        except KeyError:
            return None
        if col < 0:
            return None
        out: dict[int, int] = {}
        for g in range(md.num_row_groups):
            st = md.row_group(g).column(col).statistics
            if st is None or not st.has_min_max or st.min != st.max or int(st.min) in out:
                return None
            out[int(st.min)] = g
        return out

    def read(self, episode: int) -> EpisodeData:
        """All tabular columns of ``episode``, validated against the episode index.

        The last ``keep`` episodes read are kept (kilobytes each: no pixels): with shuffle
        pieces a worker opens each episode once per piece, and re-reading and re-checking its
        row group every time cost more than a tenth of a single-frame sample.
        """
        hit = self._recent.get(episode)
        if hit is not None:
            self._recent.move_to_end(episode)
            return hit
        data = self._read(episode)
        size = _nbytes(data)
        if size <= KEEP_BYTES // 4:  # image bytes in the table: not kept
            self._recent[episode] = data
            self._recent_bytes += size
        while len(self._recent) > self.keep or self._recent_bytes > KEEP_BYTES:
            self._recent_bytes -= _nbytes(self._recent.popitem(last=False)[1])
        return data

    def _read(self, episode: int) -> EpisodeData:
        meta = self.meta
        row = meta.episodes.row(episode)
        rel = meta.data_file(episode)
        where = meta.source.describe(rel)
        length = int(meta.episodes.length[row])
        pf, groups = self._open(rel)
        problem = checks.missing_columns(pf.schema_arrow.names, self.columns)
        problem = problem or next(
            iter(checks.column_types(pf.schema_arrow, meta, self.columns).values()), None
        )
        if problem:
            raise problem.error(where, episode)
        prefetch = getattr(self._files[rel][0], "prefetch_row_groups", None)
        if prefetch is not None:  # a remote file read as byte ranges: one request
            prefetch(pf.metadata, [groups[episode]] if groups and episode in groups else None)
        try:
            if groups is not None and episode in groups:
                table = pf.read_row_group(groups[episode], columns=self.columns)
            else:
                table = pf.read(columns=self.columns)
                table = table.filter(pc.equal(table.column("episode_index"), episode))
        except (pa.ArrowException, OSError) as exc:
            dropped = self._files.pop(rel, None)
            if dropped is not None:
                dropped[0].close()  # a broken file is re-opened next time, not leaked
            raise DatasetFormatError(
                f"{where}: episode {episode}: cannot read rows ({type(exc).__name__}: {exc})"
            ) from exc
        problem = checks.row_count(table.num_rows, length)
        if problem:
            raise problem.error(where, episode)
        cols = {name: _column_to_numpy(table.column(name), length) for name in self.columns}
        order, problem = checks.frame_order(cols["frame_index"], length)
        if problem:
            raise problem.error(where, episode)
        if order is not None:
            cols = {
                k: (v[order] if isinstance(v, np.ndarray) else [v[i] for i in order])
                for k, v in cols.items()
            }
        self._check_shapes(cols, where, episode)
        from_index = int(meta.episodes.from_index[row])
        problem = checks.global_index(cols["index"], from_index, length)
        for name in self._floats:
            problem = problem or checks.nan_values(name, cols[name], length)
        # Why: the timestamps are the decoders' queries; trusted, an off column would give
        # every sample another frame (or the next episode's), silently and within tolerance.
        problem = problem or checks.timestamps(cols["timestamp"], meta.fps, self.tolerance_s)
        if problem:
            raise problem.error(where, episode)
        return EpisodeData(episode=episode, length=length, from_index=from_index, columns=cols)

    def _check_shapes(self, cols: dict[str, Any], where: str, episode: int) -> None:
        """Each row must hold as many values as info.json's declared shape: a row of 41
        values for a feature declared ``[17]`` is an error, never a (41,) tensor."""
        for name, values in cols.items():
            shape = declared_row_shape(self.meta.features[name])
            if shape is None or not isinstance(values, np.ndarray) or not len(values):
                continue
            got = values.shape[1:]
            if got != shape and int(np.prod(got)) != int(np.prod(shape)):
                raise DatasetFormatError(
                    f"{where}: episode {episode}: feature {name!r} has "
                    f"{int(np.prod(got))} values per row but info.json declares shape "
                    f"{list(self.meta.features[name].shape)}"
                )

    def close(self) -> None:
        for handle, _, _ in self._files.values():
            handle.close()
        self._files.clear()


def declared_row_shape(feature: Any) -> tuple[int, ...] | None:
    """The per-row shape a tabular feature's column must have (None: not checked)."""
    if feature.dtype in ("image", "video", "string", "language"):
        return None
    shape = tuple(feature.shape)
    return () if shape == (1,) else shape


def image_frames(ep: EpisodeData, key: str, indices: np.ndarray) -> Any:
    """Decode ``image`` features (PNG/JPEG bytes stored in the parquet) to uint8 HWC frames."""
    import io

    from PIL import Image

    out = []
    for i in indices:
        cell = ep.columns[key][int(i)]
        raw = cell.get("bytes") if isinstance(cell, dict) else cell
        if raw is None:
            raise DatasetFormatError(
                f"episode {ep.episode}, frame {int(i)}: image feature {key!r} has no bytes"
            )
        with Image.open(io.BytesIO(raw)) as im:
            out.append(np.asarray(im.convert("RGB")))
    return out
