"""``framestream validate ROOT_OR_URL``: check a dataset and say what is wrong, file by file."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "validate",
        help="check a dataset's metadata, files, episode ranges and videos",
        description="Check ROOT_OR_URL (a folder or fsspec URL): metadata consistency, every "
        "file present, episode ranges, video frames against from/to_timestamp, the first and "
        "last frame of every episode decodable, declared vs actual codec, task strings, NaN. "
        "Exit status 1 when an error is found (or a warning, with --strict).",
    )
    p.add_argument("root", metavar="ROOT_OR_URL", help="dataset folder or URL")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--strict", action="store_true", help="warnings fail the check too")
    p.add_argument(
        "--no-decode",
        dest="decode",
        action="store_false",
        help="skip decoding the first/last frame of every episode (faster)",
    )
    p.add_argument("--tolerance-s", type=float, default=1e-4, help="timestamp tolerance (s)")
    p.add_argument(
        "--video-backend", choices=["torchcodec", "pyav"], default=None, help="decoder to use"
    )
    p.add_argument(
        "--storage-options",
        type=json.loads,
        default=None,
        metavar="JSON",
        help="fsspec options for a remote root, e.g. '{\"anon\": true}'",
    )
    p.add_argument("--progress", action="store_true", help="show progress bars on stderr")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from framestream.validate.dataset import validate_dataset

    report = validate_dataset(
        args.root,
        storage_options=args.storage_options,
        decode=args.decode,
        progress=args.progress,
        tolerance_s=args.tolerance_s,
        video_backend=args.video_backend,
    )
    text = report.to_json(strict=args.strict) if args.json else report.format(strict=args.strict)
    print(text, file=sys.stdout)
    return report.exit_code(strict=args.strict)
