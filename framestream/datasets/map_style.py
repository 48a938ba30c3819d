"""A map-style dataset: random access to any frame of a local (or remote) v3.0 dataset.

It is the reference the streaming dataset is proven against, and useful on its own for local
data. Each ``__getitem__`` seeks and decodes only the frames its window needs, so random
access costs a seek per camera; for training throughput use the streaming dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch

from framestream.decode.video import DecoderCache, decode_episode_frames, resolve_backend
from framestream.format.checks import declared_frame_shape
from framestream.format.meta import DatasetMeta
from framestream.format.selection import select_episodes
from framestream.format.tables import EpisodeData, TableReader, image_frames
from framestream.io.source import Source
from framestream.stream.sample import WindowSpec, build_sample, in_layout


class MapDataset(torch.utils.data.Dataset):
    """Random-access LeRobot v3.0 dataset with LeRobot's sample contract.

    Args:
        root: a local folder or any fsspec URL of the dataset.
        episodes: the episodes to expose (default: all), in this order.
        delta_timestamps: ``{key: [seconds, ...]}`` windows; each delta a multiple of 1/fps.
        tolerance_s: the largest allowed gap between a queried and a decoded timestamp.
        return_uint8: cameras as uint8 instead of float32 in [0, 1].
        image_transforms: applied to each camera tensor of a sample.
        video_backend: ``"torchcodec"``, ``"pyav"`` or None (torchcodec when it loads).
        channels_last: cameras as channels-last views (see ``StreamingLeRobotDataset``).
    """

    def __init__(
        self,
        root: str,
        *,
        episodes: Sequence[int] | None = None,
        delta_timestamps: Mapping[str, Sequence[float]] | None = None,
        tolerance_s: float = 1e-4,
        return_uint8: bool = False,
        image_transforms: Callable[[torch.Tensor], torch.Tensor] | None = None,
        video_backend: Literal["torchcodec", "pyav"] | None = None,
        storage_options: dict[str, Any] | None = None,
        meta: DatasetMeta | None = None,
        channels_last: bool = False,
    ) -> None:
        self.channels_last = channels_last
        self.meta = meta or DatasetMeta(Source(str(root), storage_options or {}))
        self.episodes = select_episodes(self.meta, episodes)
        self.tolerance_s = tolerance_s
        self.return_uint8 = return_uint8
        self.image_transforms = image_transforms
        self.video_backend = resolve_backend(video_backend)
        self.window = WindowSpec.from_delta_timestamps(
            delta_timestamps, meta=self.meta, tolerance_s=tolerance_s
        )
        rows = [self.meta.episodes.row(int(e)) for e in self.episodes]
        self._lengths = self.meta.episodes.length[rows]
        self._starts = np.concatenate([[0], np.cumsum(self._lengths)])
        self._from_index = self.meta.episodes.from_index[rows]
        self._tables: TableReader | None = None
        self._decoders: DecoderCache | None = None
        self._episode_cache: dict[int, EpisodeData] = {}

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
        return int(self.episodes[k]), int(idx - self._starts[k])

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
        frames = decode_episode_frames(
            self._decoders,
            relative=self.meta.video_file(ep.episode, key),
            camera=key,
            episode=ep.episode,
            from_timestamp=self.meta.video_from_timestamp(ep.episode, key),
            timestamps=ep.timestamps[uniq].astype(np.float64),
            tolerance_s=self.tolerance_s,
            fps=self.meta.fps,
            frame_shape=declared_frame_shape(self.meta.features[key]),
        )
        arr = frames.numpy()
        return [in_layout(arr[i], channels_last=self.channels_last) for i in inverse.reshape(-1)]

    def __getitem__(self, idx: int) -> dict[str, Any]:
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
        )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_tables"] = state["_decoders"] = None  # re-opened lazily in each worker
        state["_episode_cache"] = {}
        return state
