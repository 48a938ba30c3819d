"""Camera frames written straight into the batch slot that will carry them.

Without it a camera window is copied twice in a DataLoader worker: into the sample's own
tensor (stacking the shared decoded frames), then into the batch's shared-memory slot by
:func:`framestream.collate`. A window sample of the benchmark dataset is 7.4 MB, so the
first copy alone was ~1.2 ms of a ~5.6 ms sample. In a worker whose DataLoader fetch pulls
from the dataset directly and collates with :func:`framestream.collate` (or torch's
``default_collate``, which hands framestream samples to it), the :class:`Arena` gives each
sample's camera tensors as views of the slot, at the place that sample takes in its batch
(the fetch's position, read from torch's frame as :mod:`framestream.datasets.loader_frames`
does). ``collate`` then finds them in place (:func:`claim`) and writes only the other keys.

Nothing is trusted blindly: a batch whose samples are not exactly where the arena put them
(another iterator in between, a sample dropped) is collated the ordinary way, and a slot
that no batch claimed is freed once the last view of it is gone, never before.
"""

from __future__ import annotations

import math
import os
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from framestream.batch import slots as _shm

__all__ = ["Arena", "CameraLayout", "claim"]

# Room kept for a batch's keys besides the cameras beyond what the first sample's show
# (its cameras' pad masks, even_ranks' is_repeat), per key and in all.
_SLACK_PER_KEY = 256
_SLACK = 4096


@dataclass(frozen=True)
class CameraLayout:
    """One camera's tensor in every sample: shape and dtype (the sample's own, contiguous)."""

    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


class _Batch:
    """A slot being filled, one sample after another; ``offsets`` per camera key."""

    def __init__(self, slot: _shm.Slot, cameras: Sequence[CameraLayout], size: int, fetch: int):
        self.slot, self.cameras, self.size, self.fetch = slot, tuple(cameras), size, fetch
        self.claimed = [False]
        self.handed: set[int] = set()  # indices of samples given memory here
        # A storage of its own, so the views handed to samples tell when they are all gone.
        owner = np.frombuffer(slot.mm, dtype=np.uint8)
        self.memory = torch.from_numpy(owner)
        weakref.finalize(owner, _free_unless_claimed, slot.mm, self.claimed)
        # Each camera's offset and (size, ...) tensor, made once: a sample's memory is then one
        # index (a slice and two views per sample and camera cost ~3 % of a worker's time).
        self.offsets: dict[str, int] = {}
        self.columns: dict[str, torch.Tensor] = {}
        at = _shm.HEADER
        for cam in self.cameras:
            self.offsets[cam.key] = at
            column = self.memory[at : at + size * cam.nbytes]
            self.columns[cam.key] = column.view(cam.dtype).view(size, *cam.shape)
            at += _shm.nbytes_of((size, *cam.shape), cam.dtype)
        self.end = at

    def view(self, cam: CameraLayout, index: int) -> torch.Tensor:
        self.handed.add(index)
        return self.columns[cam.key][index]


def _free_unless_claimed(mm: Any, claimed: list[bool]) -> None:
    if not claimed[0] and not mm.closed:
        mm[0] = _shm.FREE


_current: list[_Batch | None] = [None]  # this process's batch being filled (one arena each)
os.register_at_fork(after_in_child=lambda: _current.__setitem__(0, None))


class Arena:
    """Hands out the slot memory of each sample's camera tensors in the batch being fetched.

    Args:
        cameras: the camera tensors every sample has (all cameras of the dataset).
        locate: where the sample about to be built goes, ``(fetch id, index in the batch,
            batch size)``, or None (it is built in its own memory).
    """

    def __init__(
        self,
        cameras: Sequence[CameraLayout],
        locate: Callable[[], tuple[int, int, int] | None],
    ) -> None:
        self.cameras = {c.key: c for c in cameras}
        self.locate = locate
        self._index: int | None = None  # where the sample being built goes
        self._fetch: tuple[int, int] | None = None  # (id of the fetch's list, batch size)

    def place(self) -> None:
        """Called before each sample is built: find its place in the batch being fetched."""
        self._index = None
        position = self.locate()
        if position is None:
            return
        fetch, index, size = position
        if index >= size:
            return
        if index == 0 or self._fetch != (fetch, size):
            # A new batch, or one this arena did not see start: the last one is done with.
            _current[0] = None
            self._fetch = (fetch, size) if index == 0 else None
            if index != 0:
                return
        self._index = index

    def out(self, key: str, sample: Mapping[str, Any]) -> torch.Tensor | None:
        """The memory of camera ``key`` of the sample being built (``sample``: its keys built
        so far, which size the slot when the batch's first slot memory is asked for), or
        None. A batch whose slot is not free yet (the last one still held) gets it at a
        later sample: the earlier ones are copied into it by :func:`claim`."""
        cam = self.cameras.get(key)
        if cam is None or self._index is None:
            return None
        batch = _current[0]
        if batch is None:
            if self._fetch is None:
                return None
            batch = self._open(sample, *self._fetch)
            if batch is None:
                self._index = None  # no slot free yet: this sample is built in its own memory
                return None
        return batch.view(cam, self._index)

    def _open(self, sample: Mapping[str, Any], fetch: int, size: int) -> _Batch | None:
        cams = list(self.cameras.values())
        need = sum(_shm.nbytes_of((size, *c.shape), c.dtype) for c in cams)
        need += _SLACK + _SLACK_PER_KEY * (len(sample) + 2 * len(cams) + 1)
        for value in sample.values():
            if isinstance(value, torch.Tensor):
                need += _shm.nbytes_of((size, *value.shape), value.dtype)
            elif isinstance(value, int | float | bool):
                need += _shm.nbytes_of((size,), torch.float64)
        slot = _shm.pool().acquire(need, count=False)  # collate then tries, and counts
        if slot is None:
            return None
        _current[0] = _Batch(slot, cams, size, fetch)
        return _current[0]


def claim(
    samples: Sequence[Mapping[str, Any]], other_bytes: Callable[[set[str]], int]
) -> tuple[_shm.Slot, int, dict[str, Any]] | None:
    """The slot the arena filled with these samples' camera tensors, the offset where the
    other keys may start, and each camera's batch tensor. Samples built before the slot was
    had are copied into their place in it. None if a sample given slot memory is not exactly
    in its place (these are not the samples the arena placed) or the other keys
    (``other_bytes(camera keys)``) would not fit: then nothing is claimed, and the slot is
    freed with its last view."""
    batch = _current[0]
    n = len(samples)
    if batch is None or batch.claimed[0] or not max(batch.handed, default=-1) < n <= batch.size:
        return None
    base = batch.slot.tensor.data_ptr()
    out: dict[str, Any] = {}
    copies: list[tuple[CameraLayout, int, torch.Tensor]] = []  # built before the slot was had
    for cam in batch.cameras:
        at = batch.offsets[cam.key]
        for i, sample in enumerate(samples):
            t = sample.get(cam.key)
            if (
                not isinstance(t, torch.Tensor)
                or t.dtype != cam.dtype
                or tuple(t.shape) != cam.shape
                or not t.is_contiguous()
            ):
                return None
            ptr = t.data_ptr()
            if ptr == base + at + i * cam.nbytes:
                continue
            if i in batch.handed or base <= ptr < base + batch.slot.size:
                return None  # not the samples the slot was given to, or not in their place
            copies.append((cam, i, t))
        view = batch.slot.tensor[at : at + n * cam.nbytes]
        out[cam.key] = view.view(cam.dtype).view(n, *cam.shape)
    if batch.end + other_bytes(set(out)) > batch.slot.size:
        return None
    for cam, i, t in copies:
        batch.view(cam, i).copy_(t)
    batch.claimed[0] = True
    _shm.pool().in_place += 1
    _current[0] = None
    return batch.slot, batch.end, out
