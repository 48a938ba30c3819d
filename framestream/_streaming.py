"""StreamingLeRobotDataset: an IterableDataset over the plan, the readers and the reservoir.

Per DataLoader worker (or in the main process when ``num_workers=0``) a :class:`_Stream`
walks the worker's plan with ``active_shards`` readers open, pushes their sample references
through the reservoir, and assembles each sample as it leaves. The whole position of a
stream (plan position, reader cursors, reservoir references, RNG) is a small dict, which is
what :meth:`StreamingLeRobotDataset.state_dict` returns.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch

from framestream._errors import FramestreamError, StateDictError
from framestream._map import select_episodes
from framestream._meta import DatasetMeta
from framestream._plan import Plan, Segment, make_plan, resolve_rank
from framestream._reader import Counters, SegmentReader
from framestream._sample import WindowSpec
from framestream._shuffle import Reservoir
from framestream._source import Source
from framestream._stats import MAX_SLOTS, StatsBoard
from framestream._tabular import TableReader
from framestream._video import DecoderCache, resolve_backend

STATE_VERSION = 1
log = logging.getLogger("framestream")


class StreamingLeRobotDataset(torch.utils.data.IterableDataset):
    """Stream a LeRobot v3.0 dataset: shuffled, split across ranks and workers, decoded once.

    Args:
        root: a local folder or an fsspec URL (``s3://``, ``http(s)://``, ``hf://``...).
        episodes: the episodes to stream (default: all).
        delta_timestamps: ``{key: [seconds, ...]}`` windows; any length (no fixed ceiling).
        tolerance_s: the largest allowed gap between a queried and a decoded timestamp.
        image_transforms: applied to each camera tensor of a sample.
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
        meta: DatasetMeta | None = None,
    ) -> None:
        super().__init__()
        if active_shards < 1:
            raise ValueError(f"active_shards must be >= 1, got {active_shards}")
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
        self.meta = meta or DatasetMeta(Source(str(root), storage_options or {}))
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
        self._stream: _Stream | None = None
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
        rank, world_size = self.rank_and_world_size()
        state, self._pending_state = self._pending_state, None
        if state is not None and state.get("epoch") is not None:
            epoch = int(state["epoch"])
        else:
            epoch = self.epoch
        stream = _Stream(
            self,
            rank=rank,
            world_size=world_size,
            worker=worker,
            num_workers=num_workers,
            epoch=epoch,
        )
        if state is not None:
            stream.load_state_dict(state)
        self._stream = stream
        try:
            yield from stream
        finally:
            stream.close()

    # --------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """This process's stream position (small: references and cursors, no pixels)."""
        if self._stream is None:
            if self._pending_state is not None:
                return dict(self._pending_state)
            return self._fingerprint() | {"epoch": self.epoch, "stream": None}
        return self._stream.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict` at the next ``iter()``; refuses foreign states."""
        self._check_state(state)
        self._pending_state = dict(state)
        if state.get("epoch") is not None:
            self.set_epoch(int(state["epoch"]))

    def _fingerprint(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "dataset": {
                "total_frames": int(self.meta.total_frames),
                "episodes": [int(e) for e in self.episodes],
                "fps": self.meta.fps,
            },
            "seed": self.seed,
            "shuffle": self.shuffle,
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
        for key in ("dataset", "seed", "shuffle"):
            if state.get(key) != mine[key]:
                raise StateDictError(
                    f"state_dict was saved for another dataset or configuration ({key!r} differs: "
                    f"saved {str(state.get(key))[:200]}, here {str(mine[key])[:200]})"
                )


class _Stream:
    """One worker's pass over its plan for one epoch."""

    def __init__(
        self,
        ds: StreamingLeRobotDataset,
        *,
        rank: int,
        world_size: int,
        worker: int,
        num_workers: int,
        epoch: int,
    ) -> None:
        self.ds = ds
        self.rank, self.world_size = rank, world_size
        self.worker, self.num_workers = worker, num_workers
        self.epoch = epoch
        self.plan = make_plan(
            ds.episodes,
            ds.lengths,
            seed=ds.seed,
            epoch=epoch,
            shuffle=ds.shuffle,
            rank=rank,
            world_size=world_size,
            worker=worker,
            num_workers=num_workers,
            even_ranks=ds.even_ranks,
        )
        self.rng = np.random.default_rng([ds.seed, epoch, rank, worker, 0xF5])
        self.reservoir = Reservoir(ds.buffer_size, self.rng, warmup=ds.shuffle_warmup)
        self.next_segment = 0
        self.readers: dict[int, SegmentReader] = {}
        self.active: list[int] = []
        self.outstanding: dict[int, int] = {}
        self.next_reader_id = 0
        self.emitted = 0
        self.counters = Counters()
        self.tables = TableReader(ds.meta)
        self.decoders = DecoderCache(
            ds.meta.source,
            capacity=ds.video_decoder_cache_size,
            backend=ds.video_backend,
            threads=ds.decoder_threads,
        )
        self.skipped: list[dict[str, Any]] = []
        self._slot = (worker + 1) % MAX_SLOTS
        self._published: dict[str, int] = {}

    # ------------------------------------------------------------ readers
    def _open(
        self, seg: Segment, *, cursor: int = 0, produced: Sequence[int] = (), rid: int | None = None
    ) -> int:
        if rid is None:
            rid, self.next_reader_id = self.next_reader_id, self.next_reader_id + 1
        ds = self.ds
        self.readers[rid] = SegmentReader(
            seg,
            meta=ds.meta,
            spec=ds.window,
            tables=self.tables,
            decoders=self.decoders,
            tolerance_s=ds.tolerance_s,
            counters=self.counters,
            return_uint8=ds.return_uint8,
            image_transforms=ds.image_transforms,
            cursor=cursor,
            produced_pending=produced,
        )
        self.outstanding.setdefault(rid, 0)
        return rid

    def _fill(self) -> None:
        limit = self.ds.active_shards if self.ds.shuffle else 1
        segs = self.plan.segments
        while len(self.active) < limit and self.next_segment < len(segs):
            seg = segs[self.next_segment]
            self.next_segment += 1
            if seg.size <= 0:
                continue
            try:
                self.active.append(self._open(seg))
            except FramestreamError as exc:
                if self.ds.on_error == "raise":
                    raise
                self._record_skip(seg.episode, seg.size, exc)

    def _produce(self) -> tuple[int, int]:
        if len(self.active) == 1 or not self.ds.shuffle:
            rid = self.active[0]
        else:
            weights = np.array([self.readers[r].remaining for r in self.active], dtype=np.float64)
            rid = self.active[int(self.rng.choice(len(self.active), p=weights / weights.sum()))]
        reader = self.readers[rid]
        frame = reader.produce()
        self.outstanding[rid] += 1
        if reader.remaining == 0:
            self.active.remove(rid)
            self._fill()
        return rid, frame

    def _next_ref(self) -> tuple[int, int] | None:
        self._fill()
        if not self.ds.shuffle:
            return self._produce() if self.active else None
        while self.reservoir.wants_more() and self.active:
            self.reservoir.push(self._produce())
        return self.reservoir.pop() if len(self.reservoir) else None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            ref = self._next_ref()
            if ref is None:
                self._publish()
                return
            rid, frame = ref
            reader = self.readers[rid]
            try:
                sample = reader.sample(frame)
            except FramestreamError as exc:
                if self.ds.on_error == "raise":
                    raise
                self._drop_reader(rid, exc)
                continue
            if self.ds.even_ranks:
                sample["is_repeat"] = torch.tensor(reader.segment.repeat)
            self.outstanding[rid] -= 1
            if self.outstanding[rid] == 0 and rid not in self.active:
                del self.readers[rid], self.outstanding[rid]
            self.emitted += 1
            self._publish()
            yield sample

    # ------------------------------------------------------------ errors
    def _record_skip(self, episode: int, lost: int, exc: Exception) -> None:
        c = self.counters
        c.errors += 1
        c.extra["skipped_episodes"] = c.extra.get("skipped_episodes", 0) + 1
        c.extra["skipped_samples"] = c.extra.get("skipped_samples", 0) + lost
        self.skipped.append({"episode": int(episode), "samples": int(lost), "reason": str(exc)})
        log.warning("framestream: skipping episode %d (%d samples): %s", episode, lost, exc)

    def _drop_reader(self, rid: int, exc: Exception) -> None:
        """on_error='skip': forget a failing reader and every reference to it."""
        reader = self.readers.pop(rid)
        before = len(self.reservoir.items)
        self.reservoir.items = [r for r in self.reservoir.items if r[0] != rid]
        lost = 1 + (before - len(self.reservoir.items)) + reader.remaining
        if rid in self.active:
            self.active.remove(rid)
        self.outstanding.pop(rid, None)
        self._record_skip(reader.segment.episode, lost, exc)

    # ------------------------------------------------------------ counters
    def _publish(self) -> None:
        c, cache = self.counters, self.decoders
        now = {
            "samples": c.samples,
            "repeated_samples": c.repeated_samples,
            "decoded_frames": c.decoded_frames,
            "delivered_frames": c.delivered_frames,
            "episodes_opened": c.episodes_opened,
            "errors": c.errors,
            "cache_hits": cache.hits,
            "cache_misses": cache.misses,
            "cache_evictions": cache.evictions,
        }
        deltas = {k: v - self._published.get(k, 0) for k, v in now.items()}
        self._published = now
        self.ds._board.add(self._slot, deltas)

    def close(self) -> None:
        self.decoders.close()
        self.tables.close()
        self.readers.clear()

    # ------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        readers = []
        for rid, r in self.readers.items():
            readers.append({"id": rid, "segment": list(r.segment.as_tuple()), "cursor": r.cursor})
        return self.ds._fingerprint() | {
            "epoch": self.epoch,
            "stream": {
                "rank": self.rank,
                "world_size": self.world_size,
                "worker": self.worker,
                "num_workers": self.num_workers,
                "even_ranks": self.ds.even_ranks,
                "next_segment": self.next_segment,
                "readers": readers,
                "active": list(self.active),
                "next_reader_id": self.next_reader_id,
                "reservoir": self.reservoir.state_dict(),
                "rng": self.rng.bit_generator.state,
                "emitted": self.emitted,
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        s = state.get("stream")
        if s is None:
            return
        same = (s["rank"], s["world_size"], s["worker"], s["num_workers"]) == (
            self.rank,
            self.world_size,
            self.worker,
            self.num_workers,
        )
        if not same:
            raise StateDictError(
                "state_dict was saved by rank {}/{} worker {}/{}, this stream is rank {}/{} "
                "worker {}/{}".format(
                    s["rank"],
                    s["world_size"],
                    s["worker"],
                    s["num_workers"],
                    self.rank,
                    self.world_size,
                    self.worker,
                    self.num_workers,
                )
            )
        self.next_segment = int(s["next_segment"])
        self.next_reader_id = int(s["next_reader_id"])
        self.reservoir.load_state_dict(s["reservoir"])
        self.rng.bit_generator.state = s["rng"]
        self.emitted = int(s["emitted"])
        pending: dict[int, list[int]] = {}
        for rid, frame in self.reservoir.items:
            pending.setdefault(int(rid), []).append(int(frame))
        for r in s["readers"]:
            seg = Segment(*r["segment"])
            rid = int(r["id"])
            self._open(seg, cursor=int(r["cursor"]), produced=pending.get(rid, []), rid=rid)
            self.outstanding[rid] = len(pending.get(rid, []))
        self.active = [int(a) for a in s["active"]]
