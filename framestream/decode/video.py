"""Video decoding: two backends behind one small interface, and an LRU cache of open decoders.

``torchcodec`` is the default (fast, exact seeking, sequential reads without re-seeking);
``pyav`` is the fallback when torchcodec cannot load (for example no system FFmpeg), chosen
automatically or by ``video_backend=``. Both return uint8 ``(N, C, H, W)`` frames and their
presentation times, so the caller can check every frame against its query.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Literal, Protocol

import numpy as np
import torch

from framestream._errors import TimestampToleranceError, VideoDecodeError
from framestream.decode.memory import prepare_decoding_process
from framestream.format import checks
from framestream.io.cache import CachedFile
from framestream.io.mp4boxes import Mp4Error
from framestream.io.remote import RangeNotSupportedError
from framestream.io.source import Source

VideoBackend = Literal["torchcodec", "pyav"]
PixelFormat = Literal["rgb", "yuv420", "gray12le"]


@functools.cache
def torchcodec_available() -> bool:
    """Whether torchcodec and the FFmpeg libraries it links against can be loaded."""
    try:
        from torchcodec.decoders import VideoDecoder  # noqa: F401
    except Exception:  # ImportError, or OSError/RuntimeError when FFmpeg is missing
        return False
    return True


def resolve_backend(backend: str | None) -> VideoBackend:
    """``None`` picks torchcodec when it loads, else PyAV."""
    if backend is None:
        return "torchcodec" if torchcodec_available() else "pyav"
    if backend not in ("torchcodec", "pyav"):
        raise ValueError(f"video_backend must be 'torchcodec', 'pyav' or None, got {backend!r}")
    if backend == "torchcodec" and not torchcodec_available():
        raise VideoDecodeError(
            "video_backend='torchcodec' was asked for but torchcodec cannot load "
            "(is FFmpeg installed?); use video_backend='pyav' or None"
        )
    return backend


class VideoFile(Protocol):
    """An open video whose frames are fetched by presentation time."""

    def frames_at(self, seconds: Sequence[float]) -> tuple[torch.Tensor, np.ndarray]:
        """Frames shown at ``seconds`` (ascending) as uint8 NHWC, and their pts in seconds.

        NHWC is what decoders produce; channels are moved to the front only as a view when a
        sample is assembled, so no per-frame transposing copy is made here.
        """
        ...

    def close(self) -> None: ...


class _TorchcodecFile:
    def __init__(self, src: Any, threads: int) -> None:
        from torchcodec.decoders import VideoDecoder

        mappings = getattr(src, "frame_mappings", None)  # ranged: exact without a scan
        kw: dict[str, Any] = (
            {"custom_frame_mappings": mappings} if mappings else {"seek_mode": "exact"}
        )
        self._dec = VideoDecoder(src, num_ffmpeg_threads=threads, dimension_order="NHWC", **kw)
        self._src = src

    def frames_at(self, seconds: Sequence[float]) -> tuple[torch.Tensor, np.ndarray]:
        # A float64 tensor as is: torchcodec converts a list with torch.tensor (~2 % of a
        # single-frame worker's time)
        batch = self._dec.get_frames_played_at(
            seconds=torch.from_numpy(np.asarray(seconds, dtype=np.float64))
        )
        return batch.data, batch.pts_seconds.double().numpy()

    def close(self) -> None:
        self._dec = None
        if hasattr(self._src, "close"):
            self._src.close()


class _PyAVFile:
    """Sequential-friendly PyAV reader: seeks only when a query is behind or far ahead."""

    _MAX_FORWARD_S = 2.0  # decode forward instead of seeking when the target is this close
    _EPS = 1e-6

    def __init__(self, src: Any, threads: int, pix_fmt: str = "rgb24") -> None:
        import av

        self._pix_fmt = pix_fmt
        self._container = av.open(src)
        self._stream = self._container.streams.video[0]
        self._stream.thread_count = max(1, threads)
        self._tb = float(self._stream.time_base)
        self._frames: Any = None  # generator of (pts_s, av.VideoFrame)
        self._cur: Any = None  # last frame with pts <= the last query
        self._ahead: Any = None  # a frame already decoded past the last query
        self._src = src

    def _decode(self):
        for frame in self._container.decode(self._stream):
            yield float(frame.pts * self._tb), frame

    def _seek(self, t: float) -> None:
        self._container.seek(max(0, int(t / self._tb) - 1), stream=self._stream, backward=True)
        self._frames, self._cur, self._ahead = self._decode(), None, None

    def _frame_at(self, t: float) -> tuple[float, Any]:
        known = self._cur or self._ahead
        if (
            self._frames is None
            or known is None
            or (self._cur is not None and t < self._cur[0] - self._EPS)
            or (self._cur is None and t < self._ahead[0] - self._EPS)
            or t > known[0] + self._MAX_FORWARD_S
        ):
            self._seek(t)
            self._advance(t)
            # With B-frames (decode order differs from display order) a seek can land on a
            # keyframe shown *after* t: step back until a frame at or before t comes out.
            back = 1.0
            while self._cur is None and self._ahead is not None and t > 0:
                self._seek(max(0.0, t - back))
                self._advance(t)
                if t - back <= 0:
                    break
                back *= 4
        else:
            self._advance(t)
        found = self._cur or self._ahead
        if found is None:
            raise VideoDecodeError(f"no frame decodable at {t:.6f}s")
        return found

    def _advance(self, t: float) -> None:
        """Decode forward until the next frame is after ``t``."""
        while True:
            if self._ahead is None:
                self._ahead = next(self._frames, None)
                if self._ahead is None:
                    break
            if self._ahead[0] <= t + self._EPS:
                self._cur, self._ahead = self._ahead, None
            else:
                break

    def frames_at(self, seconds: Sequence[float]) -> tuple[torch.Tensor, np.ndarray]:
        out, pts = [], []
        for t in seconds:
            p, frame = self._frame_at(float(t))
            arr = frame.to_ndarray(format=self._pix_fmt)
            out.append(arr[..., None] if arr.ndim == 2 else arr)  # gray: (H, W, 1)
            pts.append(p)
        data = torch.from_numpy(np.stack(out))
        return data, np.asarray(pts, dtype=np.float64)

    def close(self) -> None:
        self._frames = None
        self._container.close()
        if hasattr(self._src, "close"):
            self._src.close()


DEPTH_PIX_FMT = "gray12le"  # LeRobot's depth videos: 12-bit codes, decoded by PyAV only


def open_video(
    source: Source,
    relative: str,
    *,
    backend: VideoBackend,
    threads: int = 1,
    pixel_format: PixelFormat = "rgb",
    span: tuple[float, float] | None = None,
) -> VideoFile:
    """Open ``relative`` for decoding; a missing or unreadable file raises VideoDecodeError.

    ``pixel_format="yuv420"`` decodes with PyAV whatever ``backend`` says (torchcodec has no
    YUV output) and returns I420 frames (:mod:`framestream.decode.yuv`).
    ``pixel_format="gray12le"`` (depth, as LeRobot decodes it) decodes with PyAV into
    ``(N, H, W, 1)`` uint16 12-bit codes. ``span`` (seconds of the file): with a source that
    fetches byte ranges, only what decoding the frames shown in it needs is fetched
    (:mod:`framestream.io.spans`); the decoder must then not be asked for frames outside it.
    """
    where = source.describe(relative)
    prepare_decoding_process()  # malloc settings, once per DataLoader worker
    pin: Any = None
    try:
        src: Any = _ranged_source(source, relative, span) if span is not None else None
        if isinstance(src, CachedFile):  # whole in the cache already, or no Range support
            pin, src = src, src.path
        elif src is None:
            # A remote file is read from its cached copy, pinned (never evicted) while open.
            pin = source.pin(relative)
            local = pin.path if pin is not None else None
            src = local if local is not None else source.open(relative)
    except FileNotFoundError as exc:
        raise VideoDecodeError(f"{where}: video file not found") from exc
    if source.is_local and not source.exists(relative):
        raise VideoDecodeError(f"{where}: video file not found")
    try:
        if pixel_format == "gray12le":
            video: VideoFile = _PyAVFile(src, threads, "gray12le")
        elif pixel_format == "yuv420":
            from framestream.decode.yuv_video import PyAVYuvFile

            video = PyAVYuvFile(_PyAVFile(src, threads))
        elif backend == "torchcodec":
            video = _TorchcodecFile(src, threads)
        else:
            video = _PyAVFile(src, threads)
    except VideoDecodeError:
        if pin is not None:
            pin.release()
        raise
    except Exception as exc:  # FFmpeg errors surface as RuntimeError/ValueError/av.error.*
        if hasattr(src, "close"):
            src.close()
        if pin is not None:
            pin.release()
        raise VideoDecodeError(f"{where}: cannot open video ({type(exc).__name__}: {exc})") from exc
    return _PinnedVideo(video, pin) if pin is not None and not source.is_local else video


def _ranged_source(source: Source, relative: str, span: tuple[float, float]) -> Any:
    """A RangedFile of ``span``, a pinned whole cached copy, or None (not ranged here)."""
    if not source.fetches_ranges:
        return None
    whole = source.cached_whole(relative)
    if whole is not None:
        return whole
    try:
        return source.spans.open_span(relative, span)
    except RangeNotSupportedError as exc:
        return source.whole_instead_of_ranges(relative, exc)
    except Mp4Error:
        return None  # not an mp4 we can index (fragmented...): the whole file, as before


class _PinnedVideo:
    """A decoder over a cached remote file; closing it unpins the file."""

    def __init__(self, video: VideoFile, pin: Any) -> None:
        self._video, self._pin = video, pin

    def frames_at(self, seconds: Sequence[float]) -> tuple[torch.Tensor, np.ndarray]:
        return self._video.frames_at(seconds)

    @property
    def colorspace(self) -> int | None:
        return getattr(self._video, "colorspace", None)

    def close(self) -> None:
        try:
            self._video.close()
        finally:
            self._pin.release()


def _key(
    source: Source,
    relative: str,
    span: tuple[float, float] | None,
    pixel_format: str = "rgb",
) -> str:
    """One decoder per file (whole files, shared by its episodes) or per open episode span
    (byte ranges), and per pixel format."""
    base = relative
    if span is not None and source.fetches_ranges:
        base = f"{relative}@{span[0]!r}-{span[1]!r}"
    return base if pixel_format == "rgb" else f"{base}|{pixel_format}"


class DecoderCache:
    """LRU of open decoders keyed by video file, with hit/miss/eviction counters.

    Episodes of one camera share an mp4 file, so consecutive episodes reuse one decoder
    (a hit) instead of re-opening and re-indexing the file. Size it to at least the number of
    files read concurrently (active episodes x cameras); below that, decoders thrash and the
    eviction counter climbs.
    """

    def __init__(self, source: Source, *, capacity: int, backend: VideoBackend, threads: int = 1):
        if capacity < 1:
            raise ValueError(f"video_decoder_cache_size must be >= 1, got {capacity}")
        self.source, self.capacity, self.backend, self.threads = source, capacity, backend, threads
        self._open: OrderedDict[str, VideoFile] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = 0

    def get(
        self,
        relative: str,
        pixel_format: PixelFormat = "rgb",
        span: tuple[float, float] | None = None,
    ) -> VideoFile:
        """The open decoder of ``relative`` (of its ``span`` with a ranged source: one per
        open episode span; see :func:`open_video`)."""
        key = _key(self.source, relative, span, pixel_format)
        with self._lock:
            dec = self._open.get(key)
            if dec is not None:
                self.hits += 1
                self._open.move_to_end(key)
                return dec
            self.misses += 1
        dec = open_video(
            self.source,
            relative,
            backend=self.backend,
            threads=self.threads,
            pixel_format=pixel_format,
            span=span if _key(self.source, relative, span) != relative else None,
        )
        with self._lock:
            self._open[key] = dec
            while len(self._open) > self.capacity:
                _, old = self._open.popitem(last=False)
                old.close()
                self.evictions += 1
        return dec

    def colorspace(
        self,
        relative: str,
        pixel_format: PixelFormat = "yuv420",
        span: tuple[float, float] | None = None,
    ) -> int | None:
        """The ``AVColorSpace`` an open YUV decoder of ``relative`` found (None: not known)."""
        with self._lock:
            dec = self._open.get(_key(self.source, relative, span, pixel_format))
        return getattr(dec, "colorspace", None)

    def discard(
        self,
        relative: str,
        pixel_format: PixelFormat = "rgb",
        span: tuple[float, float] | None = None,
    ) -> None:
        """Close and drop a decoder (after an error, so a broken one is not reused)."""
        with self._lock:
            dec = self._open.pop(_key(self.source, relative, span, pixel_format), None)
        if dec is not None:
            dec.close()

    def close(self) -> None:
        with self._lock:
            items, self._open = list(self._open.values()), OrderedDict()
        for dec in items:
            dec.close()

    def stats(self) -> dict[str, int | float]:
        lookups = self.hits + self.misses
        return {
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
            "lookups": lookups,
            "hit_rate": self.hits / lookups if lookups else 0.0,
            "open": len(self._open),
            "capacity": self.capacity,
        }


def decode_episode_frames(
    cache: DecoderCache,
    *,
    relative: str,
    camera: str,
    episode: int,
    from_timestamp: float,
    timestamps: np.ndarray,
    tolerance_s: float,
    fps: float,
    pixel_format: PixelFormat = "rgb",
    span: tuple[float, float] | None = None,
    frame_shape: tuple[int, int, int] | None = None,
) -> torch.Tensor:
    """Decode the frames at episode-relative ``timestamps`` (ascending) of one camera.

    The query is file-relative: ``from_timestamp + timestamp`` in that camera's own file.
    Every decoded frame is checked against its query; a frame further than ``tolerance_s``
    raises instead of being silently substituted. The decoder is asked for the frame shown
    slightly after the query (by ``min(tolerance_s, 0.5 / fps)``) so that float32 rounding of
    stored timestamps, a hair before a frame's start, still selects that frame.

    The frame asked for is frame ``round(query * fps)`` of the file, as LeRobot picks it: a
    large ``tolerance_s`` accepts a query between two frames, and the nearer frame (ties to
    the even one, like Python's ``round``) is the one returned, never an arbitrary neighbour.
    ``pixel_format="yuv420"``: I420 ``(N, H*3/2, W)`` frames instead of RGB ``(N, H, W, 3)``.
    ``frame_shape`` (the declared height, width, channels) refuses frames of another size:
    delivered, they would mix sizes in a batch (or crash its collation far from the cause).
    """
    query = from_timestamp + np.asarray(timestamps, dtype=np.float64)
    snapped = np.rint(query * fps) / fps  # np.round's rounding (half to even), without its wrapper
    nudge = min(tolerance_s, 0.25 / fps)  # inside the snapped frame, past rounding noise
    try:
        dec = cache.get(relative, pixel_format, span)
    except VideoDecodeError as exc:
        raise VideoDecodeError(f"{exc} (camera {camera!r}, episode {episode})") from exc
    try:
        data, pts = dec.frames_at(snapped + nudge)  # float64 seconds, as torchcodec takes them
    except VideoDecodeError as exc:
        cache.discard(relative, pixel_format, span)
        raise VideoDecodeError(
            f"{cache.source.describe(relative)}: camera {camera!r}, episode {episode}: {exc}"
        ) from exc
    except Exception as exc:
        cache.discard(relative, pixel_format, span)
        raise VideoDecodeError(
            f"{cache.source.describe(relative)}: camera {camera!r}, episode {episode}: decoding "
            f"frames at {query[0]:.4f}..{query[-1]:.4f}s failed ({type(exc).__name__}: {exc})"
        ) from exc
    diff = np.abs(pts - query)
    if diff.size and diff.max() > tolerance_s:
        i = int(np.nonzero(diff > tolerance_s)[0][0])
        raise TimestampToleranceError(
            f"{cache.source.describe(relative)}: camera {camera!r}, episode {episode}: "
            f"query at {query[i]:.6f}s (episode timestamp {float(timestamps[i]):.6f}s) decoded "
            f"a frame at {pts[i]:.6f}s, {diff[i]:.6f}s away (tolerance_s={tolerance_s}); "
            "the video and the episode index disagree"
        )
    shape = tuple(data.shape[1:])
    if pixel_format == "yuv420":  # I420 (H*3/2, W): the RGB frame it stands for is (H, W, 3)
        shape = (shape[0] * 2 // 3, shape[1], 3)
    wrong = checks.frame_size(shape, frame_shape)
    if wrong is not None:
        raise VideoDecodeError(
            f"{cache.source.describe(relative)}: camera {camera!r}, episode {episode}: {wrong}"
        )
    return data
