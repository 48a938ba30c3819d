"""framestream.collate: channels-last cameras batch with a memcpy and equal values."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, default_collate

from framestream import MapDataset, StreamingLeRobotDataset, collate
from framestream.format.meta import DatasetMeta
from framestream.testing import decode_frame_id


def test_channels_last_samples_equal_contiguous_ones(small_root):
    fps = DatasetMeta(str(small_root)).fps
    dt = {"observation.images.cam0": [-2 / fps, 0.0], "action": [0.0, 1 / fps]}
    for uint8 in (True, False):
        ref = MapDataset(str(small_root), return_uint8=uint8, delta_timestamps=dt)
        cl = MapDataset(
            str(small_root), return_uint8=uint8, delta_timestamps=dt, channels_last=True
        )
        for i in (0, 7, len(ref) - 1):
            a, b = ref[i], cl[i]
            for key in ("observation.images.cam0", "observation.images.cam1"):
                assert a[key].is_contiguous() and not b[key].is_contiguous()
                assert b[key].shape == a[key].shape and torch.equal(a[key], b[key])


def test_collate_keeps_channels_last_and_matches_default(small_root):
    ds = MapDataset(str(small_root), return_uint8=True, channels_last=True)
    samples = [ds[i] for i in range(5)]
    batch = collate(samples)
    ref = default_collate(samples)
    assert batch.keys() == ref.keys()
    for key in ref:
        if isinstance(ref[key], torch.Tensor):
            assert torch.equal(batch[key], ref[key]), key
    cam = batch["observation.images.cam0"]
    assert cam.shape == (5, 3, 64, 96)
    assert cam.permute(0, 2, 3, 1).is_contiguous()  # NHWC memory, NCHW shape


def test_streaming_channels_last_through_workers(small_root):
    meta = DatasetMeta(str(small_root))
    ds = StreamingLeRobotDataset(str(small_root), return_uint8=True, channels_last=True, meta=meta)
    seen = []
    loader = DataLoader(ds, batch_size=8, num_workers=2, collate_fn=collate, timeout=120)
    for batch in loader:
        cam = batch["observation.images.cam1"]
        assert cam.permute(0, 2, 3, 1).is_contiguous()
        for i, img in enumerate(cam):
            fid = decode_frame_id(img)
            assert (fid.episode, fid.frame, fid.camera) == (
                int(batch["episode_index"][i]),
                int(batch["frame_index"][i]),
                1,
            )
        seen += batch["index"].tolist()
    assert sorted(seen) == list(range(meta.total_frames))
