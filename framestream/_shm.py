"""Reusable shared-memory batch slots for DataLoader workers.

PyTorch's ``default_collate`` builds every batch of a worker in a fresh shared-memory file,
and the kernel must create and zero every page of it again: on the 2-core reference machine
a 7.4 MB window sample costs ~7.8 ms to stack into fresh shared memory against ~0.3 ms into
memory that is already mapped (``benchmarks/streaming/README.md``). A worker here keeps a
few slots (``memfd`` files, mapped once) and reuses one as soon as the training process has
dropped every tensor of the batch it held:

- the worker writes a batch into a free slot, marks it busy (byte 0 of the slot) and sends
  the slot's file descriptor plus each tensor's offset, shape and strides;
- the training process maps the slot (once while any batch of it is alive) and builds the
  tensors as views of one storage; a ``weakref.finalize`` on the storage's owner marks the
  slot free when the last tensor (or view of one) is gone;
- a worker that finds no free slot and no room for another falls back to the ordinary
  fresh shared memory, so a training loop that keeps batches around is never blocked.

Linux only (``os.memfd_create``); elsewhere :func:`available` is false and callers use the
ordinary path.
"""

from __future__ import annotations

import copy
import mmap
import os
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

FREE, BUSY = 0, 1
HEADER = 64  # bytes before a slot's data; byte 0 is the slot's state
ALIGN = 64
# Per worker: the batches in flight (prefetch_factor 2: two queued, one being consumed) and
# one to spare. They stay allocated while the worker lives: up to MAX_SLOTS batches of memory.
MAX_SLOTS = 4


def available() -> bool:
    """Whether this platform has anonymous memory files (Linux)."""
    return hasattr(os, "memfd_create")


def _round(n: int, to: int) -> int:
    return (n + to - 1) // to * to


class Slot:
    """One memfd mapped in the worker; ``tensor`` is a uint8 view of all of it."""

    def __init__(self, capacity: int) -> None:
        self.size = HEADER + _round(capacity, mmap.PAGESIZE)
        self.fd = os.memfd_create("framestream-batch", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, self.size)
            self.mm = mmap.mmap(self.fd, self.size)
        except BaseException:
            os.close(self.fd)
            raise
        self.tensor = torch.frombuffer(self.mm, dtype=torch.uint8)

    @property
    def capacity(self) -> int:
        return self.size - HEADER

    @property
    def free(self) -> bool:
        return self.mm[0] == FREE

    def close(self) -> None:
        """Forget the slot; the mapping itself goes with the last tensor viewing it."""
        os.close(self.fd)


class SlotPool:
    """The worker's slots; ``acquire`` never blocks (None means: use fresh memory)."""

    def __init__(self, max_slots: int = MAX_SLOTS) -> None:
        self.max_slots = max_slots
        self.slots: list[Slot] = []
        self.reused = 0
        self.fallbacks = 0

    def acquire(self, nbytes: int) -> Slot | None:
        free = [s for s in self.slots if s.free]
        fitting = [s for s in free if s.capacity >= nbytes]
        if fitting:
            slot = min(fitting, key=lambda s: s.capacity)
            self.reused += 1
        elif len(self.slots) < self.max_slots:
            slot = Slot(nbytes)
            self.slots.append(slot)
        elif free:  # replace the largest free slot that is too small
            old = max(free, key=lambda s: s.capacity)
            self.slots.remove(old)
            old.close()
            slot = Slot(nbytes)
            self.slots.append(slot)
        else:
            self.fallbacks += 1
            return None
        slot.mm[0] = BUSY
        return slot


_POOL: tuple[int, SlotPool] | None = None


def pool() -> SlotPool:
    """This process's pool (a forked child never shares its parent's)."""
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid():
        _POOL = (os.getpid(), SlotPool())
    return _POOL[1]


class Region:
    """Carves aligned, typed tensors out of a slot."""

    def __init__(self, slot: Slot) -> None:
        self.slot = slot
        self.offset = HEADER

    def take(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        itemsize = torch.empty(0, dtype=dtype).element_size()
        nbytes = int(np.prod(shape, dtype=np.int64)) * itemsize
        start = self.offset
        self.offset = _round(start + nbytes, ALIGN)
        return self.slot.tensor[start : start + nbytes].view(dtype).view(shape)


def nbytes_of(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    """Bytes a :meth:`Region.take` of this shape uses, alignment included."""
    itemsize = torch.empty(0, dtype=dtype).element_size()
    return _round(int(np.prod(shape, dtype=np.int64)) * itemsize, ALIGN)


class SlotBatch(dict):
    """A collated batch whose tensors live in a slot; it unpickles as a plain ``dict``.

    In the worker it is an ordinary dict. Pickled (by the DataLoader, to send it to the
    training process), tensors inside the slot travel as (offset, shape, strides) and the
    slot's file descriptor; any other value is pickled as usual. A batch that is dropped in
    the worker without being sent frees its slot.
    """

    def __init__(self, slot: Slot, items: Mapping[str, Any]) -> None:
        super().__init__(items)
        self._slot = slot
        self._sent = [False]
        weakref.finalize(self, _release_unsent, slot.mm, self._sent)

    def __copy__(self) -> dict[str, Any]:
        return dict(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        return copy.deepcopy(dict(self), memo)  # a real copy, not a second view of the slot

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        from multiprocessing.reduction import DupFd

        slot = self._slot
        base = slot.tensor.untyped_storage().data_ptr()
        entries: dict[str, Any] = {}
        for key, value in self.items():
            if isinstance(value, torch.Tensor) and value.untyped_storage().data_ptr() == base:
                offset = value.storage_offset() * value.element_size()
                entries[key] = (True, (value.dtype, offset, tuple(value.shape), value.stride()))
            else:
                entries[key] = (False, value)
        self._sent[0] = True
        return _rebuild, (DupFd(slot.fd), slot.size, os.getpid(), entries)


def _release_unsent(mm: mmap.mmap, sent: list[bool]) -> None:
    if not sent[0] and not mm.closed:
        mm[0] = FREE


# The training process's mappings, by memfd identity. Held while the worker that owns the
# slot lives (its pages are in memory anyway), so the pages stay mapped from batch to batch
# instead of being faulted in again; after that, alive only while a batch views them.
_MAPS: weakref.WeakValueDictionary[tuple[int, int], mmap.mmap] = weakref.WeakValueDictionary()
_HELD: dict[tuple[int, int], tuple[int, mmap.mmap]] = {}
RECEIVED: dict[tuple[int, int], int] = {}  # batches received per slot (tests read it)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _hold(key: tuple[int, int], pid: int, mm: mmap.mmap) -> None:
    if key not in _HELD:
        for k in [k for k, (p, _) in _HELD.items() if not _alive(p)]:
            del _HELD[k]
        _HELD[key] = (pid, mm)


def _release(mm: mmap.mmap) -> None:
    if not mm.closed:
        mm[0] = FREE


def _rebuild(dupfd: Any, size: int, pid: int, entries: Mapping[str, Any]) -> dict[str, Any]:
    fd = dupfd.detach()
    try:
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        mm = _MAPS.get(key)
        if mm is None or len(mm) != size:
            mm = mmap.mmap(fd, size)
            _MAPS[key] = mm
    finally:
        os.close(fd)
    _hold(key, pid, mm)
    RECEIVED[key] = RECEIVED.get(key, 0) + 1
    # A fresh owner per batch: every tensor below shares its storage, and the storage keeps
    # the owner alive, so the finalizer runs when the batch's last tensor or view is gone.
    owner = np.frombuffer(mm, dtype=np.uint8)
    storage = torch.from_numpy(owner).untyped_storage()
    weakref.finalize(owner, _release, mm)
    out: dict[str, Any] = {}
    for key, (in_slot, entry) in entries.items():
        if not in_slot:
            out[key] = entry
            continue
        dtype, offset, shape, stride = entry
        itemsize = torch.empty(0, dtype=dtype).element_size()
        out[key] = torch.empty(0, dtype=dtype).set_(storage, offset // itemsize, shape, stride)
    return out
