"""One save/load harness for every resumable piece: the reservoir, the schedule, the dataset.

Like torchdata's ``nodes`` test kit: a piece is wrapped in a small adapter (make, take n,
save, restore) and the harness checks, for several stop points, that

- the state is plain data (a JSON round trip leaves it equal),
- the original continues with exactly the uninterrupted run's remainder, and
- a fresh instance restored from the state continues with the same remainder.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass
class Resumable(Generic[T]):
    """How the harness drives one kind of resumable object."""

    make: Callable[[], T]
    take: Callable[[T, int], list[Any]]  # up to n items (fewer at the end)
    save: Callable[[T], Any]
    restore: Callable[[Any], T]


def check_save_load(r: Resumable[Any], stops: Sequence[int], *, total: int | None = None) -> int:
    """Run the checks at every stop point; returns the uninterrupted run's length."""
    full = r.take(r.make(), 10**9)
    if total is not None:
        assert len(full) == total, f"uninterrupted run gave {len(full)} items, expected {total}"
    for k in stops:
        first = r.make()
        head = r.take(first, k)
        assert head == full[: len(head)], f"stop {k}: the head differs from the full run"
        state = r.save(first)
        assert json.loads(json.dumps(state)) == state, f"stop {k}: state is not plain data"
        rest_same = r.take(first, 10**9)
        restored = r.restore(json.loads(json.dumps(state)))
        rest_restored = r.take(restored, 10**9)
        assert head + rest_same == full, f"stop {k}: continuing after save changed the stream"
        assert head + rest_restored == full, (
            f"stop {k}: the restored stream differs (first difference at "
            f"{_first_diff(head + rest_restored, full)})"
        )
    return len(full)


def _first_diff(a: list[Any], b: list[Any]) -> int:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))
