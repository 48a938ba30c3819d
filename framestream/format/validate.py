"""Check a LeRobot v3.0 dataset before training on it: ``framestream validate``.

Why: a bad file found by the training loop costs a crashed or silently skewed run hours in;
found here it costs a minute. The checks collect *every* problem (instead of stopping at the
first, as the readers must), each naming its file, episode and camera, so a dataset can be
repaired in one pass. What the readers would do with each problem is in docs/robustness.md.

Severities: an *error* is something the readers refuse (or would silently get wrong); a
*warning* is a deviation that still reads correctly (a codec other than the declared one, a
video range longer than its episode, a wrong ``total_tasks``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from framestream._errors import FramestreamError, VideoDecodeError
from framestream.decode.video import DecoderCache, decode_episode_frames, resolve_backend
from framestream.format.meta import INFO_PATH, TASKS_PATH, DatasetMeta
from framestream.io.source import Source

# The ``check`` names a problem can carry (stable: tests and scripts match on them).
CHECKS = (
    "metadata",  # info.json / episodes index / tasks unreadable: nothing else can be checked
    "totals",  # info.json totals disagree with the episodes index
    "episode_index",  # dataset_from/to_index not contiguous, odd episode numbering
    "missing_file",  # a data or video file the episodes index points to does not exist
    "data",  # data parquet unreadable, or rows disagree with the episodes index
    "nan",  # NaN in a float feature
    "task",  # task string not UTF-8, missing, or a task_index without a task
    "video_range",  # from/to_timestamp inconsistent with the episode length or neighbours
    "video_file",  # a video that cannot be opened (truncated, not a video)
    "video_frames",  # frames the episode needs are absent from the video
    "decode",  # first/last frame of an episode not decodable within tolerance
    "shape",  # decoded frames' size differs from info.json
    "codec",  # the stream's codec differs from info.json's video.codec
)
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


@dataclass(frozen=True)
class Problem:
    """One finding: what is wrong, where, and how bad."""

    severity: str  # "error" | "warning"
    check: str  # one of CHECKS
    message: str  # self-contained: names the file, episode and camera it is about
    file: str | None = None
    episode: int | None = None
    camera: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Report:
    """Everything :func:`validate_dataset` found; ``exit_code()`` is what the CLI returns."""

    root: str
    problems: list[Problem] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    def ok(self, *, strict: bool = False) -> bool:
        """No errors (and, with ``strict``, no warnings either)."""
        return not self.errors and not (strict and self.warnings)

    def exit_code(self, *, strict: bool = False) -> int:
        return 0 if self.ok(strict=strict) else 1

    def find(
        self, check: str | None = None, *, episode: int | None = None, severity: str | None = None
    ) -> list[Problem]:
        """The problems matching every given field."""
        return [
            p
            for p in self.problems
            if (check is None or p.check == check)
            and (episode is None or p.episode == episode)
            and (severity is None or p.severity == severity)
        ]

    def to_dict(self, *, strict: bool = False) -> dict[str, Any]:
        return {
            "root": self.root,
            "ok": self.ok(strict=strict),
            "strict": strict,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "summary": self.summary,
            "problems": [p.to_dict() for p in self.problems],
        }

    def to_json(self, *, strict: bool = False) -> str:
        return json.dumps(self.to_dict(strict=strict), indent=2)

    def format(self, *, strict: bool = False) -> str:
        """The human-readable report: summary line, one line per problem, verdict."""
        s = self.summary
        lines = [f"framestream validate {self.root}"]
        if "episodes" in s:
            lines.append(
                f"  {s.get('codebase_version')}, {s.get('fps')} fps, {s['episodes']} episodes, "
                f"{s.get('frames')} frames, {len(s.get('cameras', []))} cameras; "
                f"{s.get('data_files')} data files, {s.get('video_files')} video files; "
                f"{s.get('decoded_frames', 0)} frames decoded"
            )
        order = {"error": 0, "warning": 1}
        width = max([len(p.check) for p in self.problems] + [5])
        for p in sorted(self.problems, key=lambda p: order.get(p.severity, 2)):
            lines.append(f"  {p.severity.upper():<8}{p.check:<{width + 2}}{p.message}")
        n_err, n_warn = len(self.errors), len(self.warnings)
        counts = f"{n_err} error{'s' * (n_err != 1)}, {n_warn} warning{'s' * (n_warn != 1)}"
        if self.ok(strict=strict):
            lines.append(f"OK: {counts}" if self.problems else "OK: no problems found")
        else:
            lines.append(f"FAILED: {counts}" + (" (--strict)" if not self.errors else ""))
        return "\n".join(lines)


class _LenientMeta(DatasetMeta):
    """DatasetMeta that leaves wrong totals to the validator, which reports each of them."""

    def _validate_totals(self) -> None:
        pass


def _codec_family(name: str | None) -> str | None:
    if not name:
        return None
    name = str(name).lower()
    return _CODEC_ALIASES.get(name, name)


def _episodes_text(episodes: Iterable[int], limit: int = 8) -> str:
    eps = sorted({int(e) for e in episodes})
    shown = ", ".join(str(e) for e in eps[:limit]) + (", ..." if len(eps) > limit else "")
    return f"episode{'s' * (len(eps) != 1)} {shown}"


class _Validator:
    """One pass over a dataset; each ``check_*`` adds its problems to ``report``."""

    def __init__(
        self, source: Source, *, decode: bool, progress: bool, tolerance_s: float, backend: Any
    ) -> None:
        self.source, self.decode, self.progress = source, decode, progress
        self.tolerance_s, self.backend = tolerance_s, backend
        self.report = Report(root=source.url)
        self.meta: DatasetMeta
        self.bad_video_files: set[tuple[str, str]] = set()  # (camera, file): not openable
        self.timestamps: dict[int, np.ndarray] = {}  # episode -> data timestamps (checked)

    # ------------------------------------------------------------------ plumbing
    def add(self, severity: str, check: str, message: str, **where: Any) -> None:
        self.report.problems.append(Problem(severity, check, message, **where))

    def where(self, rel: str) -> str:
        return self.source.describe(rel)

    def _steps(self, items: list[Any], desc: str) -> Iterator[Any]:
        if not self.progress:
            yield from items
            return
        from tqdm import tqdm

        yield from tqdm(items, desc=desc, unit="file", leave=False)

    # ------------------------------------------------------------------ run
    def run(self) -> Report:
        try:
            self.meta = _LenientMeta(self.source)
        except (FramestreamError, OSError, ValueError, KeyError, TypeError) as exc:
            self.add("error", "metadata", f"cannot load the dataset's metadata: {exc}")
            return self.report
        if self._guard("metadata", self._summarize) is None:
            return self.report
        present = self._guard("missing_file", self.check_files) or set()
        steps = [
            ("totals", self.check_totals),
            ("episode_index", self.check_episode_index),
            ("task", self.check_tasks),
            ("data", lambda: self.check_data(present)),
            ("video_range", self.check_video_ranges),
            ("video_file", lambda: self.check_videos(present)),
        ]
        if self.decode:
            steps.append(("decode", lambda: self.check_decode(present)))
        for check, step in steps:
            self._guard(check, step)
        return self.report

    def _summarize(self) -> bool:
        """The headline numbers; fails (reported) when the path templates do not format."""
        meta = self.meta
        self.report.summary = {
            "codebase_version": meta.info.get("codebase_version"),
            "fps": meta.fps,
            "episodes": len(meta.episodes),
            "frames": meta.total_frames,
            "cameras": list(meta.video_keys),
            "data_files": len({meta.data_file(int(e)) for e in meta.episodes.episode_index}),
            "video_files": len(
                {meta.video_file(int(e), k) for k in meta.video_keys for e in self._eps()}
            ),
            "decoded_frames": 0,
            "decode": self.decode,
        }
        return True

    def _guard(self, check: str, step: Any) -> Any:
        """Run one check; a dataset odd enough to crash it is reported, not raised."""
        try:
            return step()
        except Exception as exc:
            self.add(
                "error", check, f"the {check!r} check could not run: {type(exc).__name__}: {exc}"
            )
            return None

    def _eps(self) -> list[int]:
        return [int(e) for e in self.meta.episodes.episode_index]

    # ------------------------------------------------------------------ metadata
    def check_totals(self) -> None:
        meta, info = self.meta, self.meta.info
        where = self.where(INFO_PATH)
        for key, actual, what in (
            ("total_episodes", len(meta.episodes), "the episodes index has {} episodes"),
            ("total_frames", meta.total_frames, "the episodes' lengths sum to {}"),
        ):
            if int(info[key]) != actual:
                self.add(
                    "error",
                    "totals",
                    f"{where}: {key} is {info[key]} but {what.format(actual)}",
                    file=INFO_PATH,
                )
        n_tasks = len(set(meta.tasks) | set(meta.bad_tasks))
        if "total_tasks" in info and self.source.exists(TASKS_PATH):
            if int(info["total_tasks"]) != n_tasks:
                self.add(
                    "warning",
                    "totals",
                    f"{where}: total_tasks is {info['total_tasks']} but "
                    f"{TASKS_PATH} has {n_tasks} tasks",
                    file=INFO_PATH,
                )

    def check_episode_index(self) -> None:
        eps = self.meta.episodes
        where = self.where("meta/episodes")
        idx = eps.episode_index
        if len(idx) and not np.array_equal(idx, np.arange(len(idx))):
            self.add(
                "warning",
                "episode_index",
                f"{where}: episode indices are not 0..{len(idx) - 1} (first: {idx[:5].tolist()})",
            )
        for row in np.nonzero(eps.length <= 0)[0].tolist():
            e = int(idx[row])
            self.add(
                "error",
                "episode_index",
                f"{where}: episode {e} has length {int(eps.length[row])}",
                episode=e,
            )
        order = np.argsort(eps.from_index, kind="stable")
        expected = 0
        for row in order.tolist():
            e, lo, hi = int(idx[row]), int(eps.from_index[row]), int(eps.to_index[row])
            if lo != expected:
                kind = "overlaps the previous episode" if lo < expected else "leaves a gap"
                self.add(
                    "error",
                    "episode_index",
                    f"{where}: episode {e}: dataset_from_index is {lo}, expected {expected} "
                    f"(global indices must be contiguous; this {kind})",
                    episode=e,
                )
            expected = max(expected, hi)

    def check_tasks(self) -> None:
        meta = self.meta
        if not self.source.exists(TASKS_PATH):
            self.add(
                "error",
                "task",
                f"{self.where(TASKS_PATH)}: file not found: samples cannot carry a task string",
                file=TASKS_PATH,
            )
            return
        for t, why in sorted(meta.bad_tasks.items()):
            # the episodes using it are reported one by one by the data check
            self.add(
                "error", "task", f"{self.where(TASKS_PATH)}: task_index {t}: {why}", file=TASKS_PATH
            )

    # ------------------------------------------------------------------ files
    def check_files(self) -> set[str]:
        meta = self.meta
        needed: dict[str, list[int]] = {}
        cams: dict[str, str] = {}
        for e in self._eps():
            needed.setdefault(meta.data_file(e), []).append(e)
            for key in meta.video_keys:
                rel = meta.video_file(e, key)
                needed.setdefault(rel, []).append(e)
                cams[rel] = key
        present = set()
        for rel in self._steps(sorted(needed), "files"):
            if self.source.exists(rel):
                present.add(rel)
                continue
            kind = f"video file (camera {cams[rel]!r})" if rel in cams else "data file"
            self.add(
                "error",
                "missing_file",
                f"{self.where(rel)}: {kind} not found; needed by {_episodes_text(needed[rel])}",
                file=rel,
                episode=needed[rel][0] if len(needed[rel]) == 1 else None,
                camera=cams.get(rel),
            )
        return present

    # ------------------------------------------------------------------ data
    def check_data(self, present: set[str]) -> None:
        meta = self.meta
        by_file: dict[str, list[int]] = {}
        for e in self._eps():
            by_file.setdefault(meta.data_file(e), []).append(e)
        floats = [
            k
            for k, f in meta.features.items()
            if f.dtype in ("float32", "float64") and k != "timestamp"
        ]
        for rel in self._steps(sorted(by_file), "data"):
            if rel not in present:
                continue
            try:
                with self.source.open(rel) as f:
                    pf = pq.ParquetFile(f)
                    names = set(pf.schema_arrow.names)
                    base = ["index", "episode_index", "frame_index", "timestamp", "task_index"]
                    missing = [c for c in base + meta.non_visual_keys() if c not in names]
                    if missing:
                        self.add(
                            "error",
                            "data",
                            f"{self.where(rel)}: missing columns {missing}",
                            file=rel,
                        )
                        continue
                    table = pf.read(columns=base + [c for c in floats if c in names])
            except (pa.ArrowException, OSError) as exc:
                self.add(
                    "error",
                    "data",
                    f"{self.where(rel)}: unreadable parquet ({type(exc).__name__}: {exc}); "
                    f"affects {_episodes_text(by_file[rel])}",
                    file=rel,
                )
                continue
            self._check_rows(rel, table, by_file[rel], floats)

    def _check_rows(
        self, rel: str, table: pa.Table, episodes: list[int], floats: list[str]
    ) -> None:
        meta, where = self.meta, self.where(rel)
        col = {c: table.column(c).to_numpy() for c in table.column_names if c not in floats}
        ep_col = col["episode_index"]
        order = np.argsort(ep_col, kind="stable")
        sorted_eps = ep_col[order]
        strangers = sorted(set(np.unique(ep_col).tolist()) - set(episodes))
        if strangers:
            self.add(
                "warning",
                "data",
                f"{where}: holds rows of {_episodes_text(strangers)} that the episodes index "
                "places in another file (ignored by the readers)",
                file=rel,
            )
        for e in episodes:
            row = meta.episodes.row(e)
            length, lo = int(meta.episodes.length[row]), int(meta.episodes.from_index[row])
            a, b = np.searchsorted(sorted_eps, [e, e + 1])
            rows = order[a:b]
            rows = rows[np.argsort(col["frame_index"][rows], kind="stable")]
            head = f"{where}: episode {e}"
            if len(rows) != length:
                self.add(
                    "error",
                    "data",
                    f"{head}: the episodes index says {length} frames but the file holds "
                    f"{len(rows)} rows",
                    file=rel,
                    episode=e,
                )
                continue
            fi = col["frame_index"][rows]
            if not np.array_equal(fi, np.arange(length)):
                self.add(
                    "error",
                    "data",
                    f"{head}: frame_index is not 0..{length - 1}",
                    file=rel,
                    episode=e,
                )
                continue
            index = col["index"][rows]
            if not np.array_equal(index, np.arange(lo, lo + length)):
                self.add(
                    "error",
                    "data",
                    f"{head}: 'index' runs {int(index[0])}..{int(index[-1])} but the episodes "
                    f"index says {lo}..{lo + length - 1}",
                    file=rel,
                    episode=e,
                )
            ts = col["timestamp"][rows].astype(np.float64)
            slack = self.tolerance_s + np.spacing(np.abs(ts).astype(np.float32)).astype(np.float64)
            off = np.abs(ts - fi / meta.fps)
            bad = np.nonzero(off > slack)[0]
            if len(bad):
                k = int(bad[0])
                self.add(
                    "error",
                    "data",
                    f"{head}: timestamp of frame {k} is {ts[k]:.6f}s, expected {k / meta.fps:.6f}s "
                    f"(frame_index / fps; {len(bad)} frames off by more than tolerance_s="
                    f"{self.tolerance_s})",
                    file=rel,
                    episode=e,
                )
            else:
                self.timestamps[e] = ts
            tasks = np.unique(col["task_index"][rows]).tolist()
            for t in tasks:
                if int(t) in meta.tasks:
                    continue
                why = meta.bad_tasks.get(int(t), "has no entry in " + TASKS_PATH)
                self.add(
                    "error",
                    "task",
                    f"{head}: task_index {int(t)}: {why}",
                    file=rel,
                    episode=e,
                )
            for name in floats:
                if name not in table.column_names:
                    continue
                values = table.column(name).take(pa.array(rows))
                flat = values.combine_chunks()
                while pa.types.is_list(flat.type) or pa.types.is_fixed_size_list(flat.type):
                    flat = flat.flatten()
                nan = np.isnan(flat.to_numpy(zero_copy_only=False).astype(np.float64))
                if nan.any():
                    per_frame = nan.reshape(length, -1).any(axis=1)
                    first = int(np.nonzero(per_frame)[0][0])
                    self.add(
                        "error",
                        "nan",
                        f"{head}: feature {name!r} is NaN at {int(per_frame.sum())} frames "
                        f"(first: frame {first})",
                        file=rel,
                        episode=e,
                    )

    # ------------------------------------------------------------------ videos
    def check_video_ranges(self) -> None:
        meta, eps = self.meta, self.meta.episodes
        where = self.where("meta/episodes")
        half = 0.5 / meta.fps
        for key in meta.video_keys:
            problems = meta.video_position_problems(key)
            vid = eps.videos[key]
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
                    continue
                span, need = vid.to_ts[row] - vid.from_ts[row], eps.length[row] / meta.fps
                if span > need + half:
                    self.add(
                        "warning",
                        "video_range",
                        f"{where}: episode {e}, camera {key!r}: from_timestamp .. to_timestamp "
                        f"spans {span:.6f}s, more than its {int(eps.length[row])} frames "
                        f"({need:.6f}s); the extra video frames are never read",
                        episode=e,
                        camera=key,
                        file=meta.video_file(e, key),
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
        if len(shape) == 3 and (height, width) != (shape[0], shape[1]):
            self.add(
                "error",
                "shape",
                f"{where}: camera {key!r}: the video is {height}x{width} (HxW) but info.json "
                f"declares shape {list(shape)}",
                file=rel,
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
        shape_reported: set[str] = set()
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
        shape_reported: set[str],
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
        h, w = int(frames.shape[1]), int(frames.shape[2])  # decoders return NHWC
        if len(shape) == 3 and (h, w) != (shape[0], shape[1]) and key not in shape_reported:
            shape_reported.add(key)
            if not any(p.camera == key for p in self.report.find("shape")):
                self.add(
                    "error",
                    "shape",
                    f"{self.where(rel)}: camera {key!r}: decoded frames are {h}x{w} (HxW) but "
                    f"info.json declares shape {list(shape)}",
                    file=rel,
                    camera=key,
                )
        return len(ends)


def validate_dataset(
    root: str,
    *,
    storage_options: dict[str, Any] | None = None,
    decode: bool = True,
    progress: bool = False,
    tolerance_s: float = 1e-4,
    video_backend: str | None = None,
) -> Report:
    """Check the dataset at ``root`` (folder or fsspec URL) and return every problem found.

    ``decode=False`` skips decoding the first and last frame of every episode and camera
    (the slowest check; packet timestamps are still read). Never raises for a broken dataset:
    a dataset whose metadata cannot be loaded gives a single ``metadata`` error.
    """
    source = Source(str(root), storage_options or {})
    backend = resolve_backend(video_backend) if decode else None
    v = _Validator(
        source, decode=decode, progress=progress, tolerance_s=tolerance_s, backend=backend
    )
    return v.run()
