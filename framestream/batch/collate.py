"""Collating samples into batches: reusable shared memory in workers, channels-last kept.

``torch.utils.data.default_collate`` is correct but costly for frames: in a DataLoader
worker it builds each batch in a fresh shared-memory file (the kernel creates and zeroes
every page again, slower than the copy itself), and it stacks channels-last camera views
with a strided gather. :func:`collate` gives the same batch (same keys, values, dtypes and
shapes) but

- in a worker on Linux, writes the batch's tensors into a shared-memory slot that the
  worker reuses once the training process has dropped the batch (:mod:`framestream.batch.slots`);
- stacks a channels-last camera tensor (``channels_last=True``) with a memcpy per sample and
  returns the same channels-last view of the batch.

Python scalars (``frame_index``, ``timestamp``) go into the slot as the tensors
``default_collate`` makes of them. Batches whose samples do not all share one shape and dtype
per key, and other values (``task`` strings), go to ``default_collate`` unchanged. Samples
of framestream's datasets are :class:`~framestream.stream.sample.Sample` dicts, which
``default_collate`` hands to :func:`collate` by itself: passing
``collate_fn=framestream.collate`` is not required.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import default_collate, get_worker_info
from torch.utils.data._utils.collate import default_collate_fn_map

from framestream.batch import arena as _arena
from framestream.batch import slots as _shm
from framestream.stream.sample import Sample


def _hwc_order(ndim: int) -> list[int]:
    """The permutation taking (…, C, H, W) dims to (…, H, W, C)."""
    return [*range(ndim - 3), ndim - 2, ndim - 1, ndim - 3]


def _is_channels_last(t: torch.Tensor) -> bool:
    return t.dim() >= 3 and not t.is_contiguous() and t.permute(_hwc_order(t.dim())).is_contiguous()


def _uniform(batch: Sequence[Any]) -> bool:
    """All tensors of one shape, dtype and layout (what a stack into one buffer needs)."""
    elem = batch[0]
    if not isinstance(elem, torch.Tensor):
        return False
    shape, dtype, stride = elem.shape, elem.dtype, elem.stride()
    return all(
        isinstance(t, torch.Tensor)
        and t.shape == shape
        and t.dtype == dtype
        and t.stride() == stride
        for t in batch
    )


def _stack_into(batch: Sequence[torch.Tensor], out: torch.Tensor | None) -> torch.Tensor:
    """Stack ``batch`` (into ``out`` when given, memory-order shape); keeps channels-last."""
    elem = batch[0]
    if _is_channels_last(elem):
        order = _hwc_order(elem.dim())
        stacked = torch.stack([t.permute(order) for t in batch], 0, out=out)
        back = [0, *(1 + order.index(d) for d in range(len(order)))]
        return stacked.permute(back)
    return torch.stack(list(batch), 0, out=out)


def _memory_shape(elem: torch.Tensor, n: int) -> tuple[int, ...]:
    """The contiguous shape a batch of ``n`` such tensors is written in."""
    if _is_channels_last(elem):
        return (n, *elem.permute(_hwc_order(elem.dim())).shape)
    return (n, *elem.shape)


def _shared_fresh(elem: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Fresh shared memory, as default_collate allocates it in a worker."""
    numel = int(torch.Size(shape).numel())
    storage = elem._typed_storage()._new_shared(numel, device=elem.device)
    return elem.new(storage).resize_(shape)


# Python scalars as default_collate turns them into tensors (bool before int: a bool is an int).
_SCALAR_DTYPES = ((bool, torch.bool), (int, torch.int64), (float, torch.float64))


def _scalar_dtype(column: Sequence[Any]) -> torch.dtype | None:
    """The dtype default_collate gives a column of Python scalars of one exact type, else None.

    Why: a tensor made outside the slot travels to the training process as its own shared
    memory, and each one costs a socket handshake with the worker's resource sharer (5 such
    columns made this the training process's largest cost in single-frame batches)."""
    kind = type(column[0])
    for py, dtype in _SCALAR_DTYPES:
        if kind is py:
            return dtype if all(type(v) is py for v in column) else None
    return None


def _collate_in_slot(
    samples: Sequence[Mapping[str, Any]], *, wait: bool = False
) -> dict[str, Any] | None:
    """The batch written into a reusable slot, or None when no slot is free. ``wait``: a
    held slot may be waited for (2+ workers, where another worker's batch frees it:
    :data:`framestream.batch.slots.WAIT_PERIODS`)."""
    n = len(samples)
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, torch.dtype] = {}
    scalars: set[str] = set()
    for k, elem in samples[0].items():
        column = [s[k] for s in samples]
        if _uniform(column):
            shapes[k], dtypes[k] = _memory_shape(elem, n), elem.dtype
        elif (dt := _scalar_dtype(column)) is not None:
            shapes[k], dtypes[k] = (n,), dt
            scalars.add(k)

    def bytes_of(keys: Any) -> int:
        return sum(_shm.nbytes_of(shapes[k], dtypes[k]) for k in keys)

    placed: dict[str, Any] = {}
    claimed = _arena.claim(samples, lambda cams: bytes_of(shapes.keys() - cams))
    if claimed is not None:  # the camera tensors are in a slot already, in place
        slot, start, placed = claimed
    else:
        slot = _shm.pool().acquire(bytes_of(shapes), wait=wait)
        if slot is None:
            return None
        start = _shm.HEADER
    region = _shm.Region(slot, start)
    out: dict[str, Any] = {}
    for key in samples[0]:
        column = [s[key] for s in samples]
        if key in placed:
            out[key] = placed[key]
        elif key in scalars:
            out[key] = region.take(shapes[key], dtypes[key]).copy_(
                torch.tensor(column, dtype=dtypes[key])
            )
        elif key in shapes:
            out[key] = _stack_into(column, region.take(shapes[key], dtypes[key]))
        else:
            out[key] = collate(column)
    return _shm.SlotBatch(slot, out)


def collate(batch: Sequence[Any]) -> Any:
    """``default_collate`` that reuses worker shared memory and keeps channels-last layout.

    Use it as ``DataLoader(..., collate_fn=framestream.collate)``. The batch equals
    ``default_collate``'s except that channels-last camera tensors stay channels-last.
    """
    elem = batch[0]
    info = get_worker_info()
    in_worker = info is not None
    if isinstance(elem, Mapping):
        if info is not None and _shm.available() and len(batch) > 0:
            slotted = _collate_in_slot(batch, wait=info.num_workers > 1)
            if slotted is not None:
                return slotted
        return {key: collate([b[key] for b in batch]) for key in elem}
    if isinstance(elem, torch.Tensor) and _is_channels_last(elem) and _uniform(batch):
        out = _shared_fresh(elem, _memory_shape(elem, len(batch))) if in_worker else None
        return _stack_into(batch, out)
    return default_collate(batch)


def _collate_samples(batch: Sequence[Any], *, collate_fn_map: Any = None) -> Any:
    return collate(batch)


# torch documents extending default_collate by adding to this map: batches of framestream
# samples then take the path above even when the DataLoader has no collate_fn.
default_collate_fn_map[Sample] = _collate_samples
