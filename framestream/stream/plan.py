"""The plan: which frames each rank and each DataLoader worker reads, and in what order.

Everything here is a pure function of (selected episodes, lengths, seed, epoch, rank,
world size, worker, number of workers): every process can recompute any other's share, which
is what makes disjointness, equal counts and elastic resume checkable.

The unit is a :class:`Segment`, a frame range of one episode. Ranks and workers get
contiguous runs of the epoch's episode order, cut at episode boundaries when there are at
least as many episodes as parts (balanced by frame count), and inside episodes otherwise, so
that every worker is busy even with a single episode or a single file.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Segment:
    """Frames ``start..stop-1`` of ``episode``; ``repeat`` marks equal-count padding."""

    episode: int
    start: int
    stop: int
    repeat: bool = False

    @property
    def size(self) -> int:
        return self.stop - self.start

    def as_tuple(self) -> tuple[int, int, int, bool]:
        return (self.episode, self.start, self.stop, self.repeat)


def resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit values, else Accelerate's state, else torch.distributed, else RANK/WORLD_SIZE."""
    if rank is not None and world_size is not None:
        r, w = int(rank), int(world_size)
    else:
        r, w = _detect_rank()
        r = int(rank) if rank is not None else r
        w = int(world_size) if world_size is not None else w
    if w < 1 or not 0 <= r < w:
        raise ValueError(f"invalid rank {r} for world_size {w}")
    return r, w


def _detect_rank() -> tuple[int, int]:
    env = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    try:
        from accelerate.state import PartialState

        if PartialState._shared_state:  # initialised by Accelerator() / accelerate launch
            state = PartialState()
            acc = int(state.process_index), int(state.num_processes)
            # On a machine without GPUs, Accelerate built without cpu=True reports a single
            # process even under a multi-process launcher: trusting it would make every rank
            # read the whole dataset. The launcher's WORLD_SIZE wins then.
            if acc[1] > 1 or env[1] == 1:
                return acc
            warnings.warn(
                f"Accelerate reports 1 process but WORLD_SIZE={env[1]}; using RANK/WORLD_SIZE "
                "(on CPU, create the Accelerator with cpu=True)",
                stacklevel=3,
            )
    except ImportError:
        pass
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return env


def epoch_order(episodes: np.ndarray, *, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The epoch's episode order: as given without shuffle, else a (seed, epoch) permutation."""
    if not shuffle:
        return np.asarray(episodes).copy()
    rng = np.random.default_rng([int(seed), int(epoch), 0x5EED])
    return np.asarray(episodes)[rng.permutation(len(episodes))]


def partition(segments: Sequence[Segment], parts: int) -> list[list[Segment]]:
    """Cut ``segments`` (in order) into ``parts`` contiguous runs of near-equal frame count."""
    if parts < 1:
        raise ValueError("parts must be >= 1")
    sizes = np.array([s.size for s in segments], dtype=np.int64)
    total = int(sizes.sum())
    if parts == 1:
        return [list(segments)]
    cum = np.concatenate([[0], np.cumsum(sizes)])
    if len(segments) >= parts:
        # Snap each ideal cut to the nearest segment boundary, keeping every part non-empty.
        cuts, prev, m = [], 0, len(segments)
        for k in range(1, parts):
            target = k * total / parts
            lo, hi = prev + 1, m - (parts - k)
            j = lo + int(np.argmin(np.abs(cum[lo : hi + 1] - target)))
            cuts.append(j)
            prev = j
        bounds = [0, *cuts, m]
        return [list(segments[bounds[i] : bounds[i + 1]]) for i in range(parts)]
    # Fewer segments than parts: cut inside segments at exact frame positions.
    out: list[list[Segment]] = []
    edges = [round(k * total / parts) for k in range(parts + 1)]
    for k in range(parts):
        lo, hi = edges[k], edges[k + 1]
        piece: list[Segment] = []
        for s, c0 in zip(segments, cum[:-1], strict=True):
            a, b = max(lo, int(c0)), min(hi, int(c0) + s.size)
            if a < b:
                piece.append(
                    Segment(s.episode, s.start + a - int(c0), s.start + b - int(c0), s.repeat)
                )
        out.append(piece)
    return out


def _count(segments: Sequence[Segment]) -> int:
    return sum(s.size for s in segments)


def pad_segments(segments: list[Segment], missing: int, donors: Sequence[Segment]) -> list[Segment]:
    """Append ``missing`` repeated frames (``repeat=True``), taken cyclically from ``donors``."""
    out = list(segments)
    pool = [s for s in donors if s.size > 0]
    i = 0
    while missing > 0 and pool:
        s = pool[i % len(pool)]
        n = min(missing, s.size)
        out.append(Segment(s.episode, s.start, s.start + n, True))
        missing -= n
        i += 1
    return out


@dataclass(frozen=True)
class Plan:
    """The epoch's split for one (rank, worker)."""

    segments: tuple[Segment, ...]

    @property
    def num_samples(self) -> int:
        return _count(self.segments)


def make_plan(
    episodes: np.ndarray,
    lengths: np.ndarray,
    *,
    seed: int,
    epoch: int,
    shuffle: bool,
    rank: int,
    world_size: int,
    worker: int,
    num_workers: int,
    even_ranks: bool = False,
) -> Plan:
    """The segments (rank, worker) reads this epoch, in reading order.

    With ``even_ranks``, every (rank, worker) gets the same number of samples: shorter shares
    are padded by repeating their own frames (segments with ``repeat=True``), so DDP ranks
    run the same number of steps and never wait on each other at the end of an epoch.
    """
    num_workers = max(1, num_workers)
    length_of = dict(zip(np.asarray(episodes).tolist(), np.asarray(lengths).tolist(), strict=True))
    order = epoch_order(np.asarray(episodes), seed=seed, epoch=epoch, shuffle=shuffle)
    # Empty episodes hold no sample: leaving them out keeps every part's frames balanced.
    segs = [Segment(int(e), 0, int(length_of[int(e)])) for e in order if length_of[int(e)] > 0]
    ranks = partition(segs, world_size)
    mine = partition(ranks[rank], num_workers)
    share = mine[worker]
    if even_ranks:
        target = max(_count(w) for r in ranks for w in partition(r, num_workers))
        donors = share or ranks[rank] or segs
        share = pad_segments(share, target - _count(share), donors)
    return Plan(tuple(share))
