"""Resume states: tagged, typed records, parsed and written in this one module.

A state is plain JSON-able data (kilobytes: references, cursors, RNG state, never pixels) so
that it travels inside any checkpoint. Its ``kind`` says what it holds:

- ``"stream"``: one worker's (or the main process's) position;
- ``"merged"``: the positions of every rank and worker of a run (:func:`merge_states`);
- ``"progress"``: batches a plain DataLoader consumed (:meth:`progress_state`);
- ``"idle"``: a dataset that has not started streaming the epoch.

Every state carries the :class:`Fingerprint` of the dataset and options it was saved with, so
that it is never loaded into another dataset, seed or framestream version.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from framestream._errors import StateDictError
from framestream.stream.plan import Segment

STATE_VERSION = 2

Kind = Literal["idle", "stream", "merged", "progress"]
_KINDS = ("idle", "stream", "merged", "progress")

__all__ = [
    "STATE_VERSION",
    "DatasetState",
    "Fingerprint",
    "Progress",
    "StreamPosition",
    "find_states",
    "parse_state",
]


@dataclass(frozen=True)
class Fingerprint:
    """What a state is only valid for: the dataset, its selection and the order's options."""

    dataset: dict[str, Any]
    seed: int
    shuffle: bool
    even_ranks: bool
    # how episodes were cut and dealt (plan.make_plan's chunk and lead): resuming, even
    # elastically, rebuilds the saved plans, so they must match; None: a state without it
    plan: dict[str, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": dict(self.dataset),
            "seed": self.seed,
            "shuffle": self.shuffle,
            "even_ranks": self.even_ranks,
            "plan": None if self.plan is None else dict(self.plan),
        }

    def check(self, saved: Fingerprint, *, elastic: bool = False) -> None:
        """Raise :class:`StateDictError` naming the first field where ``saved`` differs.

        ``elastic``: the state is re-split anyway (a merged state), so ``even_ranks`` may
        differ: it changes the padding, not the order.
        """
        mine, theirs = self.to_dict(), saved.to_dict()
        keys = ("dataset", "seed", "shuffle", "plan") + (() if elastic else ("even_ranks",))
        for key in keys:
            if theirs[key] != mine[key]:
                hint = ""
                if key == "even_ranks":
                    hint = (
                        "; to change even_ranks, resume elastically: load "
                        "framestream.merge_states() of every rank's and worker's states"
                    )
                elif key == "plan":
                    hint = (
                        "; episodes were cut into other shuffle pieces: use the saved run's "
                        "shuffle_pieces/shuffle_chunk (chunk 0: shuffle_pieces=False, whole "
                        "episodes, the default before pieces)"
                    )
                raise StateDictError(
                    f"state_dict was saved for another dataset or configuration ({key!r} "
                    f"differs: saved {str(theirs[key])[:200]}, here {str(mine[key])[:200]})" + hint
                )


@dataclass(frozen=True)
class StreamPosition:
    """One worker's position: who it was, what it read (if not the plan's), its schedule.

    ``schedule`` None: the worker had not started (its whole planned share is still owed);
    an idle training process records itself as worker 0 of 1, i.e. its rank's whole share.
    """

    rank: int
    world_size: int
    worker: int
    num_workers: int
    schedule: dict[str, Any] | None
    finished: bool
    segments: tuple[Segment, ...] | None = None  # None: the plan's segments for this worker

    @property
    def layout(self) -> tuple[int, int, int, int]:
        return (self.rank, self.world_size, self.worker, self.num_workers)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "world_size": self.world_size,
            "worker": self.worker,
            "num_workers": self.num_workers,
            "segments": None
            if self.segments is None
            else [list(s.as_tuple()) for s in self.segments],
            "schedule": self.schedule,
            "finished": self.finished,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StreamPosition:
        segs = d.get("segments")
        return cls(
            rank=int(d["rank"]),
            world_size=int(d["world_size"]),
            worker=int(d["worker"]),
            num_workers=int(d["num_workers"]),
            schedule=None if d["schedule"] is None else dict(d["schedule"]),
            finished=bool(d["finished"]),
            segments=None if segs is None else tuple(Segment(*s) for s in segs),
        )


@dataclass(frozen=True)
class Progress:
    """Samples each worker of a plain DataLoader had delivered, rebuilt from batch counts."""

    num_workers: int
    consumed: tuple[int, ...]
    shift: int = 0  # the worker whose batch was due next plays physical worker 0
    # episodes the run dropped (on_error="skip"): (logical worker, emitted, reader id, lost)
    skips: tuple[tuple[int, int, int, int], ...] = ()
    finished: bool = False  # every worker had delivered its last batch

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_workers": self.num_workers,
            "consumed": list(self.consumed),
            "shift": self.shift,
            "skips": [list(s) for s in self.skips],
            "finished": self.finished,
        }


@dataclass(frozen=True)
class DatasetState:
    kind: Kind
    epoch: int
    fingerprint: Fingerprint
    streams: tuple[StreamPosition, ...] = ()
    progress: Progress | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        """Every saved stream had delivered its whole share of the epoch."""
        if self.kind == "progress":
            return self.progress is not None and self.progress.finished
        return (
            self.kind in ("stream", "merged")
            and bool(self.streams)
            and all(s.finished for s in self.streams)
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "version": STATE_VERSION,
            "kind": self.kind,
            "epoch": self.epoch,
            **self.fingerprint.to_dict(),
        }
        if self.kind in ("stream", "merged") or self.streams:
            out["streams"] = [s.to_dict() for s in self.streams]
        if self.progress is not None:
            out["progress"] = self.progress.to_dict()
        return out | self.extra


def parse_state(state: Any) -> DatasetState:
    """Check and parse a state dict; every malformed state raises :class:`StateDictError`."""
    if not isinstance(state, Mapping) or "version" not in state:
        raise StateDictError("not a framestream state_dict (no 'version')")
    if state["version"] != STATE_VERSION:
        raise StateDictError(
            f"state_dict version {state['version']} cannot be loaded by this framestream "
            f"(state version {STATE_VERSION})"
        )
    kind = state.get("kind")
    if kind not in _KINDS:
        raise StateDictError(f"state_dict has an unknown kind {kind!r} (known: {_KINDS})")
    if "epoch" not in state:
        raise StateDictError("state_dict has no 'epoch'")
    try:
        fp = Fingerprint(
            dataset=dict(state["dataset"]),
            seed=int(state["seed"]),
            shuffle=bool(state["shuffle"]),
            even_ranks=bool(state["even_ranks"]),
            plan=None if state.get("plan") is None else dict(state["plan"]),
        )
        streams = tuple(StreamPosition.from_dict(s) for s in state.get("streams") or ())
        progress = None
        if kind == "progress":
            p = state["progress"]
            progress = Progress(
                num_workers=int(p["num_workers"]),
                consumed=tuple(int(c) for c in p["consumed"]),
                shift=int(p.get("shift", 0)),
                skips=tuple(
                    (int(w), int(e), int(r), int(n)) for w, e, r, n in p.get("skips") or ()
                ),
                finished=bool(p.get("finished", False)),
            )
    except (KeyError, TypeError, ValueError) as exc:
        raise StateDictError(f"malformed {kind} state_dict: {exc!r}") from exc
    if kind == "stream" and len(streams) != 1:
        raise StateDictError(f"a stream state holds one stream, this one {len(streams)}")
    return DatasetState(kind, int(state["epoch"]), fp, streams, progress)


def find_states(obj: Any) -> list[DatasetState]:
    """Every framestream state inside ``obj`` (nested dicts/lists, e.g. loader states)."""
    found: list[DatasetState] = []

    def walk(o: Any) -> None:
        if isinstance(o, Mapping):
            if "version" in o and "kind" in o and "epoch" in o:
                found.append(parse_state(o))
                return
            for v in o.values():
                walk(v)
        elif isinstance(o, list | tuple):
            for v in o:
                walk(v)

    walk(obj)
    return found


def merge(states: Sequence[DatasetState]) -> DatasetState:
    """One ``merged`` state from the states of every rank and worker (newest epoch wins).

    Idle states count as positions that had not started (they carry their rank and worker);
    a finished stream with a newer epoch wins over everything of the older one.
    """
    if not states:
        raise StateDictError("no framestream state found in the given states")
    for s in states:
        if s.kind == "progress":
            raise StateDictError(
                "a progress state (plain DataLoader) cannot be merged: it only describes its "
                "own layout; resume it with the same world size and workers"
            )
    newest = max(s.epoch for s in states)
    current = [s for s in states if s.epoch == newest]
    streams = tuple(p for s in current for p in s.streams)
    return DatasetState("merged", newest, current[0].fingerprint, streams)
