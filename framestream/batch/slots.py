"""Reusable shared-memory batch slots for DataLoader workers.

PyTorch's ``default_collate`` builds every batch of a worker in a fresh shared-memory file,
and the kernel must create and zero every page of it again: on the 2-core reference machine
a 7.4 MB window sample costs ~7.8 ms to stack into fresh shared memory against ~0.3 ms into
memory that is already mapped (``benchmarks/streaming/README.md``). A worker here keeps a
few slots (``memfd`` files, mapped once) and reuses one as soon as the training process has
dropped every tensor of the batch it held:

- the worker writes a batch into a free slot, marks it busy (byte 0 of the slot) and sends
  the slot's file descriptor plus each tensor's offset, shape and strides;
- the training process maps the slot once (its descriptor comes with the slot's first batch)
  and builds each batch's tensors as views of one storage; a ``weakref.finalize`` on the
  storage's owner marks the slot free when the last tensor (or view of one) is gone;
- a worker that finds no free slot and no room for another falls back to the ordinary
  fresh shared memory, so a training loop that keeps batches around is never blocked.
  Room is at most ``MAX_SLOTS`` slots, and no more bytes than the batch share of the worker's
  memory budget (:func:`framestream.stream.ledger.batch_reserve`; one slot always fits).

Linux only (``os.memfd_create``); elsewhere :func:`available` is false and callers use the
ordinary path.
"""

from __future__ import annotations

import copy
import itertools
import math
import mmap
import os
import secrets
import time
import warnings
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from framestream.decode.buffers import per_process
from framestream.stream.ledger import batch_reserve

FREE, BUSY = 0, 1
HEADER = 64  # bytes before a slot's data; byte 0 is the slot's state
ALIGN = 64
# Per worker: the batches in flight (prefetch_factor 2: two queued, one being consumed) and
# one to spare. They stay allocated while the worker lives: up to MAX_SLOTS batches of memory.
MAX_SLOTS = 4
# A slot still busy after this many later batches of its worker is held by the training
# process, not in flight (prefetching keeps prefetch_factor batches per worker queued): some
# tensor of an old batch is still referenced. Reported once per worker, when it costs a batch.
PINNED_AFTER = 64
# A worker whose slots are all held (its last batch not yet dropped by the training process)
# waits for one, at most this many of its own batch periods, before it falls back to fresh
# shared memory. Why: the training process drops batch j as soon as it takes batch j + 1,
# which another worker builds meanwhile, so the wait is short; the fallback costs more than
# it (a 236 MB window batch: zeroed fresh pages, then one fd handshake per tensor) and, by
# slowing this worker, makes the other one wait on it next: window runs with a fallback
# streak ran ~35% slower. Only with 2+ workers (one worker's batch j + 1 is what its
# training process awaits while holding batch j), and not again after a wait timed out
# until a slot is found free (a training loop keeping its batches costs one wait).
WAIT_PERIODS = 2.0
WAIT_MIN_S, WAIT_MAX_S = 0.05, 2.0


def available() -> bool:
    """Whether this platform has anonymous memory files (Linux)."""
    return hasattr(os, "memfd_create")


def _round(n: int, to: int) -> int:
    return (n + to - 1) // to * to


class Slot:
    """One memfd mapped in the worker; ``tensor`` is a uint8 view of all of it."""

    def __init__(self, capacity: int, *, token: int = 0, serial: int = 0) -> None:
        self.token, self.serial = token, serial  # the slot's name in the training process
        self.fd_sent = False
        self.busy_at = 0  # the pool's acquisition count when the slot was last handed out
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
        self.in_place = 0  # batches whose camera tensors were built in their slot (arena)
        self.token = secrets.randbits(62)  # tells this pool's slots from any other's
        self._serials = itertools.count()
        self.acquisitions = 0  # batches given a slot or sent to fresh memory
        self.warned_pinned = False
        self.waits = 0  # batches that waited for a held slot and got it
        self.period: float | None = None  # seconds between this worker's batches (average)
        self._last = 0.0  # monotonic time of the last counted acquisition
        self._waiting_failed = False  # the last wait timed out (no wait until one is free)

    def _new(self, nbytes: int) -> Slot:
        return Slot(nbytes, token=self.token, serial=next(self._serials))

    def _room(self, nbytes: int, freed: int = 0) -> bool:
        """Whether a slot of ``nbytes`` fits the budget's batch share (one always does)."""
        limit = batch_reserve()
        held = sum(s.size for s in self.slots) - freed
        return limit is None or held == 0 or held + nbytes <= limit

    def acquire(self, nbytes: int, *, count: bool = True, wait: bool = False) -> Slot | None:
        """A free slot of at least ``nbytes`` (marked busy), or None; ``count=False``: a
        failure is not a fallback (the caller has another way to a slot). ``wait``: when
        every fitting slot is held, wait for one (bounded: see ``WAIT_PERIODS``)."""
        if count:
            now = time.monotonic()
            if self._last:
                gap = now - self._last
                self.period = gap if self.period is None else 0.8 * self.period + 0.2 * gap
            self._last = now
        free = [s for s in self.slots if s.free]
        fitting = [s for s in free if s.capacity >= nbytes]
        if fitting:
            slot = self._reuse(fitting)
        elif len(self.slots) < self.max_slots and self._room(nbytes):
            slot = self._new(nbytes)
            self.slots.append(slot)
        elif free and self._room(nbytes, max(s.size for s in free)):
            # replace the largest free slot that is too small
            old = max(free, key=lambda s: s.capacity)
            self.slots.remove(old)
            old.close()
            slot = self._new(nbytes)
            self.slots.append(slot)
        elif wait and (freed := self._wait_for(nbytes)):  # no other slot may be had
            slot = self._reuse(freed)
        else:
            if count:
                self.fallbacks += 1
                self.acquisitions += 1
                self._warn_if_pinned()
            return None
        self.acquisitions += 1
        slot.busy_at = self.acquisitions
        slot.mm[0] = BUSY
        return slot

    def _reuse(self, candidates: list[Slot]) -> Slot:
        """The smallest of ``candidates`` (free slots that fit); a slot found free again
        lets a later batch wait (see ``WAIT_PERIODS``)."""
        self.reused += 1
        self._waiting_failed = False
        return min(candidates, key=lambda s: s.capacity)

    def _wait_for(self, nbytes: int) -> list[Slot]:
        """The first held slot of at least ``nbytes`` to be freed within the wait's bound
        (as a list), or nothing: no slot is worth waiting for, or the bound passed."""
        held = [s for s in self.slots if s.capacity >= nbytes and self._held_for(s) < PINNED_AFTER]
        if not held or self._waiting_failed or self.period is None:
            return []
        bound = min(WAIT_MAX_S, max(WAIT_MIN_S, WAIT_PERIODS * self.period))
        deadline = time.monotonic() + bound
        pause = 0.0002
        while True:
            freed = [s for s in held if s.free]
            if freed:
                self.waits += 1
                return freed
            if time.monotonic() >= deadline:
                self._waiting_failed = True
                return []
            time.sleep(pause)
            pause = min(2 * pause, 0.002)

    def _held_for(self, slot: Slot) -> int:
        """Batches acquired since ``slot`` was handed out."""
        return self.acquisitions - slot.busy_at

    def _warn_if_pinned(self) -> None:
        """Say so (once) when a slot is held long after its batch: a kept view, not prefetch."""
        if self.warned_pinned:
            return
        held = [self._held_for(s) for s in self.slots if not s.free]
        if not held or max(held) < PINNED_AFTER:
            return
        self.warned_pinned = True
        warnings.warn(
            f"framestream.collate (DataLoader worker pid {os.getpid()}): a batch's shared "
            f"memory slot is still held {max(held)} batches later, so a tensor of that batch "
            "(or a view of one, such as batch['index']) is still referenced; with every slot "
            "held, batches go to fresh shared memory, which is slower "
            "(stats()['batch_slot_fallbacks'] counts them). .clone() what you keep past a step.",
            stacklevel=3,
        )


pool = per_process(SlotPool)  # this process's pool


class Region:
    """Carves aligned, typed tensors out of a slot."""

    def __init__(self, slot: Slot, offset: int = HEADER) -> None:
        self.slot = slot
        self.offset = offset

    def take(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        nbytes = math.prod(shape) * dtype.itemsize
        start = self.offset
        self.offset = _round(start + nbytes, ALIGN)
        return self.slot.tensor[start : start + nbytes].view(dtype).view(shape)


def nbytes_of(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    """Bytes a :meth:`Region.take` of this shape uses, alignment included."""
    return _round(math.prod(shape) * dtype.itemsize, ALIGN)


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
        dupfd = None
        if not slot.fd_sent:  # the receiver keeps the mapping: later batches name the slot
            dupfd = DupFd(slot.fd)
            slot.fd_sent = True
        args = (slot.token, slot.serial, os.getpid(), slot.fd, slot.size, dupfd, entries)
        return _rebuild, args


def _release_unsent(mm: mmap.mmap, sent: list[bool]) -> None:
    if not sent[0] and not mm.closed:
        mm[0] = FREE


# The training process's mappings of worker slots, by (worker token, slot serial). A slot's
# file descriptor travels with its first batch only (passing a descriptor costs a socket
# handshake with the worker's resource sharer); later batches name the slot, whose pages stay
# mapped here from batch to batch. Entries go once their worker has exited.
_MAPPED: dict[tuple[int, int], tuple[int, mmap.mmap]] = {}
RECEIVED: dict[tuple[int, int], int] = {}  # batches received per slot (tests read it)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remember(key: tuple[int, int], pid: int, mm: mmap.mmap) -> None:
    for k in [k for k, (p, _) in _MAPPED.items() if not _alive(p)]:
        del _MAPPED[k]
    _MAPPED[key] = (pid, mm)


def _map_from_proc(pid: int, fd: int, size: int) -> mmap.mmap:
    """Map a slot whose first batch never reached this process (it was pickled elsewhere)."""
    try:
        own = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDWR)
    except OSError as exc:
        raise RuntimeError(
            f"framestream.collate: a batch names shared-memory slot {fd} of DataLoader worker "
            f"pid {pid}, which this process never received and cannot open ({exc}); "
            "pickle batches from framestream.collate only to send them to the training process"
        ) from exc
    try:
        return mmap.mmap(own, size)
    finally:
        os.close(own)


def _release(mm: mmap.mmap) -> None:
    if not mm.closed:
        mm[0] = FREE


def _rebuild(
    token: int,
    serial: int,
    pid: int,
    fd_number: int,
    size: int,
    dupfd: Any,
    entries: Mapping[str, Any],
) -> dict[str, Any]:
    key = (token, serial)
    if dupfd is not None:
        fd = dupfd.detach()
        try:
            mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        _remember(key, pid, mm)
    else:
        hit = _MAPPED.get(key)
        if hit is None:
            mm = _map_from_proc(pid, fd_number, size)
            _remember(key, pid, mm)
        else:
            mm = hit[1]
    RECEIVED[key] = RECEIVED.get(key, 0) + 1
    # A fresh owner per batch: every tensor below shares its storage, and the storage keeps
    # the owner alive, so the finalizer runs when the batch's last tensor or view is gone.
    owner = np.frombuffer(mm, dtype=np.uint8)
    storage = torch.from_numpy(owner).untyped_storage()
    weakref.finalize(owner, _release, mm)
    out: dict[str, Any] = {}
    for name, (in_slot, entry) in entries.items():
        if not in_slot:
            out[name] = entry
            continue
        dtype, offset, shape, stride = entry
        out[name] = torch.empty(0, dtype=dtype).set_(
            storage, offset // dtype.itemsize, shape, stride
        )
    return out
