"""Where a worker starts: fresh, exactly where a saved stream stopped, or elastically.

Everything here works on schedules only (no table reader, decoder or file is opened), so a
resume costs microseconds per sample whatever the dataset:

- no state: the plan's segments from their start;
- a position saved by the same (rank, worker) layout: restored exactly;
- a progress state (a plain DataLoader's batch count): the plan's schedule fast-forwarded;
- positions of every rank and worker of another layout: everything they still owed, merged
  and split again across the new ranks and workers. No sample is lost or repeated; the order
  of the rest differs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from framestream._errors import StateDictError
from framestream.stream.plan import Segment, pad_segments, partition
from framestream.stream.schedule import Schedule, ScheduleConfig
from framestream.stream.state import DatasetState, StreamPosition

# (rank, world_size, worker, num_workers) -> that worker's planned segments for the epoch
PlanFn = Callable[[int, int, int, int], Sequence[Segment]]

__all__ = ["Start", "start_schedule"]


class Start:
    """A worker's starting schedule, and whether its segments differ from the plan's."""

    def __init__(self, schedule: Schedule, *, custom_segments: bool, worker: int) -> None:
        self.schedule, self.custom_segments, self.worker = schedule, custom_segments, worker


def _rng_key(seed: int, epoch: int, rank: int, worker: int) -> list[int]:
    return [seed, epoch, rank, worker]


def start_schedule(
    state: DatasetState | None,
    *,
    plan: PlanFn,
    config: ScheduleConfig,
    seed: int,
    epoch: int,
    layout: tuple[int, int, int, int],
    even_ranks: bool = False,
    saved_plan: PlanFn | None = None,
) -> Start:
    """The schedule worker ``layout = (rank, world_size, worker, num_workers)`` starts with.

    ``saved_plan`` rebuilds the saved streams' plans when they were made with other options
    (``even_ranks``); a state saved with other options is always re-split (elastic).
    """
    rank, world_size, worker, num_workers = layout
    saved_plan = plan if saved_plan is None else saved_plan

    def fresh(segments: Sequence[Segment] | None = None, *, as_worker: int = worker) -> Schedule:
        segs = plan(rank, world_size, as_worker, num_workers) if segments is None else segments
        return Schedule(segs, config, _rng_key(seed, epoch, rank, as_worker))

    if state is None or state.kind == "idle":
        return Start(fresh(), custom_segments=False, worker=worker)
    if state.kind == "progress":
        p = state.progress
        assert p is not None
        if max(1, p.num_workers) != num_workers:  # 0 workers runs as 1
            raise StateDictError(
                f"progress state was made for {p.num_workers} workers, this loader has "
                f"{num_workers}"
            )
        logical = (worker + p.shift) % max(1, num_workers)
        schedule = fresh(as_worker=logical)
        skips = [(e, r) for w, e, r, _ in p.skips if w == logical]
        schedule.fast_forward(p.consumed[logical], skips, pad=even_ranks)
        return Start(schedule, custom_segments=bool(schedule.padded), worker=logical)
    streams = state.streams
    if not streams:
        return Start(fresh(), custom_segments=False, worker=worker)
    same = [s for s in streams if s.layout == layout]
    if same and saved_plan is plan:
        pos = same[0]
        if pos.schedule is None:  # saved before it started
            return Start(fresh(), custom_segments=False, worker=worker)
        return Start(
            _restore(pos, plan, config, seed, epoch),
            custom_segments=pos.segments is not None,
            worker=worker,
        )
    if state.kind == "stream" and not same:
        s = streams[0]
        raise StateDictError(
            f"state_dict belongs to rank {s.rank}/{s.world_size} worker {s.worker}/"
            f"{s.num_workers}, this stream is rank {rank}/{world_size} worker {worker}/"
            f"{num_workers}; to resume with another world size or number of workers, merge "
            "every rank's and worker's states with framestream.merge_states() and load that"
        )
    check_complete(streams)
    remaining = [s for s in owed_segments(streams, saved_plan, config, seed, epoch) if not s.repeat]
    ranks = partition(merge_segments(remaining), world_size)
    parts = [partition(r, num_workers) for r in ranks]
    share = parts[rank][worker]
    if even_ranks:
        target = max(sum(s.size for s in w) for r in parts for w in r)
        donors = share or ranks[rank] or remaining
        share = pad_segments(share, target - sum(s.size for s in share), donors)
    return Start(fresh(share), custom_segments=True, worker=worker)


def check_complete(streams: Sequence[StreamPosition]) -> None:
    """Refuse a merged state that lacks some rank's or worker's position.

    Every rank of the saved world must be there, each with all of its workers (one layout of
    workers per rank; an idle training process counts as its rank's only worker).
    """
    sizes = {s.world_size for s in streams}
    by_rank: dict[int, list[StreamPosition]] = {}
    for s in streams:
        by_rank.setdefault(s.rank, []).append(s)
    problem = ""
    if len(sizes) != 1:
        problem = f"states of several world sizes {sorted(sizes)}"
    else:
        (ws,) = sizes
        missing = sorted(set(range(ws)) - set(by_rank))
        if missing:
            problem = f"no state of rank(s) {missing} of {ws}"
        for r, pos in sorted(by_rank.items()):
            nws = {p.num_workers for p in pos}
            workers = sorted(p.worker for p in pos)
            if len(nws) != 1 or workers != list(range(next(iter(nws)))):
                problem = problem or (
                    f"rank {r}: worker states {workers} for {sorted(nws)} workers"
                )
    if problem:
        raise StateDictError(
            "elastic resume needs the states of every rank and worker of the saved run; "
            f"got {len(streams)} stream states: {problem}"
        )


def _restore(
    pos: StreamPosition, plan: PlanFn, config: ScheduleConfig, seed: int, epoch: int
) -> Schedule:
    segs = pos.segments
    if segs is None:
        segs = tuple(plan(pos.rank, pos.world_size, pos.worker, pos.num_workers))
    schedule = Schedule(segs, config, _rng_key(seed, epoch, pos.rank, pos.worker))
    if pos.schedule is not None:
        schedule.load_state_dict(pos.schedule)
    return schedule


def owed_segments(
    streams: Sequence[StreamPosition],
    plan: PlanFn,
    config: ScheduleConfig,
    seed: int,
    epoch: int,
) -> list[Segment]:
    """Everything the saved streams still owed (unopened segments, cursors, reservoirs)."""
    out: list[Segment] = []
    for pos in streams:
        out += _restore(pos, plan, config, seed, epoch).remaining_segments()
    return out


def merge_segments(segments: list[Segment]) -> list[Segment]:
    """Sort by (episode, start) and join touching ranges, so readers decode contiguously."""
    out: list[Segment] = []
    for s in sorted(segments, key=lambda s: (s.repeat, s.episode, s.start)):
        last = out[-1] if out else None
        if last and (last.episode, last.stop, last.repeat) == (s.episode, s.start, s.repeat):
            out[-1] = Segment(s.episode, last.start, s.stop, s.repeat)
        else:
            out.append(s)
    return out
