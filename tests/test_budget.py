"""framestream.stream.budget: "auto" makes room for the open decoders and the open windows,
within its floor and cap, and keeps long windows mixed."""

from __future__ import annotations

import numpy as np
import pytest
from test_ledger import budget_for

from framestream import StreamingLeRobotDataset
from framestream.format.meta import DatasetMeta
from framestream.stream.budget import AUTO_MIN_FRAMES_BYTES, memory_model, resolve_budget
from framestream.stream.options import (
    AUTO_MAX_MEMORY_BUDGET,
    DEFAULT_MEMORY_BUDGET,
    StreamOptions,
)


@pytest.fixture(scope="module")
def meta(small_root):
    return DatasetMeta(str(small_root))


def _auto(meta, seconds: float, **kw) -> tuple[StreamingLeRobotDataset, int]:
    """A dataset whose cameras look ``seconds`` back, and its resolved "auto" budget."""
    fps = meta.fps
    back = [-seconds + i / fps for i in range(0, int(seconds * fps) + 1, 10)] + [0.0]
    window = {k: sorted(set(back)) for k in meta.video_keys}
    ds = StreamingLeRobotDataset(
        meta.source.url, meta=meta, delta_timestamps=window, return_uint8=True, **kw
    )
    return ds, memory_model(ds.meta, ds.window, ds.options).budget


def test_auto_budget_makes_room_for_the_open_episodes_windows(meta):
    single = StreamingLeRobotDataset(meta.source.url, meta=meta, return_uint8=True)
    assert single.options.memory_budget == "auto"
    assert memory_model(single.meta, single.window, single.options).budget == DEFAULT_MEMORY_BUDGET

    def formula(ds, shards: int) -> int:
        base = memory_model(ds.meta, ds.window, StreamOptions.build(ds.options, memory_budget=None))
        spans = [int(np.ptp(ds.window.frame_offsets(k))) for k in meta.video_keys]
        span_bytes = sum(s * b for s, b in zip(spans, base.frame_bytes, strict=True))
        return int((base.fixed_bytes + max(AUTO_MIN_FRAMES_BYTES, shards * span_bytes)) / (5 / 8))

    ds, budget = _auto(meta, 1.0, active_shards=4)
    base = memory_model(ds.meta, ds.window, StreamOptions.build(ds.options, memory_budget=None))
    assert budget == max(formula(ds, 4), DEFAULT_MEMORY_BUDGET)
    # A window long enough that the formula, not the 112 MB floor, decides.
    long, long_budget = _auto(meta, 10.0, active_shards=32)
    assert DEFAULT_MEMORY_BUDGET < formula(long, 32) < AUTO_MAX_MEMORY_BUDGET
    assert long_budget == formula(long, 32)
    # more open episodes, more room; an explicit budget is kept as given
    assert _auto(meta, 1.0, active_shards=8)[1] >= budget
    assert _auto(meta, 1.0, memory_budget="64MB")[1] == 64 << 20
    # and it never passes the cap
    assert _auto(meta, 30.0, active_shards=64)[1] == AUTO_MAX_MEMORY_BUDGET
    # many video files: the decoders they keep open alone would fill 80 MB
    keys, frame_bytes = meta.video_keys, base.frame_bytes
    many = resolve_budget(ds.options, single.window, keys, frame_bytes, 200 << 20)
    assert many * 5 // 8 - (200 << 20) >= AUTO_MIN_FRAMES_BYTES - 1


def test_auto_budget_keeps_long_windows_mixed(meta):
    """A fixed 80 MB-like budget that fits one open window leaves one episode open at a
    time; "auto" keeps ``active_shards`` open, so the first samples span several."""
    ds, budget = _auto(meta, 1.0, active_shards=4, seed=3)
    model = memory_model(ds.meta, ds.window, ds.options)
    one = budget_for(meta, int(np.ptp(ds.window.frame_offsets(meta.video_keys[0]))) + 8)
    tight, _ = _auto(meta, 1.0, active_shards=4, seed=3, memory_budget=one)
    assert model.frames_budget > memory_model(tight.meta, tight.window, tight.options).frames_budget

    def episodes(d, n=40):
        it = iter(d)
        return len({int(next(it)["episode_index"]) for _ in range(n)})

    assert episodes(ds) > episodes(tight) >= 1
    assert ds.stats()["memory_budget_bytes"] == budget
