"""Mixing figures: how close a run's batches come to a perfect global shuffle.

Why a reference: "distinct episodes per batch" means nothing alone; it depends on how many
episodes there are and how long they are. Dividing by this expectation gives a 0..1 figure.
Why positions too: a stream can mix episodes well and still start every epoch at the
episodes' first frames (every open episode starts at frame 0); a model then sees a skewed
batch after each epoch boundary. The normalised position ``(frame + 0.5) / length`` of a
global shuffle is uniform on (0, 1), so the mean (0.5) and the Kolmogorov-Smirnov distance to
the uniform law of the first batches say how skewed they are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


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


def ks_uniform(values: Sequence[float] | np.ndarray) -> float | None:
    """Kolmogorov-Smirnov distance between the values' empirical law and U(0, 1)."""
    u = np.sort(np.asarray(values, dtype=np.float64))
    n = len(u)
    if n == 0:
        return None
    i = np.arange(1, n + 1)
    return float(max(np.max(i / n - u), np.max(u - (i - 1) / n)))


def normalised_positions(
    episodes: Sequence[int] | np.ndarray,
    frames: Sequence[int] | np.ndarray,
    length_of: Mapping[int, int],
) -> np.ndarray:
    """``(frame + 0.5) / length`` per sample: uniform on (0, 1) under a global shuffle."""
    lengths = np.array([length_of[int(e)] for e in episodes], dtype=np.float64)
    return (np.asarray(frames, dtype=np.float64) + 0.5) / lengths


class MixingRecorder:
    """Per-batch mixing figures of a run, from batch 1 on (warm-up included).

    ``add`` takes each batch as it arrives; ``summary`` gives the position figures of the
    first batch and of the first ``first`` batches of the first epoch, the distinct episodes
    of those batches, and the gap at each epoch boundary (seconds from the last batch of an
    epoch to the first of the next) beside the median gap between batches inside an epoch:
    persistent workers that open the next epoch late show a boundary gap far above it.
    """

    def __init__(self, lengths: Mapping[int, int], batch_size: int, *, first: int = 20) -> None:
        self.length_of = {int(k): int(v) for k, v in lengths.items()}
        self.batch_size = int(batch_size)
        self.first = int(first)
        self.positions: list[np.ndarray] = []  # first epoch's first batches
        self.frames: list[np.ndarray] = []
        self.distinct: list[int] = []  # full batches among them
        self.gaps: list[float] = []  # inside epochs
        self.boundary_gaps: list[float] = []
        self._last: tuple[float, int] | None = None
        self._epoch0: int | None = None

    def add(self, episodes: Any, frames: Any, now: float, epoch: int) -> None:
        # Copies: a view would keep the batch's shared-memory slot from being reused, and the
        # worker would build every later batch in fresh shared memory (the slow path).
        eps = np.asarray(episodes).reshape(-1).copy()
        fr = np.asarray(frames).reshape(-1).copy()
        if self._last is not None:
            t0, e0 = self._last
            (self.boundary_gaps if epoch != e0 else self.gaps).append(now - t0)
        self._last = (now, epoch)
        if self._epoch0 is None:
            self._epoch0 = epoch
        if epoch == self._epoch0 and len(self.positions) < self.first:
            self.positions.append(normalised_positions(eps, fr, self.length_of))
            self.frames.append(fr)
            if len(eps) == self.batch_size:
                self.distinct.append(len(np.unique(eps)))

    def summary(self, expected_distinct: float | None = None) -> dict[str, Any]:
        pos1 = self.positions[0] if self.positions else np.zeros(0)
        pooled = np.concatenate(self.positions) if self.positions else np.zeros(0)
        frames = np.concatenate(self.frames) if self.frames else np.zeros(0)
        inside = float(np.median(self.gaps)) if self.gaps else None
        worst = max(self.boundary_gaps) if self.boundary_gaps else None
        distinct = float(np.mean(self.distinct)) if self.distinct else None
        n = len(self.positions)
        return {
            "position_mean_batch1": float(pos1.mean()) if len(pos1) else None,
            "position_ks_batch1": ks_uniform(pos1),
            f"position_mean_first{self.first}": float(pooled.mean()) if len(pooled) else None,
            f"position_ks_first{self.first}": ks_uniform(pooled),
            "median_frame_index_batch1": float(np.median(self.frames[0])) if n else None,
            f"median_frame_index_batch{self.first}": (
                float(np.median(self.frames[-1])) if n == self.first else None
            ),
            f"median_frame_index_first{self.first}": float(np.median(frames)) if n else None,
            f"shuffle_quality_first{self.first}": (
                distinct / expected_distinct if distinct is not None and expected_distinct else None
            ),
            "epoch_boundary_gap_s": worst,
            "epoch_boundary_gaps_s": [round(g, 4) for g in self.boundary_gaps],
            "inter_batch_gap_s_p50": inside,
            "epoch_boundary_gap_ratio": worst / inside if worst is not None and inside else None,
        }
