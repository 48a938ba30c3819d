"""``framestream validate ROOT_OR_URL``: check a dataset and say what is wrong, file by file.

Repeated problems (the same check and the same message but for the numbers in it, e.g. one
bad timestamp in each of 100 episodes) print as one line with their count and the first few
episodes; ``--all`` prints every problem, ``--json`` gives every problem too.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import re
import sys
from collections.abc import Iterator
from typing import Any

from framestream.cli.common import add_remote_arguments, check_root

SHOWN_EPISODES = 5


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "validate",
        help="check a dataset's metadata, files, episode ranges and videos",
        description="Check ROOT_OR_URL (a folder or fsspec URL): metadata consistency, every "
        "file present, episode ranges, video frames against from/to_timestamp, the first and "
        "last frame of every episode decodable, declared vs actual codec, task strings, NaN. "
        "Exit status 1 when an error is found (or a warning, with --strict); 2 when ROOT "
        "cannot be read at all.",
    )
    p.add_argument("root", metavar="ROOT_OR_URL", help="dataset folder or URL")
    p.add_argument("--json", action="store_true", help="print the report (every problem) as JSON")
    p.add_argument("--strict", action="store_true", help="warnings fail the check too")
    p.add_argument(
        "--all",
        dest="show_all",
        action="store_true",
        help="one line per problem instead of one per repeated problem",
    )
    p.add_argument(
        "--no-decode",
        dest="decode",
        action="store_false",
        help="skip decoding the first/last frame of every episode and camera (the slowest "
        "check: about a second per video file; timestamps are still read)",
    )
    p.add_argument(
        "--tolerance-s",
        type=float,
        default=1e-4,
        help="largest allowed gap between an expected and a decoded timestamp, seconds",
    )
    p.add_argument(
        "--video-backend",
        choices=["torchcodec", "pyav"],
        default=None,
        help="decoder to use (default: torchcodec when it loads, else PyAV)",
    )
    add_remote_arguments(p)
    p.add_argument("--progress", action="store_true", help="show progress bars on stderr")
    p.set_defaults(func=run)
    return p


@contextlib.contextmanager
def _source_options(kwargs: dict[str, Any]) -> Iterator[None]:
    """Give the validator's :class:`Source` the remote options it has no parameter for."""
    import functools

    from framestream.validate import dataset as module

    extra = {k: v for k, v in kwargs.items() if v is not None}
    if not extra:
        yield
        return
    original = module.Source
    module.Source = functools.partial(original, **extra)  # type: ignore[misc]
    try:
        yield
    finally:
        module.Source = original  # type: ignore[misc]


def run(args: argparse.Namespace) -> int:
    from framestream.validate.dataset import validate_dataset

    check_root(args.root)
    kwargs: dict[str, Any] = {
        "storage_options": args.storage_options,
        "decode": args.decode,
        "progress": args.progress,
        "tolerance_s": args.tolerance_s,
        "video_backend": args.video_backend,
    }
    remote = {
        "revision": args.revision,
        "cache_dir": args.cache_dir,
        "cache_max_bytes": args.cache_max_bytes,
    }
    accepted = inspect.signature(validate_dataset).parameters
    kwargs.update({k: v for k, v in remote.items() if k in accepted})
    with _source_options({k: v for k, v in remote.items() if k not in accepted}):
        report = validate_dataset(args.root, **kwargs)
    if args.json:
        text = report.to_json(strict=args.strict)
    elif args.show_all:
        text = report.format(strict=args.strict)
    else:
        text = format_grouped(report, strict=args.strict)
    print(text, file=sys.stdout)
    return report.exit_code(strict=args.strict)


_NUMBER = re.compile(r"\d+(?:\.\d+)?(?:e-?\d+)?")


def pattern(message: str) -> str:
    """The message with its numbers replaced: problems that differ only in the episode,
    frame, file number or timestamp share a pattern."""
    return _NUMBER.sub("#", message)


def group_problems(problems: list[Any]) -> list[tuple[Any, int, list[int]]]:
    """``[(first problem, count, episodes)]``, one per (severity, check, message pattern),
    errors first, then in the order found."""
    groups: dict[tuple[str, str, str], list[Any]] = {}
    for p in problems:
        groups.setdefault((p.severity, p.check, pattern(p.message)), []).append(p)
    order = {"error": 0, "warning": 1}
    out = []
    for _key, items in sorted(groups.items(), key=lambda kv: order.get(kv[0][0], 2)):
        episodes = sorted({p.episode for p in items if p.episode is not None})
        out.append((items[0], len(items), episodes))
    return out


def format_grouped(report: Any, *, strict: bool = False) -> str:
    """:meth:`Report.format` with repeated problems folded into one line each."""
    full = report.format(strict=strict).splitlines()
    head = [line for line in full if not line.startswith(("  ERROR", "  WARNING"))]
    verdict = head.pop() if head else ""
    groups = group_problems(report.problems)
    width = max([len(p.check) for p, _, _ in groups] + [5])
    lines = head
    for p, count, episodes in groups:
        if count == 1:
            lines.append(f"  {p.severity.upper():<8}{p.check:<{width + 2}}{p.message}")
            continue
        shown = ", ".join(map(str, episodes[:SHOWN_EPISODES]))
        more = f", ... ({len(episodes)} episodes)" if len(episodes) > SHOWN_EPISODES else ""
        where = f" in episodes {shown}{more}" if episodes else ""
        lines.append(
            f"  {p.severity.upper():<8}{p.check:<{width + 2}}{count} times{where}; "
            f"first: {p.message}"
        )
    if any(count > 1 for _, count, _ in groups):
        lines.append("  (repeated problems are folded into one line: --all lists each)")
    lines.append(verdict)
    return "\n".join(lines)
