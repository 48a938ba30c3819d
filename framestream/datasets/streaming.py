"""StreamingLeRobotDataset: the public IterableDataset, its options, stats and state.

Each iteration (per DataLoader worker) runs a :class:`~framestream.stream.worker.WorkerStream`,
built fresh or resumed by :func:`~framestream.stream.resume.resume_stream`. This module holds what
the training process sees: configuration, ``set_epoch``, ``stats()`` and the state API.
"""

from __future__ import annotations

import gc
import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch

from framestream._errors import StateDictError
from framestream.datasets.map_style import select_episodes
from framestream.decode.buffers import per_process
from framestream.decode.video import resolve_backend
from framestream.format.meta import DatasetMeta
from framestream.io.source import RemoteOptions, Source
from framestream.stream.plan import Plan, make_plan, resolve_rank
from framestream.stream.resume import merge_states, resume_stream
from framestream.stream.sample import WindowSpec
from framestream.stream.stats import StatsBoard
from framestream.stream.worker import WorkerStream

STATE_VERSION = 1

__all__ = ["STATE_VERSION", "StreamingLeRobotDataset", "merge_states"]


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


class StreamingLeRobotDataset(torch.utils.data.IterableDataset):
    """Stream a LeRobot v3.0 dataset: shuffled, split across ranks and workers, decoded once.

    Args:
        root: a local folder or an fsspec URL (``s3://``, ``http(s)://``, ``hf://``...).
        episodes: the episodes to stream (default: all).
        delta_timestamps: ``{key: [seconds, ...]}`` windows; any length (no fixed ceiling).
        tolerance_s: the largest allowed gap between a queried and a decoded timestamp.
        image_transforms: applied to each camera tensor of a sample.
        channels_last: cameras as (C, H, W) views of (H, W, C) memory: a memcpy per frame
            instead of a transposing copy, several times cheaper for long windows. Collate
            with :func:`framestream.collate` (the default collate would transpose them
            back), and feed models that accept channels-last input (most conv nets do).
        return_uint8: cameras as uint8 (cheaper to move; convert on the GPU) instead of
            float32 in [0, 1].
        shuffle: mix samples of ``active_shards`` episodes through a reservoir. False gives
            episodes in order and frames in order (per worker).
        seed: with the epoch, fully determines the order.
        buffer_size: the reservoir size (references, not pixels: large values are cheap).
        active_shards: episode readers open at once per worker. More mixes episodes better
            within a batch; each open reader holds its not-yet-delivered decoded frames.
        video_decoder_cache_size: open decoders kept per worker; None means
            ``(active_shards + 1) x cameras``.
        rank, world_size: None resolves from Accelerate, torch.distributed, then
            ``RANK``/``WORLD_SIZE``, then (0, 1).
        even_ranks: give every rank and worker the same number of samples, padding by
            repeating samples (flagged ``is_repeat``), so that DDP never waits on a rank.
        video_backend: ``"torchcodec"``, ``"pyav"`` or None (torchcodec when it loads).
        decoder_threads: FFmpeg threads per decoder; 1 suits one worker per core.
        shuffle_warmup: references the reservoir holds before it first emits; it then grows
            to ``buffer_size``. Lower means a faster first batch.
        on_error: ``"raise"`` (default) stops on a bad episode with an error naming the
            dataset, file, episode, frame and camera; ``"skip"`` drops the episode's remaining
            samples, counts them in :meth:`stats` and logs the reason once per episode.
        storage_options: passed to fsspec for a remote ``root`` (credentials, endpoint...).
        revision: the Hub revision (branch, tag, commit) when ``root`` is a Hub dataset.
        cache_dir, cache_max_bytes: the local byte cache remote files are read through
            (default ``<framestream cache>/bytes``, 20 GiB, LRU); ``cache_max_bytes=0`` reads
            remote files in place with range requests instead.
        prefetch: segments beyond the open ones whose files each worker fetches ahead, in the
            background (0 disables prefetch).
        remote_options: timeouts, retries and fetch sizes for remote roots
            (:class:`framestream.io.source.RemoteOptions` or a dict of its fields).
    """

    def __init__(
        self,
        root: str,
        *,
        episodes: Sequence[int] | None = None,
        delta_timestamps: Mapping[str, Sequence[float]] | None = None,
        tolerance_s: float = 1e-4,
        image_transforms: Callable[[torch.Tensor], torch.Tensor] | None = None,
        return_uint8: bool = False,
        channels_last: bool = False,
        shuffle: bool = True,
        seed: int = 0,
        buffer_size: int = 1000,
        active_shards: int = 8,
        video_decoder_cache_size: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        even_ranks: bool = False,
        video_backend: Literal["torchcodec", "pyav"] | None = None,
        decoder_threads: int = 1,
        shuffle_warmup: int = 64,
        on_error: Literal["raise", "skip"] = "raise",
        storage_options: dict[str, Any] | None = None,
        revision: str | None = None,
        cache_dir: str | None = None,
        cache_max_bytes: int | None = None,
        prefetch: int = 2,
        remote_options: RemoteOptions | Mapping[str, Any] | None = None,
        meta: DatasetMeta | None = None,
    ) -> None:
        super().__init__()
        if active_shards < 1:
            raise ValueError(f"active_shards must be >= 1, got {active_shards}")
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
        self.meta = meta or DatasetMeta(
            Source(
                str(root),
                storage_options or {},
                revision=revision,
                cache_dir=None if cache_dir is None else str(cache_dir),
                cache_max_bytes=cache_max_bytes,
                remote=remote_options,
            )
        )
        self.prefetch = int(prefetch)
        self.episodes = select_episodes(self.meta, episodes)
        self.lengths = self.meta.episodes.length[
            [self.meta.episodes.row(int(e)) for e in self.episodes]
        ]
        self.window = WindowSpec.from_delta_timestamps(
            delta_timestamps, meta=self.meta, tolerance_s=tolerance_s
        )
        self.tolerance_s = tolerance_s
        self.image_transforms = image_transforms
        self.return_uint8 = return_uint8
        self.channels_last = channels_last
        self.shuffle = shuffle
        self.seed = int(seed)
        self.buffer_size = buffer_size
        self.active_shards = active_shards
        n_cams = max(1, len(self.meta.video_keys))
        self.video_decoder_cache_size = video_decoder_cache_size or (active_shards + 1) * n_cams
        self._rank, self._world_size = rank, world_size
        self.even_ranks = even_ranks
        self.video_backend = resolve_backend(video_backend)
        self.decoder_threads = decoder_threads
        self.shuffle_warmup = shuffle_warmup
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.on_error = on_error
        self._board = StatsBoard()
        self._stream: WorkerStream | None = None
        self._pending_state: dict[str, Any] | None = None

    # --------------------------------------------------------------- public surface
    @property
    def fps(self) -> int:
        return self.meta.fps

    @property
    def epoch(self) -> int:
        return self._board.epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration follows (seen by all workers)."""
        self._board.epoch = int(epoch)

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
        return make_plan(
            self.episodes,
            self.lengths,
            seed=self.seed,
            epoch=self.epoch if epoch is None else epoch,
            shuffle=self.shuffle,
            rank=r if rank is None else rank,
            world_size=w,
            worker=worker,
            num_workers=num_workers,
            even_ranks=self.even_ranks,
        )

    def num_samples(self, *, num_workers: int = 0) -> int:
        """Samples this rank yields per epoch with ``num_workers`` DataLoader workers."""
        n = max(1, num_workers)
        return sum(self.plan(worker=w, num_workers=n).num_samples for w in range(n))

    def stats(self) -> dict[str, Any]:
        """Counters summed over this process and its DataLoader workers.

        ``decoded_frames`` counts video frames decoded (per camera), ``delivered_frames``
        the frames handed out in samples (samples x window x cameras); their ratio is the
        reuse that decode-once buys. ``cache_*`` are the decoder-cache counters.
        ``batch_slots_reused`` / ``batch_slot_fallbacks`` count batches that
        :func:`framestream.collate` wrote into a reused worker slot / into fresh shared memory
        because every slot was still held (a loop keeping batches); ``frame_buffers_*`` the
        recycled frame buffers (:mod:`framestream.decode.buffers`). Workers
        publish every 16 samples and when their stream ends, so mid-epoch figures may lag by
        up to 16 samples per worker.
        """
        out = self._board.totals()
        lookups = out["cache_hits"] + out["cache_misses"]
        out["cache_lookups"] = lookups
        out["cache_hit_rate"] = out["cache_hits"] / lookups if lookups else 0.0
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
        rank, world_size = self.rank_and_world_size()
        state = self._pending_state
        if info is None:
            self._pending_state = None  # consumed; in workers the main copy keeps it
        epoch = self.epoch
        if state is not None:
            if int(state["epoch"]) < epoch:
                state = None  # set_epoch() moved past the saved epoch: a fresh epoch
            else:
                epoch = int(state["epoch"])
        stream = resume_stream(
            self,
            state,
            rank=rank,
            world_size=world_size,
            worker=worker,
            num_workers=num_workers,
            epoch=epoch,
        )
        self._stream = stream
        try:
            yield from stream
        finally:
            stream.close()

    # --------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """This process's stream position: kilobytes of references and cursors, no pixels.

        Inside a DataLoader worker (torchdata's ``StatefulDataLoader`` calls it there) it is
        that worker's position. Load it back with :meth:`load_state_dict` for an exact resume
        (same world size and workers), or combine every rank's and worker's states with
        :func:`merge_states` for an elastic one.
        """
        if self._stream is None:
            if self._pending_state is not None:
                return dict(self._pending_state)
            return self._fingerprint() | {"epoch": self.epoch, "stream": None}
        return self._stream.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` at the next ``iter()`` of the state's epoch.

        Accepts a single stream's state (:meth:`state_dict`), a merged state of all ranks and
        workers (:func:`merge_states`; exact when the world size and workers match, elastic
        otherwise), or a progress state (:meth:`progress_state`) for a plain DataLoader.
        A state from another dataset, seed or framestream version is refused.
        """
        self._check_state(state)
        if torch.utils.data.get_worker_info() is not None:
            # Inside a DataLoader worker (StatefulDataLoader restores there): never move the
            # epoch shared with the training process and the other workers.
            self._pending_state = dict(state)
            return
        streams = state.get("streams") or [state.get("stream")]
        if all(s is not None and s.get("finished") for s in streams):
            # Saved after the epoch ended (StatefulDataLoader snapshots then too): go on with
            # the next epoch rather than replaying an empty remainder.
            self._pending_state = None
            self.set_epoch(int(state["epoch"]) + 1)
            return
        self._pending_state = dict(state)
        self.set_epoch(int(state["epoch"]))

    def progress_state(
        self, *, batches: int, batch_size: int, num_workers: int, epoch: int | None = None
    ) -> dict[str, Any]:
        """A state for a plain ``torch.utils.data.DataLoader``, from batches consumed.

        A plain DataLoader (``in_order=True``) takes batches from its workers round-robin,
        skipping workers that ran out; from the number of batches the training loop consumed
        this rebuilds how many samples each worker had delivered. Workers then fast-forward
        their reference stream (no decoding) and continue exactly where they stopped.
        ``batches`` counts the epoch's batches from its start (earlier resumes included).
        """
        epoch = self.epoch if epoch is None else int(epoch)
        nw = max(1, num_workers)
        counts = [self.plan(worker=w, num_workers=nw, epoch=epoch).num_samples for w in range(nw)]
        per_worker = [-(-c // batch_size) for c in counts]  # batches each worker will yield
        consumed_batches = [0] * nw
        left, w = int(batches), 0
        while left > 0 and any(consumed_batches[i] < per_worker[i] for i in range(nw)):
            if consumed_batches[w] < per_worker[w]:
                consumed_batches[w] += 1
                left -= 1
            w = (w + 1) % nw
        consumed = [min(counts[i], consumed_batches[i] * batch_size) for i in range(nw)]
        # A fresh DataLoader starts its round-robin at worker 0: rotate the workers' roles so
        # that physical worker 0 plays the worker whose batch was due next.
        due = [i for i in [*range(w, nw), *range(w)] if consumed_batches[i] < per_worker[i]]
        return self._fingerprint() | {
            "epoch": epoch,
            "progress": {
                "num_workers": num_workers,
                "consumed": consumed,
                "shift": due[0] if due else 0,
            },
        }

    def _fingerprint(self) -> dict[str, Any]:
        digest = hashlib.sha1(np.asarray(self.episodes, dtype=np.int64).tobytes()).hexdigest()
        return {
            "version": STATE_VERSION,
            "dataset": {
                "total_frames": int(self.meta.total_frames),
                "num_episodes": len(self.episodes),
                "episodes_sha1": digest,
                "fps": self.meta.fps,
            },
            "seed": self.seed,
            "shuffle": self.shuffle,
            "even_ranks": self.even_ranks,
        }

    def _check_state(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping) or "version" not in state:
            raise StateDictError("not a framestream state_dict (no 'version')")
        if state["version"] != STATE_VERSION:
            raise StateDictError(
                f"state_dict version {state['version']} cannot be loaded by this framestream "
                f"(state version {STATE_VERSION})"
            )
        mine = self._fingerprint()
        for key in ("dataset", "seed", "shuffle", "even_ranks"):
            if state.get(key) != mine[key]:
                raise StateDictError(
                    f"state_dict was saved for another dataset or configuration ({key!r} differs: "
                    f"saved {str(state.get(key))[:200]}, here {str(mine[key])[:200]})"
                )
        if "epoch" not in state:
            raise StateDictError("state_dict has no 'epoch'")
