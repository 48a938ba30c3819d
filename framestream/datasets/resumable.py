"""The dataset's epoch and resume state: a mixin of :class:`StreamingLeRobotDataset`.

Which epoch each pass streams (an :class:`~framestream.stream.epoch.EpochClock` shared with
the DataLoader workers), what a state is saved as (:meth:`state_dict`,
:meth:`progress_state`) and what loading one means (:meth:`load_state_dict`): a state
belongs to one epoch, says whether it finished it, and applies to one pass.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from framestream._errors import StateDictError
from framestream.stream.budget import schedule_config
from framestream.stream.epoch import EpochClock
from framestream.stream.resume import Start, start_schedule
from framestream.stream.state import (
    DatasetState,
    Fingerprint,
    Progress,
    StreamPosition,
    parse_state,
)
from framestream.stream.worker import WorkerStream

__all__ = ["Resumable"]


class Resumable:
    """Epoch and state methods; the dataset provides options, meta, episodes and plans."""

    # provided by the dataset
    options: Any
    meta: Any
    window: Any
    episodes: Any
    _clock: EpochClock
    _plan_key: Any

    @property
    def epoch(self) -> int:
        """The epoch of the pass in progress (or the last one), or of the next pass once
        :meth:`set_epoch` or :meth:`load_state_dict` chose it."""
        return self._clock.epoch

    def set_epoch(self, epoch: int) -> None:
        """The next pass (``iter(ds)``, or one ``iter(loader)`` over all its workers) streams
        ``epoch``. Without it, each new pass streams the previous pass's epoch + 1.

        After :meth:`load_state_dict`, ``set_epoch`` with the state's epoch continues that
        state (an empty pass if the state had finished its epoch); any other epoch starts
        that epoch afresh and forgets the state.
        """
        epoch = int(epoch)
        p = self._pending
        if p is not None and not (p.epoch == epoch and self._clock.pending_applies_next()):
            self._pending = None
            self._clock.drop_pending()
        self._clock.arm(epoch)

    def _start(
        self, state: DatasetState | None, epoch: int, worker: int, num_workers: int
    ) -> Start:
        """Where (this rank, ``worker``) starts ``epoch`` from ``state``: no I/O."""
        o = self.options
        rank, world_size = self.rank_and_world_size()
        saved_plan = None
        if state is not None and state.fingerprint.even_ranks != o.even_ranks:
            saved_even = state.fingerprint.even_ranks

            def saved_plan(r: int, ws: int, w: int, nw: int) -> Any:
                return self._plan(r, ws, w, nw, epoch, even_ranks=saved_even).segments

        return start_schedule(
            state,
            plan=lambda r, ws, w, nw: self._plan(r, ws, w, nw, epoch).segments,
            config=schedule_config(self.meta, self.window, o),
            seed=o.seed,
            epoch=epoch,
            layout=(rank, world_size, worker, num_workers),
            even_ranks=o.even_ranks,
            saved_plan=saved_plan,
        )

    # --------------------------------------------------------------- state
    def _fingerprint(self) -> Fingerprint:
        digest = hashlib.sha1(np.asarray(self.episodes, dtype=np.int64).tobytes()).hexdigest()
        o = self.options
        return Fingerprint(
            dataset={
                "total_frames": int(self.meta.total_frames),
                "num_episodes": len(self.episodes),
                "episodes_sha1": digest,
                "fps": self.meta.fps,
            },
            seed=o.seed,
            shuffle=o.shuffle,
            even_ranks=o.even_ranks,
            plan=self._plan_key(),
        )

    def _init_epoch_state(self) -> None:
        self._clock = EpochClock()  # shared with the DataLoader workers
        self._stream: WorkerStream | None = None
        self._pending: DatasetState | None = None  # loaded here, for the next pass
        self._loaded_here: DatasetState | None = None  # loaded inside a DataLoader worker

    def _idle(self, worker: int, num_workers: int) -> DatasetState:
        """Nothing delivered yet: the position records who it is (for elastic merges)."""
        rank, world_size = self.rank_and_world_size()
        pos = StreamPosition(rank, world_size, worker, num_workers, None, False)
        return DatasetState("idle", self.epoch, self._fingerprint(), (pos,))

    def state_dict(self) -> dict[str, Any]:
        """This process's stream position: kilobytes of references and cursors, no pixels.

        Inside a DataLoader worker (torchdata's ``StatefulDataLoader`` calls it there) it is
        that worker's position. Load it back with :meth:`load_state_dict` for an exact resume
        (same world size and workers), or combine every rank's and worker's states with
        :func:`merge_states` for an elastic one. A state says which epoch it belongs to and
        whether that epoch was finished.

        Raises :class:`StateDictError` in the training process while a plain DataLoader's
        workers stream the pass: they hold the position, not this process (use a
        ``StatefulDataLoader``, or :meth:`progress_state` from the batches consumed).
        """
        info = torch.utils.data.get_worker_info()
        clock = self._clock
        if info is not None:
            if clock.pass_num_workers() is None:  # armed: set_epoch/load since the last pass
                if self._loaded_here is not None:
                    return self._loaded_here.to_dict()
                if self._pending is not None and clock.pending_applies_next():
                    start = self._start(
                        self._pending, self._pending.epoch, info.id, info.num_workers
                    )
                    return self._position_state(start, self._pending.epoch, info).to_dict()
                return self._idle(info.id, info.num_workers).to_dict()
            if self._stream is not None:
                return self._stream_state(self._stream).to_dict()
            if self._loaded_here is not None:
                return self._loaded_here.to_dict()
            return self._idle(info.id, info.num_workers).to_dict()
        if self._pending is not None and clock.pending_applies_next():
            return self._pending.to_dict()
        running = clock.pass_num_workers()
        if running is None or self._stream is None and running == 0:
            return self._idle(0, 1).to_dict()
        if running > 0:
            raise StateDictError(
                f"state_dict() in the training process while a DataLoader's {running} workers "
                "stream this pass: the position is in the workers, not here. Use torchdata's "
                "StatefulDataLoader (loader.state_dict()), or with a plain DataLoader "
                "ds.progress_state(batches=..., batch_size=..., num_workers=...)"
            )
        assert self._stream is not None
        return self._stream_state(self._stream).to_dict()

    def _stream_state(self, stream: WorkerStream) -> DatasetState:
        return DatasetState(
            "stream", stream.layout.epoch, self._fingerprint(), (stream.position(),)
        )

    def _position_state(self, start: Any, epoch: int, info: Any) -> DatasetState:
        rank, world_size = self.rank_and_world_size()
        sch = start.schedule
        pos = StreamPosition(
            rank,
            world_size,
            start.worker,
            info.num_workers,
            sch.state_dict(),
            sch.finished,
            tuple(sch.segments) if start.custom_segments else None,
        )
        return DatasetState("stream", epoch, self._fingerprint(), (pos,))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` in the next pass, which streams the state's epoch.

        Accepts a single stream's state (:meth:`state_dict`), a merged state of all ranks and
        workers (:func:`merge_states`; exact when the world size and workers match, elastic
        otherwise), or a progress state (:meth:`progress_state`) for a plain DataLoader.
        A state from another dataset, seed or framestream version is refused.

        A state applies to one pass only. A *finished* state (saved at or after the last
        batch of epoch ``e``) means "epoch ``e`` is done": ``set_epoch(e)`` (before or after
        loading) gives an empty pass, ``set_epoch(e + 1)`` or no ``set_epoch`` at all streams
        epoch ``e + 1`` from its start.
        """
        parsed = parse_state(state)
        self._fingerprint().check(parsed.fingerprint, elastic=parsed.kind == "merged")
        if torch.utils.data.get_worker_info() is not None:
            # Inside a DataLoader worker (StatefulDataLoader restores there): never move the
            # epoch shared with the training process and the other workers.
            self._loaded_here = parsed
            return
        self._stream = None
        self._pending = parsed
        if parsed.finished and self._clock.pinned_epoch != parsed.epoch:
            # Epoch e is done: the next pass is e + 1 unless set_epoch(e) is called.
            self._clock.arm(parsed.epoch + 1, pending=True, pinned=False)
        else:
            self._clock.arm(parsed.epoch, pending=True)

    def progress_state(
        self,
        *,
        batches: int,
        batch_size: int,
        num_workers: int,
        epoch: int | None = None,
        drop_last: bool = False,
    ) -> dict[str, Any]:
        """A state for a plain ``torch.utils.data.DataLoader``, from batches consumed.

        A plain DataLoader (``in_order=True``) takes batches from its workers round-robin,
        skipping workers that ran out; from the number of batches the training loop consumed
        this rebuilds how many samples each worker had delivered. Workers then fast-forward
        their schedule (no decoding) and continue exactly where they stopped; episodes the
        run skipped (``on_error="skip"``, recorded by the workers) are dropped at the same
        points. ``batches`` counts the epoch's batches from its start (earlier resumes
        included); ``drop_last`` must be the loader's. Call it in the process that runs the
        loader, during or right after the pass it describes.
        """
        epoch = self.epoch if epoch is None else int(epoch)
        nw = max(1, num_workers)
        events, overflow = self._clock.skips(epoch, nw)
        if overflow:
            raise StateDictError(
                "too many episodes were skipped this epoch to rebuild the position from a batch "
                "count; use torchdata's StatefulDataLoader for an exact resume"
            )
        lost = [0] * nw
        for ev in events:
            lost[ev.worker] += ev.lost
        counts = [
            self.plan(worker=w, num_workers=nw, epoch=epoch).num_samples - lost[w]
            for w in range(nw)
        ]
        # batches each worker yields
        per_worker = [c // batch_size if drop_last else -(-c // batch_size) for c in counts]
        consumed_batches = [0] * nw
        left, w = int(batches), 0
        while left > 0 and any(consumed_batches[i] < per_worker[i] for i in range(nw)):
            if consumed_batches[w] < per_worker[w]:
                consumed_batches[w] += 1
                left -= 1
            w = (w + 1) % nw
        consumed = tuple(min(counts[i], consumed_batches[i] * batch_size) for i in range(nw))
        # A fresh DataLoader starts its round-robin at worker 0: rotate the workers' roles so
        # that physical worker 0 plays the worker whose batch was due next.
        due = [i for i in [*range(w, nw), *range(w)] if consumed_batches[i] < per_worker[i]]
        progress = Progress(
            num_workers,
            consumed,
            due[0] if due else 0,
            skips=tuple((e.worker, e.emitted, e.rid, e.lost) for e in events),
            finished=not due,
        )
        return DatasetState("progress", epoch, self._fingerprint(), progress=progress).to_dict()
