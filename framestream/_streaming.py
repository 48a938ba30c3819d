"""StreamingLeRobotDataset: an IterableDataset over the plan, the readers and the reservoir.

Per DataLoader worker (or in the main process when ``num_workers=0``) a :class:`_Stream`
walks the worker's plan with ``active_shards`` readers open, pushes their sample references
through the reservoir, and assembles each sample as it leaves. The whole position of a
stream (plan position, reader cursors, reservoir references, RNG) is a small dict, which is
what :meth:`StreamingLeRobotDataset.state_dict` returns.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch

from framestream._cache import StreamIO
from framestream._errors import (
    FramestreamError,
    SourceError,
    StateDictError,
    TimestampToleranceError,
    VideoDecodeError,
)
from framestream._map import select_episodes
from framestream._meta import DatasetMeta
from framestream._plan import Plan, Segment, make_plan, partition, resolve_rank
from framestream._reader import Counters, SegmentReader
from framestream._sample import WindowSpec
from framestream._shuffle import Reservoir
from framestream._source import RemoteOptions, Source
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
        storage_options: passed to fsspec for a remote ``root`` (credentials, endpoint...).
        revision: the Hub revision (branch, tag, commit) when ``root`` is a Hub dataset.
        cache_dir, cache_max_bytes: the local byte cache remote files are read through
            (default ``<framestream cache>/bytes``, 20 GiB, LRU); ``cache_max_bytes=0`` reads
            remote files in place with range requests instead.
        prefetch: segments beyond the open ones whose files each worker fetches ahead, in the
            background (0 disables prefetch).
        remote_options: timeouts, retries and fetch sizes for remote roots
            (:class:`framestream._source.RemoteOptions` or a dict of its fields).
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
        state = self._pending_state
        if info is None:
            self._pending_state = None  # consumed; in workers the main copy keeps it
        epoch = self.epoch
        if state is not None:
            if int(state["epoch"]) < epoch:
                state = None  # set_epoch() moved past the saved epoch: a fresh epoch
            else:
                epoch = int(state["epoch"])
        stream = _resume_stream(
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


def _resume_stream(
    ds: StreamingLeRobotDataset,
    state: Mapping[str, Any] | None,
    *,
    rank: int,
    world_size: int,
    worker: int,
    num_workers: int,
    epoch: int,
) -> _Stream:
    me = (rank, world_size, worker, num_workers)

    def fresh(segments: Sequence[Segment] | None = None) -> _Stream:
        return _Stream(
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
        if int(p["num_workers"]) != num_workers and max(1, int(p["num_workers"])) != num_workers:
            raise StateDictError(
                f"progress state was made for {p['num_workers']} workers, this loader has "
                f"{num_workers}"
            )
        logical = (worker + int(p.get("shift", 0))) % max(1, num_workers)
        stream = _Stream(
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
        old = _Stream(
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


def _skip_reason(exc: Exception) -> str:
    """The stats() counter (a StatsBoard field) of a skipped episode's cause."""
    if isinstance(exc, TimestampToleranceError):
        return "skipped_timestamp_errors"
    if isinstance(exc, VideoDecodeError):
        return "skipped_video_errors"
    return "skipped_data_errors"


class _Cursor:
    """A segment's production position: light, so that fast-forward needs no decoding."""

    __slots__ = ("segment", "pos")

    def __init__(self, segment: Segment, pos: int = 0) -> None:
        self.segment, self.pos = segment, pos

    @property
    def remaining(self) -> int:
        return self.segment.size - self.pos


class _Stream:
    """One worker's pass over its share of one epoch.

    Two layers: the *reference* layer (plan position, cursors, reservoir, RNG) decides which
    sample comes next and costs no I/O; the *reader* layer (:class:`SegmentReader`, opened on
    the first sample an episode owes) reads rows and decodes frames. Resuming and
    fast-forwarding replay only the reference layer.
    """

    def __init__(
        self,
        ds: StreamingLeRobotDataset,
        *,
        rank: int,
        world_size: int,
        worker: int,
        num_workers: int,
        epoch: int,
        segments: Sequence[Segment] | None = None,
    ) -> None:
        self.ds = ds
        self.rank, self.world_size = rank, world_size
        self.worker, self.num_workers = worker, num_workers
        self.epoch = epoch
        self.custom_segments = segments is not None
        if segments is None:
            segments = make_plan(
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
            ).segments
        self.segments: list[Segment] = list(segments)
        self.rng = np.random.default_rng([ds.seed, epoch, rank, worker, 0xF5])
        self.reservoir = Reservoir(ds.buffer_size, self.rng, warmup=ds.shuffle_warmup)
        self.next_segment = 0
        self.cursors: dict[int, _Cursor] = {}
        self.active: list[int] = []
        self.outstanding: dict[int, int] = {}
        self.readers: dict[int, SegmentReader] = {}
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
        self.io = StreamIO(ds.meta, depth=ds.prefetch)  # remote prefetch + byte counters
        self._slot = (worker + 1) % MAX_SLOTS
        self._published: dict[str, int] = {}

    # ------------------------------------------------------------ reference layer
    def _fill(self) -> None:
        limit = self.ds.active_shards if self.ds.shuffle else 1
        while len(self.active) < limit and self.next_segment < len(self.segments):
            seg = self.segments[self.next_segment]
            self.next_segment += 1
            if seg.size <= 0:
                continue
            rid, self.next_reader_id = self.next_reader_id, self.next_reader_id + 1
            self.cursors[rid] = _Cursor(seg)
            self.outstanding[rid] = 0
            self.active.append(rid)

    def _produce(self) -> tuple[int, int]:
        if len(self.active) == 1 or not self.ds.shuffle:
            rid = self.active[0]
        else:
            weights = np.array([self.cursors[r].remaining for r in self.active], dtype=np.float64)
            rid = self.active[int(self.rng.choice(len(self.active), p=weights / weights.sum()))]
        cur = self.cursors[rid]
        frame = cur.segment.start + cur.pos
        cur.pos += 1
        self.outstanding[rid] += 1
        if cur.remaining == 0:
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

    def _done_with(self, rid: int) -> None:
        self.outstanding[rid] -= 1
        if self.outstanding[rid] == 0 and rid not in self.active:
            del self.outstanding[rid], self.cursors[rid]
            self.readers.pop(rid, None)

    def fast_forward(self, n: int) -> None:
        """Skip ``n`` samples without reading or decoding anything."""
        for _ in range(n):
            ref = self._next_ref()
            if ref is None:
                return
            self._done_with(ref[0])
            self.emitted += 1

    # ------------------------------------------------------------ reader layer
    def _reader(self, rid: int, frame: int) -> SegmentReader:
        reader = self.readers.get(rid)
        if reader is None:
            active = [self.cursors[r].segment for r in self.active]
            self.io.advance(self.segments, self.next_segment, active)  # fetch ahead (remote)
            cur = self.cursors[rid]
            owed = [f for r, f in self.reservoir.items if r == rid] + [frame]
            ds = self.ds
            reader = SegmentReader(
                cur.segment,
                meta=ds.meta,
                spec=ds.window,
                tables=self.tables,
                decoders=self.decoders,
                tolerance_s=ds.tolerance_s,
                counters=self.counters,
                return_uint8=ds.return_uint8,
                image_transforms=ds.image_transforms,
                cursor=cur.pos,
                produced_pending=owed,
            )
            self.readers[rid] = reader
        return reader

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            ref = self._next_ref()
            if ref is None:
                self._publish()
                return
            rid, frame = ref
            try:
                reader = self._reader(rid, frame)
                sample = reader.sample(frame)
            except FramestreamError as exc:
                # A network outage is not a bad episode: never skip past it.
                if self.ds.on_error == "raise" or isinstance(exc, SourceError):
                    raise
                self._drop(rid, exc)
                continue
            if self.ds.even_ranks:
                sample["is_repeat"] = torch.tensor(reader.segment.repeat)
            self._done_with(rid)
            self.emitted += 1
            self._publish()
            yield sample

    # ------------------------------------------------------------ errors
    def _drop(self, rid: int, exc: Exception) -> None:
        """on_error='skip': forget a failing episode and every reference to it."""
        cur = self.cursors.pop(rid)
        self.readers.pop(rid, None)
        before = len(self.reservoir.items)
        self.reservoir.items = [r for r in self.reservoir.items if r[0] != rid]
        lost = 1 + (before - len(self.reservoir.items)) + cur.remaining
        if rid in self.active:
            self.active.remove(rid)
        self.outstanding.pop(rid, None)
        c = self.counters
        c.errors += 1
        c.extra["skipped_episodes"] = c.extra.get("skipped_episodes", 0) + 1
        c.extra["skipped_samples"] = c.extra.get("skipped_samples", 0) + lost
        reason = _skip_reason(exc)  # counted per kind, so that stats() says why across workers
        c.extra[reason] = c.extra.get(reason, 0) + 1
        episode = cur.segment.episode
        self.skipped.append({"episode": int(episode), "samples": int(lost), "reason": str(exc)})
        log.warning("framestream: skipping episode %d (%d samples): %s", episode, lost, exc)

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
            "skipped_episodes": c.extra.get("skipped_episodes", 0),
            "skipped_samples": c.extra.get("skipped_samples", 0),
            "cache_hits": cache.hits,
            "cache_misses": cache.misses,
            "cache_evictions": cache.evictions,
        }
        now.update({k: v for k, v in c.extra.items() if k.startswith("skipped_")})
        now.update(self.io.counters())
        deltas = {k: v - self._published.get(k, 0) for k, v in now.items()}
        self._published = now
        self.ds._board.add(self._slot, deltas)

    def close(self) -> None:
        self.io.close()
        self.decoders.close()
        self.tables.close()
        self.readers.clear()

    # ------------------------------------------------------------ state
    def remaining_segments(self) -> list[Segment]:
        """Everything this stream still owes, as segments (for elastic resume)."""
        out = [
            Segment(s.episode, s.start + c.pos, s.stop, s.repeat)
            for c in self.cursors.values()
            for s in [c.segment]
            if c.remaining > 0
        ]
        for rid, frame in self.reservoir.items:
            seg = self.cursors[rid].segment
            out.append(Segment(seg.episode, frame, frame + 1, seg.repeat))
        out += [s for s in self.segments[self.next_segment :] if s.size > 0]
        return out

    def state_dict(self) -> dict[str, Any]:
        return self.ds._fingerprint() | {
            "epoch": self.epoch,
            "stream": {
                "rank": self.rank,
                "world_size": self.world_size,
                "worker": self.worker,
                "num_workers": self.num_workers,
                "even_ranks": self.ds.even_ranks,
                "segments": (
                    [list(s.as_tuple()) for s in self.segments] if self.custom_segments else None
                ),
                "next_segment": self.next_segment,
                "cursors": [[rid, c.pos] for rid, c in self.cursors.items()],
                "active": list(self.active),
                "next_reader_id": self.next_reader_id,
                "reservoir": self.reservoir.state_dict(),
                "rng": self.rng.bit_generator.state,
                "emitted": self.emitted,
                "finished": not self.active
                and not len(self.reservoir)
                and self.next_segment >= len(self.segments),
            },
        }

    def load_stream_state(self, s: dict[str, Any]) -> None:
        """Restore exactly the position :meth:`state_dict` captured."""
        if s.get("segments") is not None:
            self.segments = [Segment(*x) for x in s["segments"]]
            self.custom_segments = True
        self.next_segment = int(s["next_segment"])
        self.next_reader_id = int(s["next_reader_id"])
        self.reservoir.load_state_dict(s["reservoir"])
        self.rng.bit_generator.state = s["rng"]
        self.emitted = int(s["emitted"])
        # A cursor's segment is found again from its reader id: ids are handed out in order.
        seg_of = self._segments_by_id()
        self.cursors = {int(rid): _Cursor(seg_of[int(rid)], int(pos)) for rid, pos in s["cursors"]}
        self.active = [int(a) for a in s["active"]]
        self.outstanding = {rid: 0 for rid in self.cursors}
        for rid, _ in self.reservoir.items:
            self.outstanding[rid] += 1
        self.readers = {}

    def _segments_by_id(self) -> dict[int, Segment]:
        nonempty = [seg for seg in self.segments if seg.size > 0]
        return dict(enumerate(nonempty))
