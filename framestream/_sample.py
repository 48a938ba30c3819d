"""The sample contract: delta windows, boundary padding and the dict a reader returns.

Both the map-style and the streaming dataset build samples here, from the same inputs (an
episode's tabular arrays and its decoded uint8 frames), so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from framestream._meta import DatasetMeta
from framestream._tabular import EpisodeData

INT_SCALARS = ("index", "episode_index", "frame_index", "task_index")


@dataclass(frozen=True)
class WindowSpec:
    """Integer frame offsets per key, from ``delta_timestamps``.

    ``lookback``/``lookahead`` are the furthest offsets in each direction over all keys: a
    reader keeps ``lookback + 1`` frames of history and decodes ``lookahead`` frames ahead.
    There is no fixed ceiling; a 241-frame window is sized like a 2-frame one.
    """

    offsets: Mapping[str, np.ndarray]

    @property
    def lookback(self) -> int:
        return max([0] + [int(-o.min()) for o in self.offsets.values() if len(o)])

    @property
    def lookahead(self) -> int:
        return max([0] + [int(o.max()) for o in self.offsets.values() if len(o)])

    def frame_offsets(self, key: str) -> np.ndarray:
        """The offsets of ``key``; a key without a window reads only the current frame."""
        return self.offsets.get(key, _ZERO)

    @classmethod
    def from_delta_timestamps(
        cls,
        delta_timestamps: Mapping[str, Sequence[float]] | None,
        *,
        meta: DatasetMeta,
        tolerance_s: float,
    ) -> WindowSpec:
        if not delta_timestamps:
            return cls({})
        offsets: dict[str, np.ndarray] = {}
        for key, deltas in delta_timestamps.items():
            if key not in meta.features:
                raise ValueError(
                    f"delta_timestamps key {key!r} is not a feature of the dataset "
                    f"(features: {sorted(meta.features)})"
                )
            d = np.asarray(list(deltas), dtype=np.float64)
            if d.ndim != 1 or len(d) == 0:
                raise ValueError(f"delta_timestamps[{key!r}] must be a non-empty list of seconds")
            frames = d * meta.fps
            rounded = np.round(frames)
            off = np.abs(frames - rounded) / meta.fps
            if np.any(off > tolerance_s):
                i = int(np.argmax(off))
                raise ValueError(
                    f"delta_timestamps[{key!r}] = {d[i]!r}s is not a multiple of 1/fps "
                    f"(fps={meta.fps}) within tolerance_s={tolerance_s}"
                )
            offsets[key] = rounded.astype(np.int64)
        return cls(offsets)


_ZERO = np.zeros(1, dtype=np.int64)


def window_indices(frame: int, offsets: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Episode frame indices for a window (clamped into the episode) and the pad mask."""
    raw = frame + offsets
    return np.clip(raw, 0, length - 1), (raw < 0) | (raw >= length)


def _to_tensor(value: Any, dtype: str) -> Any:
    if dtype == "string":
        return value
    if isinstance(value, np.ndarray):
        t = torch.from_numpy(np.array(value, copy=True))
    else:
        t = torch.as_tensor(value)
    if dtype == "float64":
        return t.to(torch.float64)
    if dtype.startswith("float"):
        return t.to(torch.float32)
    if dtype == "bool":
        return t.to(torch.bool)
    return t.to(torch.int64) if dtype.startswith("int") else t


def stack_chw(frames: Sequence[np.ndarray]) -> torch.Tensor:
    """HWC uint8 frames (as decoders give them) into one contiguous (T, C, H, W) tensor.

    One transposing copy per frame, with numpy (single-threaded: torch's copy goes through
    intra-op threads that stall on a machine with more processes than cores). Contiguous
    output keeps the DataLoader's collate a plain memcpy instead of a strided gather.
    """
    first = frames[0]
    out = np.empty((len(frames), first.shape[2], first.shape[0], first.shape[1]), np.uint8)
    for t, f in enumerate(frames):
        out[t] = f.transpose(2, 0, 1)
    return torch.from_numpy(out)


def stack_frames(frames: Sequence[np.ndarray], *, channels_last: bool) -> torch.Tensor:
    """HWC uint8 frames into a (T, C, H, W) tensor.

    ``channels_last=False``: contiguous, one transposing copy per frame (:func:`stack_chw`).
    ``channels_last=True``: a plain memcpy per frame into (T, H, W, C) memory, returned as a
    (T, C, H, W) view with channels-last strides; several times cheaper for long windows,
    and collated with one more memcpy by :func:`framestream.collate`.
    """
    if channels_last:
        return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)
    return stack_chw(frames)


def image_to_output(frames: torch.Tensor, *, return_uint8: bool) -> torch.Tensor:
    """uint8 (N, C, H, W) frames to the output dtype: float32 in [0, 1] unless ``return_uint8``.

    Both keep the input's memory layout (a channels-last view stays channels-last).
    """
    return frames if return_uint8 else frames.to(torch.float32).div_(255.0)


def build_sample(
    ep: EpisodeData,
    frame: int,
    *,
    meta: DatasetMeta,
    spec: WindowSpec,
    camera_frames: Callable[[str, np.ndarray], Sequence[np.ndarray]],
    return_uint8: bool,
    image_transforms: Callable[[torch.Tensor], torch.Tensor] | None,
    channels_last: bool = False,
) -> dict[str, Any]:
    """The sample of ``frame`` of ``ep``.

    ``camera_frames(key, episode_frame_indices)`` returns the uint8 HWC frames of a camera at
    those (already clamped) indices; :func:`stack_frames` lays them out.
    """
    out: dict[str, Any] = {}
    length = ep.length
    for key, value in ep.columns.items():
        feat = meta.features[key]
        if feat.dtype == "image":
            continue
        if key in spec.offsets:
            idx, pad = window_indices(frame, spec.offsets[key], length)
            if isinstance(value, np.ndarray):
                out[key] = _to_tensor(value[idx], feat.dtype)
            else:
                out[key] = [value[i] for i in idx]
            out[f"{key}_is_pad"] = torch.from_numpy(pad)
        else:
            v = value[frame]
            out[key] = _to_tensor(v, feat.dtype)
    for key in meta.camera_keys:
        if key in spec.offsets:
            idx, pad = window_indices(frame, spec.offsets[key], length)
            frames = stack_frames(camera_frames(key, idx), channels_last=channels_last)
            img = image_to_output(frames, return_uint8=return_uint8)
            out[f"{key}_is_pad"] = torch.from_numpy(pad)
        else:
            frames = stack_frames(
                camera_frames(key, np.array([frame])), channels_last=channels_last
            )
            img = image_to_output(frames, return_uint8=return_uint8)[0]
        if image_transforms is not None:
            img = image_transforms(img)
        out[key] = img
    task_index = int(ep.columns["task_index"][frame])
    out["task"] = meta.task_of(task_index, episode=ep.episode)
    return out
