"""Shuffle quality: what a perfect global shuffle would give, to compare a run's batches with.

Why a reference: "distinct episodes per batch" means nothing alone; it depends on how many
episodes there are and how long they are. Dividing by this expectation gives a 0..1 figure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def expected_distinct_episodes(lengths: Sequence[int], batch_size: int) -> dict[str, float]:
    """Expected distinct episodes in a batch of a perfect global shuffle.

    A perfect shuffle is a uniform permutation of all N frames cut into batches of B, so a
    batch is B frames drawn *without* replacement: episode e (n_e frames) is absent with
    probability C(N - n_e, B) / C(N, B), computed exactly with integers. The with-replacement
    approximation ``sum_e 1 - (1 - n_e/N)^B`` is given alongside.
    """
    lengths = [int(n) for n in lengths if int(n) > 0]
    total = sum(lengths)
    b = min(int(batch_size), total)
    if b <= 0:
        return {"exact": 0.0, "with_replacement": 0.0}
    denom = math.comb(total, b)
    exact = sum(1.0 - math.comb(total - n, b) / denom for n in lengths)
    approx = sum(1.0 - (1.0 - n / total) ** b for n in lengths)
    return {"exact": float(exact), "with_replacement": float(approx)}
