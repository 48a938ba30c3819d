"""StreamingLeRobotDataset: the public IterableDataset, its epoch, stats and state.

The dataset holds what the training process sees: metadata, the selected episodes, the
window, the frozen :class:`~framestream.stream.options.StreamOptions`, the shared stats board
and a pending state. Each iteration (per DataLoader worker) asks
:func:`~framestream.stream.resume.start_schedule` where to start and runs a
:class:`~framestream.stream.worker.WorkerStream` on it.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

import torch

from framestream.datasets.common import Publisher, check_not_all_skipped, open_source
from framestream.datasets.in_batch import arena_for
from framestream.datasets.lerobot_args import (
    LeRobotStreamingSurface,
    lerobot_stream_options,
    resolve_location,
)
from framestream.datasets.loader_frames import loader_batch, persistent_worker
from framestream.datasets.mixing import auto_active, camera_span, mix_chunk
from framestream.datasets.resumable import Resumable
from framestream.decode.buffers import per_process
from framestream.decode.video import resolve_backend
from framestream.format.meta import DatasetMeta
from framestream.format.selection import select_episodes
from framestream.io.source import RemoteOptions, Source
from framestream.stream.epoch import SkipEvent
from framestream.stream.options import StreamOptions
from framestream.stream.plan import Plan, make_plan, resolve_rank
from framestream.stream.resume import Start
from framestream.stream.sample import WindowSpec
from framestream.stream.state import (
    STATE_VERSION,
    find_states,
    merge,
)
from framestream.stream.stats import StatsBoard
from framestream.stream.worker import Layout, ReadSpec, WorkerStream

__all__ = ["STATE_VERSION", "StreamingLeRobotDataset", "merge_states"]

_OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(StreamOptions))


def _freeze_inherited_objects() -> bool:
    """In a forked DataLoader worker, move what it inherited out of the cyclic GC's reach.

    The collector writes to every object it visits; in a forked worker that copies each
    inherited page it touches (copy-on-write) and re-scans the training process's whole heap
    at every full collection. Freezing once per worker removed about 40% of a worker's page
    faults in single-frame streaming. Objects the worker creates are collected as usual.
    """
    gc.freeze()
    return True


_freeze_once = per_process(_freeze_inherited_objects)  # once per worker process


class StreamingLeRobotDataset(LeRobotStreamingSurface, Resumable, torch.utils.data.IterableDataset):
    """Stream a LeRobot v3.0 dataset: shuffled, split across ranks and workers, decoded once.

    Called as LeRobot 0.6.1's ``StreamingLeRobotDataset(repo_id, root=PATH, ...)`` or as
    framestream's ``StreamingLeRobotDataset(PATH_OR_URL, ...)`` (a local path that does not
    exist raises FileNotFoundError; see :func:`~framestream.datasets.lerobot_args.
    resolve_location`).

    Args:
        repo_id, root: LeRobot's form (a name, and the folder or URL of the files), or the
            location alone: a folder, an fsspec URL, a ``Source`` or a Hub id ``"org/name"``.
        episodes: the episodes to stream (default: all), in this order when not shuffled.
        image_transforms: applied to each RGB camera tensor of a sample.
        delta_timestamps: ``{key: [seconds, ...]}`` windows; any length (no fixed ceiling).
        tolerance_s, buffer_size, seed, shuffle, return_uint8, depth_output_unit: stream
            options under LeRobot's names (None: the ``StreamOptions`` default; seed 0).
        revision, repo_type, token: the Hub revision, ``"dataset"`` only, a Hub token.
        force_cache_sync, streaming, max_num_shards: LeRobot's, accepted and ignored; rng:
            refused (the order is a pure function of (seed, epoch)). See docs/lerobot.md.
        options: a :class:`~framestream.StreamOptions`; any of its fields may also be given
            as a keyword (``active_shards=4``), overriding ``options``.
        rank, world_size: None resolves from Accelerate, torch.distributed, then
            ``RANK``/``WORLD_SIZE``, then (0, 1).
        storage_options, cache_dir, cache_max_bytes, remote_options: where and how
            remote bytes are read (fsspec options, the local byte cache (default
            20 GiB, LRU; ``cache_max_bytes=0`` reads in place), timeouts and retries). Not
            allowed beside ``meta``, which already carries its source.
        meta: already loaded metadata (e.g. read once to size a model).

    Samples follow LeRobot's streaming class: scalar features (``index``, ``frame_index``,
    ``episode_index``, ``task_index``, ``timestamp``, shape-``[1]`` features) are Python
    numbers; vectors and cameras are tensors as in the map-style class.
    """

    def __init__(
        self,
        repo_id: str | os.PathLike | Source | None = None,
        root: str | os.PathLike | Source | None = None,
        episodes: Sequence[int] | None = None,
        image_transforms: Callable[[torch.Tensor], torch.Tensor] | None = None,
        delta_timestamps: Mapping[str, Sequence[float]] | None = None,
        tolerance_s: float | None = None,
        revision: str | None = None,
        force_cache_sync: bool = False,
        streaming: bool = True,
        buffer_size: int | None = None,
        max_num_shards: int = 16,
        seed: int | None = None,
        rng: Any = None,
        shuffle: bool | None = None,
        return_uint8: bool | None = None,
        depth_output_unit: str | None = None,
        *,
        repo_type: str = "dataset",
        token: str | bool | None = None,
        options: StreamOptions | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        storage_options: dict[str, Any] | None = None,
        cache_dir: str | None = None,
        cache_max_bytes: int | None = None,
        remote_options: RemoteOptions | Mapping[str, Any] | None = None,
        meta: DatasetMeta | None = None,
        **option_fields: Any,
    ) -> None:
        super().__init__()
        option_fields.update(
            lerobot_stream_options(
                rng=rng, force_cache_sync=force_cache_sync, streaming=streaming,
                max_num_shards=max_num_shards, tolerance_s=tolerance_s, buffer_size=buffer_size,
                seed=seed, shuffle=shuffle, return_uint8=return_uint8,
                depth_output_unit=depth_output_unit,
            )
        )  # fmt: skip
        self.options = StreamOptions.build(options, **option_fields)
        location, name = (root if root is not None else repo_id), None
        if meta is None and not isinstance(location, Source):
            location, name = resolve_location(repo_id, root, repo_type=repo_type)
            if token not in (None, True) and location.startswith("hf://"):
                storage_options = {"token": token, **(storage_options or {})}
        self.meta = open_source(
            location,
            meta,
            storage_options=storage_options,
            revision=revision,
            cache_dir=cache_dir,
            cache_max_bytes=cache_max_bytes,
            remote_options=remote_options,
        )
        if name is not None:
            self.meta.repo_id = name
        self.repo_id = self.meta.repo_id
        self.root = self.meta.root
        self.episodes = select_episodes(self.meta, episodes)
        self.lengths = self.meta.episodes.length[
            [self.meta.episodes.row(int(e)) for e in self.episodes]
        ]
        self.window = WindowSpec.from_delta_timestamps(
            delta_timestamps, meta=self.meta, tolerance_s=self.options.tolerance_s
        )
        if self.meta.video_keys:
            # Load the video backend here, once: DataLoader workers forked from this process
            # inherit it instead of each importing torchcodec (~2.4 s of CPU) at every pass.
            resolve_backend(self.options.video_backend)
        # Sized here, once: DataLoader workers inherit it instead of each probing the mp4s.
        pieces = self._pieces()
        if self.options.active_shards is None:
            active = auto_active(camera_span(self.meta, self.window), pieces)
            self.options = dataclasses.replace(self.options, active_shards=active)
        self.delta_timestamps = delta_timestamps
        self.image_transforms = image_transforms
        self._rank, self._world_size = rank, world_size
        self._board = StatsBoard()
        self._next_pass: tuple[tuple[Any, ...], Future[WorkerStream | None]] | None = None
        self._init_epoch_state()

    # --------------------------------------------------------------- public surface
    @property
    def fps(self) -> int:
        return self.meta.fps

    def __getattr__(self, name: str) -> Any:
        # Each option reads as an attribute too (``ds.buffer_size``), from the one options object.
        if name in _OPTION_NAMES and "options" in self.__dict__:
            return getattr(self.__dict__["options"], name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def video_decoder_cache_size(self) -> int:
        """Open decoders kept per worker (the option, or its default for this dataset)."""
        return self.options.decoder_cache_size(len(self.meta.video_keys))

    def rank_and_world_size(self) -> tuple[int, int]:
        return resolve_rank(self._rank, self._world_size)

    def plan(
        self,
        *,
        worker: int = 0,
        num_workers: int = 1,
        epoch: int | None = None,
        rank: int | None = None,
    ) -> Plan:
        """What (this rank, ``worker``) reads in ``epoch``: a pure function, no I/O."""
        r, w = self.rank_and_world_size()
        epoch = self.epoch if epoch is None else epoch
        return self._plan(r if rank is None else rank, w, worker, num_workers, epoch)

    def _camera_span(self) -> int:
        return camera_span(self.meta, self.window)

    def mix_chunk(self) -> int:
        """Frames per shuffled piece of an episode (0: whole episodes); see
        :func:`~framestream.datasets.mixing.mix_chunk`."""
        if "_chunk" not in self.__dict__:  # reads each camera's first mp4 index once
            self._chunk = mix_chunk(self.options, self.meta, self.window, self.episodes)
        return self._chunk

    def _pieces(self) -> bool:
        """Whether episodes are cut at all (else whole episodes, streamed as before)."""
        chunk = self.mix_chunk()
        return 0 < chunk < int(max(self.lengths, default=0))

    def _plan_key(self) -> dict[str, int]:
        """What, beside the seed and epoch, decides the plan (kept in every state)."""
        lead = self.options.active_shards if self._pieces() else 0
        return {"chunk": self.mix_chunk(), "lead": lead, "cut_cost": self._camera_span()}

    def _plan(
        self,
        rank: int,
        world_size: int,
        worker: int,
        num_workers: int,
        epoch: int,
        *,
        even_ranks: bool | None = None,
    ) -> Plan:
        o = self.options
        return make_plan(
            self.episodes,
            self.lengths,
            seed=o.seed,
            epoch=epoch,
            shuffle=o.shuffle,
            rank=rank,
            world_size=world_size,
            worker=worker,
            num_workers=num_workers,
            even_ranks=o.even_ranks if even_ranks is None else even_ranks,
            **self._plan_key(),
        )

    def num_samples(self, *, num_workers: int = 0) -> int:
        """Samples this rank yields per epoch with ``num_workers`` DataLoader workers."""
        n = max(1, num_workers)
        return sum(self.plan(worker=w, num_workers=n).num_samples for w in range(n))

    def stats(self) -> dict[str, Any]:
        """Counters summed over this process and its DataLoader workers.

        ``decoded_frames`` counts video frames decoded (per camera), ``delivered_frames``
        the frames handed out in samples (samples x window x cameras); ``reuse_ratio`` =
        delivered / decoded is what decode-once buys (frames handed out per frame decoded).
        ``decoder_cache_*`` count the open-decoder cache; ``byte_cache_*`` the remote byte
        cache. ``batch_slots_reused`` / ``batch_slot_fallbacks`` count batches that
        :func:`framestream.collate` wrote into a reused worker slot / into fresh shared memory
        because every slot was still held (``batch_slot_waits``: batches that waited for
        a held slot and got it); ``batches_in_place`` the batches whose camera
        tensors each sample wrote straight into that slot (no sample-sized copy);
        ``frame_buffers_*`` the recycled frame buffers.
        Workers publish every 16 samples and when their stream ends, so mid-epoch figures may
        lag by up to 16 samples per worker.
        """
        out = self._board.totals()
        lookups = out["decoder_cache_hits"] + out["decoder_cache_misses"]
        out["decoder_cache_lookups"] = lookups
        out["decoder_cache_hit_rate"] = out["decoder_cache_hits"] / lookups if lookups else 0.0
        out["reuse_ratio"] = (
            out["delivered_frames"] / out["decoded_frames"] if out["decoded_frames"] else 0.0
        )
        out["epoch"] = self.epoch
        return out

    def reset_stats(self) -> None:
        self._board.reset()

    # --------------------------------------------------------------- iteration
    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if info is not None:
            _freeze_once()
        slot = 0 if info is None else worker + 1
        local, self._loaded_here = self._loaded_here, None
        if local is not None and local.epoch < self._clock.peek(slot, num_workers if info else 0):
            if local.finished or self._no_batch_left(local, worker, num_workers):
                # A spent state of an epoch the loop moved past: torchdata restores worker
                # states saved after a pass into an iterator it then discards. Not a pass
                # (starting one would take the epoch from the loader's real next pass).
                return
        started = self._clock.start(slot, 0 if info is None else num_workers)
        epoch, state = started.epoch, None
        if local is not None:
            # Restored inside this worker (StatefulDataLoader): the state's epoch wins unless
            # set_epoch() moved past it.
            if local.epoch >= epoch:
                state, epoch = local, local.epoch
                self._clock.use_epoch(started.generation, epoch)
        elif started.pending and self._pending is not None and self._pending.epoch == epoch:
            state = self._pending  # a loaded state applies to one pass only
        if info is None:
            self._pending = None  # consumed (or outdated); in workers the clock says so
        layout = self.rank_and_world_size(), worker, num_workers, epoch
        stream = self._take_prepared(layout if state is None else None)
        if stream is None:
            start = self._start(state, epoch, worker, num_workers)
            stream = self._new_stream(start, layout, slot)
        if state is not None and state.progress is not None:
            # skip events of this pass, re-recorded for the drops a progress state replayed
            lay = stream.layout
            done = state.progress.consumed[lay.worker]
            for w, emitted, rid, lost in state.progress.skips:
                if w == lay.worker and emitted < done:
                    ev = SkipEvent(w, emitted, rid, lost)
                    self._clock.record_skip(slot, epoch, max(1, num_workers), ev)
        self._stream = stream
        # A persistent worker builds its next pass's stream once this one drains (every piece
        # opened, at most half a reservoir left, so its frames have mostly been freed): see
        # _prepare_next.
        ahead = info is not None and self._pieces() and persistent_worker()
        sch = stream.schedule
        total = sum(s.size for s in sch.segments)
        drained = max(total // 2, total - self.options.buffer_size // 2)
        stream.arena = arena_for(self)  # camera tensors built in their batch's memory
        try:
            for sample in stream:
                if ahead and sch.next_segment >= len(sch.segments) and sch.emitted >= drained:
                    ahead = False
                    self._prepare_next(slot, worker, num_workers)
                yield sample
            planned = self.num_samples(num_workers=num_workers)
            check_not_all_skipped(stream, self.meta.source.url, self._board.totals(), planned)
        finally:
            stream.close()
        if ahead:
            self._prepare_next(slot, worker, num_workers)

    def _no_batch_left(self, state: Any, worker: int, num_workers: int) -> bool:
        """Whether the restored ``state`` can give the DataLoader pulling from this worker no
        batch: fewer samples left than a batch, which it drops (``drop_last``).

        Why: torchdata snapshots a worker when it hands out a batch, so under ``drop_last`` a
        state saved after the epoch ended may still hold the worker's last, dropped samples:
        the epoch is over for that loader although the state is not finished.
        """
        batch = loader_batch()
        if batch is None or not batch[1]:
            return False
        schedule = self._start(state, state.epoch, worker, num_workers).schedule
        return sum(s.size for s in schedule.remaining_segments()) < batch[0]

    def _new_stream(self, start: Start, layout: tuple[Any, ...], slot: int) -> WorkerStream:
        """The engine for ``start``; ``layout`` = ((rank, world size), worker, workers, epoch),
        ``slot`` the epoch clock's (0: the training process, w + 1: worker w)."""
        (rank, world_size), worker, num_workers, epoch = layout
        events = max(1, num_workers)

        def on_skip(emitted: int, rid: int, lost: int) -> None:
            ev = SkipEvent(start.worker, emitted, rid, lost)
            self._clock.record_skip(slot, epoch, events, ev)

        return WorkerStream(
            ReadSpec(self.meta, self.window, self.options, self.image_transforms),
            start.schedule,
            Layout(rank, world_size, start.worker, num_workers, epoch),
            publish=Publisher(self._board, (worker + 1) % self._board.slots),
            custom_segments=start.custom_segments,
            on_skip=on_skip,
        )

    def _prepare_next(self, slot: int, worker: int, num_workers: int) -> None:
        """In a DataLoader worker whose pass is draining: build the next pass's stream in a
        thread (plan, first readers' table rows read and decoders opened; nothing decoded),
        for the epoch the next pass will stream unless ``set_epoch`` says otherwise.

        Why: a persistent worker otherwise starts all of this when the next ``iter(loader)``
        asks for its first batch, and every worker does so at once: the training loop waits
        for ``active_shards`` readers and their decoders per worker at each epoch boundary.
        Decoding stays with the pass, whose memory ledger accounts it. Here it runs while
        the pass drains (called there, or at its end). Nothing else changes: the stream is
        the one a fresh pass would build (its schedule untouched), and it is used only if the
        next pass is that fresh pass (same epoch and layout, no state loaded).
        """
        epoch = self._clock.peek(slot, num_workers)
        layout = (self.rank_and_world_size(), worker, num_workers, epoch)

        done: Future[WorkerStream | None] = Future()

        def build() -> None:
            stream = None
            try:
                start = self._start(None, epoch, worker, num_workers)
                stream = self._new_stream(start, layout, slot)
                stream.prepare()
            except Exception:  # the pass itself meets (and reports) the same problem
                if stream is not None:
                    stream.close()
                stream = None
            done.set_result(stream)

        # A daemon thread: a worker that is not persistent exits without waiting for it.
        threading.Thread(target=build, name="framestream-next-pass", daemon=True).start()
        self._next_pass = (layout, done)

    def _take_prepared(self, layout: tuple[Any, ...] | None) -> WorkerStream | None:
        """The stream :meth:`_prepare_next` built, if it is for ``layout`` (else closed;
        None: this pass starts from a state, never from a prepared stream)."""
        pending, self._next_pass = self._next_pass, None
        if pending is None:
            return None
        prepared = pending[1].result()
        if prepared is not None and (layout is None or pending[0] != layout):
            prepared.close()
            return None
        if prepared is not None:  # stats(): passes that started on a prepared stream
            prepared.counters.extra["prepared_passes"] = 1
        return prepared


def merge_states(states: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Combine the states of every rank and worker (or nested loader states) into one.

    ``states`` may hold framestream stream states or anything that contains them, such as
    ``StatefulDataLoader.state_dict()`` results gathered from all ranks
    (``torch.distributed.all_gather_object``). The result resumes exactly on the same world
    size and workers, and elastically (no sample lost or repeated) on any other.
    """
    return merge(find_states(list(states))).to_dict()
