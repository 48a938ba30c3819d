"""Resume: one harness over world sizes x workers x resume points, exact and elastic."""

from __future__ import annotations

import json
from collections import Counter
from itertools import islice

import pytest
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

from framestream import StateDictError, StreamingLeRobotDataset, merge_states
from framestream.format.meta import DatasetMeta
from framestream.testing import decode_frame_id

BATCH = 4


@pytest.fixture(scope="module")
def meta(small_root):
    return DatasetMeta(str(small_root))


def make(meta, rank=0, world_size=1, **kw):
    kw.setdefault("buffer_size", 50)
    kw.setdefault("active_shards", 3)
    return StreamingLeRobotDataset(
        meta.source.url,
        meta=meta,
        rank=rank,
        world_size=world_size,
        return_uint8=True,
        seed=9,
        **kw,
    )


def ids(batch) -> list[int]:
    """Global indices of a batch, each proven by the frame's own pixels."""
    out = []
    for i, idx in enumerate(batch["index"].tolist()):
        fid = decode_frame_id(batch["observation.images.cam0"][i])
        assert (fid.episode, fid.frame) == (
            int(batch["episode_index"][i]),
            int(batch["frame_index"][i]),
        )
        out.append(idx)
    return out


class Run:
    """Iterates one rank's stream in batches; restartable from a saved state."""

    def __init__(self, meta, rank, world_size, num_workers, epoch=0, state=None, **kw):
        self.ds = make(meta, rank, world_size, **kw)
        self.ds.set_epoch(epoch)
        self.num_workers = num_workers
        if num_workers == 0:
            if state is not None:
                self.ds.load_state_dict(state)
            self.loader = DataLoader(self.ds, batch_size=BATCH, num_workers=0)
        else:
            self.loader = StatefulDataLoader(
                self.ds, batch_size=BATCH, num_workers=num_workers, timeout=120
            )
            if state is not None and "version" in state:
                # a framestream state (merged, elastic): the dataset carries it to the workers
                self.ds.load_state_dict(state)
            elif state is not None:
                self.loader.load_state_dict(state)
        self.it = iter(self.loader)

    def take(self, n_batches=None) -> list[int]:
        out = []
        for batch in islice(self.it, n_batches):
            out += ids(batch)
        return out

    def state(self):
        s = self.ds.state_dict() if self.num_workers == 0 else self.loader.state_dict()
        return json.loads(json.dumps(s))  # a checkpoint round trip: plain JSON types only


def full_epoch(meta, rank, world_size, num_workers, epoch=0):
    return Run(meta, rank, world_size, num_workers, epoch).take()


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("point", ["start", "mid", "end"])
def test_exact_resume(meta, world_size, num_workers, point):
    for rank in sorted({0, world_size - 1}):
        want = full_epoch(meta, rank, world_size, num_workers)
        n_batches = -(-len(want) // BATCH) if num_workers == 0 else None
        stop = {"start": 0, "mid": 3, "end": (n_batches - 1) if n_batches else 6}[point]
        if num_workers and point == "end":
            # epoch 0's batches (Run has started its iterator: iterating the loader again
            # would be a second pass, i.e. epoch 1, whose split may hold another count)
            stop = max(0, sum(1 for _ in Run(meta, rank, world_size, num_workers).it) - 1)
        first = Run(meta, rank, world_size, num_workers)
        before = first.take(stop)
        state = first.state()
        after = Run(meta, rank, world_size, num_workers, state=state).take()
        assert before + after == want, (rank, point)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_twice_in_a_row(meta, num_workers):
    want = full_epoch(meta, 1, 2, num_workers)
    a = Run(meta, 1, 2, num_workers)
    part1 = a.take(2)
    b = Run(meta, 1, 2, num_workers, state=a.state())
    part2 = b.take(3)
    c = Run(meta, 1, 2, num_workers, state=b.state())
    assert part1 + part2 + c.take() == want


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_across_an_epoch_boundary(meta, num_workers):
    run = Run(meta, 0, 1, num_workers)
    epoch0 = run.take()
    assert sorted(epoch0) == list(range(meta.total_frames))
    want1 = full_epoch(meta, 0, 1, num_workers, epoch=1)
    assert want1 != epoch0  # a new order per epoch
    run1 = Run(meta, 0, 1, num_workers, epoch=1)
    head = run1.take(5)
    resumed = Run(meta, 0, 1, num_workers, epoch=0, state=run1.state())
    if num_workers == 0:
        assert resumed.ds.epoch == 1  # the state carries its epoch
    assert head + resumed.take() == want1


def test_state_saved_after_the_epoch_ended_means_that_epoch_is_done(meta):
    run = Run(meta, 0, 1, 0)
    epoch0 = run.take()
    assert sorted(epoch0) == list(range(meta.total_frames))
    state = run.state()
    # the loop is still in epoch 0 (set_epoch(0) before the load): an empty pass, then epoch 1
    resumed = Run(meta, 0, 1, 0, state=state)
    assert resumed.take() == []
    resumed.ds.set_epoch(1)
    assert [i for b in plain(resumed.ds, 0) for i in ids(b)] == full_epoch(meta, 0, 1, 0, epoch=1)
    # no set_epoch at all (a step-based loop): the next pass is epoch 1
    ds = make(meta)
    ds.load_state_dict(state)
    assert ds.epoch == 1
    assert [i for b in plain(ds, 0) for i in ids(b)] == full_epoch(meta, 0, 1, 0, epoch=1)


def test_state_is_small_and_versioned(meta, small_root):
    run = Run(meta, 0, 1, 0, buffer_size=100)
    run.take(5)
    state = run.state()
    assert len(json.dumps(state)) < 16_000
    other = StreamingLeRobotDataset(str(small_root), episodes=[0, 1], return_uint8=True, seed=9)
    with pytest.raises(StateDictError, match="another dataset"):
        other.load_state_dict(state)
    with pytest.raises(StateDictError, match="version"):
        make(meta).load_state_dict(state | {"version": 999})
    with pytest.raises(StateDictError, match="seed"):
        StreamingLeRobotDataset(str(small_root), seed=1, meta=meta).load_state_dict(state)


def test_single_stream_state_refused_on_another_configuration(meta):
    run = Run(meta, 0, 2, 0)
    run.take(2)
    ds = make(meta, 0, 3)
    ds.load_state_dict(run.state())
    with pytest.raises(StateDictError, match="merge_states"):
        next(iter(ds))


@pytest.mark.parametrize(
    ("old", "new"), [((2, 0), (3, 0)), ((3, 0), (1, 0)), ((1, 0), (2, 2)), ((2, 2), (1, 0))]
)
def test_elastic_resume_loses_and_repeats_nothing(meta, old, new):
    old_ws, old_nw = old
    consumed, states = [], []
    for rank in range(old_ws):
        run = Run(meta, rank, old_ws, old_nw)
        consumed += run.take(2 + rank)
        states.append(run.state())
    merged = json.loads(json.dumps(merge_states(states)))
    new_ws, new_nw = new
    rest = []
    for rank in range(new_ws):
        rest += Run(meta, rank, new_ws, new_nw, state=merged).take()
    counts = Counter(consumed + rest)
    assert sorted(counts) == list(range(meta.total_frames))
    assert max(counts.values()) == 1


def plain(ds, num_workers):
    return DataLoader(
        ds, batch_size=BATCH, num_workers=num_workers, timeout=120 if num_workers else 0
    )


@pytest.mark.parametrize("num_workers", [0, 2])
def test_plain_dataloader_progress_state(meta, num_workers):
    want = [i for b in plain(make(meta), num_workers) for i in ids(b)]
    consumed = [i for b in islice(iter(plain(make(meta), num_workers)), 5) for i in ids(b)]
    ds2 = make(meta)
    ds2.load_state_dict(ds2.progress_state(batches=5, batch_size=BATCH, num_workers=num_workers))
    rest = [i for b in plain(ds2, num_workers) for i in ids(b)]
    assert consumed + rest == want
    # the next epoch is a normal one again
    ds2.set_epoch(1)
    again = [i for b in plain(ds2, num_workers) for i in ids(b)]
    assert sorted(again) == list(range(meta.total_frames))


def test_state_saved_after_a_drop_last_epoch_leaves_the_next_epoch_whole(meta):
    """StatefulDataLoader with ``drop_last``: each worker's last samples are dropped, so its
    snapshot at the epoch's last batch is not finished. On load torchdata restores those
    states into an iterator it then discards; that must not start a pass (which would take
    epoch 1 from the loader's real one, and make it stream epoch 2)."""
    counts = [make(meta).plan(worker=w, num_workers=2).num_samples for w in range(2)]
    batch = next(b for b in range(3, 16) if all(c % b for c in counts))

    def loader(ds) -> StatefulDataLoader:
        return StatefulDataLoader(ds, batch_size=batch, num_workers=2, drop_last=True, timeout=120)

    def epoch(ds, dl, e) -> list[int]:
        ds.set_epoch(e)
        return [i for b in dl for i in ids(b)]

    ref = make(meta)
    ref_dl = loader(ref)
    epoch(ref, ref_dl, 0)
    want = epoch(ref, ref_dl, 1)
    first = make(meta)
    dl = loader(first)
    epoch(first, dl, 0)
    state = json.loads(json.dumps(dl.state_dict()))
    workers = state["_snapshot"]["_worker_snapshots"].values()
    assert not all(w["dataset_state"]["streams"][0]["finished"] for w in workers)
    second = make(meta)
    dl2 = loader(second)
    dl2.load_state_dict(state)
    assert epoch(second, dl2, 1) == want


def test_loader_batch_is_read_from_the_fetch_asking_for_it():
    from types import SimpleNamespace

    from framestream.datasets.loader_frames import loader_batch

    def fetch(self, possibly_batched_index):  # torch's fetcher method, by its names
        return loader_batch()

    batched = SimpleNamespace(auto_collation=True, drop_last=True)
    assert fetch(batched, [0, 1, 2]) == (3, True)
    assert fetch(SimpleNamespace(auto_collation=True, drop_last=False), [0]) == (1, False)
    assert fetch(SimpleNamespace(auto_collation=False, drop_last=True), 0) is None
    assert loader_batch() is None  # not under a DataLoader fetch
