"""framestream.batch.slots: worker batch slots are reused, never overwritten while viewed."""

from __future__ import annotations

import pickle
import subprocess
import sys
import threading
import time
import warnings
from multiprocessing.reduction import ForkingPickler

import pytest
import torch
from torch.utils.data import DataLoader, default_collate

from framestream import StreamingLeRobotDataset, collate
from framestream.batch import slots as _shm
from framestream.bench.measure import torch_default_collate
from framestream.format.meta import DatasetMeta
from framestream.testing import decode_frame_id

pytestmark = pytest.mark.skipif(not _shm.available(), reason="memfd_create is Linux-only")


def _dataset(root, seed=3):
    fps = DatasetMeta(str(root)).fps
    dt = {"observation.images.cam0": [-2 / fps, 0.0], "action": [0.0, 1 / fps]}
    return StreamingLeRobotDataset(str(root), return_uint8=True, delta_timestamps=dt, seed=seed)


def _check_frames(batch) -> None:
    """Every camera image of the batch shows the frame its indices say."""
    for i in range(len(batch["index"])):
        ep, fr = int(batch["episode_index"][i]), int(batch["frame_index"][i])
        fid = decode_frame_id(batch["observation.images.cam1"][i])
        assert (fid.episode, fid.frame, fid.camera) == (ep, fr, 1)
        fid = decode_frame_id(batch["observation.images.cam0"][i, 1])
        assert (fid.episode, fid.frame) == (ep, fr)


def _received() -> int:
    return sum(_shm.RECEIVED.values())


def test_slot_batches_equal_default_collate_and_reuse_slots(small_root):
    _shm.RECEIVED.clear()
    ds = _dataset(small_root)
    # No collate_fn: torch's default_collate hands framestream's samples to collate.
    fast = DataLoader(ds, batch_size=8, num_workers=2)
    ref = DataLoader(
        _dataset(small_root), batch_size=8, num_workers=2, collate_fn=torch_default_collate
    )
    n = 0
    for a, b in zip(fast, ref, strict=True):
        assert type(a) is dict and a.keys() == b.keys()
        for key in b:
            if isinstance(b[key], torch.Tensor):
                assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
            else:
                assert a[key] == b[key], key
        # Every tensor, the scalar columns (frame_index, timestamp) too, is a view of the
        # slot: none travels as its own shared memory (one resource-sharer handshake each).
        ptrs = {v.untyped_storage().data_ptr() for v in a.values() if isinstance(v, torch.Tensor)}
        assert len(ptrs) == 1, sorted(k for k, v in a.items() if isinstance(v, torch.Tensor))
        n += 1
    # Every batch came through a slot, and slots were used again and again.
    assert _received() == n > 2 * _shm.MAX_SLOTS
    assert len(_shm.RECEIVED) <= 2 * _shm.MAX_SLOTS
    stats = ds.stats()  # workers publish when their stream ends, before the last collate
    assert stats["batch_slot_fallbacks"] == 0
    assert 0 < stats["batch_slots_reused"] <= n
    assert stats["frame_buffers_reused"] > 0 and stats["frame_buffers_allocated"] > 0


def test_held_batches_and_views_are_never_overwritten(small_root):
    _shm.RECEIVED.clear()
    ds = _dataset(small_root, seed=5)
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate)
    kept, views = [], []
    for k, batch in enumerate(loader):
        if k % 2:
            kept.append(batch)  # more than the slots: the workers must fall back, not reuse
        else:
            views.append(
                (
                    batch["observation.images.cam1"][0],  # a view outliving its batch
                    int(batch["episode_index"][0]),
                    int(batch["frame_index"][0]),
                )
            )
        del batch
    assert len(kept) > 2 * _shm.MAX_SLOTS
    assert _received() < 2 * len(kept)  # some batches took the fresh-memory path
    for batch in kept:
        _check_frames(batch)
    for img, ep, fr in views:
        fid = decode_frame_id(img)
        assert (fid.episode, fid.frame, fid.camera) == (ep, fr, 1)


def test_pool_acquire_release_and_fallback():
    pool = _shm.SlotPool(max_slots=2)
    a, b = pool.acquire(1000), pool.acquire(1000)
    assert a is not None and b is not None and a is not b
    assert not a.free and not b.free
    assert pool.acquire(10) is None and pool.fallbacks == 1
    a.mm[0] = _shm.FREE
    assert pool.acquire(500) is a and pool.reused == 1
    b.mm[0] = _shm.FREE
    big = pool.acquire(10 * b.capacity)  # no free slot fits and no room: b is replaced
    assert big is not None and big is not b and big.capacity >= 10 * b.capacity
    assert b not in pool.slots


def test_a_held_slot_is_waited_for_once_it_is_due_not_when_kept(monkeypatch):
    sleeps = []
    real_sleep = time.sleep
    monkeypatch.setattr(_shm.time, "sleep", lambda s: (sleeps.append(s), real_sleep(s)))
    pool = _shm.SlotPool(max_slots=1)
    slot = pool.acquire(1000)
    pool.period = 0.5  # as if this worker's batches came every half second
    # Freed while the worker waits (the training process dropping the last batch): no
    # fallback, the same slot.
    timer = threading.Timer(0.05, lambda: slot.mm.__setitem__(0, _shm.FREE))
    timer.start()
    assert pool.acquire(1000, wait=True) is slot
    assert pool.waits == 1 and pool.fallbacks == 0 and pool.reused == 1 and sleeps
    # Not freed: the wait ends at its bound (at least WAIT_MIN_S) and the batch falls back;
    # the next one does not wait again until a slot is found free.
    sleeps.clear()
    t0 = time.monotonic()
    assert pool.acquire(1000, wait=True) is None
    assert time.monotonic() - t0 >= _shm.WAIT_MIN_S and sleeps
    assert pool.fallbacks == 1 and pool.waits == 1
    sleeps.clear()
    assert pool.acquire(1000, wait=True) is None and pool.fallbacks == 2 and not sleeps
    slot.mm[0] = _shm.FREE
    assert pool.acquire(1000, wait=True) is slot  # found free: waiting is allowed again
    # A slot held PINNED_AFTER batches (a kept batch, not one in flight) is not waited for.
    pool.acquisitions += _shm.PINNED_AFTER
    sleeps.clear()
    assert pool.acquire(1000, wait=True) is None and not sleeps and pool.waits == 1
    # A pool that may still grow makes a new slot rather than wait for a held one.
    growing = _shm.SlotPool(max_slots=2)
    first = growing.acquire(1000)
    growing.period = 0.5
    second = growing.acquire(1000, wait=True)
    assert second is not None and second is not first and not sleeps and growing.waits == 0
    # Without wait=True (one worker, or the arena's early try) nothing waits.
    slot.mm[0] = _shm.FREE
    assert pool.acquire(1000) is slot
    pool.period = 0.5
    assert pool.acquire(1000) is None and not sleeps


def test_unsent_batch_frees_its_slot_and_sent_one_frees_on_last_view():
    pool = _shm.SlotPool(max_slots=1)
    slot = pool.acquire(4096)
    region = _shm.Region(slot)
    t = region.take((4, 8), torch.float32)
    t.copy_(torch.arange(32, dtype=torch.float32).view(4, 8))
    batch = _shm.SlotBatch(slot, {"x": t, "task": ["a"]})
    del batch, t
    assert slot.free  # dropped in the worker without being sent

    slot = pool.acquire(4096)
    t = _shm.Region(slot).take((4, 8), torch.float32)
    t.copy_(torch.arange(32, dtype=torch.float32).view(4, 8))
    batch = _shm.SlotBatch(slot, {"x": t, "task": ["a"]})
    received = pickle.loads(ForkingPickler.dumps(batch))
    del batch, t
    assert type(received) is dict and received["task"] == ["a"]
    assert torch.equal(received["x"], torch.arange(32, dtype=torch.float32).view(4, 8))
    assert not slot.free  # the receiver still views it
    row = received["x"][2]
    del received
    assert not slot.free  # a view keeps the whole batch's slot
    assert row.tolist() == list(range(16, 24))
    del row
    assert slot.free


def test_default_collate_values_for_plain_samples():
    samples = [{"a": torch.tensor(i), "b": [i, i], "c": "s"} for i in range(3)]
    out = collate(samples)
    ref = default_collate(samples)
    assert torch.equal(out["a"], ref["a"]) and out["c"] == ref["c"]
    assert [x.tolist() for x in out["b"]] == [x.tolist() for x in ref["b"]]


def test_scalar_columns_go_into_the_slot_as_default_collate_types_them():
    from framestream.batch.collate import _collate_in_slot

    samples = [
        {"i": i, "f": i / 3, "b": i % 2 == 0, "mixed": 1 if i else 1.5, "t": torch.ones(2) * i}
        for i in range(5)
    ]
    out = _collate_in_slot(samples)
    ref = default_collate(samples)
    assert out is not None
    base = out._slot.tensor.untyped_storage().data_ptr()
    for key in ("i", "f", "b", "t"):
        assert out[key].dtype == ref[key].dtype and torch.equal(out[key], ref[key]), key
        assert out[key].untyped_storage().data_ptr() == base, key
    # A column of mixed Python types keeps default_collate's own handling, outside the slot.
    assert torch.equal(out["mixed"], ref["mixed"]) and out["mixed"].dtype == ref["mixed"].dtype
    assert out["mixed"].untyped_storage().data_ptr() != base
    del out


def test_copies_of_a_slot_batch_are_real_copies():
    import copy

    pool = _shm.SlotPool(max_slots=1)
    slot = pool.acquire(4096)
    t = _shm.Region(slot).take((3,), torch.int64)
    t.copy_(torch.tensor([1, 2, 3]))
    batch = _shm.SlotBatch(slot, {"x": t})
    deep = copy.deepcopy(batch)
    assert type(deep) is dict and deep["x"].data_ptr() != t.data_ptr()
    t.fill_(0)
    assert deep["x"].tolist() == [1, 2, 3]
    assert type(copy.copy(batch)) is dict


def test_later_batches_name_the_slot_and_a_missed_first_batch_is_recovered():
    pool = _shm.SlotPool(max_slots=1)
    slot = pool.acquire(4096)
    t = _shm.Region(slot).take((4,), torch.int32)
    t.copy_(torch.tensor([4, 3, 2, 1], dtype=torch.int32))
    first = ForkingPickler.dumps(_shm.SlotBatch(slot, {"x": t}))  # carries the descriptor
    assert slot.fd_sent
    second = ForkingPickler.dumps(_shm.SlotBatch(slot, {"x": t}))  # names the slot only
    assert len(second) < len(first)
    # The first batch never arrives (pickled for something else): the receiver opens the slot
    # through /proc instead.
    _shm._MAPPED.pop((slot.token, slot.serial), None)
    got = pickle.loads(second)
    assert got["x"].tolist() == [4, 3, 2, 1]
    assert (slot.token, slot.serial) in _shm._MAPPED
    again = pickle.loads(ForkingPickler.dumps(_shm.SlotBatch(slot, {"x": t})))
    assert again["x"].tolist() == [4, 3, 2, 1]


def test_a_slot_held_long_after_its_batch_is_reported_once():
    pool = _shm.SlotPool(max_slots=2)
    kept = pool.acquire(1000)  # a batch whose view the training loop keeps: never freed
    other = pool.acquire(1000)
    # Both held right after being handed out: prefetching, not a kept view; no warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pool.acquire(1000) is None
    for _ in range(_shm.PINNED_AFTER):
        other.mm[0] = _shm.FREE
        assert pool.acquire(1000) is other
    with pytest.warns(UserWarning, match=r"still held \d+ batches later.*\.clone\(\)"):
        assert pool.acquire(1000) is None
    assert not kept.free and pool.warned_pinned
    with warnings.catch_warnings():  # once per worker
        warnings.simplefilter("error")
        assert pool.acquire(1000) is None


_KEEP_VIEWS = """
import sys
from torch.utils.data import DataLoader
from framestream import StreamingLeRobotDataset, collate
ds = StreamingLeRobotDataset(sys.argv[1], return_uint8=True, seed=3)
dl = DataLoader(ds, batch_size=2, num_workers=1, collate_fn=collate, timeout=120)
kept = [batch["index"] for batch in dl]  # views: each pins its batch's slot
print(len(kept), ds.stats()["batch_slot_fallbacks"])
"""


def test_a_training_loop_keeping_views_of_its_batches_is_told(small_root):
    # In a process of its own: pytest records warnings, and a forked worker would inherit that.
    run = subprocess.run(
        [sys.executable, "-c", _KEEP_VIEWS, str(small_root)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    batches, fallbacks = (int(x) for x in run.stdout.split())
    assert batches > _shm.PINNED_AFTER + _shm.MAX_SLOTS and fallbacks > 0
    assert run.stderr.count("still held") == 1
    assert "batch['index']" in run.stderr and "worker pid" in run.stderr
