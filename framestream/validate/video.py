"""The video checks of ``framestream validate``: ranges, containers, packets, codecs, and
decoding each episode's first and last frame (see :mod:`framestream.validate.dataset`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from framestream._errors import VideoDecodeError
from framestream.decode.video import DecoderCache, decode_episode_frames
from framestream.format import checks
from framestream.format.checks import declared_frame_shape
from framestream.validate.report import Checker
from framestream.validate.report import episodes_text as _episodes_text

# Encoder and decoder names that mean the same bitstream format.
_CODEC_ALIASES = {
    "libsvtav1": "av1",
    "libaom-av1": "av1",
    "libdav1d": "av1",
    "librav1e": "av1",
    "libx264": "h264",
    "avc": "h264",
    "avc1": "h264",
    "libx265": "hevc",
    "h265": "hevc",
    "libvpx-vp9": "vp9",
    "libvpx": "vp8",
}


def _codec_family(name: str | None) -> str | None:
    if not name:
        return None
    name = str(name).lower()
    return _CODEC_ALIASES.get(name, name)


class VideoChecks(Checker):
    """The checks of the videos (the data and metadata ones are in ``validate``)."""

    def check_video_ranges(self) -> None:
        meta, eps = self.meta, self.meta.episodes
        where = self.where("meta/episodes")
        for key in meta.video_keys:
            problems = meta.video_position_problems(key)
            for row in range(len(eps)):
                e = int(eps.episode_index[row])
                if row in problems:
                    self.add(
                        "error",
                        "video_range",
                        f"{where}: episode {e}, camera {key!r}: {problems[row]}",
                        episode=e,
                        camera=key,
                        file=meta.video_file(e, key),
                    )
            # What LeRobot reads fine (a to_timestamp at the last frame's time, a longer range):
            # a warning, one per camera and kind, naming the episodes.
            groups: dict[str, list[int]] = {}
            warned = meta.video_position_warnings(key)
            for row, message in warned.items():
                groups.setdefault(message.rsplit("): ", 1)[-1], []).append(row)
            for what, rows in groups.items():
                e = [int(eps.episode_index[r]) for r in rows]
                self.add(
                    "warning",
                    "video_range",
                    f"{where}: camera {key!r}: {len(e)} episode(s) ({_episodes_text(e)}): "
                    f"from_timestamp .. to_timestamp disagrees with the episode's length: "
                    f"{what}; LeRobot and framestream read the frames at from_timestamp + "
                    f"frame / fps (first: episode {e[0]}: {warned[rows[0]]})",
                    episode=e[0],
                    camera=key,
                    file=meta.video_file(e[0], key),
                )

    def _open_av(self, rel: str) -> tuple[Any, Any]:
        """A PyAV container, and the file object under it to close too (remote sources)."""
        import av

        local = self.source.local_path(rel)
        handle = None if local is not None else self.source.open(rel)
        try:
            return av.open(local if handle is None else handle), handle
        except BaseException:
            if handle is not None:
                handle.close()
            raise

    def check_videos(self, present: set[str]) -> None:
        meta = self.meta
        for key in meta.video_keys:
            files: dict[str, list[int]] = {}
            for e in self._eps():
                files.setdefault(meta.video_file(e, key), []).append(e)
            declared = meta.features[key].info.get("video.codec")
            shape = meta.features[key].shape
            for rel in self._steps(sorted(files), f"videos {key}"):
                if rel in present:
                    self._check_video_file(key, rel, files[rel], declared, shape)

    def _check_video_file(
        self, key: str, rel: str, episodes: list[int], declared: Any, shape: tuple[int, ...]
    ) -> None:
        meta, where = self.meta, self.where(rel)
        try:
            container, handle = self._open_av(rel)
        except Exception as exc:  # av.error.*: truncated, not a video, unknown container
            self.bad_video_files.add((key, rel))
            self.add(
                "error",
                "video_file",
                f"{where}: camera {key!r}: cannot open video ({type(exc).__name__}: {exc}); "
                f"affects {_episodes_text(episodes)}",
                file=rel,
                camera=key,
            )
            return
        try:
            if not container.streams.video:
                raise ValueError("no video stream")
            stream = container.streams.video[0]
            actual = stream.codec_context.codec.canonical_name
            width, height = stream.codec_context.width, stream.codec_context.height
            tb = float(stream.time_base)
            pts = np.sort(
                np.array(
                    [p.pts for p in container.demux(stream) if p.size and p.pts is not None],
                    dtype=np.float64,
                )
                * tb
            )
        except Exception as exc:
            self.bad_video_files.add((key, rel))
            self.add(
                "error",
                "video_file",
                f"{where}: camera {key!r}: cannot read video packets ({type(exc).__name__}: "
                f"{exc}); affects {_episodes_text(episodes)}",
                file=rel,
                camera=key,
            )
            return
        finally:
            container.close()
            if handle is not None:
                handle.close()
        if declared and _codec_family(declared) != _codec_family(actual):
            self.add(
                "warning",
                "codec",
                f"{where}: camera {key!r}: info.json declares video.codec {declared!r} but the "
                f"stream is {actual!r} (it decodes; fix the metadata)",
                file=rel,
                camera=key,
            )
        hwc = declared_frame_shape(meta.features[key])
        if hwc is not None and (height, width) != hwc[:2]:
            self.add(
                "error",
                "shape",
                f"{where}: camera {key!r}: the video is {height}x{width} (HxW) but info.json "
                f"declares shape {list(shape)}; affects {_episodes_text(episodes)}",
                file=rel,
                episode=episodes[0] if len(episodes) == 1 else None,
                camera=key,
            )
        vid, fps = meta.episodes.videos[key], meta.fps
        tol = self.tolerance_s
        for e in episodes:
            row = meta.episodes.row(e)
            length = int(meta.episodes.length[row])
            start, stop = float(vid.from_ts[row]), float(vid.to_ts[row])
            want = start + np.arange(length) / fps
            j = np.clip(np.searchsorted(pts, want), 1, max(1, len(pts) - 1))
            if len(pts) == 0:
                nearest = np.full(length, np.inf)
            elif len(pts) == 1:
                nearest = np.abs(pts[0] - want)
            else:
                nearest = np.minimum(np.abs(pts[j] - want), np.abs(pts[j - 1] - want))
            missing = np.nonzero(nearest > tol)[0]
            in_range = int(np.count_nonzero((pts >= start - tol) & (pts < stop - tol)))
            if len(missing):
                k = int(missing[0])
                self.add(
                    "error",
                    "video_frames",
                    f"{where}: camera {key!r}, episode {e}: {len(missing)} of its {length} "
                    f"frames are not in the video (first: frame {k} at {want[k]:.6f}s); the "
                    f"file holds {in_range} frames in [{start:.6f}, {stop:.6f}) s and "
                    f"{len(pts)} in all (last at {pts[-1] if len(pts) else float('nan'):.6f}s)",
                    file=rel,
                    episode=e,
                    camera=key,
                )

    def check_decode(self, present: set[str]) -> None:
        meta = self.meta
        cache = DecoderCache(self.source, capacity=2, backend=self.backend)
        decoded = 0
        shape_reported: set[tuple[str, str]] = set()
        try:
            for key in meta.video_keys:
                shape = meta.features[key].shape
                by_file: dict[str, list[int]] = {}
                for e in self._eps():
                    by_file.setdefault(meta.video_file(e, key), []).append(e)
                for rel in self._steps(sorted(by_file), f"decode {key}"):
                    if rel not in present or (key, rel) in self.bad_video_files:
                        continue
                    for e in by_file[rel]:
                        decoded += self._decode_ends(cache, key, rel, e, shape, shape_reported)
                    cache.discard(rel)
        finally:
            cache.close()
        self.report.summary["decoded_frames"] = decoded

    def _decode_ends(
        self,
        cache: DecoderCache,
        key: str,
        rel: str,
        e: int,
        shape: tuple[int, ...],
        shape_reported: set[tuple[str, str]],
    ) -> int:
        meta = self.meta
        row = meta.episodes.row(e)
        length = int(meta.episodes.length[row])
        if length <= 0:
            return 0
        ts = self.timestamps.get(e)
        ends = [0, length - 1] if length > 1 else [0]
        times = ts[ends] if ts is not None else np.asarray(ends, dtype=np.float64) / meta.fps
        try:
            frames = decode_episode_frames(
                cache,
                relative=rel,
                camera=key,
                episode=e,
                from_timestamp=float(meta.episodes.videos[key].from_ts[row]),
                timestamps=np.asarray(times, dtype=np.float64),
                tolerance_s=self.tolerance_s,
                fps=meta.fps,
            )
        except VideoDecodeError as exc:
            which = "first/last" if length > 1 else "only"
            self.add(
                "error",
                "decode",
                f"{which} frame not decodable: {exc}",
                file=rel,
                episode=e,
                camera=key,
            )
            return 0
        # decoders return NHWC; a file already reported (by its stream's size) is not again
        wrong = checks.frame_size(tuple(frames.shape[1:]), declared_frame_shape(meta.features[key]))
        if wrong is not None and (key, rel) not in shape_reported:
            shape_reported.add((key, rel))
            if not any(p.camera == key and p.file == rel for p in self.report.find("shape")):
                self.add(
                    "error",
                    "shape",
                    f"{self.where(rel)}: camera {key!r}: {wrong}; affects episode {e}",
                    file=rel,
                    episode=e,
                    camera=key,
                )
        return len(ends)
