"""Mixing at the defaults: pieces of every episode in every worker, uniform positions from the
first batch on, exact coverage and resume with the new plan, the next pass prepared ahead.

The statistical checks run the pure plan and schedule (no I/O) with fixed seeds, so they are
deterministic; their bounds sit far from both the measured figures and the old behaviour's,
which each test also checks fails them.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from framestream import StateDictError, StreamingLeRobotDataset
from framestream.bench.shuffle import MixingRecorder, expected_distinct_episodes, ks_uniform
from framestream.format.meta import DatasetMeta
from framestream.stream.plan import Segment, make_plan
from framestream.stream.schedule import Schedule, ScheduleConfig
from framestream.testing import decode_frame_id

# The benchmark dataset's shape: 40 episodes of 120-300 frames.
EPISODES = np.arange(40)
LENGTHS = np.random.default_rng(0).integers(120, 301, 40)
NEW = {"chunk": 16, "lead": 32, "active": 32}  # what the dataset resolves for one frame
OLD = {"chunk": 0, "lead": 0, "active": 8}  # whole episodes, 8 open


def worker_stream(mix: dict, *, seed: int, worker: int, workers: int = 2) -> list[tuple[int, int]]:
    """(episode, frame) in the order one DataLoader worker emits them (pure: no I/O)."""
    plan = make_plan(
        EPISODES,
        LENGTHS,
        seed=seed,
        epoch=0,
        shuffle=True,
        rank=0,
        world_size=1,
        worker=worker,
        num_workers=workers,
        chunk=mix["chunk"],
        lead=mix["lead"],
    )
    sch = Schedule(plan.segments, ScheduleConfig(True, mix["active"], 1000, 64), [seed, 0, 0, 0])
    out = []
    while (ref := sch.next_ref()) is not None:
        out.append((sch.segment(ref[0]).episode, ref[1]))
        sch.done(ref[0])
    return out


def positions(refs: list[tuple[int, int]]) -> np.ndarray:
    return np.array([(f + 0.5) / LENGTHS[e] for e, f in refs])


def first_batch_positions(mix: dict) -> np.ndarray:
    return np.concatenate([positions(worker_stream(mix, seed=s, worker=0)[:32]) for s in range(8)])


def test_first_batch_positions_are_uniform_not_episode_starts():
    pos = first_batch_positions(NEW)  # 8 seeds x 32 samples
    # uniform: mean 0.5, KS distance ~0.05 for 256 draws; measured 0.51 / 0.06
    assert 0.4 < pos.mean() < 0.6
    assert ks_uniform(pos) < 0.15
    old = first_batch_positions(OLD)  # every open episode at its first frames
    assert old.mean() < 0.1 and ks_uniform(old) > 0.8


def test_a_worker_batch_mixes_like_a_global_shuffle():
    expected = expected_distinct_episodes(LENGTHS.tolist(), 32)["exact"]

    def quality(mix: dict) -> tuple[float, float]:
        stream = worker_stream(mix, seed=3, worker=1)
        batches = [stream[i : i + 32] for i in range(0, len(stream) - 31, 32)]
        distinct = [len({e for e, _ in b}) for b in batches]
        return np.mean(distinct[:10]) / expected, np.mean(distinct) / expected

    first, whole = quality(NEW)  # measured 0.93 / 0.95
    assert first > 0.85 and whole > 0.85
    old_first, old_whole = quality(OLD)  # measured 0.36 / 0.53
    assert old_first < 0.6 and old_whole < 0.7


@pytest.mark.parametrize("world_size", [1, 3])
@pytest.mark.parametrize("num_workers", [1, 2, 5])
@pytest.mark.parametrize("even_ranks", [False, True])
def test_chunked_plan_covers_every_frame_once_and_deals_every_episode(
    world_size, num_workers, even_ranks
):
    shares = [
        make_plan(
            EPISODES,
            LENGTHS,
            seed=1,
            epoch=2,
            shuffle=True,
            rank=r,
            world_size=world_size,
            worker=w,
            num_workers=num_workers,
            even_ranks=even_ranks,
            chunk=16,
            lead=32,
        ).segments
        for r in range(world_size)
        for w in range(num_workers)
    ]
    frames = Counter(
        (s.episode, f)
        for share in shares
        for s in share
        if not s.repeat
        for f in range(s.start, s.stop)
    )
    assert set(frames) == {
        (int(e), f) for e, n in zip(EPISODES, LENGTHS, strict=True) for f in range(n)
    }
    assert max(frames.values()) == 1
    if even_ranks:
        assert len({sum(s.size for s in share) for share in shares}) == 1
    for share in shares:  # pieces of most episodes (whole episodes: 40 / parts, <= 20)
        assert len({s.episode for s in share}) >= 20


def test_pieces_are_near_the_chunk_size_and_start_anywhere():
    segs = make_plan(
        EPISODES, LENGTHS, seed=0, epoch=0, shuffle=True, rank=0, world_size=1, worker=0,
        num_workers=1, chunk=16,
    ).segments  # fmt: skip
    sizes = np.array([s.size for s in segs])
    assert sizes.min() >= 8 and sizes.max() < 24
    starts = np.array([(s.start + 0.5) / LENGTHS[s.episode] for s in segs])
    assert ks_uniform(starts) < 0.1  # piece starts cover the episodes evenly
    # an episode's pieces are spread over the order: neighbours come from other episodes
    windows = [len({s.episode for s in segs[i : i + 32]}) for i in range(len(segs) - 32)]
    assert min(windows) >= 24  # measured 26-27 (pieces dealt episode by episode: ~3)


def test_lead_in_cuts_stay_within_their_decode_budget():
    def plan(cut_cost: int) -> tuple[Segment, ...]:
        return make_plan(
            EPISODES[:6], LENGTHS[:6], seed=0, epoch=0, shuffle=True, rank=0, world_size=1,
            worker=0, num_workers=1, chunk=4096, lead=8, cut_cost=cut_cost,
        ).segments  # fmt: skip

    assert len(plan(0)) == 12  # whole episodes, each cut once: tails first, heads later
    frames = int(LENGTHS[:6].sum())
    assert len(plan(frames // 16)) == 7  # one cut fits in 1/16 of the frames
    assert len(plan(frames)) == 6  # none does


# ---------------------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def meta(small_root):
    return DatasetMeta(str(small_root))


def make(meta, **kw) -> StreamingLeRobotDataset:
    return StreamingLeRobotDataset(meta.source.url, meta=meta, return_uint8=True, seed=7, **kw)


def lengths(meta) -> dict[int, int]:
    eps, n = meta.episodes.episode_index.tolist(), meta.episodes.length.tolist()
    return dict(zip(eps, n, strict=True))


def proven(batch) -> list[tuple[int, int]]:
    """(episode, frame) of each sample, checked against the frame's own pixels."""
    out = []
    for i, (e, f) in enumerate(zip(batch["episode_index"], batch["frame_index"], strict=True)):
        fid = decode_frame_id(batch["observation.images.cam0"][i])
        assert (fid.episode, fid.frame) == (int(e), int(f))
        out.append((int(e), int(f)))
    return out


def loader_order(ds: StreamingLeRobotDataset, epoch: int, batch: int) -> list[tuple[int, int]]:
    """What a fresh 2-worker DataLoader yields for ``epoch``, from the pure schedules."""
    o = ds.options
    config = ScheduleConfig(o.shuffle, o.active_shards, o.buffer_size, o.shuffle_warmup)
    batches = []
    for w in range(2):
        sch = Schedule(
            ds.plan(worker=w, num_workers=2, epoch=epoch).segments, config, [7, epoch, 0, w]
        )
        refs = []
        while (ref := sch.next_ref()) is not None:
            refs.append((sch.segment(ref[0]).episode, ref[1]))
            sch.done(ref[0])
        batches.append([refs[i : i + batch] for i in range(0, len(refs), batch)])
    out = []  # the DataLoader takes batches from its workers in turn
    for i in range(max(map(len, batches))):
        out += [x for b in batches if i < len(b) for x in b[i]]
    return out


def test_persistent_workers_start_each_pass_on_a_prepared_stream(meta):
    ds = make(meta)
    loader = DataLoader(ds, batch_size=4, num_workers=2, persistent_workers=True, timeout=120)
    every = Counter((e, f) for e, n in lengths(meta).items() for f in range(n))
    for epoch in (0, 1, 5):  # 1: the prepared epoch; 5: set_epoch jumps, nothing prepared fits
        ds.set_epoch(epoch)
        got = [x for b in loader for x in proven(b)]
        assert Counter(got) == every, epoch  # each frame exactly once per epoch
        assert got == loader_order(ds, epoch, 4), epoch  # what a fresh loader would stream
    # epoch 1's two workers started on prepared streams; epoch 5's were dropped
    assert ds.stats()["prepared_passes"] == 2


def test_cuts_re_decode_exactly_their_windows_overlap(meta):
    fps = meta.fps
    dt = {"observation.images.cam0": [-2 / fps, 0.0], "observation.images.cam1": [0.0, 1 / fps]}
    ds = make(meta, delta_timestamps=dt, shuffle_chunk=8)
    assert ds.mix_chunk() == 8
    n = sum(1 for _ in ds)
    assert n == meta.total_frames
    want = 0  # each segment's reader decodes the union of its samples' windows, once
    length = lengths(meta)
    for seg in ds.plan().segments:
        for offs in ([-2, 0], [0, 1]):
            idx = np.arange(seg.start, seg.stop)[:, None] + np.array(offs)[None, :]
            want += len(np.unique(np.clip(idx, 0, length[seg.episode] - 1)))
    decoded = ds.stats()["decoded_frames"]
    assert decoded == want
    assert decoded > 2 * meta.total_frames  # cuts did re-decode (what the option trades)


def test_a_state_is_refused_by_a_dataset_that_cuts_episodes_differently(meta):
    ds = make(meta)
    it = iter(ds)
    for _ in range(5):
        next(it)
    state = ds.state_dict()
    assert state["plan"] == {"chunk": 16, "lead": 32, "cut_cost": 0}
    other = make(meta, shuffle_pieces=False)  # e.g. a state saved before pieces were the default
    with pytest.raises(StateDictError, match="'plan' differs.*shuffle_pieces"):
        other.load_state_dict(state)
    same = make(meta)
    same.load_state_dict(state)
    rest = [(int(s["episode_index"]), int(s["frame_index"])) for s in same]
    assert len(rest) == meta.total_frames - 5


def test_mixing_recorder_figures():
    rec = MixingRecorder({0: 100, 1: 100}, batch_size=4, first=2)
    rec.add([0, 0, 1, 1], [0, 1, 2, 3], now=0.0, epoch=0)  # all near the start
    rec.add([0, 1, 0, 1], [50, 60, 70, 80], now=0.1, epoch=0)
    rec.add([0, 1, 0, 1], [10, 20, 30, 40], now=0.2, epoch=0)
    rec.add([0, 1, 0, 1], [10, 20, 30, 40], now=1.2, epoch=1)
    got = rec.summary(expected_distinct=2.0)
    assert got["position_mean_batch1"] == pytest.approx(np.mean([0.5, 1.5, 2.5, 3.5]) / 100)
    assert got["position_ks_batch1"] > 0.9
    assert got["median_frame_index_batch2"] == 65.0
    assert got["shuffle_quality_first2"] == 1.0
    assert got["epoch_boundary_gaps_s"] == [1.0]
    assert got["epoch_boundary_gap_ratio"] == pytest.approx(10.0)
    assert ks_uniform((np.arange(1000) + 0.5) / 1000) < 0.001


def test_mixing_recorder_keeps_no_view_of_a_batch():
    """A view would pin the batch's shared-memory slot (every later batch then takes the
    slow fresh-memory path); the recorder copies what it keeps."""
    rec = MixingRecorder({0: 100}, batch_size=2, first=2)
    episodes, frames = torch.tensor([0, 0]), torch.tensor([5, 6])
    rec.add(episodes, frames, now=0.0, epoch=0)
    frames += 50  # the batch's memory is reused for a later batch
    assert [f.tolist() for f in rec.frames] == [[5, 6]]


def test_defaults_follow_the_camera_window(meta):
    one = make(meta)  # one frame per camera: small pieces, 32 open
    assert (one.mix_chunk(), one.options.active_shards) == (16, 32)
    fps = meta.fps
    long = make(meta, delta_timestamps={"observation.images.cam0": [-150 / fps, 0.0]})
    # a cut re-decodes the 150-frame span: pieces of 16 x 150 (whole episodes here), and
    # fewer open pieces, each holding its window
    assert (long.mix_chunk(), long.options.active_shards) == (2400, 8)
    assert make(meta, shuffle=False).mix_chunk() == 0
    off = make(meta, shuffle_pieces=False)  # whole episodes, 8 open
    assert (off.mix_chunk(), off.options.active_shards) == (0, 8)
    assert make(meta, active_shards=5).options.active_shards == 5


def test_only_persistent_workers_prepare_the_next_pass():
    from framestream.datasets.loader_frames import persistent_worker

    def _worker_loop(persistent_workers: bool) -> bool:  # torch's worker loop, by its name
        return persistent_worker()

    assert _worker_loop(True) is True
    assert _worker_loop(False) is False
    assert persistent_worker() is False  # not in a DataLoader worker


def test_long_keyframe_intervals_keep_episodes_whole(tmp_path):
    from framestream.testing.synth import generate_synthetic_dataset

    root = generate_synthetic_dataset(
        tmp_path / "ds", num_episodes=2, min_length=40, max_length=40, height=48, width=80,
        codec="h264", gop=40, num_cameras=1, seed=0,
    )  # fmt: skip
    ds = StreamingLeRobotDataset(str(root), return_uint8=True)
    # a piece starts with a seek decoding up to 40 unused frames: pieces of 16 x 20 frames
    assert ds.mix_chunk() == 320
    # whole episodes, streamed as before pieces: no lead-in cut (a seek too), 8 open
    assert sorted((s.episode, s.start, s.stop) for s in ds.plan().segments) == [
        (0, 0, 40),
        (1, 0, 40),
    ]
    assert ds.options.active_shards == 8
