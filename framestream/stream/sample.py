"""The sample contract: delta windows, boundary padding and the dict a reader returns.

Both the map-style and the streaming dataset build samples here, from the same inputs (an
episode's tabular arrays and its decoded uint8 frames), so the two cannot drift apart.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from framestream.decode import buffers as _buffers
from framestream.decode.depth import DepthCoding, dequantize
from framestream.decode.planar import to_planar
from framestream.format.meta import DatasetMeta
from framestream.format.tables import EpisodeData


class Interleaved(NamedTuple):
    """(T, H, W, C) uint8 frames as the decoder wrote them, not yet laid out.

    A reader hands a frame over like this when the sample being built is its only user and
    it was decoded for that very sample: it is then deinterleaved once, straight into where
    it lands (the batch slot, or the sample's own memory), instead of into a frame buffer
    first and copied from there (one 230 KB copy and one buffer less per 240x320 frame).
    ``frames`` may view a decode call's output; it is never kept past the sample.
    """

    frames: np.ndarray

    def into(self, out: np.ndarray) -> np.ndarray:
        """Deinterleave the frames into ``out``, (T, C, H, W) uint8 memory of their own."""
        for row, f in zip(out, self.frames, strict=True):
            to_planar(f, row)
        return out


CameraFrames = Sequence[np.ndarray] | np.ndarray | Interleaved


class Sample(dict):
    """A sample: a plain ``dict`` (LeRobot's keys) that torch's ``default_collate`` batches
    with :func:`framestream.collate` (registered in its ``default_collate_fn_map``), so that a
    DataLoader without a ``collate_fn`` gets the reusable worker shared memory too."""

    __slots__ = ()


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


RAW_DTYPES = ("string", "language")  # handed out as the stored Python value


def _to_tensor(value: Any, dtype: str) -> Any:
    """A column value as LeRobot gives it: every float as float32, every integer (signed or
    not) as int64, bool as bool; strings and language rows as the stored Python value."""
    if dtype in RAW_DTYPES:
        return value
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "u":
            value = value.astype(np.int64)  # torch has no uint16/32/64 arithmetic
        t = torch.from_numpy(np.array(value, copy=True))
    else:
        t = torch.as_tensor(value)
    if dtype.startswith("float"):
        return t.to(torch.float32)
    if dtype == "bool":
        return t.to(torch.bool)
    return t.to(torch.int64) if dtype.startswith(("int", "uint")) else t


def typed_column(ep: EpisodeData, key: str, dtype: str) -> np.ndarray | None:
    """``ep``'s column ``key`` in its output dtype, converted once per episode.

    None for columns that are not arrays (strings, image bytes): those convert per sample.
    """
    typed = ep.typed
    if key not in typed:
        value = ep.columns[key]
        typed[key] = _to_tensor(value, dtype).numpy() if isinstance(value, np.ndarray) else None
    return typed[key]


def in_layout(frame: np.ndarray, *, channels_last: bool) -> np.ndarray:
    """An HWC uint8 frame (as decoders give it) viewed in the output's memory order.

    (C, H, W) for contiguous output, (H, W, C) for channels-last. A view, not a copy: a
    reader that keeps frames copies them once, in this order, so that every sample reusing
    a frame costs a memcpy rather than a transposing copy (~3 GB/s against ~20 GB/s here).
    """
    return frame if channels_last else frame.transpose(2, 0, 1)


def stack_frames(frames: CameraFrames, *, channels_last: bool) -> torch.Tensor:
    """Frames in the output's memory order (:func:`in_layout`) into a (T, C, H, W) tensor.

    ``channels_last=False``: contiguous (T, C, H, W). ``channels_last=True``: (T, H, W, C)
    memory returned as a (T, C, H, W) view with channels-last strides, collated with a
    memcpy by :func:`framestream.collate`. A list is copied into a recycled buffer
    (:mod:`framestream.decode.buffers`); a 4-D array is the sample's own memory, used as is.
    """
    if isinstance(frames, Interleaved):  # laid out into a recycled buffer, never kept as is
        t, h, w, c = frames.frames.shape
        tensor = _buffers.take((t, h, w, c) if channels_last else (t, c, h, w))
        if channels_last:
            np.copyto(tensor.numpy(), frames.frames)
        else:
            frames.into(tensor.numpy())
    elif isinstance(frames, np.ndarray):
        tensor = torch.from_numpy(frames)
    elif frames[0].dtype != np.uint8:  # depth codes (uint16): not from the uint8 pool
        tensor = torch.from_numpy(np.stack(frames))
    else:
        tensor = _buffers.take((len(frames), *frames[0].shape))
        np.stack(frames, out=tensor.numpy())
    return tensor.permute(0, 3, 1, 2) if channels_last else tensor


def write_frames(frames: CameraFrames, dest: torch.Tensor, *, return_uint8: bool) -> torch.Tensor:
    """Frames in (C, H, W) order (or :class:`Interleaved`) into ``dest``, the camera's output
    tensor ((T, C, H, W), or (C, H, W) for one frame), as :func:`stack_frames` and
    :func:`image_to_output` would make it: the same values, bit for bit, without the
    sample's own copy."""
    if return_uint8:
        # numpy views of the slot: a torch view per sample and camera cost ~1 % of a worker
        rows = dest.numpy().reshape(-1, *dest.shape[-3:])
        if isinstance(frames, Interleaved):  # deinterleaved straight into the slot: one copy
            frames.into(rows)
        elif isinstance(frames, np.ndarray):
            np.copyto(rows, frames)
        else:
            np.stack(frames, out=rows)
        return dest
    if isinstance(frames, Interleaved):
        t, h, w, c = frames.frames.shape
        frames = frames.into(np.empty((t, c, h, w), dtype=np.uint8))
    for row, f in zip(dest.view(-1, *dest.shape[-3:]), frames, strict=True):
        row.copy_(torch.from_numpy(f))
    dest.div_(255.0)
    return dest


def image_to_output(frames: torch.Tensor, *, return_uint8: bool) -> torch.Tensor:
    """uint8 (N, C, H, W) frames to the output dtype: float32 in [0, 1] unless ``return_uint8``.

    Both keep the input's memory layout (a channels-last view stays channels-last).
    """
    return frames if return_uint8 else frames.to(torch.float32).div_(255.0)


@functools.cache
def _depth_coding(info_items: tuple[tuple[str, Any], ...]) -> DepthCoding:
    return DepthCoding.from_info(dict(info_items))


def _camera_output(
    frames: torch.Tensor, feature: Any, *, return_uint8: bool, depth_output_unit: str
) -> torch.Tensor:
    """Stacked (T, C, H, W) frames of one camera in LeRobot's output type.

    RGB video: float32 in [0, 1], or uint8 with ``return_uint8``. ``image`` (PNG) features:
    always float32 in [0, 1] (LeRobot decodes them with PIL + ToTensor). Depth video: float32
    in ``depth_output_unit`` (``return_uint8`` does not apply).
    """
    if feature.dtype == "video" and feature.is_depth:
        info = tuple(
            sorted(
                (k, v)
                for k, v in feature.info.items()
                if k.startswith("video.") and not isinstance(v, dict | list)
            )
        )
        return dequantize(frames, _depth_coding(info), depth_output_unit)
    return image_to_output(frames, return_uint8=return_uint8 and feature.dtype == "video")


def build_sample(
    ep: EpisodeData,
    frame: int,
    *,
    meta: DatasetMeta,
    spec: WindowSpec,
    camera_frames: Callable[[str, np.ndarray], CameraFrames],
    return_uint8: bool,
    image_transforms: Callable[[torch.Tensor], torch.Tensor] | None,
    channels_last: bool = False,
    depth_output_unit: str = "mm",
    python_scalars: bool = False,
    camera_out: Callable[[str, Mapping[str, Any]], torch.Tensor | None] | None = None,
) -> dict[str, Any]:
    """The sample of ``frame`` of ``ep``, with LeRobot 0.6.1's keys, dtypes and shapes.

    ``camera_frames(key, episode_frame_indices)`` returns the uint8 frames of a camera at
    those (already clamped) indices in the output's memory order (:func:`in_layout`), as a
    list of shared frames (copied into the sample), as one 4-D array that the sample may
    keep (a frame handed over on its last use), or as :class:`Interleaved` frames still to
    be laid out; :func:`stack_frames` lays them out.

    A video key with a one-step window is squeezed to (C, H, W) (LeRobot squeezes the
    decoder's T axis); other keys keep (T, ...) under a window. ``python_scalars`` gives
    scalar features outside a window as Python numbers, as LeRobot's streaming class does
    (its map-style class gives 0-d tensors). ``camera_out(key, sample so far)`` may give the
    memory a plain RGB video camera's tensor is written into (its final shape and dtype,
    contiguous): the batch slot it travels in (:mod:`framestream.batch.arena`).
    """
    out: dict[str, Any] = Sample()
    length = ep.length
    features = meta.features
    for key, value in ep.columns.items():
        dtype = features[key].dtype
        if dtype == "image":
            continue
        col = typed_column(ep, key, dtype)
        if key in spec.offsets:
            idx, pad = window_indices(frame, spec.offsets[key], length)
            # numpy indexing copies: the sample owns its rows and never aliases the episode
            # (a torch clone or gather costs several times more per key and sample).
            out[key] = torch.from_numpy(col[idx]) if col is not None else [value[i] for i in idx]
            out[f"{key}_is_pad"] = torch.from_numpy(pad)
        elif col is not None:
            row = col[frame]
            out[key] = (
                row.item() if python_scalars and row.ndim == 0 else torch.from_numpy(np.array(row))
            )
        else:
            out[key] = _to_tensor(value[frame], dtype)
    current = None  # the one-frame index of cameras without a window, made once
    for key in meta.camera_keys:
        feature = features[key]
        kind = dict(return_uint8=return_uint8, depth_output_unit=depth_output_unit)
        windowed = key in spec.offsets
        if windowed:
            idx, pad = window_indices(frame, spec.offsets[key], length)
        else:
            if current is None:
                current = np.array([frame])
            idx, pad = current, None
        dest = camera_out(key, out) if camera_out is not None else None
        if dest is not None:  # the batch's memory (framestream.batch.arena), in place
            img = write_frames(camera_frames(key, idx), dest, return_uint8=return_uint8)
        else:
            frames = stack_frames(camera_frames(key, idx), channels_last=channels_last)
            img = _camera_output(frames, feature, **kind)
            if not windowed or (feature.dtype == "video" and len(idx) == 1):
                img = img[0]  # LeRobot squeezes a video's one-frame window
        if pad is not None:
            out[f"{key}_is_pad"] = torch.from_numpy(pad)
        if image_transforms is not None and not feature.is_depth:
            img = image_transforms(img)
        out[key] = img
    task_index = int(ep.columns["task_index"][frame])
    out["task"] = meta.task_of(task_index, episode=ep.episode)
    return out
