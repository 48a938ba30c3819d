"""Whether a worker's samples may be built in their batch's memory, and with which layout.

:mod:`framestream.batch.arena` writes camera tensors straight into the batch slot. That is
only safe when every sample goes from this dataset to :func:`framestream.collate` in the
order the fetch pulls them: the DataLoader worker's fetcher iterates this very dataset, with
automatic batching, and collates with framestream's collate (or torch's ``default_collate``,
which hands framestream samples to it). Anything else (a wrapping dataset, a custom collate,
transforms that replace the tensor) keeps the ordinary path.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import default_collate, get_worker_info

from framestream.batch import slots as _shm
from framestream.batch.arena import Arena, CameraLayout
from framestream.batch.collate import collate
from framestream.datasets.loader_frames import fetch_position, loader_fetcher
from framestream.format.checks import declared_frame_shape

__all__ = ["arena_for"]

_COLLATES = (collate, default_collate)


def camera_layouts(meta: Any, window: Any, options: Any) -> list[CameraLayout] | None:
    """Every camera's per-sample tensor (shape, dtype), or None if one is not a plain RGB
    video with a declared frame size."""
    out = []
    for key in meta.camera_keys:
        feature = meta.features[key]
        hwc = declared_frame_shape(feature)
        if feature.dtype != "video" or feature.is_depth or hwc is None:
            return None
        h, w, c = hwc
        steps = len(window.offsets[key]) if key in window.offsets else 1
        shape = (steps, c, h, w) if steps > 1 else (c, h, w)
        dtype = torch.uint8 if options.return_uint8 else torch.float32
        out.append(CameraLayout(key, shape, dtype))
    return out or None


def arena_for(dataset: Any) -> Arena | None:
    """An arena for the pass starting now (called in the dataset's ``__iter__``), or None."""
    o = dataset.options
    if (
        get_worker_info() is None
        or not _shm.available()
        or o.channels_last
        or o.pixel_format != "rgb"
        or dataset.image_transforms is not None
    ):
        return None
    fetcher = loader_fetcher()
    if (
        fetcher is None
        or getattr(fetcher, "dataset", None) is not dataset
        or not getattr(fetcher, "auto_collation", False)
        or not any(getattr(fetcher, "collate_fn", None) is c for c in _COLLATES)
    ):
        return None
    layouts = camera_layouts(dataset.meta, dataset.window, o)
    return Arena(layouts, fetch_position) if layouts else None
