"""The output reservoir: a shuffle buffer of light sample references.

It holds ``(reader slot, frame)`` pairs, never pixels; but the frames a waiting reference
needs may already be decoded (a later frame of its episode left first) and stay so until it
leaves: that is the reservoir's real cost, which the schedule bounds with the worker's memory
budget (:mod:`framestream.stream.ledger`). It starts emitting after ``warmup`` references and
grows by one per emitted sample until ``buffer_size``: the first batch does not wait for a
full buffer, and the mix reaches full strength after ``buffer_size`` samples.
"""

from __future__ import annotations

from typing import Any

import numpy as np

Ref = tuple[int, int]  # (reader id, frame index within the episode)


class Reservoir:
    def __init__(self, buffer_size: int, rng: np.random.Generator, *, warmup: int) -> None:
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
        self.buffer_size = buffer_size
        self.rng = rng
        self.items: list[Ref] = []
        self.threshold = max(1, min(buffer_size, warmup))

    def __len__(self) -> int:
        return len(self.items)

    def wants_more(self) -> bool:
        return len(self.items) < self.threshold

    def push(self, ref: Ref) -> None:
        self.items.append(ref)

    def pop(self) -> Ref:
        """A uniformly random reference (O(1): swap with the last, then pop)."""
        i = int(self.rng.integers(len(self.items)))
        items = self.items
        items[i], items[-1] = items[-1], items[i]
        self.threshold = min(self.buffer_size, self.threshold + 1)
        return items.pop()

    def state_dict(self) -> dict[str, Any]:
        return {"items": [list(r) for r in self.items], "threshold": self.threshold}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.items = [tuple(r) for r in state["items"]]
        self.threshold = int(state["threshold"])
