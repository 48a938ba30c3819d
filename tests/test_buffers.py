"""framestream.decode.buffers: recycled frame buffers are reused only when nothing views them."""

from __future__ import annotations

import gc

import numpy as np
import torch

from framestream import MapDataset, StreamingLeRobotDataset
from framestream.decode.buffers import BufferPool
from framestream.format.meta import DatasetMeta
from framestream.testing import decode_frame_id


def test_buffer_is_reused_after_its_last_view_dies():
    pool = BufferPool()
    t = pool.take((2, 3))
    assert t.dtype == torch.uint8 and tuple(t.shape) == (2, 3)
    ptr = t.data_ptr()
    row = t[1]  # a torch view
    arr = t.numpy()[None]  # a numpy view of the tensor
    del t
    gc.collect()
    assert pool.take((2, 3)).data_ptr() != ptr  # still viewed: not handed out again
    del row
    gc.collect()
    assert pool.take((2, 3)).data_ptr() != ptr
    del arr
    gc.collect()
    again = pool.take((2, 3))
    assert again.data_ptr() == ptr


def test_free_list_is_bounded():
    pool = BufferPool(max_free_bytes=100)
    held = [pool.take((60,)) for _ in range(3)]
    del held
    gc.collect()
    assert pool._free_bytes <= 100
    assert sum(len(v) for v in pool._free.values()) == 1


def test_samples_never_alias_each_other(small_root):
    """Scribbling over a sample must not change any later sample (frames are shared)."""
    fps = DatasetMeta(str(small_root)).fps
    dt = {
        "observation.images.cam0": [-1 / fps, 0.0],
        "observation.state": [-1 / fps, 0.0],
    }
    for channels_last in (False, True):
        ds = StreamingLeRobotDataset(
            str(small_root),
            return_uint8=True,
            delta_timestamps=dt,
            shuffle=False,
            channels_last=channels_last,
        )
        ref = MapDataset(str(small_root), return_uint8=True, delta_timestamps=dt)
        for sample in ds:
            i = ref.position_of(int(sample["index"]))
            expected = ref[i]
            for key in ("observation.state", "action"):
                assert torch.equal(sample[key], expected[key]), key
            assert sample["index"] == int(expected["index"])  # streaming: a Python int
            fid = decode_frame_id(sample["observation.images.cam1"])
            assert (fid.episode, fid.frame) == (
                int(sample["episode_index"]),
                int(sample["frame_index"]),
            )
            cam0 = "observation.images.cam0"
            assert torch.equal(sample[cam0], expected[cam0])
            for value in sample.values():
                if isinstance(value, torch.Tensor) and value.dtype != torch.bool:
                    value.fill_(0)  # the next samples reuse these frames and rows
            del sample
            gc.collect() if np.random.rand() < 0.05 else None


def _child_pool_counts(queue) -> None:
    from framestream.decode import buffers as _buffers

    queue.put((_buffers.pool().allocated, _buffers.pool() is _buffers.pool()))


def test_forked_child_gets_its_own_pool():
    """A DataLoader worker must never hand out buffers from its parent's free lists."""
    import multiprocessing as mp

    from framestream.decode import buffers as _buffers

    parent = _buffers.pool()
    parent.allocated += 12345  # a mark the child would see if it inherited the pool
    try:
        ctx = mp.get_context("fork")
        queue = ctx.Queue()
        proc = ctx.Process(target=_child_pool_counts, args=(queue,))
        proc.start()
        allocated, stable = queue.get(timeout=60)
        proc.join(timeout=60)
    finally:
        parent.allocated -= 12345
    assert allocated < 12345
    assert stable
    assert _buffers.pool() is parent


def test_lowering_the_cap_drops_spare_buffers_beyond_it():
    pool = BufferPool()
    held = [pool.take((1000,)) for _ in range(5)]
    del held  # all five back on the free list
    assert pool._free_bytes == 5000
    pool.set_max_free_bytes(2500)
    assert pool._free_bytes == 2000 and pool.max_free_bytes == 2500
    kept = [pool.take((1000,)) for _ in range(3)]
    assert pool.reused == 2 and pool.allocated == 6
    del kept
    assert pool._free_bytes == 2000  # the third does not fit back under the cap
