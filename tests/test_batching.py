"""Dataset-side batching: the same batches a DataLoader collates, assembled in place."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from framestream import StreamingLeRobotDataset, collate
from framestream._meta import DatasetMeta
from framestream.testing import decode_frame_id


def batches(meta, *, dataset_side: bool, num_workers: int, **kw) -> list[dict]:
    ds = StreamingLeRobotDataset(
        meta.source.url,
        meta=meta,
        seed=5,
        buffer_size=40,
        batch_size=6 if dataset_side else None,
        **kw,
    )
    loader_kw = {"num_workers": num_workers, "timeout": 120 if num_workers else 0}
    collate_fn = collate if kw.get("channels_last") else None
    if dataset_side:
        loader = DataLoader(ds, batch_size=None, **loader_kw)
    else:
        loader = DataLoader(ds, batch_size=6, collate_fn=collate_fn, **loader_kw)
    return list(loader)


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("uint8", [True, False])
def test_same_batches_as_the_dataloader(small_root, num_workers, channels_last, uint8):
    meta = DatasetMeta(str(small_root))
    fps = meta.fps
    kw = dict(
        return_uint8=uint8,
        channels_last=channels_last,
        delta_timestamps={"observation.images.cam0": [-3 / fps, 0.0], "action": [0.0, 1 / fps]},
    )
    want = batches(meta, dataset_side=False, num_workers=num_workers, **kw)
    got = batches(meta, dataset_side=True, num_workers=num_workers, **kw)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        for key in w:
            if isinstance(w[key], torch.Tensor):
                assert g[key].shape == w[key].shape and g[key].dtype == w[key].dtype, key
                assert torch.equal(g[key], w[key]), key
            else:
                assert g[key] == w[key], key
    for b in got:
        for i, img in enumerate(b["observation.images.cam1"]):
            fid = decode_frame_id(img)
            assert (fid.episode, fid.frame) == (
                int(b["episode_index"][i]),
                int(b["frame_index"][i]),
            )


def test_drop_last_and_resume_in_batches(small_root):
    meta = DatasetMeta(str(small_root))
    ds = StreamingLeRobotDataset(
        meta.source.url, meta=meta, batch_size=8, drop_last=True, return_uint8=True
    )
    full = [b["index"].tolist() for b in ds]
    assert all(len(b) == 8 for b in full) and len(full) == meta.total_frames // 8
    ds2 = StreamingLeRobotDataset(
        meta.source.url, meta=meta, batch_size=8, drop_last=True, return_uint8=True
    )
    it = iter(ds2)
    head = [next(it)["index"].tolist() for _ in range(3)]
    state = ds2.state_dict()
    ds3 = StreamingLeRobotDataset(
        meta.source.url, meta=meta, batch_size=8, drop_last=True, return_uint8=True
    )
    ds3.load_state_dict(state)
    assert head + [b["index"].tolist() for b in ds3] == full
