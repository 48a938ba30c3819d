"""framestream.stream.schedule / shuffle: the pure reference layer (no I/O)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from resume_harness import Resumable, check_save_load

from framestream.stream.plan import Segment
from framestream.stream.schedule import Schedule, ScheduleConfig
from framestream.stream.shuffle import Reservoir

SEGMENTS = [Segment(3, 0, 17), Segment(1, 5, 9), Segment(4, 0, 0), Segment(0, 0, 30)]
TOTAL = 17 + 4 + 30


def config(shuffle=True, active=2, buffer=8, warmup=3):
    return ScheduleConfig(
        shuffle=shuffle, active_shards=active, buffer_size=buffer, shuffle_warmup=warmup
    )


def drain(s: Schedule, n: int = 10**9) -> list[tuple[int, int]]:
    out = []
    while len(out) < n:
        ref = s.next_ref()
        if ref is None:
            break
        out.append((s.segment(ref[0]).episode, ref[1]))
        s.done(ref[0])
    return out


@pytest.mark.parametrize("shuffle", [True, False])
def test_every_frame_exactly_once(shuffle):
    got = drain(Schedule(SEGMENTS, config(shuffle), [1, 2]))
    want = [(s.episode, f) for s in SEGMENTS for f in range(s.start, s.stop)]
    assert Counter(got) == Counter(want) and len(got) == TOTAL


def test_unshuffled_is_in_order():
    got = drain(Schedule(SEGMENTS, config(False), [0]))
    assert got == [(s.episode, f) for s in SEGMENTS for f in range(s.start, s.stop)]


def test_order_depends_on_the_key_only():
    a = drain(Schedule(SEGMENTS, config(), [7, 0]))
    assert a == drain(Schedule(SEGMENTS, config(), [7, 0]))
    assert a != drain(Schedule(SEGMENTS, config(), [7, 1]))


def test_active_shards_bounds_open_segments():
    s = Schedule(SEGMENTS, config(active=2), [0])
    opened = set()
    while (ref := s.next_ref()) is not None:
        opened.add(ref[0])
        assert len(s.active) <= 2
        s.done(ref[0])
    assert opened == {0, 1, 2}  # the empty segment gets no reader id


@pytest.mark.parametrize("shuffle", [True, False])
def test_save_load_harness(shuffle):
    def take(s, n):
        return drain(s, n)

    def restore(state):
        s = Schedule(SEGMENTS, config(shuffle), [5])
        s.load_state_dict(state)
        return s

    check_save_load(
        Resumable(
            lambda: Schedule(SEGMENTS, config(shuffle), [5]),
            take,
            lambda s: s.state_dict(),
            restore,
        ),
        stops=[0, 1, 2, 3, 10, 25, TOTAL - 1, TOTAL],
        total=TOTAL,
    )


def test_fast_forward_equals_draining():
    a, b = Schedule(SEGMENTS, config(), [2]), Schedule(SEGMENTS, config(), [2])
    assert a.fast_forward(20) == 20
    drain(b, 20)
    assert drain(a) == drain(b)
    assert Schedule(SEGMENTS, config(), [2]).fast_forward(10**6) == TOTAL


def test_remaining_segments_cover_what_is_left():
    s = Schedule(SEGMENTS, config(), [3])
    seen = drain(s, 12)
    left = [(g.episode, f) for g in s.remaining_segments() for f in range(g.start, g.stop)]
    assert Counter(seen) + Counter(left) == Counter(
        (g.episode, f) for g in SEGMENTS for f in range(g.start, g.stop)
    )


def test_drop_forgets_a_reader_and_counts_what_is_lost():
    s = Schedule(SEGMENTS, config(), [4])
    ref = s.next_ref()
    rid = ref[0]
    episode, owed = s.segment(rid).episode, s.segment(rid).size
    lost = s.drop(rid)
    assert lost == owed  # the failing reference, its reservoir entries and its cursor rest
    rest = drain(s)
    assert all(e != episode for e, _ in rest)
    assert len(rest) == TOTAL - owed


def test_finished_only_at_the_end():
    s = Schedule(SEGMENTS, config(), [0])
    assert not s.finished
    drain(s)
    assert s.finished


def test_reservoir_save_load_harness():
    def make():
        rng = np.random.default_rng(3)
        return [Reservoir(16, rng, warmup=4), rng, 0]

    def take(obj, n):
        res, _, _ = obj
        out = []
        while len(out) < n and (obj[2] < 100 or len(res)):
            while res.wants_more() and obj[2] < 100:
                res.push((0, obj[2]))
                obj[2] += 1
            out.append(res.pop()[1])
        return out

    def save(obj):
        return {"res": obj[0].state_dict(), "rng": obj[1].bit_generator.state, "next": obj[2]}

    def restore(state):
        obj = make()
        obj[0].load_state_dict(state["res"])
        obj[1].bit_generator.state = state["rng"]
        obj[2] = state["next"]
        return obj

    n = check_save_load(Resumable(make, take, save, restore), stops=[0, 1, 5, 50, 99], total=100)
    assert n == 100


def test_reservoir_is_uniform_enough():
    rng = np.random.default_rng(0)
    firsts = Counter()
    for _ in range(2000):
        r = Reservoir(4, rng, warmup=4)
        for i in range(4):
            r.push((0, i))
        firsts[r.pop()[1]] += 1
    assert all(400 < c < 600 for c in firsts.values()), firsts


def test_opening_ahead_changes_no_order():
    """open_next() opens what the first next_ref() would (a worker's prepared pass) without
    drawing from the RNG: the stream is the same."""
    ahead = Schedule(SEGMENTS, config(active=3), [7])
    ahead.open_next()
    assert len(ahead.active) == 3 and ahead.emitted == 0
    assert drain(ahead) == drain(Schedule(SEGMENTS, config(active=3), [7]))
