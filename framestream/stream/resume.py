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
from framestream.stream.plan import Segment, partition
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
) -> Start:
    """The schedule worker ``layout = (rank, world_size, worker, num_workers)`` starts with."""
    rank, world_size, worker, num_workers = layout

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
        schedule.fast_forward(p.consumed[logical])
        return Start(schedule, custom_segments=False, worker=logical)
    streams = state.streams
    if not streams:
        return Start(fresh(), custom_segments=False, worker=worker)
    same = [s for s in streams if s.layout == layout]
    if same:
        return Start(
            _restore(same[0], plan, config, seed, epoch),
            custom_segments=(same[0].segments is not None),
            worker=worker,
        )
    if state.kind == "stream":
        s = streams[0]
        raise StateDictError(
            f"state_dict belongs to rank {s.rank}/{s.world_size} worker {s.worker}/"
            f"{s.num_workers}, this stream is rank {rank}/{world_size} worker {worker}/"
            f"{num_workers}; to resume with another world size or number of workers, merge "
            "every rank's and worker's states with framestream.merge_states() and load that"
        )
    saved = {(s.world_size, s.num_workers) for s in streams}
    ((ws0, nw0),) = saved if len(saved) == 1 else [(None, None)]
    if ws0 is None or len(streams) != ws0 * nw0:
        raise StateDictError(
            f"elastic resume needs the states of every rank and worker of the saved run; got "
            f"{len(streams)} stream states for configurations {sorted(saved)}"
        )
    remaining = owed_segments(streams, plan, config, seed, epoch)
    share = partition(partition(merge_segments(remaining), world_size)[rank], num_workers)
    return Start(fresh(share[worker]), custom_segments=True, worker=worker)


def _restore(
    pos: StreamPosition, plan: PlanFn, config: ScheduleConfig, seed: int, epoch: int
) -> Schedule:
    segs = pos.segments
    if segs is None:
        segs = tuple(plan(pos.rank, pos.world_size, pos.worker, pos.num_workers))
    schedule = Schedule(segs, config, _rng_key(seed, epoch, pos.rank, pos.worker))
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
