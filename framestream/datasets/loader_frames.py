"""What torch's DataLoader decides for a worker but does not tell its dataset.

The dataset adapts to three of those: whether the worker outlives the pass (it then builds
the next pass ahead), the batches it is asked for (a restored state that cannot fill one is
spent under ``drop_last``) and where each sample lands in its batch (its camera tensors are
then built in the batch's memory). torch passes them as arguments of frames that are running while
the dataset iterates, so they are read there; unknown (another loader, another torch) reads
as the safe answer.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["fetch_position", "loader_batch", "loader_fetcher", "persistent_worker"]


def persistent_worker() -> bool:
    """Whether this DataLoader worker outlives the pass (``persistent_workers=True``).

    torch does not expose it, but its worker loop takes it as an argument: read it from that
    frame. Why: building the next pass's stream ahead is wasted work in a worker that exits.
    Unknown (another loader, another torch): False.
    """
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "_worker_loop" and "persistent_workers" in frame.f_locals:
            return bool(frame.f_locals["persistent_workers"])
        frame = frame.f_back
    return False


def loader_batch() -> tuple[int, bool] | None:
    """(batch size, drop_last) of the DataLoader fetch pulling from this iterator; None
    outside one, or without automatic batching.

    torch does not expose them to the dataset; its fetcher asks this iterator for one batch
    at a time: read them from that frame (as :func:`persistent_worker` does).
    """
    frame = _fetch_frame()
    if frame is None:
        return None
    fetcher = frame.f_locals.get("self")
    if not getattr(fetcher, "auto_collation", False):
        return None
    index = frame.f_locals["possibly_batched_index"]
    return len(index), bool(getattr(fetcher, "drop_last", False))


def _fetch_frame() -> Any:
    """The running frame of torch's fetcher ``fetch`` (None: not inside one)."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_name == "fetch" and "possibly_batched_index" in frame.f_locals:
            return frame
        frame = frame.f_back
    return None


def loader_fetcher() -> Any:
    """The DataLoader fetcher pulling from this iterator (its ``dataset``, ``collate_fn``,
    ``auto_collation``), or None outside one."""
    frame = _fetch_frame()
    return None if frame is None else frame.f_locals.get("self")


def fetch_position() -> tuple[int, int, int] | None:
    """Where the sample being built goes: (id of the fetch's sample list, its index in the
    batch, the batch size); None outside a batching fetch.

    torch's fetcher appends each sample it pulls to a fresh list and collates the list, so
    the list's length when the iterator is asked for a sample is that sample's index.
    """
    frame = _fetch_frame()
    if frame is None:
        return None
    local = frame.f_locals
    data = local.get("data")
    if not isinstance(data, list):
        return None
    return id(data), len(data), len(local["possibly_batched_index"])
