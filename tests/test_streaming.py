"""The streaming dataset: coverage across ranks and workers, parity, decode-once, shuffle."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from framestream import MapDataset, StreamingLeRobotDataset
from framestream.format.meta import DatasetMeta
from framestream.testing import decode_frame_id


def stream(ds: StreamingLeRobotDataset, num_workers: int = 0) -> list[dict]:
    if num_workers == 0:
        return list(ds)
    loader = DataLoader(ds, batch_size=None, num_workers=num_workers, timeout=120)
    return list(loader)


def check_frames(sample: dict, video_keys: list[str]) -> None:
    ep, fr = int(sample["episode_index"]), int(sample["frame_index"])
    for cam, key in enumerate(video_keys):
        fid = decode_frame_id(sample[key])
        assert (fid.episode, fid.frame, fid.camera) == (ep, fr, cam)


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("num_workers", [0, 1, 2, 3])
def test_ranks_and_workers_cover_the_epoch_once(small_root, world_size, num_workers):
    meta = DatasetMeta(str(small_root))
    got = Counter()
    for rank in range(world_size):
        ds = StreamingLeRobotDataset(
            str(small_root), rank=rank, world_size=world_size, return_uint8=True, seed=7, meta=meta
        )
        for s in stream(ds, num_workers):
            check_frames(s, meta.video_keys)
            got[int(s["index"])] += 1
    assert sorted(got) == list(range(meta.total_frames))
    assert max(got.values()) == 1


def test_more_workers_than_episodes_and_files(small_root):
    # 2 episodes, 4 workers: every worker gets part of an episode, none is idle
    meta = DatasetMeta(str(small_root))
    ds = StreamingLeRobotDataset(str(small_root), episodes=[3, 5], return_uint8=True, meta=meta)
    plans = [ds.plan(worker=w, num_workers=4) for w in range(4)]
    assert all(p.num_samples > 0 for p in plans)
    got = [int(s["index"]) for s in stream(ds, 4)]
    want = [
        i
        for e in (3, 5)
        for i in range(int(meta.episodes.from_index[e]), int(meta.episodes.to_index[e]))
    ]
    assert sorted(got) == want


def test_even_ranks_equal_counts_flagged(small_root):
    meta = DatasetMeta(str(small_root))
    per_rank, real = [], Counter()
    for rank in range(3):
        ds = StreamingLeRobotDataset(
            str(small_root), rank=rank, world_size=3, even_ranks=True, return_uint8=True, meta=meta
        )
        samples = stream(ds, 2)
        per_rank.append(len(samples))
        assert len(samples) == ds.num_samples(num_workers=2)
        for s in samples:
            check_frames(s, meta.video_keys)
            if not bool(s["is_repeat"]):
                real[int(s["index"])] += 1
    assert len(set(per_rank)) == 1
    assert sorted(real) == list(range(meta.total_frames)) and max(real.values()) == 1


def test_rank_from_environment(small_root, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    ds = StreamingLeRobotDataset(str(small_root), return_uint8=True)
    assert ds.rank_and_world_size() == (1, 2)
    mine = {int(s["index"]) for s in ds}
    other = {
        int(s["index"])
        for s in StreamingLeRobotDataset(str(small_root), rank=0, world_size=2, return_uint8=True)
    }
    assert mine and other and not mine & other


def assert_same_sample(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
            assert torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


@pytest.mark.parametrize("return_uint8", [True, False])
def test_parity_with_map_single_frame(small_root, return_uint8):
    ref = MapDataset(str(small_root), return_uint8=return_uint8)
    ds = StreamingLeRobotDataset(str(small_root), return_uint8=return_uint8, seed=3)
    n = 0
    for s in ds:
        assert_same_sample(s, ref[ref.position_of(int(s["index"]))])
        n += 1
    assert n == len(ref)


def test_parity_with_map_241_frame_window(long_root):
    meta = DatasetMeta(str(long_root))
    deltas = (np.arange(-120, 121, 30) / meta.fps).tolist()
    dt = {k: deltas for k in [*meta.video_keys, "observation.state"]}
    dt["action"] = (np.arange(0, 16) / meta.fps).tolist()
    ref = MapDataset(str(long_root), return_uint8=True, delta_timestamps=dt)
    ds = StreamingLeRobotDataset(str(long_root), return_uint8=True, delta_timestamps=dt, meta=meta)
    assert ds.window.lookback == 120 and ds.window.lookahead == 120
    rng = np.random.default_rng(0)
    check = set(rng.choice(meta.total_frames, 80, replace=False).tolist())
    n = 0
    for s in ds:
        n += 1
        if int(s["index"]) in check:
            assert_same_sample(s, ref[ref.position_of(int(s["index"]))])
    assert n == meta.total_frames
    # every frame decoded once: decode-once holds with long windows too
    assert ds.stats()["decoded_frames"] == meta.total_frames


def test_decoded_frames_never_exceed_distinct_needed(small_root):
    meta = DatasetMeta(str(small_root))
    fps = meta.fps
    dt = {
        "observation.images.cam0": [-6 / fps, -3 / fps, 0.0],
        "observation.images.cam1": [0.0, 4 / fps],
    }
    # whole episodes (shuffle_chunk=0): no cut, so not one frame is decoded twice (cuts
    # re-decode exactly their windows' overlap: tests/test_mixing.py)
    ds = StreamingLeRobotDataset(
        str(small_root), return_uint8=True, delta_timestamps=dt, meta=meta, seed=5, shuffle_chunk=0
    )
    samples = list(ds)
    needed = 0
    for deltas in dt.values():
        offs = np.round(np.array(deltas) * fps).astype(int)
        for n in meta.episodes.length:
            frames = np.clip(np.arange(n)[:, None] + offs[None, :], 0, n - 1)
            needed += len(np.unique(frames))
    st = ds.stats()
    assert st["decoded_frames"] <= needed
    assert st["samples"] == len(samples) == meta.total_frames
    assert st["delivered_frames"] == len(samples) * 5
    assert st["reuse_ratio"] == pytest.approx(st["delivered_frames"] / st["decoded_frames"])
    for s in samples:
        fr, ep = int(s["frame_index"]), int(s["episode_index"])
        n = int(meta.episodes.length[ep])
        got = [decode_frame_id(img).frame for img in s["observation.images.cam0"]]
        assert got == np.clip(fr + np.array([-6, -3, 0]), 0, n - 1).tolist()


def _pearson(x: np.ndarray) -> float:
    return float(np.corrcoef(x[:-1], x[1:])[0, 1])


def test_shuffle_decorrelates_consecutive_samples(ds40_root):
    ds = StreamingLeRobotDataset(str(ds40_root), return_uint8=True, seed=11)
    samples = list(ds)
    frames = np.array([int(s["frame_index"]) for s in samples])
    eps = np.array([int(s["episode_index"]) for s in samples])
    assert abs(_pearson(frames)) < 0.1
    assert abs(_pearson(eps)) < 0.1


def test_batches_mix_episodes_like_a_perfect_shuffle(ds40_root):
    meta = DatasetMeta(str(ds40_root))
    ds = StreamingLeRobotDataset(
        str(ds40_root), return_uint8=True, seed=4, active_shards=32, meta=meta
    )
    eps = [int(s["episode_index"]) for s in ds]
    batch = 32
    distinct = [len(set(eps[i : i + batch])) for i in range(0, len(eps) - batch + 1, batch)]
    p = meta.episodes.length / meta.episodes.length.sum()
    perfect = float(np.sum(1 - (1 - p) ** batch))
    assert np.mean(distinct) >= 0.8 * perfect, (np.mean(distinct), perfect)


def test_shuffle_false_gives_episodes_and_frames_in_order(small_root):
    meta = DatasetMeta(str(small_root))
    ds = StreamingLeRobotDataset(str(small_root), shuffle=False, return_uint8=True, meta=meta)
    got = [(int(s["episode_index"]), int(s["frame_index"])) for s in ds]
    assert got == [
        (int(e), f)
        for e, n in zip(meta.episodes.episode_index, meta.episodes.length, strict=True)
        for f in range(n)
    ]
    ds = StreamingLeRobotDataset(
        str(small_root), shuffle=False, episodes=[4, 0, 2], return_uint8=True, meta=meta
    )
    assert [e for e, _ in dict.fromkeys((int(s["episode_index"]), 0) for s in ds)] == [4, 0, 2]


def test_seed_and_epoch_determine_the_order(small_root):
    meta = DatasetMeta(str(small_root))

    def order(seed: int, epoch: int, workers: int = 0) -> list[int]:
        ds = StreamingLeRobotDataset(str(small_root), seed=seed, return_uint8=True, meta=meta)
        ds.set_epoch(epoch)
        return [int(s["index"]) for s in stream(ds, workers)]

    a = order(1, 0)
    assert a == order(1, 0)
    assert a != order(1, 1) and a != order(2, 0)
    assert sorted(a) == sorted(order(1, 1))
    # set_epoch in the main process reaches DataLoader workers
    assert order(1, 3, workers=2) == order(1, 3, workers=2) != order(1, 4, workers=2)


def test_episode_subset(small_root):
    meta = DatasetMeta(str(small_root))
    ds = StreamingLeRobotDataset(str(small_root), episodes=[1, 4], return_uint8=True, meta=meta)
    eps = Counter(int(s["episode_index"]) for s in stream(ds, 2))
    assert eps == {1: int(meta.episodes.length[1]), 4: int(meta.episodes.length[4])}


def test_decoder_cache_counters_and_stats_across_workers(small_root):
    meta = DatasetMeta(str(small_root))
    ds = StreamingLeRobotDataset(str(small_root), return_uint8=True, meta=meta)
    assert ds.video_decoder_cache_size == (ds.options.active_shards + 1) * 2
    samples = stream(ds, 2)
    st = ds.stats()
    assert st["samples"] == len(samples) == meta.total_frames
    assert st["decoder_cache_hits"] + st["decoder_cache_misses"] == st["decoder_cache_lookups"] > 0
    assert st["decoder_cache_evictions"] == 0
    assert st["decoded_frames"] == 2 * meta.total_frames
    # a cache too small for the open episodes thrashes, and the counters show it
    tiny = StreamingLeRobotDataset(
        str(small_root), return_uint8=True, meta=meta, video_decoder_cache_size=1
    )
    list(tiny)
    assert tiny.stats()["decoder_cache_evictions"] > 0
    assert tiny.stats()["decoder_cache_hit_rate"] < st["decoder_cache_hit_rate"]


def test_num_workers_zero_is_not_an_empty_stream(small_root):
    ds = StreamingLeRobotDataset(str(small_root), return_uint8=True, buffer_size=1)
    assert sum(1 for _ in DataLoader(ds, batch_size=8, num_workers=0)) > 0


def test_construction_loads_the_video_backend_for_forked_workers(small_root):
    """Workers forked from the training process inherit torchcodec instead of importing it
    (seconds of CPU) at every pass: the dataset loads it when it is built."""
    import subprocess
    import sys

    code = (
        "import sys; from framestream import StreamingLeRobotDataset as D; "
        "assert 'torchcodec.decoders' not in sys.modules; "
        f"D({str(small_root)!r}); print('torchcodec.decoders' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
