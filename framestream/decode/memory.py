"""Per-process malloc settings that stop decoded frames from paying for fresh pages.

torchcodec writes every decode call's frames into a new tensor, and the colour conversion
(swscale) is the first thing to touch that memory. When glibc hands the tensor out as fresh
memory (a new ``mmap``, or heap grown again after a trim), the kernel faults in and zeroes
every 4 KiB page on that first write: at 640x480 that cost ~5x the conversion itself
(one fault per page, ~3 us each on the 2-core reference VM).

Two ``mallopt`` calls make freed frame memory come back to the next decode call already
mapped: ``M_MMAP_THRESHOLD`` fixed at 32 MiB (allocations below it, every decode chunk of
ordinary cameras, come from the heap instead of a fresh ``mmap`` each) and a
``M_TRIM_THRESHOLD`` of 256 MiB (the heap's free top is not handed back to the kernel after
every chunk). The pixels are the same bytes (the same code writes them); only where the
memory comes from changes. The trade-off: a process keeps up to 256 MiB of freed heap
mapped instead of returning it.

It is applied once per process, by default only in DataLoader worker processes (which
decode and nothing else), the first time a video is opened there. ``FRAMESTREAM_MALLOC``:
``auto`` (default: DataLoader workers only), ``1`` (every process that decodes, including
a training process with ``num_workers=0``) or ``0`` (never, for comparisons). Only glibc
has ``mallopt``; elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

from framestream.decode.buffers import per_process

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value (HEAP_MAX_SIZE / 2 on 64-bit)
TRIM_THRESHOLD = 256 << 20


def _setting() -> str:
    value = os.environ.get("FRAMESTREAM_MALLOC", "auto").strip().lower()
    if value in ("0", "off", "false", "no"):
        return "off"
    if value in ("1", "on", "true", "yes", "always"):
        return "always"
    return "auto"


def _apply() -> bool:
    """Set the two thresholds in this process; True if glibc accepted both."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    return mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok


_applied = per_process(_apply)  # once per process (a forked child applies its own)


def _in_dataloader_worker() -> bool:
    try:
        from torch.utils.data import get_worker_info
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return get_worker_info() is not None


def prepare_decoding_process() -> bool:
    """Apply the malloc settings to this process if ``FRAMESTREAM_MALLOC`` says so.

    Called whenever a video is opened; costs a dictionary-free check after the first call.
    Returns whether the settings are in effect in this process.
    """
    setting = _setting()
    if setting == "off" or (setting == "auto" and not _in_dataloader_worker()):
        return False
    return _applied()
