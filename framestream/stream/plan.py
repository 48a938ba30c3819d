"""The plan: which frames each rank and each DataLoader worker reads, and in what order.

Everything here is a pure function of (selected episodes, lengths, seed, epoch, rank,
world size, worker, number of workers): every process can recompute any other's share, which
is what makes disjointness, equal counts and elastic resume checkable.

The unit is a :class:`Segment`, a frame range of one episode. Ranks and workers get
contiguous runs of the epoch's segment order, cut at segment boundaries when there are at
least as many segments as parts (balanced by frame count), and inside segments otherwise, so
that every worker is busy even with a single episode or a single file.

Mixing (``chunk`` > 0, shuffled). A DataLoader batch comes whole from one worker, so a batch
can only mix the episodes that worker reads: with whole episodes split across 2 workers, each
batch draws from half of them, and a shuffle can reach at best ~75 % of a global shuffle's
distinct episodes per batch. So episodes are cut into pieces of about ``chunk`` frames (at a
random phase) and dealt evenly over the epoch's order: an episode of ``n`` pieces has one
in every ``1/n`` of it. Every contiguous run of that order (a rank's or a worker's share)
then holds pieces of nearly every episode, in proportion to their lengths, and neighbouring
pieces come from distinct episodes. Pieces start anywhere in their episodes, so the first
batches are not biased towards episode starts. A cut costs nothing when samples need one
frame per camera; with a window it re-decodes the window's span at the cut, so the caller
sizes ``chunk`` from the window (``chunk`` >= an episode: whole episodes).

Lead-in (``lead`` > 0). The first ``lead`` segments a worker opens start together; if they
start at their first frame, so does every sample of the first batches (and, when they are
most of a worker's share, they advance in step all epoch). Each of them is cut at a uniform
random frame: the tail is read first, the head later, at a random place in the worker's
order. A cut re-decodes ``cut_cost`` frames per camera (the window's span), so cuts stop
where they would re-decode more than 1/16 of the worker's frames: with long windows on a
small share, lead segments stay whole.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MIN_CHUNK = 16  # frames: a reader decodes 16 frames per call, so smaller pieces gain little


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
    # Accelerate's state exists only where Accelerate was imported (here, or in the parent a
    # DataLoader worker forks from): importing it just to look costs a worker ~1.3 s before
    # its first sample.
    partial_state = getattr(sys.modules.get("accelerate.state"), "PartialState", None)
    if partial_state is not None and getattr(partial_state, "_shared_state", None):
        # initialised by Accelerator() / accelerate launch
        state = partial_state()
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


def chunk_episodes(
    order: Sequence[int], length_of: dict[int, int], *, chunk: int, rng: np.random.Generator
) -> list[Segment]:
    """Episodes in ``order`` cut into pieces of ~``chunk`` frames, dealt evenly.

    Each episode longer than ``chunk`` is cut every ``chunk`` frames from a random phase; a
    piece shorter than ``chunk // 2`` joins its neighbour, so pieces hold ``chunk // 2`` to
    ``1.5 * chunk`` frames. The pieces of each episode are shuffled, then spread evenly over
    the order (see the module docstring for why).
    """
    pieces: list[list[Segment]] = []
    for e in order:
        n = int(length_of[int(e)])
        if n <= 0:
            continue
        if chunk <= 0 or n <= chunk:
            pieces.append([Segment(int(e), 0, n)])
            continue
        phase = int(rng.integers(chunk))
        cuts = sorted({0, n, *range(phase, n, chunk)})
        merged: list[list[int]] = []
        for a, b in zip(cuts[:-1], cuts[1:], strict=True):
            if merged and (b - a < chunk // 2 or merged[-1][1] - merged[-1][0] < chunk // 2):
                merged[-1][1] = b
            else:
                merged.append([a, b])
        segs = [Segment(int(e), a, b) for a, b in merged]
        pieces.append([segs[i] for i in rng.permutation(len(segs))])
    # Piece j of an episode with n pieces is dealt at time (j + u) / n (u uniform, one per
    # episode): every stretch of the order holds pieces of each episode in proportion to its
    # length, and an episode's pieces lie 1/n apart, so neighbours are other episodes.
    times = [(j + u) / len(p) for p in pieces for u in [rng.random()] for j in range(len(p))]
    flat = [s for p in pieces for s in p]
    return [flat[i] for i in np.argsort(np.asarray(times), kind="stable")]


def lead_in(
    segments: Sequence[Segment], lead: int, rng: np.random.Generator, *, cut_cost: int = 0
) -> list[Segment]:
    """Cut each of the first ``lead`` segments at a random frame: tail now, head later.

    Cuts cost ``cut_cost`` re-decoded frames each and stop at 1/16 of the frames.
    """
    first, rest = list(segments[:lead]), list(segments[lead:])
    budget = _count(segments) // MIN_CHUNK
    tails: list[Segment] = []
    for s in first:
        if s.size < 2 or budget < cut_cost:
            tails.append(s)
            continue
        budget -= cut_cost
        r = s.start + int(rng.integers(1, s.size))
        tails.append(Segment(s.episode, r, s.stop, s.repeat))
        rest.insert(int(rng.integers(len(rest) + 1)), Segment(s.episode, s.start, r, s.repeat))
    return tails + rest


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
    chunk: int = 0,
    lead: int = 0,
    cut_cost: int = 0,
) -> Plan:
    """The segments (rank, worker) reads this epoch, in reading order.

    With ``shuffle``, ``chunk`` > 0 cuts episodes into pieces of ~``chunk`` frames spread
    evenly over the order, and ``lead`` > 0 starts the first ``lead`` segments of each
    worker at random frames, where a cut re-decodes ``cut_cost`` frames (see the module
    docstring); 0 keeps whole episodes in the epoch's order.
    With ``even_ranks``, every (rank, worker) gets the same number of samples: shorter shares
    are padded by repeating their own frames (segments with ``repeat=True``), so DDP ranks
    run the same number of steps and never wait on each other at the end of an epoch.
    """
    num_workers = max(1, num_workers)
    length_of = dict(zip(np.asarray(episodes).tolist(), np.asarray(lengths).tolist(), strict=True))
    order = epoch_order(np.asarray(episodes), seed=seed, epoch=epoch, shuffle=shuffle)
    # Empty episodes hold no sample: leaving them out keeps every part's frames balanced.
    rng = np.random.default_rng([int(seed), int(epoch), 0xC4]) if shuffle else None
    if rng is not None and chunk > 0:
        segs = chunk_episodes(order.tolist(), length_of, chunk=int(chunk), rng=rng)
    else:
        segs = [Segment(int(e), 0, int(length_of[int(e)])) for e in order if length_of[int(e)] > 0]
    ranks = partition(segs, world_size)
    mine = partition(ranks[rank], num_workers)
    share = mine[worker]
    if shuffle and lead > 0:
        rng = np.random.default_rng([seed, epoch, rank, worker, 0x1EAD])
        share = lead_in(share, lead, rng, cut_cost=cut_cost)
    if even_ranks:
        target = max(_count(w) for r in ranks for w in partition(r, num_workers))
        donors = share or ranks[rank] or segs
        share = pad_segments(share, target - _count(share), donors)
    return Plan(tuple(share))
