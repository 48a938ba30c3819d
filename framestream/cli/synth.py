"""``framestream synth OUT``: write a synthetic dataset from the command line.

Why a separate module: the main CLI wires this subcommand in without importing the encoder
stack until the subcommand actually runs.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "add_synth_parser", "run_synth"]


def add_synth_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``synth`` subcommand to ``subparsers`` (from ``add_subparsers()``)."""
    parser = subparsers.add_parser(
        "synth",
        help="write a synthetic LeRobot v3.0 dataset whose frames identify themselves",
        description=(
            "Write a synthetic LeRobot v3.0 dataset: real AV1/H.264 mp4s with many episodes "
            "per file, cameras rolling over at different episodes, and every frame carrying "
            "(episode, frame, camera) in its pixels (see framestream.testing)."
        ),
    )
    parser.add_argument("out", type=Path, help="folder to create (must be absent or empty)")
    parser.add_argument(
        "--episodes", type=int, default=40, help="number of episodes (time grows with it)"
    )
    parser.add_argument("--min-length", type=int, default=120, help="shortest episode, frames")
    parser.add_argument("--max-length", type=int, default=300, help="longest episode, frames")
    parser.add_argument("--cameras", type=int, default=2, help="number of cameras (0-16)")
    parser.add_argument("--height", type=int, default=240, help="frame height, pixels")
    parser.add_argument("--width", type=int, default=320, help="frame width, pixels")
    parser.add_argument("--fps", type=int, default=30, help="frames per second")
    parser.add_argument(
        "--codec",
        choices=["av1", "h264"],
        default="av1",
        help="video codec (AV1: what LeRobot writes, slower to encode; H.264: quick)",
    )
    parser.add_argument("--gop", type=int, default=2, help="keyframe interval, frames")
    parser.add_argument(
        "--data-file-mb", type=float, default=0.25, help="data file roll-over size, MB"
    )
    parser.add_argument(
        "--video-file-mb", type=float, default=1.0, help="video file roll-over size, MB"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the episode lengths")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="encoder processes, each ~100 MB (default: all CPUs)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace what is in OUT (deletes it first)"
    )
    parser.set_defaults(func=run_synth)
    return parser


# framestream.cli imports each subcommand module and calls its ``add_parser``.
add_parser = add_synth_parser


def run_synth(args: argparse.Namespace) -> int:
    """Generate the dataset ``args`` describe, print what was written, return exit code 0."""
    from framestream.cli.common import CLIError
    from framestream.testing.synth import generate_synthetic_dataset

    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise CLIError(f"{args.out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise CLIError(f"{args.out} exists and is not empty: pass --overwrite to replace it")
    started = time.perf_counter()
    root = generate_synthetic_dataset(
        out,
        num_episodes=args.episodes,
        min_length=args.min_length,
        max_length=args.max_length,
        num_cameras=args.cameras,
        height=args.height,
        width=args.width,
        fps=args.fps,
        codec=args.codec,
        gop=args.gop,
        data_files_size_in_mb=args.data_file_mb,
        video_files_size_in_mb=args.video_file_mb,
        seed=args.seed,
        workers=args.workers,
        progress=True,
        overwrite=args.overwrite,
    )
    elapsed = time.perf_counter() - started
    info = json.loads((root / "meta" / "info.json").read_text())
    videos = Counter(path.parent.parent.name for path in root.glob("videos/*/chunk-*/*.mp4"))
    size = sum(path.stat().st_size for path in root.rglob("*") if path.is_file())
    print(f"wrote {root} in {elapsed:.1f} s ({size / 2**20:.1f} MiB)")
    print(
        f"  {info['total_episodes']} episodes, {info['total_frames']} frames, "
        f"{info['total_tasks']} tasks, {info['fps']} fps"
    )
    print(f"  data: {len(list(root.glob('data/chunk-*/*.parquet')))} parquet file(s)")
    for key, count in sorted(videos.items()):
        print(f"  {key}: {count} mp4 file(s), {args.codec}, {args.height}x{args.width}")
    return 0
