"""Check a LeRobot v3.0 dataset before training on it: ``framestream validate``.

Why: a bad file found by the training loop costs a crashed or silently skewed run hours in;
found here it costs a minute. The checks collect *every* problem (instead of stopping at the
first, as the readers must), each naming its file, episode and camera, so a dataset can be
repaired in one pass. What the readers would do with each problem is in docs/robustness.md.
The data-file checks are the readers' own (:mod:`framestream.format.checks`); the video
checks are in :mod:`framestream.validate.video`, the report types in
:mod:`framestream.validate.report`.

Severities: an *error* is something the readers refuse (or would silently get wrong); a
*warning* is a deviation that still reads correctly (a codec other than the declared one, a
video range longer than its episode, a wrong ``total_tasks``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from framestream._errors import FramestreamError
from framestream.decode.video import resolve_backend
from framestream.format import checks
from framestream.format.episodes import overlapping_ranges
from framestream.format.meta import INFO_PATH, TASKS_PATH, DatasetMeta
from framestream.io.source import Source
from framestream.validate.report import CHECKS, Problem, Report
from framestream.validate.report import episodes_text as _episodes_text
from framestream.validate.video import VideoChecks

__all__ = ["CHECKS", "Problem", "Report", "validate_dataset"]

# Read from every data file for the row checks (the float features are read too).
_ROW_COLUMNS = ["index", "episode_index", "frame_index", "timestamp", "task_index"]


class _Validator(VideoChecks):
    """Every check, in the order ``run`` calls them."""

    # ------------------------------------------------------------------ run
    def run(self) -> Report:
        try:
            self.meta = DatasetMeta(self.source, check_totals=False)  # reported one by one
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
        overlaps = overlapping_ranges(eps)
        for a, b in overlaps:  # both episodes named: either may be the wrong one
            ra, rb = eps.row(a), eps.row(b)
            for e, other in ((a, b), (b, a)):
                self.add(
                    "error",
                    "episode_index",
                    f"{where}: episode {e}: its global index range overlaps episode {other}'s "
                    f"(episode {a}: dataset_from_index {int(eps.from_index[ra])} .. "
                    f"dataset_to_index {int(eps.to_index[ra])}; episode {b}: "
                    f"{int(eps.from_index[rb])} .. {int(eps.to_index[rb])})",
                    episode=e,
                )
        overlapping = {e for pair in overlaps for e in pair}
        order = np.argsort(eps.from_index, kind="stable")
        expected = 0
        for row in order.tolist():
            e, lo, hi = int(idx[row]), int(eps.from_index[row]), int(eps.to_index[row])
            if lo > expected:
                self.add(
                    "error",
                    "episode_index",
                    f"{where}: episode {e}: dataset_from_index is {lo}, expected {expected} "
                    "(global indices must be contiguous; this leaves a gap)",
                    episode=e,
                )
            elif lo < expected and e not in overlapping:  # a zero-length range inside another
                self.add(
                    "error",
                    "episode_index",
                    f"{where}: episode {e}: dataset_from_index is {lo}, expected {expected} "
                    "(global indices must be contiguous; this overlaps the previous episode)",
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
        required = checks.data_columns(meta)
        floats = checks.float_columns(meta, required)
        wanted = list(dict.fromkeys(_ROW_COLUMNS + floats))
        for rel in self._steps(sorted(by_file), "data"):
            if rel not in present:
                continue
            try:
                with self.source.open(rel) as f:
                    pf = pq.ParquetFile(f)
                    problem = checks.missing_columns(pf.schema_arrow.names, required)
                    if problem:
                        self.add(
                            "error",
                            problem.check,
                            f"{self.where(rel)}: {problem.message}",
                            file=rel,
                        )
                        continue
                    mistyped = self._check_types(rel, pf.schema_arrow, required, by_file[rel])
                    if mistyped & set(_ROW_COLUMNS):  # the row checks cannot read them
                        continue
                    table = pf.read(columns=[c for c in wanted if c not in mistyped])
            except (pa.ArrowException, OSError) as exc:
                self.add(
                    "error",
                    "data",
                    f"{self.where(rel)}: unreadable parquet ({type(exc).__name__}: {exc}); "
                    f"affects {_episodes_text(by_file[rel])}",
                    file=rel,
                )
                continue
            self._check_rows(rel, table, by_file[rel], [f for f in floats if f not in mistyped])

    def _check_types(
        self, rel: str, schema: pa.Schema, columns: list[str], episodes: list[int]
    ) -> set[str]:
        """Columns stored with another kind of dtype than info.json's (reported); their names."""
        found = checks.column_types(schema, self.meta, columns)
        for problem in found.values():
            self.add(
                "error",
                problem.check,
                f"{self.where(rel)}: {problem.message}; affects {_episodes_text(episodes)}",
                file=rel,
                episode=episodes[0] if len(episodes) == 1 else None,
            )
        return set(found)

    def _check_rows(
        self, rel: str, table: pa.Table, episodes: list[int], floats: list[str]
    ) -> None:
        """The reader's checks (:mod:`framestream.format.checks`) on every episode of a file,
        plus the timestamps and tasks, which the readers check later (on use)."""
        meta, where = self.meta, self.where(rel)
        col = {c: table.column(c).to_numpy() for c in _ROW_COLUMNS}
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
            problem = checks.row_count(len(rows), length)
            frames, bad_order = (
                (None, None) if problem else checks.frame_order(col["frame_index"][rows], length)
            )
            problem = problem or bad_order
            if problem:  # the rest cannot be checked
                self._add_row_problem(problem, rel, e)
                continue
            if frames is not None:
                rows = rows[frames]
            found = [
                checks.global_index(col["index"][rows], lo, length),
                checks.timestamps(col["timestamp"][rows], meta.fps, self.tolerance_s),
                *checks.task_indices(meta, np.unique(col["task_index"][rows]).tolist()),
                *(checks.nan_values(n, self._floats_of(table, n, rows), length) for n in floats),
            ]
            for problem in found:
                if problem:
                    self._add_row_problem(problem, rel, e)
            if found[1] is None:
                self.timestamps[e] = col["timestamp"][rows].astype(np.float64)

    @staticmethod
    def _floats_of(table: pa.Table, name: str, rows: np.ndarray) -> np.ndarray:
        flat = table.column(name).take(pa.array(rows)).combine_chunks()
        while pa.types.is_list(flat.type) or pa.types.is_fixed_size_list(flat.type):
            flat = flat.flatten()
        return flat.to_numpy(zero_copy_only=False).astype(np.float64)

    def _add_row_problem(self, problem: checks.RowProblem, rel: str, episode: int) -> None:
        where = self.where(rel)
        self.add(
            "error",
            problem.check,
            f"{where}: episode {episode}: {problem.message}",
            file=rel,
            episode=episode,
        )


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
