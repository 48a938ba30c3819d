"""Resuming a stream: exactly on the same layout, elastically on another.

A saved position is a list of :class:`WorkerStream` states. On the same world size and
number of workers each stream reloads its own state and continues exactly. Otherwise the
work every saved stream still owed (unopened segments, cursor remainders, reservoir
references) is merged and split again across the new ranks and workers: no sample is lost
or repeated, but the order of the rest differs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from framestream._errors import StateDictError
from framestream.stream.plan import Segment, partition
from framestream.stream.worker import WorkerStream

if TYPE_CHECKING:
    from framestream.datasets.streaming import StreamingLeRobotDataset


def merge_states(states: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Combine the states of every rank and worker (or nested loader states) into one.

    ``states`` may hold framestream stream states or anything that contains them, such as
    ``StatefulDataLoader.state_dict()`` results gathered from all ranks
    (``torch.distributed.all_gather_object``). The result resumes exactly on the same world
    size and workers, and elastically (no sample lost or repeated) on any other.
    """
    found: list[Mapping[str, Any]] = []

    def walk(obj: Any) -> None:
        if isinstance(obj, Mapping):
            if "version" in obj and "stream" in obj and "epoch" in obj:
                found.append(obj)
                return
            if "version" in obj and "streams" in obj:
                for st in obj["streams"]:
                    found.append(obj | {"stream": st, "streams": None})
                return
            for v in obj.values():
                walk(v)
        elif isinstance(obj, list | tuple):
            for v in obj:
                walk(v)

    walk(list(states))
    if not found:
        raise StateDictError("no framestream state found in the given states")
    epochs = {int(f["epoch"]) for f in found}
    started = [f for f in found if f.get("stream") is not None]
    if len(epochs) > 1:
        # Streams of a finished epoch and of the next one: keep the newest epoch.
        newest = max(epochs)
        found = [f for f in found if int(f["epoch"]) == newest]
        started = [f for f in found if f.get("stream") is not None]
    head = {k: v for k, v in found[0].items() if k not in ("stream", "streams")}
    return head | {"streams": [dict(f["stream"]) for f in started]}


def resume_stream(
    ds: StreamingLeRobotDataset,
    state: Mapping[str, Any] | None,
    *,
    rank: int,
    world_size: int,
    worker: int,
    num_workers: int,
    epoch: int,
) -> WorkerStream:
    me = (rank, world_size, worker, num_workers)

    def fresh(segments: Sequence[Segment] | None = None) -> WorkerStream:
        return WorkerStream(
            ds,
            rank=rank,
            world_size=world_size,
            worker=worker,
            num_workers=num_workers,
            epoch=epoch,
            segments=segments,
        )

    if state is None:
        return fresh()
    if "progress" in state:
        p = state["progress"]
        if max(1, int(p["num_workers"])) != num_workers:  # 0 workers runs as 1
            raise StateDictError(
                f"progress state was made for {p['num_workers']} workers, this loader has "
                f"{num_workers}"
            )
        logical = (worker + int(p.get("shift", 0))) % max(1, num_workers)
        stream = WorkerStream(
            ds,
            rank=rank,
            world_size=world_size,
            worker=logical,
            num_workers=num_workers,
            epoch=epoch,
        )
        stream.fast_forward(int(p["consumed"][logical]))
        return stream
    streams = list(state["streams"]) if "streams" in state else [state.get("stream")]
    streams = [s for s in streams if s is not None]
    if not streams:
        return fresh()
    key = lambda s: (s["rank"], s["world_size"], s["worker"], s["num_workers"])  # noqa: E731
    same = [s for s in streams if key(s) == me]
    if same:
        stream = fresh()
        stream.load_stream_state(same[0])
        return stream
    saved = {(s["world_size"], s["num_workers"]) for s in streams}
    if len(streams) == 1 and "streams" not in state:
        raise StateDictError(
            f"state_dict belongs to rank {streams[0]['rank']}/{streams[0]['world_size']} worker "
            f"{streams[0]['worker']}/{streams[0]['num_workers']}, this stream is rank "
            f"{rank}/{world_size} worker {worker}/{num_workers}; to resume with another world "
            "size or number of workers, merge every rank's and worker's states with "
            "framestream.merge_states() and load that"
        )
    ((ws0, nw0),) = saved if len(saved) == 1 else [(None, None)]
    if ws0 is None or len(streams) != ws0 * nw0:
        raise StateDictError(
            f"elastic resume needs the states of every rank and worker of the saved run; got "
            f"{len(streams)} stream states for configurations {sorted(saved)}"
        )
    # Elastic: everything any saved stream still owed, split across the new ranks/workers.
    remaining: list[Segment] = []
    for s in streams:
        old = WorkerStream(
            ds,
            rank=s["rank"],
            world_size=s["world_size"],
            worker=s["worker"],
            num_workers=s["num_workers"],
            epoch=epoch,
        )
        old.load_stream_state(s)
        remaining += old.remaining_segments()
        old.close()
    share = partition(partition(_merge_segments(remaining), world_size)[rank], num_workers)
    return fresh(share[worker])


def _merge_segments(segments: list[Segment]) -> list[Segment]:
    """Sort by (episode, start) and join touching ranges, so readers decode contiguously."""
    out: list[Segment] = []
    for s in sorted(segments, key=lambda s: (s.repeat, s.episode, s.start)):
        last = out[-1] if out else None
        if last and (last.episode, last.stop, last.repeat) == (s.episode, s.start, s.repeat):
            out[-1] = Segment(s.episode, last.start, s.stop, s.repeat)
        else:
            out.append(s)
    return out
