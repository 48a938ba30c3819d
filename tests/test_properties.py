"""Property-based tests: for random windows, episode subsets, world sizes, workers and shuffle
settings, the streaming dataset covers every selected frame exactly once across ranks and
workers, and every sample equals the map-style reference's (same keys, equal tensors, same task).

One small dataset (episodes of 1 to 31 frames, two cameras rolling over at different
episodes) serves every example. DataLoader workers are simulated by patching
``torch.utils.data.get_worker_info``, which is all the dataset asks of its process; a real
DataLoader runs a couple of cases at the end.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from framestream import MapDataset, StreamingLeRobotDataset
from framestream.format.meta import DatasetMeta
from framestream.testing import decode_frame_id, state_ids
from framestream.testing.synth import generate_synthetic_dataset

LENGTHS = [19, 6, 31, 1, 9, 8, 20]  # what seed 25 draws: a 1-frame episode, short and long ones
KEYS = ["observation.state", "action", "observation.images.cam0", "observation.images.cam1"]
PROPS = settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return generate_synthetic_dataset(
        tmp_path_factory.mktemp("props") / "ds",
        num_episodes=7,
        min_length=1,
        max_length=36,
        height=48,
        width=80,
        codec="h264",
        data_files_size_in_mb=0.003,
        video_files_size_in_mb=0.012,
        seed=25,
    )


@pytest.fixture(scope="module")
def meta(root) -> DatasetMeta:
    m = DatasetMeta(str(root))
    assert m.episodes.length.tolist() == LENGTHS
    assert all(len(set(v.file.tolist())) > 1 for v in m.episodes.videos.values())
    return m


@pytest.fixture(scope="module")
def map_cache() -> dict:
    """MapDataset per window (each keeps its decoders open across examples)."""
    return {}


# ----------------------------------------------------------------------------- strategies
windows = st.dictionaries(
    st.sampled_from(KEYS),
    st.lists(st.integers(-40, 40), min_size=1, max_size=4),
    max_size=len(KEYS),
)
subsets = st.one_of(
    st.none(),
    st.lists(st.integers(0, len(LENGTHS) - 1), min_size=1, max_size=len(LENGTHS), unique=True),
)
configs = st.fixed_dictionaries(
    {
        "window": windows,
        "episodes": subsets,
        "world_size": st.integers(1, 3),
        "num_workers": st.integers(0, 2),
        "shuffle": st.booleans(),
        "seed": st.integers(0, 2**16),
        "epoch": st.integers(0, 3),
        "active_shards": st.integers(1, 4),
        "buffer_size": st.integers(1, 48),
    }
)


# ----------------------------------------------------------------------------- helpers
def delta_timestamps(window: dict[str, list[int]], fps: int) -> dict[str, list[float]] | None:
    return {k: [o / fps for o in offs] for k, offs in window.items()} or None


def stream_all(root: Path, meta: DatasetMeta, cfg: dict, *, even_ranks: bool = False):
    """Every (rank, worker)'s samples, simulating DataLoader workers in this process."""
    out: dict[tuple[int, int], list[dict]] = {}
    for rank in range(cfg["world_size"]):
        ds = StreamingLeRobotDataset(
            str(root),
            meta=meta,
            episodes=cfg["episodes"],
            delta_timestamps=delta_timestamps(cfg["window"], meta.fps),
            return_uint8=True,
            shuffle=cfg["shuffle"],
            seed=cfg["seed"],
            active_shards=cfg["active_shards"],
            buffer_size=cfg["buffer_size"],
            shuffle_warmup=8,
            rank=rank,
            world_size=cfg["world_size"],
            even_ranks=even_ranks,
        )
        ds.set_epoch(cfg["epoch"])
        n = cfg["num_workers"]
        for worker in range(max(1, n)):
            info = SimpleNamespace(id=worker, num_workers=n) if n else None
            with mock.patch("torch.utils.data.get_worker_info", return_value=info):
                out[(rank, worker)] = list(ds)
    return out


def expected_frames(meta: DatasetMeta, episodes) -> Counter:
    eps = meta.episodes.episode_index.tolist() if episodes is None else episodes
    return Counter(
        (e, f) for e in eps for f in range(int(meta.episodes.length[meta.episodes.row(e)]))
    )


def assert_same_sample(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        if isinstance(value, torch.Tensor):
            g = got[key]
            if not isinstance(g, torch.Tensor) and value.dim() == 0:
                g = torch.tensor(g, dtype=value.dtype)  # streaming scalars: Python numbers
            assert g.dtype == value.dtype and torch.equal(g, value), key
        else:
            assert got[key] == value, key


def assert_identity(sample: dict, meta: DatasetMeta, window: dict[str, list[int]]) -> None:
    """The frames a sample holds are the ones its window names (clamped into the episode)."""
    ep, fr = int(sample["episode_index"]), int(sample["frame_index"])
    length = int(meta.episodes.length[meta.episodes.row(ep)])
    for cam, key in enumerate(meta.video_keys):
        offs = np.asarray(window.get(key, [0]))
        want = np.clip(fr + offs, 0, length - 1).tolist()
        # a video's one-step window is squeezed to (C, H, W), as LeRobot does
        images = sample[key] if sample[key].dim() == 4 else sample[key][None]
        assert [decode_frame_id(im) for im in images] == [(ep, f, cam) for f in want]
        if key in window:
            pad = (fr + offs < 0) | (fr + offs >= length)
            assert sample[f"{key}_is_pad"].tolist() == pad.tolist()
    states = sample["observation.state"]
    if "observation.state" in window:
        offs = np.asarray(window["observation.state"])
        assert [state_ids(s)[:2] for s in states] == [
            (ep, int(f)) for f in np.clip(fr + offs, 0, length - 1)
        ]
    else:
        assert state_ids(states)[:2] == (ep, fr)


def reference(root: Path, meta: DatasetMeta, window: dict, cache: dict) -> MapDataset:
    key = repr(sorted((k, tuple(v)) for k, v in window.items()))
    if key not in cache:
        cache[key] = MapDataset(
            str(root),
            meta=meta,
            return_uint8=True,
            delta_timestamps=delta_timestamps(window, meta.fps),
        )
    return cache[key]


# ----------------------------------------------------------------------------- properties
@PROPS
@given(cfg=configs)
def test_coverage_and_parity(root, meta, map_cache, cfg):
    parts = stream_all(root, meta, cfg)
    got = [s for samples in parts.values() for s in samples]
    seen = Counter((int(s["episode_index"]), int(s["frame_index"])) for s in got)
    assert seen == expected_frames(meta, cfg["episodes"])  # every frame, exactly once
    if not cfg["shuffle"]:  # episodes in the order given, frames in order, per (rank, worker)
        order = {e: i for i, e in enumerate(cfg["episodes"] or meta.episodes.episode_index)}
        for samples in parts.values():
            pos = [(order[int(s["episode_index"])], int(s["frame_index"])) for s in samples]
            assert pos == sorted(pos)
    ref = reference(root, meta, cfg["window"], map_cache)
    # parity and frame identity on a random draw of the samples (cost: a seek per frame)
    picks = np.random.default_rng(cfg["seed"]).permutation(len(got))
    for i in picks[:10]:
        s = got[int(i)]
        assert_same_sample(s, ref[ref.position_of(int(s["index"]))])
    for i in picks[10:40]:
        assert_identity(got[int(i)], meta, cfg["window"])


@PROPS
@given(cfg=configs)
def test_even_ranks_pad_with_flagged_repeats(root, meta, cfg):
    """even_ranks: equal counts everywhere; the unflagged samples still cover once."""
    cfg["window"] = {}  # windows are covered above; this one is about counts
    parts = stream_all(root, meta, cfg, even_ranks=True)
    assert len({len(samples) for samples in parts.values()}) == 1
    got = [s for samples in parts.values() for s in samples]
    fresh = Counter(
        (int(s["episode_index"]), int(s["frame_index"])) for s in got if not s["is_repeat"]
    )
    assert fresh == expected_frames(meta, cfg["episodes"])
    for s in got:
        assert_identity(s, meta, {})


@pytest.mark.parametrize(
    "world_size,window",
    [(1, {"observation.images.cam0": [-40, -1, 0, 40]}), (2, {"observation.state": [-3, 5]})],
)
def test_real_dataloader_workers(root, meta, map_cache, world_size, window):
    seen: Counter = Counter()
    ref = reference(root, meta, window, map_cache)
    for rank in range(world_size):
        ds = StreamingLeRobotDataset(
            str(root),
            meta=meta,
            return_uint8=True,
            seed=7,
            delta_timestamps=delta_timestamps(window, meta.fps),
            rank=rank,
            world_size=world_size,
        )
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, timeout=120)
        for s in loader:
            seen[(int(s["episode_index"]), int(s["frame_index"]))] += 1
            assert_same_sample(s, ref[ref.position_of(int(s["index"]))])
    assert seen == expected_frames(meta, None)
