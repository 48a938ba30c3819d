"""A map-style dataset: random access to any frame of a local (or remote) v3.0 dataset.

It is the reference the streaming dataset is proven against, and useful on its own for local
data. Each ``__getitem__`` seeks and decodes only the frames its window needs, so random
access costs a seek per camera; for training throughput use the streaming dataset.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch

from framestream.datasets.lerobot_args import (
    check_ignored,
    normalize_video_backend,
    resolve_location,
    sorted_episodes,
)
from framestream.decode.video import (
    DEPTH_PIX_FMT,
    DecoderCache,
    decode_episode_frames,
    resolve_backend,
)
from framestream.format.checks import declared_frame_shape
from framestream.format.meta import DatasetMeta
from framestream.format.tables import EpisodeData, TableReader, image_frames
from framestream.io.source import Source
from framestream.stream.sample import WindowSpec, build_sample, in_layout


class MapDataset(torch.utils.data.Dataset):
    """Random-access LeRobot v3.0 dataset with LeRobot 0.6.1's signature and sample contract.

    Called as LeRobot's ``LeRobotDataset(repo_id, root=PATH, ...)`` or as framestream's
    ``MapDataset(PATH_OR_URL, ...)`` (see :func:`~framestream.datasets.lerobot_args.
    resolve_location`; a local path that does not exist raises FileNotFoundError).

    Args:
        repo_id: LeRobot's dataset name (``"org/name"``) when ``root`` is given; otherwise
            where the dataset is: a folder, an fsspec URL, or a Hub id (LeRobot's cache
            ``$HF_LEROBOT_HOME/org/name`` when present there, else ``hf://datasets/org/name``).
        root: the dataset's folder or URL.
        episodes: the episodes to expose (default: all); sorted ascending, as LeRobot does.
        episode_filter: keep the episodes whose ``meta.episodes`` row it accepts.
        image_transforms: applied to each RGB camera tensor of a sample (not to depth).
        delta_timestamps: ``{key: [seconds, ...]}`` windows; each delta a multiple of 1/fps
            within ``tolerance_s``, rounded to whole frames.
        tolerance_s: the largest allowed gap between a queried and a decoded timestamp.
        revision: the Hub revision of a Hub dataset.
        video_backend: ``"torchcodec"``, ``"pyav"`` (LeRobot's alias ``"video_reader"``) or
            None (torchcodec when it loads). Depth videos always decode through PyAV.
        return_uint8: RGB *video* cameras as uint8 instead of float32 in [0, 1] (PNG
            ``image`` features stay float32, as in LeRobot).
        depth_output_unit: depth cameras in ``"mm"`` (rounded float32) or ``"m"``.
        token: a Hub token (for ``hf://`` datasets).
        force_cache_sync, download_videos, batch_encoding_size, rgb_encoder, depth_encoder,
            encoder_threads, streaming_encoding, encoder_queue_maxsize: LeRobot's download
            and writer options: accepted and ignored (a warning when not the default).
        storage_options, meta, channels_last: framestream's own (fsspec options, already
            loaded metadata, cameras as channels-last views).

    Samples follow LeRobot's map-style class: ``index``, ``episode_index``, ``frame_index``,
    ``task_index`` 0-d int64 tensors, ``timestamp`` a 0-d float32 tensor, every float feature
    float32 and every integer one int64.
    """

    def __init__(
        self,
        repo_id: str | os.PathLike | None = None,
        root: str | os.PathLike | None = None,
        episodes: Sequence[int] | None = None,
        episode_filter: Callable[[dict], bool] | None = None,
        image_transforms: Callable[[torch.Tensor], torch.Tensor] | None = None,
        delta_timestamps: Mapping[str, Sequence[float]] | None = None,
        tolerance_s: float = 1e-4,
        revision: str | None = None,
        force_cache_sync: bool = False,
        download_videos: bool = True,
        video_backend: str | None = None,
        return_uint8: bool = False,
        depth_output_unit: Literal["mm", "m"] = "mm",
        batch_encoding_size: int = 1,
        rgb_encoder: Any = None,
        depth_encoder: Any = None,
        encoder_threads: int | None = None,
        streaming_encoding: bool = False,
        encoder_queue_maxsize: int = 30,
        *,
        token: str | bool | None = None,
        storage_options: dict[str, Any] | None = None,
        meta: DatasetMeta | None = None,
        channels_last: bool = False,
    ) -> None:
        check_ignored(
            {
                "force_cache_sync": force_cache_sync,
                "download_videos": download_videos,
                "batch_encoding_size": batch_encoding_size,
                "rgb_encoder": rgb_encoder,
                "depth_encoder": depth_encoder,
                "encoder_threads": encoder_threads,
                "streaming_encoding": streaming_encoding,
                "encoder_queue_maxsize": encoder_queue_maxsize,
            }
        )
        if depth_output_unit not in ("mm", "m"):
            raise ValueError(f"depth_output_unit must be 'mm' or 'm', got {depth_output_unit!r}")
        self.channels_last = channels_last
        if meta is None:
            where, name = resolve_location(repo_id, root)
            options = dict(storage_options or {})
            if token not in (None, True) and where.startswith("hf://"):
                options.setdefault("token", token)
            meta = DatasetMeta(Source(where, options, revision=revision))
            if name is not None:
                meta.repo_id = name
        self.meta = meta
        self.repo_id = self.meta.repo_id
        self.root = self.meta.root
        self.revision = revision
        selected = sorted_episodes(self.meta, episodes, episode_filter)
        # LeRobot's ``episodes``: the (sorted) list given, or None for every episode.
        self.episodes: list[int] | None = None if selected is None else selected.tolist()
        self._selected = self.meta.episodes.episode_index.copy() if selected is None else selected
        self.tolerance_s = tolerance_s
        self.return_uint8 = return_uint8
        self.depth_output_unit = depth_output_unit
        self.image_transforms = image_transforms
        self.video_backend = resolve_backend(normalize_video_backend(video_backend))
        self.delta_timestamps = delta_timestamps
        self.window = WindowSpec.from_delta_timestamps(
            delta_timestamps, meta=self.meta, tolerance_s=tolerance_s
        )
        rows = [self.meta.episodes.row(int(e)) for e in self._selected]
        self._lengths = self.meta.episodes.length[rows]
        self._starts = np.concatenate([[0], np.cumsum(self._lengths)])
        self._from_index = self.meta.episodes.from_index[rows]
        self._reset_handles()

    def _reset_handles(self) -> None:
        """Forget every open handle: they belong to the process that opened them."""
        self._pid = os.getpid()
        self._tables: TableReader | None = None
        self._decoders: DecoderCache | None = None
        self._episode_cache: dict[int, EpisodeData] = {}

    def _own_handles(self) -> None:
        # A forked DataLoader worker inherits the parent's parquet files and decoders (same
        # file offsets, same FFmpeg state): using them from two processes corrupts reads.
        if self._pid != os.getpid():
            self._reset_handles()

    @property
    def num_frames(self) -> int:
        """Frames of the selected episodes (LeRobot's ``num_frames``)."""
        return len(self)

    @property
    def num_episodes(self) -> int:
        """Selected episodes (LeRobot's ``num_episodes``)."""
        return len(self._selected)

    @property
    def absolute_to_relative_idx(self) -> dict[int, int] | None:
        """Global ``index`` -> position, when ``episodes`` was given (else None: they agree).

        lerobot-train hands it to ``EpisodeAwareSampler``, which yields positions.
        """
        if self.episodes is None:
            return None
        cached = self.__dict__.get("_abs_to_rel")
        if cached is None:
            cached = {}
            for k, start in enumerate(self._from_index.tolist()):
                base = int(self._starts[k])
                for j in range(int(self._lengths[k])):
                    cached[start + j] = base + j
            self.__dict__["_abs_to_rel"] = cached
        return cached

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def fps(self) -> int:
        return self.meta.fps

    def locate(self, idx: int) -> tuple[int, int]:
        """(episode, frame) of position ``idx``."""
        n = len(self)
        if idx < 0:
            idx += n
        if not 0 <= idx < n:
            raise IndexError(f"index {idx} out of range for a dataset of {n} frames")
        k = int(np.searchsorted(self._starts, idx, side="right") - 1)
        return int(self._selected[k]), int(idx - self._starts[k])

    def position_of(self, global_index: int) -> int:
        """The position whose sample has ``index == global_index``."""
        k = np.nonzero(
            (self._from_index <= global_index) & (global_index < self._from_index + self._lengths)
        )[0]
        if not len(k):
            raise IndexError(f"global index {global_index} is not in the selected episodes")
        k0 = int(k[0])
        return int(self._starts[k0] + global_index - self._from_index[k0])

    def _episode(self, episode: int) -> EpisodeData:
        self._own_handles()
        ep = self._episode_cache.get(episode)
        if ep is None:
            if self._tables is None:
                self._tables = TableReader(self.meta, tolerance_s=self.tolerance_s)
            ep = self._tables.read(episode)
            self._episode_cache[episode] = ep
        return ep

    def _camera_frames(self, ep: EpisodeData, key: str, idx: np.ndarray) -> list[np.ndarray]:
        if self.meta.features[key].dtype == "image":
            frames = image_frames(ep, key, idx)
            return [in_layout(f, channels_last=self.channels_last) for f in frames]
        if self._decoders is None:
            n = max(1, len(self.meta.video_keys))
            self._decoders = DecoderCache(
                self.meta.source, capacity=2 * n, backend=self.video_backend
            )
        uniq, inverse = np.unique(idx, return_inverse=True)
        depth = self.meta.features[key].is_depth
        frames = decode_episode_frames(
            self._decoders,
            relative=self.meta.video_file(ep.episode, key),
            camera=key,
            episode=ep.episode,
            from_timestamp=self.meta.video_from_timestamp(ep.episode, key),
            timestamps=ep.timestamps[uniq].astype(np.float64),
            tolerance_s=self.tolerance_s,
            fps=self.meta.fps,
            pixel_format=DEPTH_PIX_FMT if depth else "rgb",
            frame_shape=declared_frame_shape(self.meta.features[key]),
        )
        arr = frames.numpy()
        return [in_layout(arr[i], channels_last=self.channels_last) for i in inverse.reshape(-1)]

    def __getitem__(self, idx: int) -> dict[str, Any]:
        if isinstance(idx, slice):  # LeRobot returns a list for a slice
            return [self[i] for i in range(*idx.indices(len(self)))]
        episode, frame = self.locate(int(idx))
        ep = self._episode(episode)
        return build_sample(
            ep,
            frame,
            meta=self.meta,
            spec=self.window,
            camera_frames=lambda key, i: self._camera_frames(ep, key, i),
            return_uint8=self.return_uint8,
            channels_last=self.channels_last,
            image_transforms=self.image_transforms,
            depth_output_unit=self.depth_output_unit,
        )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_tables"] = state["_decoders"] = None  # re-opened lazily in each worker
        state["_episode_cache"] = {}
        state["_pid"] = None
        return state

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(repo_id={self.repo_id!r}, root={str(self.root)!r}, "
            f"num_episodes={self.num_episodes}, num_frames={self.num_frames}, "
            f"fps={self.fps}, features={list(self.meta.features)})"
        )
