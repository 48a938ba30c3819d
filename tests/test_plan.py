"""The plan is a pure function: disjoint, complete, balanced, deterministic."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from framestream.stream.plan import (
    Plan,
    Segment,
    epoch_order,
    make_plan,
    partition,
    resolve_rank,
)


def plan_all(
    episodes: np.ndarray,
    lengths: np.ndarray,
    *,
    seed: int,
    epoch: int,
    shuffle: bool,
    world_size: int,
    num_workers: int,
    even_ranks: bool = False,
) -> dict[tuple[int, int], Plan]:
    """Every (rank, worker)'s plan."""
    return {
        (r, w): make_plan(
            episodes,
            lengths,
            seed=seed,
            epoch=epoch,
            shuffle=shuffle,
            rank=r,
            world_size=world_size,
            worker=w,
            num_workers=num_workers,
            even_ranks=even_ranks,
        )
        for r in range(world_size)
        for w in range(max(1, num_workers))
    }


def frames_of(segments):
    return [(s.episode, f) for s in segments for f in range(s.start, s.stop)]


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("num_workers", [1, 2, 3, 7])
@pytest.mark.parametrize("n_episodes", [1, 2, 5, 40])
def test_every_frame_exactly_once(world_size, num_workers, n_episodes):
    rng = np.random.default_rng(n_episodes)
    episodes = np.arange(n_episodes)
    lengths = rng.integers(20, 60, n_episodes)
    plans = plan_all(
        episodes,
        lengths,
        seed=3,
        epoch=1,
        shuffle=True,
        world_size=world_size,
        num_workers=num_workers,
    )
    got = Counter(f for p in plans.values() for f in frames_of(p.segments))
    want = {(int(e), f) for e, n in zip(episodes, lengths, strict=True) for f in range(n)}
    assert set(got) == want
    assert max(got.values()) == 1
    # every worker busy as long as there are at least as many frames as workers
    assert all(p.num_samples > 0 for p in plans.values())


def test_ranks_get_whole_episodes_balanced_by_frames():
    episodes = np.arange(40)
    lengths = np.random.default_rng(0).integers(120, 300, 40)
    plans = plan_all(episodes, lengths, seed=0, epoch=0, shuffle=True, world_size=4, num_workers=1)
    per_rank = [plans[(r, 0)] for r in range(4)]
    for p in per_rank:
        assert all(s.start == 0 and s.stop == lengths[s.episode] for s in p.segments)
    counts = [p.num_samples for p in per_rank]
    assert max(counts) - min(counts) <= lengths.max()
    eps = [s.episode for p in per_rank for s in p.segments]
    assert len(eps) == len(set(eps)) == 40


def test_single_episode_is_split_across_workers():
    plans = plan_all(
        np.array([7]), np.array([100]), seed=0, epoch=0, shuffle=True, world_size=1, num_workers=3
    )
    sizes = [plans[(0, w)].num_samples for w in range(3)]
    assert sizes == [33, 34, 33]
    assert {s.episode for p in plans.values() for s in p.segments} == {7}


def test_even_ranks_pads_with_flagged_repeats():
    episodes = np.arange(5)
    lengths = np.array([10, 50, 20, 31, 7])
    plans = plan_all(
        episodes,
        lengths,
        seed=1,
        epoch=0,
        shuffle=True,
        world_size=2,
        num_workers=2,
        even_ranks=True,
    )
    counts = {k: p.num_samples for k, p in plans.items()}
    assert len(set(counts.values())) == 1
    real = Counter(
        f for p in plans.values() for s in p.segments if not s.repeat for f in frames_of([s])
    )
    assert sum(real.values()) == lengths.sum() and max(real.values()) == 1
    assert any(s.repeat for p in plans.values() for s in p.segments)


def test_order_depends_on_seed_and_epoch_only():
    eps = np.arange(30)
    a = epoch_order(eps, seed=1, epoch=0, shuffle=True)
    assert np.array_equal(a, epoch_order(eps, seed=1, epoch=0, shuffle=True))
    assert not np.array_equal(a, epoch_order(eps, seed=1, epoch=1, shuffle=True))
    assert not np.array_equal(a, epoch_order(eps, seed=2, epoch=0, shuffle=True))
    assert np.array_equal(epoch_order(eps, seed=1, epoch=5, shuffle=False), eps)


def test_shuffle_false_keeps_order():
    p = make_plan(
        np.array([4, 2, 9]),
        np.array([5, 5, 5]),
        seed=0,
        epoch=3,
        shuffle=False,
        rank=0,
        world_size=1,
        worker=0,
        num_workers=1,
    )
    assert [s.episode for s in p.segments] == [4, 2, 9]


def test_partition_cuts_inside_segments_when_needed():
    parts = partition([Segment(0, 0, 10), Segment(1, 0, 2)], 4)
    assert [sum(s.size for s in p) for p in parts] == [3, 3, 3, 3]


def test_resolve_rank_from_env(monkeypatch):
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert resolve_rank(None, None) == (2, 3)
    assert resolve_rank(0, 1) == (0, 1)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert resolve_rank(None, None) == (0, 1)
    with pytest.raises(ValueError):
        resolve_rank(3, 2)


def test_accelerate_single_process_does_not_hide_the_launchers_world(monkeypatch):
    accelerate_state = pytest.importorskip("accelerate.state")

    class FakeState:
        _shared_state = {"initialised": True}

        def __init__(self, n=1, i=0):
            self.num_processes, self.process_index = n, i

    monkeypatch.setattr(accelerate_state, "PartialState", FakeState)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.warns(UserWarning, match="cpu=True"):
        assert resolve_rank(None, None) == (1, 2)
    monkeypatch.setattr(accelerate_state, "PartialState", lambda: FakeState(4, 3))
    monkeypatch.setattr(accelerate_state.PartialState, "_shared_state", {"x": 1}, raising=False)
    assert resolve_rank(None, None) == (3, 4)


def test_rank_detection_does_not_import_accelerate():
    # A process that never imported Accelerate has no Accelerate state to read: importing
    # the package only to look cost each DataLoader worker ~1.3 s before its first sample.
    code = (
        "import sys\n"
        "from framestream.stream.plan import resolve_rank\n"
        "print(resolve_rank(None, None), 'accelerate' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["(0,", "1)", "False"]
