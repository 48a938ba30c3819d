"""framestream.batch.arena: camera tensors built in their batch slot, equal to the ordinary
path, used only where every sample reaches framestream.collate in order, and never freed
while a view of them lives."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

from framestream import StreamingLeRobotDataset, collate
from framestream.batch import arena as _arena
from framestream.batch import slots as _shm
from framestream.bench.measure import torch_default_collate
from framestream.format.meta import DatasetMeta
from framestream.testing import decode_frame_id

pytestmark = pytest.mark.skipif(not _shm.available(), reason="memfd_create is Linux-only")


def _dataset(root, *, uint8: bool):
    fps = DatasetMeta(str(root)).fps
    dt = {
        "observation.images.cam0": [-3 / fps, -1 / fps, 0.0],  # a window
        "observation.state": [-1 / fps, 0.0],
    }  # cam1: one frame, squeezed to (C, H, W)
    return StreamingLeRobotDataset(str(root), return_uint8=uint8, delta_timestamps=dt, seed=5)


@pytest.mark.parametrize(
    ("uint8", "collate_fn"),
    [(True, collate), (False, collate), (True, None)],
    ids=["uint8", "float32", "torch-default-collate"],
)
def test_in_place_batches_equal_the_ordinary_path(small_root, uint8, collate_fn):
    ds = _dataset(small_root, uint8=uint8)
    # None: torch's default_collate, which hands framestream's samples to collate
    fast = DataLoader(ds, batch_size=6, num_workers=2, collate_fn=collate_fn)
    ref = DataLoader(
        _dataset(small_root, uint8=uint8),
        batch_size=6,
        num_workers=2,
        collate_fn=torch_default_collate,  # not framestream's: no arena
    )
    n = 0
    for a, b in zip(fast, ref, strict=True):
        assert a.keys() == b.keys()
        for key, want in b.items():
            if isinstance(want, torch.Tensor):
                got = a[key]
                assert got.dtype == want.dtype and torch.equal(got, want), key
                assert got.is_contiguous() == want.is_contiguous(), key
            else:
                assert a[key] == want, key
        for i in range(len(a["index"])):  # and the frames are the ones the indices say
            ep, fr = int(a["episode_index"][i]), int(a["frame_index"][i])
            fid = decode_frame_id(a["observation.images.cam1"][i])
            assert (fid.episode, fid.frame, fid.camera) == (ep, fr, 1)
        n += 1
    assert n > 4
    # Most batches were built in place (a batch whose slot was still held goes the ordinary
    # way); the reference loader's collate never uses the arena.
    assert ds.stats()["batches_in_place"] >= n // 2


def test_a_prepared_pass_builds_its_batches_in_place(small_root):
    """A persistent worker prepares its next pass (readers opened) before that pass's fetch
    exists: those readers' samples must still be built in place, as a fresh pass's are."""
    in_place = {}
    for persistent in (False, True):
        ds = StreamingLeRobotDataset(str(small_root), return_uint8=True, seed=5)
        loader = DataLoader(ds, batch_size=4, num_workers=2, persistent_workers=persistent)
        batches = 0
        for epoch in range(3):
            ds.set_epoch(epoch)
            for b in loader:
                ep, fr = int(b["episode_index"][-1]), int(b["frame_index"][-1])
                fid = decode_frame_id(b["observation.images.cam1"][-1])
                assert (fid.episode, fid.frame) == (ep, fr)
                batches += 1
        stats = ds.stats()
        if persistent:
            assert stats["prepared_passes"] == 4  # epochs 1 and 2, both workers
        assert stats["batches_in_place"] <= batches
        in_place[persistent] = stats["batches_in_place"]
    assert in_place[True] >= in_place[False] > 0


class _Wrapped(IterableDataset):
    def __init__(self, inner):
        self.inner = inner

    def __iter__(self):
        yield from self.inner


def test_no_arena_unless_the_fetch_collates_this_dataset_with_framestream(small_root):
    """A wrapping dataset or another collate_fn could reorder, drop or keep samples: their
    tensors must be the samples' own."""
    for make in (
        lambda d: DataLoader(_Wrapped(d), batch_size=4, num_workers=1, collate_fn=collate),
        lambda d: DataLoader(d, batch_size=4, num_workers=1, collate_fn=lambda b: collate(b)),
    ):
        ds = _dataset(small_root, uint8=True)
        batches = sum(1 for _ in make(ds))
        assert batches > 0
        assert ds.stats()["batches_in_place"] == 0


def _layout():
    return [_arena.CameraLayout("cam", (2, 3, 4, 4), torch.uint8)]


def _placed(fetch: int, size: int, indices, fill: int, built=None):
    """Samples ``indices`` of one fetch placed by a fresh arena, camera filled ``fill + i``
    (``built``: the keys built before the camera)."""
    where = [(fetch, 0, size)]
    arena = _arena.Arena(_layout(), lambda: where[0])
    samples = []
    for i in indices:
        where[0] = (fetch, i, size)
        arena.place()
        view = arena.out("cam", built or {})
        assert view is not None and view.shape == (2, 3, 4, 4)
        view.fill_(fill + i)
        samples.append({"cam": view})
    return arena, samples


def test_an_unclaimed_slot_is_freed_only_when_its_last_view_is_gone():
    _, samples = _placed(1, 2, range(2), 1)
    slot = _arena._current[0].slot
    assert not slot.free
    # Out of order: not where the arena put them, so nothing is claimed ...
    assert _arena.claim(samples[::-1], lambda keys: 0) is None
    keep = samples[1]["cam"][0]  # ... and a view that outlives the batch keeps the slot busy
    del samples
    _arena._current[0] = None  # the next batch starts
    assert not slot.free and int(keep.sum()) == 2 * keep.numel()
    del keep
    assert slot.free


def test_claimed_batch_is_the_slot_views_and_left_to_the_batch():
    _, samples = _placed(7, 3, range(3), 10, built={"x": 1})
    for i, sample in enumerate(samples):
        sample["x"] = i
    slot, start, placed = _arena.claim(samples, lambda keys: 64)
    assert placed["cam"].shape == (3, 2, 3, 4, 4)
    assert [int(placed["cam"][i].float().mean()) for i in range(3)] == [10, 11, 12]
    assert start % _shm.ALIGN == 0 and start >= _shm.HEADER
    del samples, placed
    assert not slot.free  # claimed: the batch (a SlotBatch, then the training process) frees it
    slot.mm[0] = _shm.FREE


def test_a_sample_in_the_middle_of_an_unknown_batch_gets_no_slot_memory():
    arena = _arena.Arena(_layout(), lambda: (99, 2, 4))  # joined mid-batch
    _arena._current[0] = None
    arena.place()
    assert arena.out("cam", {}) is None
    arena2 = _arena.Arena(_layout(), lambda: None)  # not in a fetch
    arena2.place()
    assert arena2.out("cam", {}) is None


def test_samples_built_before_the_slot_was_free_are_copied_into_their_place():
    """The last batch's slot still held at a batch's first sample: the arena takes a slot at
    a later one, and claim copies the earlier samples (built in their own memory) in."""
    where = [(3, 0, 3)]
    arena = _arena.Arena(_layout(), lambda: where[0])
    _arena._current[0] = None
    arena.place()
    own = torch.full((2, 3, 4, 4), 5, dtype=torch.uint8)  # sample 0: no slot was free
    samples = [{"cam": own}]
    for i in (1, 2):
        where[0] = (3, i, 3)
        arena.place()
        view = arena.out("cam", {})
        assert view is not None
        view.fill_(6 + i)
        samples.append({"cam": view})
    # Samples that are not the ones placed (here: in another order) are never claimed.
    assert _arena.claim([samples[0], samples[2], samples[1]], lambda keys: 0) is None
    slot, _, placed = _arena.claim(samples, lambda keys: 0)
    assert [int(placed["cam"][i].float().mean()) for i in range(3)] == [5, 7, 8]
    del samples, placed, view
    slot.mm[0] = _shm.FREE


def test_single_frame_cameras_are_laid_out_straight_into_the_batch(small_root):
    """A frame decoded for the very sample that is its only user goes from the decoder's
    output into the batch slot in one copy: no frame buffer is taken for it. Without the
    arena (float32 output here) every decoded frame takes one."""
    takes = {}
    for uint8 in (True, False):
        ds = StreamingLeRobotDataset(str(small_root), return_uint8=uint8, seed=5)
        n = 0
        for b in DataLoader(ds, batch_size=4, num_workers=2):
            for cam in (0, 1):
                images = b[f"observation.images.cam{cam}"]
                for i in range(len(b["index"])):
                    ep, fr = int(b["episode_index"][i]), int(b["frame_index"][i])
                    fid = decode_frame_id(images[i])
                    assert (fid.episode, fid.frame, fid.camera) == (ep, fr, cam)
            n += len(b["index"])
        stats = ds.stats()
        assert stats["delivered_frames"] == 2 * n
        buffers = stats["frame_buffers_reused"] + stats["frame_buffers_allocated"]
        takes[uint8] = buffers / stats["decoded_frames"]
    assert takes[False] >= 1.0
    assert takes[True] < 0.9 * takes[False]  # 0.84 here: a sixth of the frames go straight
