"""Collating samples into batches without a transposing copy for channels-last cameras.

With ``channels_last=True`` a camera tensor is a (…, C, H, W) view of (…, H, W, C) memory.
``torch.utils.data.default_collate`` stacks it into contiguous (B, …, C, H, W) memory, a
strided gather per element. :func:`collate` stacks the underlying (…, H, W, C) memory with
one memcpy per sample and returns the same channels-last view of the batch. Everything else
goes to ``default_collate`` unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import default_collate, get_worker_info


def _hwc_order(ndim: int) -> list[int]:
    """The permutation taking (…, C, H, W) dims to (…, H, W, C)."""
    return [*range(ndim - 3), ndim - 2, ndim - 1, ndim - 3]


def _is_channels_last(t: torch.Tensor) -> bool:
    return t.dim() >= 3 and not t.is_contiguous() and t.permute(_hwc_order(t.dim())).is_contiguous()


def _stack_channels_last(batch: Sequence[torch.Tensor]) -> torch.Tensor:
    order = _hwc_order(batch[0].dim())
    views = [t.permute(order) for t in batch]
    first = views[0]
    out = None
    if get_worker_info() is not None:
        # As default_collate does: build the batch in shared memory, so handing it to the
        # training process costs no further copy.
        numel = sum(v.numel() for v in views)
        storage = first._typed_storage()._new_shared(numel, device=first.device)
        out = first.new(storage).resize_(len(views), *first.shape)
    stacked = torch.stack(views, 0, out=out)
    back = [0, *(1 + order.index(d) for d in range(len(order)))]
    return stacked.permute(back)


def collate(batch: Sequence[Any]) -> Any:
    """``default_collate`` that keeps channels-last camera tensors channels-last (memcpy)."""
    elem = batch[0]
    if isinstance(elem, Mapping):
        return {key: collate([b[key] for b in batch]) for key in elem}
    if isinstance(elem, torch.Tensor) and _is_channels_last(elem):
        if all(t.shape == elem.shape and t.stride() == elem.stride() for t in batch):
            return _stack_channels_last(batch)
    return default_collate(batch)
