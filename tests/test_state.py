"""framestream.stream.state: tagged records, parsed in one place."""

from __future__ import annotations

import pytest

from framestream import StateDictError, StreamingLeRobotDataset, merge_states
from framestream.stream.state import STATE_VERSION, find_states, parse_state


@pytest.fixture(scope="module")
def ds(small_root):
    return StreamingLeRobotDataset(str(small_root), seed=2, buffer_size=20, active_shards=2)


def test_idle_state_round_trips(ds):
    st = ds.state_dict()
    assert st["kind"] == "idle" and st["version"] == STATE_VERSION
    assert parse_state(st).to_dict() == st


def test_stream_state_is_tagged_and_parses(ds):
    it = iter(ds)
    next(it)
    st = ds.state_dict()
    assert st["kind"] == "stream" and len(st["streams"]) == 1
    parsed = parse_state(st)
    assert parsed.streams[0].layout == (0, 1, 0, 1)
    assert parsed.to_dict() == st
    del it


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s.pop("version"), "no 'version'"),
        (lambda s: s.update(version=1), "version 1"),
        (lambda s: s.update(kind="weird"), "unknown kind"),
        (lambda s: s.pop("epoch"), "no 'epoch'"),
        (lambda s: s.update(seed="x"), "malformed"),
    ],
)
def test_malformed_states_are_refused(ds, mutate, message):
    st = ds.state_dict()
    mutate(st)
    with pytest.raises(StateDictError, match=message):
        parse_state(st)


def test_another_seed_is_refused(ds, small_root):
    other = StreamingLeRobotDataset(str(small_root), seed=3)
    with pytest.raises(StateDictError, match="'seed' differs"):
        other.load_state_dict(ds.state_dict())


def test_find_states_walks_nested_loader_states(ds):
    st = ds.state_dict()
    nested = [{"a": {"dataset_state": st}}, ({"x": 1}, [st])]
    assert len(find_states(nested)) == 2
    merged = merge_states(nested)
    assert merged["kind"] == "merged"
    with pytest.raises(StateDictError, match="no framestream state"):
        merge_states([{"x": 1}])
