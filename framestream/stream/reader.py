"""Episode readers: one per open segment, decoding its frames in order, each frame once.

A reader knows, before decoding anything, every sample it still owes (its pending frames)
and therefore every video frame those samples' windows touch, with a reference count. Frames
are decoded sequentially in small chunks when the first sample that needs them is assembled,
shared by every later sample whose window contains them, and released when their count drops
to zero. A frame is decoded twice only if a reader is rebuilt (after a resume), and that is
counted like any other decode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from framestream._errors import FramestreamError
from framestream.decode import buffers as _buffers
from framestream.decode.planar import to_planar
from framestream.decode.video import DEPTH_PIX_FMT, DecoderCache, decode_episode_frames
from framestream.decode.yuv import COLORSPACE_SUFFIX
from framestream.format.checks import declared_frame_shape
from framestream.format.meta import DatasetMeta
from framestream.format.tables import EpisodeData, TableReader, image_frames
from framestream.stream.plan import Segment
from framestream.stream.prefetch import camera_span
from framestream.stream.sample import WindowSpec, build_sample, in_layout


@dataclass
class Counters:
    """What a worker has done; published to :meth:`StreamingLeRobotDataset.stats`."""

    samples: int = 0
    repeated_samples: int = 0
    decoded_frames: int = 0
    delivered_frames: int = 0
    episodes_opened: int = 0
    errors: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class _CameraFrames:
    """Decoded frames of one camera of one reader, with reference counts."""

    def __init__(self, needed: np.ndarray, counts: np.ndarray, offsets: np.ndarray) -> None:
        self.needed = needed  # sorted frame indices some pending sample uses
        # Per episode frame: pending uses. A list: per-sample bookkeeping touches single
        # elements, which costs several times more on a numpy array.
        self.counts: list[int] = counts.tolist()
        self.offsets: list[int] = offsets.tolist()  # this camera's window offsets
        self.next = 0  # position in ``needed`` of the next frame to decode
        self.last = -1  # the highest frame decoded so far
        self.store: dict[int, np.ndarray] = {}  # frames in the output's memory order


class SegmentReader:
    """Produces sample references for a segment and assembles them on request."""

    def __init__(
        self,
        segment: Segment,
        *,
        meta: DatasetMeta,
        spec: WindowSpec,
        tables: TableReader,
        decoders: DecoderCache,
        tolerance_s: float,
        counters: Counters,
        return_uint8: bool,
        image_transforms: Callable[[torch.Tensor], torch.Tensor] | None,
        decode_chunk: int = 16,
        channels_last: bool = False,
        depth_output_unit: str = "mm",
        pixel_format: str = "rgb",
        cursor: int = 0,
        produced_pending: Sequence[int] = (),
    ) -> None:
        self.segment = segment
        self.meta, self.spec, self.decoders = meta, spec, decoders
        self.tolerance_s, self.counters = tolerance_s, counters
        self.return_uint8, self.image_transforms = return_uint8, image_transforms
        self.decode_chunk = decode_chunk
        self.channels_last = channels_last
        self.depth_output_unit = depth_output_unit
        self.yuv: dict[str, int] | None = {} if pixel_format == "yuv420" else None
        try:
            self.ep: EpisodeData = tables.read(segment.episode)
        except FramestreamError as exc:  # name the dataset, like errors of sample()
            raise type(exc)(f"dataset {meta.source.url}: episode {segment.episode}: {exc}") from exc
        pending = np.concatenate(
            [
                np.asarray(list(produced_pending), dtype=np.int64),
                np.arange(segment.start + cursor, segment.stop, dtype=np.int64),
            ]
        )
        self.cameras: dict[str, _CameraFrames] = {}
        for key in meta.video_keys:
            offsets = spec.frame_offsets(key)
            idx = np.clip(pending[:, None] + offsets[None, :], 0, self.ep.length - 1).ravel()
            counts = np.bincount(idx, minlength=self.ep.length)
            self.cameras[key] = _CameraFrames(np.nonzero(counts)[0], counts, offsets)
        self.window_frames = sum(len(spec.frame_offsets(k)) for k in meta.camera_keys)
        counters.episodes_opened += 1

    # --------------------------------------------------------------- assembling
    def _ensure(self, cam: _CameraFrames, key: str, upto: int) -> None:
        if upto <= cam.last:
            return
        stop = int(cam.needed.searchsorted(upto, side="right"))
        stop = max(stop, min(len(cam.needed), cam.next + self.decode_chunk))
        todo = cam.needed[cam.next : stop]
        if len(todo) == 0:  # every needed frame is decoded already
            return
        relative = self.meta.video_file(self.ep.episode, key)
        from_ts = self.meta.video_from_timestamp(self.ep.episode, key)
        depth = self.meta.features[key].is_depth
        frames = decode_episode_frames(
            self.decoders,
            relative=relative,
            camera=key,
            episode=self.ep.episode,
            from_timestamp=from_ts,
            timestamps=self.ep.timestamps[todo].astype(np.float64),
            tolerance_s=self.tolerance_s,
            fps=self.meta.fps,
            pixel_format=(
                DEPTH_PIX_FMT if depth else "rgb" if self.yuv is None else "yuv420"
            ),
            span=self._span(cam, from_ts),
            frame_shape=declared_frame_shape(self.meta.features[key]),
        )
        arr = frames.numpy()
        if self.yuv is not None and not depth:  # I420 (H*3/2, W) frames, kept as they are
            span = self._span(cam, from_ts)
            self.yuv[key] = self.decoders.colorspace(relative, span=span) or 2
            shape = arr.shape[1:]
        else:
            h, w, c = arr.shape[1:]
            shape = (h, w, c) if self.channels_last else (c, h, w)
        for i, f in enumerate(todo.tolist()):
            # Own (recycled) memory per frame, so a chunk is freed frame by frame, laid out
            # once in the output's memory order for every sample that reuses the frame.
            own = (
                _buffers.take(shape).numpy()
                if arr.dtype == np.uint8
                else np.empty(shape, dtype=arr.dtype)  # depth codes (uint16)
            )
            if self.channels_last or (self.yuv is not None and not depth):
                own[...] = arr[i]
            else:
                to_planar(arr[i], own)
            cam.store[f] = own
        cam.next = stop
        cam.last = int(todo[-1])
        self.counters.decoded_frames += len(todo)

    def _span(self, cam: _CameraFrames, from_ts: float) -> tuple[float, float] | None:
        """Seconds of the camera's file this reader decodes (remote ``fetch="ranges"``: its
        decoder fetches only their bytes); the same span prefetch computes."""
        if not self.meta.source.fetches_ranges or not len(cam.needed):
            return None
        return camera_span(
            from_ts,
            self.meta.fps,
            int(cam.needed[0]),
            int(cam.needed[-1]),
            self.decoders.backend,
        )

    def _frames(self, key: str, idx: np.ndarray) -> list[np.ndarray] | np.ndarray:
        if self.meta.features[key].dtype == "image":
            frames = image_frames(self.ep, key, idx)
            return [in_layout(f, channels_last=self.channels_last) for f in frames]
        cam = self.cameras[key]
        if len(idx) == 1:
            f = int(idx[0])
            self._ensure(cam, key, f)
            if cam.counts[f] == 1:
                # This sample is the frame's last user: hand the frame over, no copy.
                return cam.store.pop(f)[None]
            return [cam.store[f]]
        self._ensure(cam, key, int(idx.max()))
        return [cam.store[int(i)] for i in idx]

    def _release(self, frame: int) -> None:
        last = self.ep.length - 1
        for cam in self.cameras.values():
            counts, store = cam.counts, cam.store
            for off in cam.offsets:
                i = min(max(frame + off, 0), last)
                counts[i] -= 1
                if counts[i] <= 0:
                    store.pop(i, None)

    def sample(self, frame: int) -> dict[str, Any]:
        """Assemble the sample of ``frame`` and release the frames only it still needed."""
        try:
            out = self._build(frame)
        except FramestreamError as exc:
            raise type(exc)(
                f"dataset {self.meta.source.url}: episode {self.ep.episode}, frame {frame}: {exc}"
            ) from exc
        self._release(frame)
        for key, cs in (self.yuv or {}).items():  # for framestream.yuv_to_rgb
            out[key + COLORSPACE_SUFFIX] = torch.tensor(cs)
        c = self.counters
        c.samples += 1
        c.delivered_frames += self.window_frames
        if self.segment.repeat:
            c.repeated_samples += 1
        return out

    def _build(self, frame: int) -> dict[str, Any]:
        return build_sample(
            self.ep,
            frame,
            meta=self.meta,
            spec=self.spec,
            camera_frames=self._frames,
            return_uint8=self.return_uint8,
            channels_last=self.channels_last,
            image_transforms=self.image_transforms,
            depth_output_unit=self.depth_output_unit,
            python_scalars=True,
        )
