"""framestream.stream.ledger: a worker's memory budget, accounted exactly and kept.

The pure half drives schedules with a memory model and checks the ledger against a brute-force
recount (which frames were decoded, minus those whose every user has left); the dataset half
checks that the readers store exactly the frames the ledger says, on real decoded video, and
that a budgeted stream still delivers every sample once and resumes exactly.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from resume_harness import Resumable, check_save_load

from framestream import StreamingLeRobotDataset
from framestream.format.meta import DatasetMeta
from framestream.stream.budget import memory_model
from framestream.stream.ledger import Ledger, MemoryModel, SegmentLedger
from framestream.stream.options import (
    DEFAULT_MEMORY_BUDGET,
)
from framestream.stream.plan import Segment
from framestream.stream.schedule import Schedule, ScheduleConfig
from framestream.testing import decode_frame_id

LENGTHS = {0: 40, 1: 25, 2: 30, 3: 18, 4: 33}
SEGMENTS = [Segment(0, 0, 40), Segment(1, 5, 25), Segment(2, 0, 30), Segment(3, 0, 18)]
SEGMENTS += [Segment(4, 3, 33)]
TOTAL = sum(s.size for s in SEGMENTS)
OFFSETS = ((-4, -2, 0), (0, 2))  # camera 0 looks back, camera 1 ahead
FRAME_BYTES = (1000, 300)


def model(frames_budget: int | None, capped: bool = True, align: int = 1) -> MemoryModel:
    return MemoryModel(
        offsets=OFFSETS,
        frame_bytes=FRAME_BYTES,
        length=LENGTHS.__getitem__,
        decode_chunk=3,
        chunk_within_produced=capped,
        frames_budget=frames_budget,
        decode_align=align,
    )


def config(
    frames_budget: int | None,
    *,
    buffer: int = 10_000,
    memory: bool = True,
    capped: bool = True,
    align: int = 1,
):
    return ScheduleConfig(
        shuffle=True,
        active_shards=3,
        buffer_size=buffer,
        shuffle_warmup=buffer,
        memory=model(frames_budget, capped, align) if memory else None,
    )


class Recount:
    """Held bytes the slow way: frames some step decoded, minus those with no user left."""

    def __init__(self) -> None:
        self.decoded: dict[tuple[int, int], set[int]] = {}  # (episode, camera) -> frames
        self.left: dict[int, set[int]] = {}  # episode -> samples that left

    def step(self, episode: int, frame: int, step) -> None:
        self.left.setdefault(episode, set()).add(frame)
        for cam, todo in enumerate(step.decode):
            self.decoded.setdefault((episode, cam), set()).update(todo.tolist())

    def held(self, open_segments: list[Segment]) -> int:
        total = 0
        for seg in open_segments:
            last = LENGTHS[seg.episode] - 1
            waiting = set(range(seg.start, seg.stop)) - self.left.get(seg.episode, set())
            for cam, offs in enumerate(OFFSETS):
                users = {min(max(s + o, 0), last) for s in waiting for o in offs}
                kept = self.decoded.get((seg.episode, cam), set()) & users
                total += len(kept) * FRAME_BYTES[cam]
        return total


def drain(s: Schedule, recount: Recount | None = None, budget: int | None = None):
    out = []
    while (ref := s.next_ref()) is not None:
        seg = s.segment(ref[0])
        if recount is not None:
            recount.step(seg.episode, ref[1], s.ledger.segments[ref[0]].step)
        s.done(ref[0])
        out.append((seg.episode, ref[1]))
        if recount is not None:
            led = s.ledger
            open_segs = [s.segment(r) for r in led.segments]
            assert led.held == recount.held(open_segs) == sum(g.held for g in led.segments.values())
            assert led.held <= led.committed
            assert led.committed == sum(g.committed for g in led.segments.values())
            for rid, g in led.segments.items():  # what a restore would rebuild from scratch
                seg, pos = s.segment(rid), s.cursor(rid)
                pending = np.array(s.pending(rid) + list(range(seg.start + pos, seg.stop)))
                through = seg.start + pos - 1 if pos else -1
                again = SegmentLedger(
                    s.ledger.model, seg.episode, pending, through=through, last=g.last()
                )
                assert (again.held, again.committed) == (g.held, g.committed)
            if budget is not None:
                assert led.committed <= budget, (len(out), led.committed)
    return out


@pytest.mark.parametrize(("capped", "align"), [(True, 1), (False, 1), (True, 2), (True, 3)])
def test_budget_bounds_what_is_held_and_shrinks_the_reservoir(capped, align):
    budget = 24_000  # ~15 frames of camera 0 beside its partners; the reservoir wants 10000
    s = Schedule(SEGMENTS, config(budget, capped=capped, align=align), [1, 2])
    got = drain(s, Recount(), budget)
    want = [(g.episode, f) for g in SEGMENTS for f in range(g.start, g.stop)]
    assert Counter(got) == Counter(want) and len(got) == TOTAL
    assert s.limited > 0 and s.reservoir_limited_min is not None
    assert 0 < s.ledger.peak_held <= s.ledger.peak_committed <= budget
    # the reservoir was limited: unbudgeted, the whole share sits in it at some point
    free = Schedule(SEGMENTS, config(None, capped=capped), [1, 2])
    drain(free, Recount())
    assert free.limited == 0 and free.ledger.peak_held > budget
    assert s.reservoir_sum < free.reservoir_sum


def test_an_unlimited_ledger_changes_no_order():
    for buffer in (4, 10_000):
        plain = drain(Schedule(SEGMENTS, config(None, buffer=buffer, memory=False), [3]))
        assert drain(Schedule(SEGMENTS, config(None, buffer=buffer), [3])) == plain
        assert drain(Schedule(SEGMENTS, config(10**9, buffer=buffer), [3])) == plain


def test_a_budget_below_one_window_still_progresses():
    s = Schedule(SEGMENTS, config(1), [4])  # nothing fits: one reference at a time
    got = drain(s, Recount())
    assert len(got) == TOTAL == len(set(got))
    assert s.reservoir_limited_min == 1


@pytest.mark.parametrize(("budget", "align"), [(9_000, 1), (24_000, 1), (24_000, 2)])
def test_save_load_replays_the_budget_exactly(budget, align):
    def restore(state):
        s = Schedule(SEGMENTS, config(budget, align=align), [5])
        s.load_state_dict(state)
        return s

    check_save_load(
        Resumable(
            lambda: Schedule(SEGMENTS, config(budget, align=align), [5]),
            _take,
            lambda s: s.state_dict(),
            restore,
        ),
        stops=[0, 1, 7, 30, 61, TOTAL - 1, TOTAL],
        total=TOTAL,
    )


def _take(s: Schedule, n: int) -> list:
    out = []
    while len(out) < n and (item := _one(s)) is not None:
        out.append(item)
    return out


def _one(s: Schedule):
    ref = s.next_ref()
    if ref is None:
        return None
    s.done(ref[0])
    return (s.ledger.committed if s.is_open(ref[0]) else -1, ref)


def test_fast_forward_replays_the_ledger():
    a, b = Schedule(SEGMENTS, config(9_000), [2]), Schedule(SEGMENTS, config(9_000), [2])
    assert a.fast_forward(50) == 50
    for _ in range(50):
        _one(b)
    assert (a.ledger.committed, a.ledger.held) == (b.ledger.committed, b.ledger.held)
    assert drain(a) == drain(b)


def test_ledger_is_only_counts():
    led = Ledger(model(None, capped=False))
    seg = led.open(0, 0, np.arange(0, 10))
    led.produced(0, 0)
    step = led.emit(0, 0)
    assert step.decode[0].tolist() == [0, 1, 2]  # window {0}, then a chunk of 3
    assert step.decode[1].tolist() == [0, 1, 2]  # window {0, 2}
    assert step.release == [[], [0]]  # camera 0's frame 0 waits for samples 2 and 4
    assert seg.held_frames(0) == [0, 1, 2] and seg.held_frames(1) == [1, 2]
    assert led.held == 3 * 1000 + 2 * 300
    # samples 1 and 2 produced: either leaving decodes camera 1's next chunk (3, 4, 5) and no
    # further, so exactly that much is committed beyond what is held
    led.produced(0, 1)
    led.produced(0, 2)
    assert led.committed == led.held + 3 * 300
    led.emit(0, 2)
    assert seg.held_frames(1) == [1, 3, 4, 5] and led.committed == led.held
    # capped (the shuffle), decoding never runs past the produced samples' windows
    led = Ledger(model(None, capped=True))
    seg = led.open(0, 0, np.arange(0, 10))
    led.produced(0, 0)
    assert [d.tolist() for d in led.emit(0, 0).decode] == [[0], [0, 1, 2]]
    led.produced(0, 1)
    assert led.committed == led.held + 1 * 1000 + 1 * 300  # frames 1 and 3


@pytest.mark.parametrize("capped", [True, False])
@pytest.mark.parametrize("budget", [6_000, 9_000, 24_000])
def test_allowed_readers_match_a_fresh_recount_at_every_step(budget, capped):
    """The ledger keeps each reader's next-reference cost until that reader changes: at
    every step of a budget-bound schedule (with a drop), the readers it allows are those a
    fresh ledger-wide recount allows, and the budget binds at some of those steps."""

    def recount(s: Schedule) -> list[int]:
        led = s.ledger
        room = led.model.frames_budget - led.committed
        fresh = []
        for rid in s.active:
            if led.segments[rid].cost_of(s._next_frame(rid)) <= room:
                fresh.append(rid)
        return fresh

    s = Schedule(SEGMENTS, config(budget, capped=capped, align=2), [3])
    steps = binding = 0
    while True:
        if s.active and not s.ledger.roomy():
            got = s.ledger.allowed(s.active, s._next_frame)
            assert got == recount(s), steps
            binding += len(got) < len(s.active)
        ref = s.next_ref()
        if ref is None:
            break
        steps += 1
        if steps == 40:
            s.drop(ref[0])
            continue
        s.done(ref[0])
    assert steps > 40 and binding > 0


@pytest.mark.parametrize("align", [2, 3])
def test_aligned_decoding_leaves_a_keyframe_next(align):
    """With decode_align, every decode call after a segment's first starts on a multiple of
    the keyframe spacing (where a shared decoder's seek wastes nothing), and no frame is
    decoded twice or never."""
    s = Schedule(SEGMENTS, config(24_000, align=align), [6])
    starts: dict[tuple[int, int], list[int]] = {}
    decoded: Counter = Counter()
    while (ref := s.next_ref()) is not None:
        seg = s.segment(ref[0])
        for cam, todo in enumerate(s.ledger.segments[ref[0]].step.decode):
            if len(todo):
                starts.setdefault((ref[0], cam), []).append(int(todo[0]))
                decoded.update((seg.episode, cam, int(f)) for f in todo)
        s.done(ref[0])
    later = [f for calls in starts.values() for f in calls[1:]]
    assert later and all(f % align == 0 for f in later)
    assert max(decoded.values()) == 1
    plain = Schedule(SEGMENTS, config(24_000), [6])
    calls = 0
    while (ref := plain.next_ref()) is not None:
        calls += sum(1 for t in plain.ledger.segments[ref[0]].step.decode if len(t))
        plain.done(ref[0])
    assert sum(len(c) for c in starts.values()) < calls  # and fewer, longer calls


# ---------------------------------------------------------------------- on real video
WINDOW = {"observation.images.cam0": [-0.1, -1 / 30, 0.0], "observation.images.cam1": [0.0]}


@pytest.fixture(scope="module")
def meta(small_root):
    return DatasetMeta(str(small_root))


def make(meta, budget, **kw):
    return StreamingLeRobotDataset(
        meta.source.url,
        meta=meta,
        delta_timestamps=WINDOW,
        return_uint8=True,
        seed=4,
        buffer_size=10_000,
        active_shards=4,
        memory_budget=budget,
        **kw,
    )


def budget_for(meta, frames: int) -> int:
    """A budget leaving room for about ``frames`` frames of each camera."""
    ds = make(meta, None)
    base = memory_model(ds.meta, ds.window, ds.options)
    need = frames * sum(base.frame_bytes) + base.fixed_bytes  # decoders only, without budget
    return max(DEFAULT_MEMORY_BUDGET // 64, need * 4 // 3 + 1)


def identify(sample) -> tuple[int, int]:
    ep, fr = int(sample["episode_index"]), int(sample["frame_index"])
    for key in ("observation.images.cam0", "observation.images.cam1"):
        img = sample[key]
        fid = decode_frame_id(img[-1] if img.ndim == 4 else img)
        assert (fid.episode, fid.frame) == (ep, fr), key
    return ep, fr


def test_readers_store_exactly_what_the_ledger_holds(meta):
    ds = make(meta, budget_for(meta, 48))
    seen = []
    for sample in ds:
        seen.append(identify(sample))
        stream = ds._stream
        led = stream.schedule.ledger
        stored = 0
        for rid, reader in stream.readers.items():
            for key, cam in reader.cameras.items():
                assert sorted(cam.store) == led.segments[rid].held_frames(cam.index), key
                stored += sum(a.nbytes for a in cam.store.values())
        assert stored == led.held <= led.committed <= led.model.frames_budget
    assert len(seen) == len(set(seen)) == meta.total_frames
    stats = ds.stats()
    assert stats["memory_limited_samples"] > 0 and stats["reservoir_limited_min"] is not None
    assert stats["memory_peak_bytes"] <= ds.options.memory_budget
    assert 0 < stats["memory_frames_peak_bytes"] <= stats["memory_peak_bytes"]


@pytest.mark.parametrize("stop", [5, 40, 97])
def test_exact_resume_with_the_budget_limiting(meta, stop):
    budget = budget_for(meta, 48)
    full = make(meta, budget)
    want = [identify(s) for s in full]
    assert full.stats()["memory_limited_samples"] > 0
    first = make(meta, budget)
    it = iter(first)
    head = [identify(next(it)) for _ in range(stop)]
    state = json.loads(json.dumps(first.state_dict()))
    again = make(meta, budget)
    again.load_state_dict(state)
    rest = [identify(s) for s in again]
    assert head + rest == want


def test_exact_resume_in_dataloader_workers_with_the_budget_limiting(meta):
    from itertools import islice

    from torchdata.stateful_dataloader import StatefulDataLoader

    budget = budget_for(meta, 48)

    made = []

    def loader(state=None):
        made.append(make(meta, budget))
        dl = StatefulDataLoader(made[-1], batch_size=4, num_workers=2, timeout=120)
        if state is not None:
            dl.load_state_dict(state)
        return dl

    def ids(batches) -> list[tuple[int, int]]:
        out = []
        for b in batches:
            for i in range(len(b["frame_index"])):
                out.append(identify({k: v[i] for k, v in b.items()}))
        return out

    want = ids(loader())
    assert made[0].stats()["memory_limited_samples"] > 0  # published by the workers
    first = loader()
    it = iter(first)
    head = ids(islice(it, 9))
    state = json.loads(json.dumps(first.state_dict()))
    rest = ids(loader(state))
    assert head + rest == want and len(want) == meta.total_frames


def test_idle_frame_buffers_are_bounded_by_an_eighth_of_the_frames_share(meta):
    from framestream.decode import buffers

    budget = budget_for(meta, 48)
    ds = make(meta, budget)
    it = iter(ds)
    next(it)
    frames_budget = ds._stream.schedule.ledger.model.frames_budget
    assert frames_budget is not None and frames_budget < buffers.MAX_FREE_BYTES
    cap = int(frames_budget * buffers.IDLE_SHARE)
    assert buffers.pool().max_free_bytes == cap
    for _ in it:
        pass
    assert buffers.pool()._free_bytes <= cap
    unbounded = make(meta, None)
    next(iter(unbounded))
    assert buffers.pool().max_free_bytes == buffers.MAX_FREE_BYTES
