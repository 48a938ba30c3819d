"""Recycled uint8 frame buffers, so that a worker stops paying the kernel for fresh pages.

Every sample's camera window is a new (T, H, W, C) array and every decoded frame a new
(H, W, C) copy. Freed and allocated again at hundreds of samples per second, these arrays
come back from the C allocator as fresh pages that the kernel must fault in and zero: a
profile of a 16-frame window run on the 2-core reference machine spent about a third of a
worker's time in ``clear_page`` under those copies. Buffers taken here return to a free list
when the last tensor or array viewing them is gone, and the next sample of the same shape
reuses them, already mapped.

A buffer that is never freed (a caller keeping samples) is simply not reused; the free list
is bounded: a streaming worker caps its idle memory at ``IDLE_SHARE`` of the frames' share of
its memory budget (``MAX_FREE_BYTES`` without a budget). Idle buffers sit beside the frames
held, so a cap of the whole share let a window run's worker keep up to twice it (156 MB idle
beside 520 MB held, measured). An eighth still bridges each release and the next decode,
which come a sample apart; and glibc keeps freed heap mapped too (:mod:`.memory`).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch

MAX_FREE_BYTES = 512 << 20
IDLE_SHARE = 1 / 8  # of a memory budget's frames share: the idle buffers' cap


class BufferPool:
    """Free lists of uint8 arrays by shape, refilled by finalizers."""

    def __init__(self, max_free_bytes: int = MAX_FREE_BYTES) -> None:
        self.max_free_bytes = max_free_bytes
        self._free: dict[tuple[int, ...], list[np.ndarray]] = {}
        self._free_bytes = 0
        self._lock = threading.RLock()  # finalizers run in any thread, even inside take()
        self.reused = 0
        self.allocated = 0

    def take(self, shape: tuple[int, ...]) -> torch.Tensor:
        """An uninitialised uint8 tensor of ``shape``; recycled once nothing views it.

        A tensor, not an array: numpy collapses a view of a view onto the memory's owner, so
        a finalizer on an array could fire while a view of it lives on; torch views (and
        ``.numpy()`` arrays of them) all hold the one storage that holds the finalized view.
        """
        with self._lock:
            spare = self._free.get(shape)
            base = spare.pop() if spare else None
            if base is not None:
                self._free_bytes -= base.nbytes
                self.reused += 1
            else:
                self.allocated += 1
        if base is None:
            base = np.empty(shape, dtype=np.uint8)
        # A distinct view per use, held by the tensor's storage: ``base`` stays out of the
        # free list until the storage (every view of the tensor) is gone.
        view = base[...]
        weakref.finalize(view, self._give_back, base).atexit = False
        return torch.from_numpy(view)

    def set_max_free_bytes(self, nbytes: int) -> None:
        """Cap idle memory at ``nbytes``, dropping spare buffers beyond it now."""
        with self._lock:
            self.max_free_bytes = nbytes
            for spares in self._free.values():
                while spares and self._free_bytes > nbytes:
                    self._free_bytes -= spares.pop().nbytes

    def _give_back(self, base: np.ndarray) -> None:
        with self._lock:
            if self._free_bytes + base.nbytes <= self.max_free_bytes:
                self._free.setdefault(base.shape, []).append(base)
                self._free_bytes += base.nbytes


T = TypeVar("T")


def per_process(factory: Callable[[], T]) -> Callable[[], T]:
    """A getter of one ``factory()`` per process: a forked child never uses its parent's.

    The child drops the inherited one at fork (``os.register_at_fork``), so the getter itself
    costs no system call: it runs for every frame.
    """
    held: list[T] = []
    locks = [threading.Lock()]

    def reset() -> None:  # in a fresh child; a lock held across fork would never be freed
        held.clear()
        locks[0] = threading.Lock()

    os.register_at_fork(after_in_child=reset)

    def get() -> T:
        if not held:
            with locks[0]:
                if not held:
                    held.append(factory())
        return held[0]

    return get


pool = per_process(BufferPool)  # this process's pool


def take(shape: tuple[int, ...]) -> torch.Tensor:
    """:meth:`BufferPool.take` on this process's pool."""
    return pool().take(shape)
