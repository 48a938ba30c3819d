"""What ``framestream validate`` reports: :class:`Problem`, :class:`Report`, and the
plumbing every group of checks shares (:class:`Checker`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from framestream.format.meta import DatasetMeta
from framestream.io.source import Source

# The ``check`` names a problem can carry (stable: tests and scripts match on them).
CHECKS = (
    "metadata",  # info.json / episodes index / tasks unreadable: nothing else can be checked
    "totals",  # info.json totals disagree with the episodes index
    "episode_index",  # dataset_from/to_index not contiguous, odd episode numbering
    "missing_file",  # a data or video file the episodes index points to does not exist
    "data",  # data parquet unreadable, or rows disagree with the episodes index
    "dtype",  # a column stored as another kind than info.json's dtype (string for float32...)
    "nan",  # NaN or Inf in a float feature
    "task",  # task string not UTF-8, missing, or a task_index without a task
    "video_range",  # from/to_timestamp inconsistent with the episode length or neighbours
    "video_file",  # a video that cannot be opened (truncated, not a video)
    "video_frames",  # frames the episode needs are absent from the video
    "decode",  # first/last frame of an episode not decodable within tolerance
    "shape",  # decoded frames' size differs from info.json
    "codec",  # the stream's codec differs from info.json's video.codec
)


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


def episodes_text(episodes: Iterable[int], limit: int = 8) -> str:
    eps = sorted({int(e) for e in episodes})
    shown = ", ".join(str(e) for e in eps[:limit]) + (", ..." if len(eps) > limit else "")
    return f"episode{'s' * (len(eps) != 1)} {shown}"


class Checker:
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

    def _eps(self) -> list[int]:
        return [int(e) for e in self.meta.episodes.episode_index]
