"""Episode readers: one per open segment, decoding its frames in order, each frame once.

Which frames to decode and when to free them is the schedule's
:class:`~framestream.stream.ledger.SegmentLedger` (every video frame the pending samples'
windows touch, with a reference count): frames are decoded sequentially in small chunks when
the first sample that needs them leaves, shared by every later sample whose window contains
them, and released when their count drops to zero. The reader only stores the pixels the
ledger says it holds, so the schedule's memory accounting is exact. A frame is decoded twice
only if a reader is rebuilt (after a resume, the frames its ledger still holds), and that is
counted like any other decode.
"""

from __future__ import annotations

from collections.abc import Callable
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
from framestream.stream.ledger import SegmentLedger, Step
from framestream.stream.plan import Segment
from framestream.stream.prefetch import camera_span
from framestream.stream.sample import CameraFrames, Interleaved, WindowSpec, build_sample, in_layout


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
    """Decoded frames of one camera of one reader (the ledger's camera ``index``)."""

    def __init__(self, index: int, needed: np.ndarray, direct: bool) -> None:
        self.index = index
        self.needed = needed  # sorted frame indices some pending sample uses (the span)
        # frames in the output's memory order, or Interleaved (see SegmentReader._ensure)
        self.store: dict[int, np.ndarray | Interleaved] = {}
        # One-frame window, uint8 RGB in contiguous layout: a frame whose only user is the
        # sample being built may reach it as decoded (Interleaved) when it has a batch slot.
        self.direct = direct
        self.restored = False  # frames the ledger held before this reader existed decoded
        self.query: dict[str, Any] | None = None  # decode_episode_frames' fixed arguments


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
        channels_last: bool = False,
        depth_output_unit: str = "mm",
        pixel_format: str = "rgb",
        ledger: SegmentLedger,
        camera_out: Callable[[str, Any], torch.Tensor | None] | None = None,
    ) -> None:
        self.segment = segment
        self.meta, self.spec, self.decoders = meta, spec, decoders
        self.tolerance_s, self.counters = tolerance_s, counters
        self.return_uint8, self.image_transforms = return_uint8, image_transforms
        self.channels_last = channels_last
        self.depth_output_unit = depth_output_unit
        self.yuv: dict[str, int] | None = {} if pixel_format == "yuv420" else None
        try:
            self.ep: EpisodeData = tables.read(segment.episode)
        except FramestreamError as exc:  # name the dataset, like errors of sample()
            raise type(exc)(f"dataset {meta.source.url}: episode {segment.episode}: {exc}") from exc
        self.ledger = ledger
        self.camera_out = camera_out
        rgb_uint8 = return_uint8 and not channels_last and self.yuv is None
        self.cameras = {
            key: _CameraFrames(
                i,
                ledger.cameras[i].needed,
                direct=rgb_uint8
                and len(spec.frame_offsets(key)) == 1
                and not meta.features[key].is_depth,
            )
            for i, key in enumerate(meta.video_keys)
        }
        self.window_frames = sum(len(spec.frame_offsets(k)) for k in meta.camera_keys)
        counters.episodes_opened += 1

    # --------------------------------------------------------------- assembling
    def _ensure(self, cam: _CameraFrames, key: str, step: Step) -> None:
        """Decode what the ledger's step says (and, first, what a rebuilt reader lacks)."""
        todo = step.decode[cam.index]
        if not cam.restored:
            cam.restored = True
            fresh = set(todo.tolist())
            # Held before this step: still counted, or freed by this very sample.
            held = self.ledger.held_frames(cam.index) + step.release[cam.index]
            missing = [f for f in held if f not in cam.store and f not in fresh]
            if missing:
                todo = np.unique(np.concatenate([np.asarray(missing, dtype=np.int64), todo]))
        if len(todo) == 0:  # every needed frame is decoded already
            return
        query = cam.query
        if query is None:  # the same for every call of this reader
            from_ts = self.meta.video_from_timestamp(self.ep.episode, key)
            query = cam.query = dict(
                relative=self.meta.video_file(self.ep.episode, key),
                camera=key,
                episode=self.ep.episode,
                from_timestamp=from_ts,
                tolerance_s=self.tolerance_s,
                fps=self.meta.fps,
                pixel_format=self._pixel_format(key),
                span=self._span(cam, from_ts),
                frame_shape=declared_frame_shape(self.meta.features[key]),
            )
        frames = decode_episode_frames(
            self.decoders, timestamps=self.ep.timestamps[todo].astype(np.float64), **query
        )
        arr = frames.numpy()
        depth = self.meta.features[key].is_depth
        if self.yuv is not None and not depth:  # I420 (H*3/2, W) frames, kept as they are
            self.yuv[key] = self.decoders.colorspace(query["relative"], span=query["span"]) or 2
            shape = arr.shape[1:]
        else:
            h, w, c = arr.shape[1:]
            shape = (h, w, c) if self.channels_last else (c, h, w)
        # A frame whose only user is the sample being built, written into a batch slot: kept
        # as decoded, to be deinterleaved straight into the slot (sample.Interleaved). It
        # dies with this sample, within this call: the ledger's count of it is unchanged.
        direct = cam.direct and self.camera_out is not None and arr.dtype == np.uint8
        release = step.release[cam.index] if direct else ()
        for i, f in enumerate(todo.tolist()):
            if f in release:
                cam.store[f] = Interleaved(arr[i : i + 1])
                continue
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
        self.counters.decoded_frames += len(todo)

    def open_decoders(self) -> None:
        """Open (in the decoder cache) the decoder each camera will read, decoding nothing."""
        for key, cam in self.cameras.items():
            if not len(cam.needed):
                continue
            from_ts = self.meta.video_from_timestamp(self.ep.episode, key)
            self.decoders.get(
                self.meta.video_file(self.ep.episode, key),
                self._pixel_format(key),
                self._span(cam, from_ts),
            )

    def _pixel_format(self, key: str) -> str:
        if self.meta.features[key].is_depth:
            return DEPTH_PIX_FMT
        return "rgb" if self.yuv is None else "yuv420"

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

    def _frames(self, key: str, idx: np.ndarray) -> CameraFrames:
        if self.meta.features[key].dtype == "image":
            frames = image_frames(self.ep, key, idx)
            return [in_layout(f, channels_last=self.channels_last) for f in frames]
        cam = self.cameras[key]
        step = self._step
        if len(idx) == 1:
            f = int(idx[0])
            if f in step.release[cam.index]:
                # This sample is the frame's last user: hand the frame over, no copy.
                own = cam.store.pop(f)
                return own if isinstance(own, Interleaved) else own[None]
            return [cam.store[f]]
        return [cam.store[int(i)] for i in idx]

    def _release(self, step: Step) -> None:
        for cam in self.cameras.values():
            store = cam.store
            for i in step.release[cam.index]:
                store.pop(i, None)

    def sample(self, frame: int) -> dict[str, Any]:
        """Assemble the sample of ``frame`` (which the ledger has just let leave) and free
        the frames only it still needed."""
        step = self.ledger.step
        if step is None or step.frame != frame:
            raise RuntimeError(f"reader of episode {self.ep.episode}: frame {frame} not emitted")
        self._step = step
        try:
            for key, cam in self.cameras.items():
                self._ensure(cam, key, step)
            out = self._build(frame)
        except FramestreamError as exc:
            raise type(exc)(
                f"dataset {self.meta.source.url}: episode {self.ep.episode}, frame {frame}: {exc}"
            ) from exc
        self._release(step)
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
            camera_out=self.camera_out,
        )
