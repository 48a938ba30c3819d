"""The table layer on its own: TableReader and the row checks it shares with ``validate``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from framestream import DatasetFormatError
from framestream.format import checks
from framestream.format.meta import DatasetMeta
from framestream.format.tables import TableReader
from framestream.testing import action_ids, state_ids
from tests.conftest import copy_dataset


def _rewrite(root: Path, rel: str, change) -> None:
    path = root / rel
    pq.write_table(change(pq.read_table(path)), path)


def _only(table: pa.Table, episode: int, keep: bool) -> pa.Array:
    hit = pc.equal(table.column("episode_index"), episode)
    return hit if keep else pc.invert(hit)


def test_reads_an_episodes_rows_in_frame_order(small_root):
    meta = DatasetMeta(str(small_root))
    reader = TableReader(meta)
    try:
        for episode in (0, 3):
            row = meta.episodes.row(episode)
            length, start = int(meta.episodes.length[row]), int(meta.episodes.from_index[row])
            data = reader.read(episode)
            assert (data.episode, data.length, data.from_index) == (episode, length, start)
            assert np.array_equal(data.columns["frame_index"], np.arange(length))
            assert np.array_equal(data.columns["index"], start + np.arange(length))
            np.testing.assert_allclose(data.timestamps, np.arange(length) / meta.fps, atol=1e-6)
            for k in (0, length - 1):
                expected = (episode, k, start + k)
                assert state_ids(data.columns["observation.state"][k]) == expected
                assert action_ids(data.columns["action"][k]) == expected
    finally:
        reader.close()


def test_recent_episodes_are_kept_not_read_again(small_root, monkeypatch):
    """Shuffle pieces open an episode once per piece: its rows are read once, while kept."""
    meta = DatasetMeta(str(small_root))
    reader = TableReader(meta, keep=2)
    reads = []
    real = reader._read
    monkeypatch.setattr(reader, "_read", lambda e: reads.append(e) or real(e))
    first = reader.read(0)
    assert reader.read(0) is first and reads == [0]
    reader.read(1)
    reader.read(2)  # 0 is the oldest of three: dropped
    assert reader.read(0) is not first and reads == [0, 1, 2, 0]
    assert np.array_equal(reader.read(0).columns["index"], first.columns["index"])
    reader.close()


def test_rows_stored_out_of_order_come_back_in_order(small_root, tmp_path):
    root = copy_dataset(small_root, tmp_path / "ds")
    meta = DatasetMeta(str(root))
    episode = 2
    _rewrite(root, meta.data_file(episode), lambda t: t.take(pa.array(range(t.num_rows)[::-1])))
    data = TableReader(meta).read(episode)
    assert np.array_equal(data.columns["frame_index"], np.arange(data.length))
    assert state_ids(data.columns["observation.state"][1])[1] == 1


def test_a_missing_column_names_the_file_and_episode(small_root, tmp_path):
    root = copy_dataset(small_root, tmp_path / "ds")
    meta = DatasetMeta(str(root))
    episode = 1
    rel = meta.data_file(episode)
    _rewrite(root, rel, lambda t: t.drop_columns(["observation.state"]))
    with pytest.raises(DatasetFormatError) as info:
        TableReader(meta).read(episode)
    message = str(info.value)
    assert rel in message and f"episode {episode}:" in message
    assert "missing data columns ['observation.state']" in message


def test_a_wrong_row_count_names_the_file_and_episode(small_root, tmp_path):
    root = copy_dataset(small_root, tmp_path / "ds")
    meta = DatasetMeta(str(root))
    episode = 1
    rel = meta.data_file(episode)

    def drop_last_row(t: pa.Table) -> pa.Table:
        mine = np.nonzero(_only(t, episode, keep=True).to_numpy(zero_copy_only=False))[0]
        keep = np.ones(t.num_rows, dtype=bool)
        keep[mine[-1]] = False
        return t.filter(pa.array(keep))

    _rewrite(root, rel, drop_last_row)
    length = int(meta.episodes.length[meta.episodes.row(episode)])
    with pytest.raises(DatasetFormatError) as info:
        TableReader(meta).read(episode)
    message = str(info.value)
    assert rel in message and f"episode {episode}:" in message
    assert f"says {length} frames but the data file holds {length - 1} rows" in message


def test_a_shifted_global_index_is_refused(small_root, tmp_path):
    root = copy_dataset(small_root, tmp_path / "ds")
    meta = DatasetMeta(str(root))
    episode = 0
    rel = meta.data_file(episode)

    def shift(t: pa.Table) -> pa.Table:
        i = t.column_names.index("index")
        index = t.column("index").to_numpy().copy()
        mine = _only(t, episode, keep=True).to_numpy(zero_copy_only=False)
        index[np.nonzero(mine)[0][3]] += 1000  # one row in the middle: the ends still agree
        return t.set_column(i, t.field(i), pa.array(index))

    _rewrite(root, rel, shift)
    with pytest.raises(DatasetFormatError, match=f"episode {episode}: 'index' runs"):
        TableReader(meta).read(episode)


# ----------------------------------------------------------------------------- the checks
def test_checks_return_problems_instead_of_raising():
    assert checks.missing_columns(["a", "b"], ["a", "b"]) is None
    assert checks.missing_columns(["a"], ["a", "b", "c"]).message == (
        "missing data columns ['b', 'c']"
    )
    assert checks.row_count(5, 5) is None
    assert "holds 4 rows" in checks.row_count(4, 5).message
    assert checks.frame_order(np.arange(4), 4) == (None, None)
    order, problem = checks.frame_order(np.array([2, 0, 1]), 3)
    assert problem is None and order.tolist() == [1, 2, 0]
    assert checks.frame_order(np.array([0, 0, 1]), 3)[1].message == "frame_index is not 0..2"
    assert checks.global_index(np.arange(10, 14), 10, 4) is None
    assert checks.global_index(np.array([10, 11, 99, 13]), 10, 4) is not None
    assert checks.timestamps(np.arange(4, dtype=np.float32) / 30, 30, 1e-4) is None
    off = checks.timestamps(np.array([0, 1 / 30, 0.5, 3 / 30]), 30, 1e-4)
    assert off.check == "data" and "frame 2" in off.message
    assert checks.timestamps(np.array([0.0, np.nan]), 30, 1e-4) is not None
    values = np.zeros((4, 2), dtype=np.float32)
    assert checks.nan_values("s", values, 4) is None
    values[2, 1] = np.nan
    nan = checks.nan_values("s", values, 4)
    assert nan.check == "nan" and nan.message.startswith("feature 's' is NaN at frame 2")
    assert checks.nan_values("s", [1, 2], 2) is None  # not a float array: nothing to check
    error = nan.error("data/file-000.parquet", 7)
    assert isinstance(error, DatasetFormatError)
    assert str(error).startswith("data/file-000.parquet: episode 7: feature 's' is NaN")
