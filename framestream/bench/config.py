"""What one benchmark run is: its settings, the command-line flags that fill them, warm-up.

Why its own module: the flags are the interface the script and ``framestream bench`` share,
and the runner only ever reads a :class:`BenchConfig`, never the parsed arguments.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from typing import Any

from framestream._units import parse_size
from framestream.stream.options import StreamOptions

MODES = ("single", "sarm", "window", "custom")
# Targets of the streaming issue: decoded-frame equivalents (samples/s x cameras) per node as
# a fraction of the sequential decode ceiling. Modes without a stated target get None.
TARGETS: dict[str, float] = {"single": 0.60, "window": 0.15}


@dataclass
class BenchConfig:
    """One benchmark run; field names match the command-line flags."""

    root: str | None = None
    mode: str = "single"
    label: str | None = None
    delta: list[str] = field(default_factory=list)  # "KEY=SPEC" in frames
    deltas_json: str | None = None  # LeRobot-style delta_timestamps, seconds
    num_workers: int = 2
    batch_size: int = 32
    max_batches: int | None = 100
    seconds: float | None = None
    warmup_batches: int | None = None  # None: enough to fill every worker's reservoir
    warmup_epochs: int = 0  # >0: time whole epochs after this many (overrides warmup_batches)
    epochs: int = 1
    buffer_size: int = StreamOptions.buffer_size  # the library's defaults
    active_shards: int | None = StreamOptions.active_shards
    memory_budget: int | str | None = StreamOptions.memory_budget  # bytes, 'auto' or None
    shuffle_chunk: int | None = StreamOptions.shuffle_chunk
    float: bool = False
    channels_last: bool = False
    collate: str = "framestream"  # or "default": torch's default_collate
    seed: int = 0
    prefetch_factor: int | None = None
    video_backend: str | None = None
    decoder_threads: int = 1
    torch_threads: int | None = None
    loader_timeout: float = 600.0
    output_dir: str | None = None
    csv: str | None = None
    ceiling: bool = False
    ceiling_seconds: float = 10.0
    ceiling_each: bool = False  # measure the ceiling right after every run, not once
    ceiling_processes: int | None = None
    decode_limit: bool = True  # with the ceiling: also the decode-only limit (PyAV, no RGB)
    compare_lerobot: str | None = None  # a Python with LeRobot: also run LeRobot's loaders
    lerobot_loaders: list[str] = field(default_factory=lambda: ["map", "streaming"])
    pixel_format: str = "rgb"
    storage_options: dict[str, Any] = field(default_factory=dict)
    source: str = "local"
    revision: str | None = None
    cache_dir: str | None = None
    cache_max_bytes: int | None = None
    # Remote runs (--source s3|http): the link the loopback server shapes, how bytes are
    # fetched, local rank processes, a whole cold first epoch, the same run on local files.
    link_latency_ms: float = 0.0
    link_mbps: float = 0.0  # megabytes (1e6 bytes) per second per connection; 0: unlimited
    fetch: str = "ranges"
    ranks: int | None = None
    first_epoch: bool = False
    compare_local: bool = False
    repeats: int = 1
    served: dict[str, Any] | None = None  # set by --ranks for its rank processes, not a flag

    def __post_init__(self) -> None:
        if self.first_epoch:  # one whole epoch, timed from the start of iteration
            self.warmup_batches, self.warmup_epochs, self.max_batches, self.epochs = 0, 0, 0, 1
            self.seconds = None
        if self.ranks is not None and self.ranks < 1:
            raise ValueError(f"--ranks must be >= 1, got {self.ranks}")
        if self.repeats < 1:
            raise ValueError(f"--repeats must be >= 1, got {self.repeats}")
        if self.compare_lerobot and (self.ranks or self.compare_local):
            # rank processes run framestream only: the comparison would silently not happen
            raise ValueError(
                "--compare-lerobot measures one process's loaders against LeRobot's and does "
                "not combine with --ranks or --compare-local; run it in its own invocation"
            )
        if self.link_latency_ms < 0 or self.link_mbps < 0:
            raise ValueError("--link-latency-ms and --link-mbps must be >= 0")

    @classmethod
    def matrix_from_args(cls, args: argparse.Namespace) -> list[BenchConfig]:
        """One config per (mode, workers) of the parsed flags, modes outermost."""
        names = set(cls.__dataclass_fields__)
        kwargs = {k: v for k, v in vars(args).items() if k in names}
        if isinstance(kwargs.get("storage_options"), str):
            kwargs["storage_options"] = json.loads(kwargs["storage_options"] or "{}")
        kwargs["delta"] = list(kwargs.get("delta") or [])
        modes = kwargs.pop("mode", None) or [None]
        workers = kwargs.pop("num_workers", None)
        workers = [2] if workers is None else workers
        modes = modes if isinstance(modes, list) else [modes]
        workers = workers if isinstance(workers, list) else [workers]
        return [cls(mode=m, num_workers=int(w), **kwargs) for m in modes for w in workers]


def _budget(text: str) -> int | str | None:
    """``--memory-budget``: a size, ``auto`` or ``none``."""
    word = text.strip().lower()
    if word in ("none", "auto"):
        return None if word == "none" else "auto"
    return parse_size(text)


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The benchmark's flags, shared by the script and ``framestream bench``."""
    p.add_argument(
        "--root",
        help="dataset folder or URL (s3://, http(s)://, hf://datasets/...); default: the cached "
        "synthetic benchmark dataset, generated on first use",
    )
    p.add_argument(
        "--mode",
        choices=MODES,
        nargs="+",
        default=None,
        help="one or more (each is a run). single: one frame per camera; sarm: state and "
        "cameras at -120..+120 frames every 30 (9 entries); window: 16 frames per camera and "
        "state every 10 frames over the last 5 s plus 16 future actions; custom: only what "
        "--delta/--deltas-json give (default: single, or custom with --delta/--deltas-json)",
    )
    p.add_argument("--label", help="name of the run in the CSV and plot (default: the mode)")
    p.add_argument(
        "--delta",
        action="append",
        default=[],
        metavar="KEY=SPEC",
        help="window of KEY in frames, e.g. 'cameras=-15:0' or 'action=0:15' or "
        "'observation.state=-120:120:30' or 'action=0,5,10' (ranges include both ends; "
        "'cameras' means every camera); repeatable; overrides the mode's window for KEY",
    )
    p.add_argument(
        "--deltas-json",
        metavar="FILE",
        help="a JSON file {key: [seconds, ...]} (LeRobot's delta_timestamps) merged over the mode",
    )
    p.add_argument(
        "--num-workers",
        type=int,
        nargs="+",
        default=[2],
        help="DataLoader workers; several values make several runs (modes x workers)",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--max-batches",
        type=int,
        default=100,
        help="timed batches after warm-up (0: no limit; the run also stops at --seconds or "
        "at the end of --epochs)",
    )
    p.add_argument("--seconds", type=float, default=None, help="stop the timed phase after this")
    p.add_argument(
        "--warmup-batches",
        type=int,
        default=None,
        help="batches consumed before timing starts; default: enough for every worker's "
        "shuffle reservoir to reach --buffer-size (buffer_size x workers / batch_size), so "
        "the timed phase is steady state",
    )
    p.add_argument(
        "--warmup-epochs",
        type=int,
        default=0,
        help="time whole epochs: the first N epochs are the warm-up (timing starts at the last "
        "batch of epoch N-1), so every frame delivered in the timed phase was also decoded "
        "in it and epoch starts are included; use with --epochs > N and --max-batches 0",
    )
    p.add_argument("--epochs", type=int, default=1, help="epochs at most (set_epoch between)")
    p.add_argument("--buffer-size", type=int, default=StreamOptions.buffer_size)
    p.add_argument("--active-shards", type=int, default=StreamOptions.active_shards)
    p.add_argument(
        "--memory-budget",
        type=_budget,
        default=StreamOptions.memory_budget,
        help="bytes per worker for decoded frames, decoders and batch slots, e.g. 512MB; "
        "auto: the library's rule (112 MB, more for long windows); none: unbounded "
        "(default: auto)",
    )
    p.add_argument(
        "--shuffle-chunk",
        type=int,
        default=StreamOptions.shuffle_chunk,
        help="frames per shuffled piece of an episode; 0: whole episodes (default: the "
        "library's rule)",
    )
    p.add_argument(
        "--float", action="store_true", help="float32 cameras in [0, 1] (default: uint8)"
    )
    p.add_argument(
        "--channels-last",
        action="store_true",
        help="channels-last camera tensors (a memcpy per frame instead of a transposing "
        "copy; default: contiguous)",
    )
    p.add_argument(
        "--collate",
        choices=("framestream", "default"),
        default="framestream",
        help="framestream.collate (what a DataLoader uses for framestream's samples by "
        "default: reusable worker shared memory, keeps channels-last) or torch's "
        "default_collate on plain dicts (fresh shared memory per batch), for comparison",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prefetch-factor", type=int, default=None)
    p.add_argument("--video-backend", choices=("torchcodec", "pyav"), default=None)
    p.add_argument("--decoder-threads", type=int, default=1)
    p.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch.set_num_threads in the main process (DataLoader workers always use 1); "
        "default: torch's own choice. On a shared machine 1 avoids OpenMP spinning when "
        "--num-workers 0 (see README)",
    )
    p.add_argument(
        "--loader-timeout",
        type=float,
        default=600.0,
        help="seconds a worker may take for one batch before the run fails (never hangs)",
    )
    p.add_argument("--output-dir", help="one JSON per run (and per rank) is written here")
    p.add_argument("--csv", help="append one row per run here (default: OUTPUT_DIR/results.csv)")
    p.add_argument(
        "--ceiling",
        action="store_true",
        help="also measure this machine's sequential torchcodec decode rate of the same files",
    )
    p.add_argument("--ceiling-seconds", type=float, default=10.0)
    p.add_argument(
        "--ceiling-each",
        action="store_true",
        help="with --ceiling: measure the ceiling right after every run instead of once per "
        "invocation, so each ratio uses a ceiling from the same minutes (on a shared VM the "
        "ceiling itself drifts by tens of percent)",
    )
    p.add_argument(
        "--ceiling-processes",
        type=int,
        default=None,
        help="default: one per CPU usable on the node (os.cpu_count() unless a cpuset "
        "restricts the job)",
    )
    p.add_argument(
        "--no-decode-limit",
        dest="decode_limit",
        action="store_false",
        help="with --ceiling: skip the decode-only limit (PyAV decoding without colour "
        "conversion, same files and processes), measured by default beside the RGB ceiling",
    )
    p.add_argument(
        "--pixel-format",
        choices=("rgb", "yuv420"),
        default="rgb",
        help="cameras as RGB (default) or I420 planes (StreamOptions.pixel_format; the "
        "consumer converts nothing: the figures are the loader's)",
    )
    p.add_argument(
        "--compare-lerobot",
        metavar="PYTHON",
        help="the Python of an environment with LeRobot installed: after each framestream run, "
        "run LeRobot's loaders (--lerobot-loaders) there on the same dataset, mode, workers "
        "and batch size, and report framestream's samples/s ratio to each (one process: "
        "not with --ranks or --compare-local)",
    )
    p.add_argument(
        "--lerobot-loaders",
        nargs="+",
        choices=("map", "streaming"),
        default=["map", "streaming"],
        help="map: LeRobotDataset through a shuffling DataLoader; streaming: "
        "StreamingLeRobotDataset (max_num_shards = workers, at least 1)",
    )
    p.add_argument(
        "--storage-options",
        default="{}",
        help="JSON of fsspec storage options for a remote root",
    )
    p.add_argument("--revision", help="Hub revision (branch, tag or commit) of an hf:// root")
    p.add_argument(
        "--cache-dir",
        help="byte cache folder for a remote root (default: framestream's; see README on "
        "prewarming); a fresh folder measures a cold first epoch",
    )
    p.add_argument(
        "--cache-max-bytes",
        type=parse_size,
        default=None,
        help="byte cache limit for a remote root, e.g. 50G; 0 reads remote files directly "
        "(no cache)",
    )
    p.add_argument(
        "--source",
        choices=("local", "s3", "http"),
        default="local",
        help="local: read --root as given (any URL); s3/http: serve --root (a local folder, "
        "default the synthetic dataset) from a loopback S3/HTTP server and read it from there, "
        "with a fresh byte cache per run and rank unless --cache-dir is given (a cold start)",
    )
    p.add_argument(
        "--link-latency-ms",
        type=float,
        default=0.0,
        help="with --source s3|http: the server waits this long before answering each request "
        "(a link's round trip, e.g. 20)",
    )
    p.add_argument(
        "--link-mbps",
        type=float,
        default=0.0,
        help="with --source s3|http: the server sends each answer at most this fast, in MB/s "
        "(1e6 bytes/s) per connection, e.g. 100; 0: unlimited",
    )
    p.add_argument(
        "--fetch",
        choices=("ranges", "files"),
        default="ranges",
        help="remote reads (RemoteOptions.fetch): each episode's byte ranges, or whole files",
    )
    p.add_argument(
        "--ranks",
        type=int,
        default=None,
        help="run N local rank processes (gloo on 127.0.0.1), each with its own byte cache as "
        "on separate nodes, sharing one loopback server (--source s3|http); the result has "
        "per-rank figures and totals",
    )
    p.add_argument(
        "--first-epoch",
        action="store_true",
        help="time one whole epoch from the start of iteration (no warm-up, no batch limit): "
        "samples/s over the epoch and time to first batch; with --source s3|http a cold one",
    )
    p.add_argument(
        "--compare-local",
        action="store_true",
        help="also run the same configuration (and ranks) on the local folder the server "
        "serves, and report vs_local = remote / local samples/s (implies --ranks 1 if unset)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run each configuration this many times and report medians: with "
        "--compare-local, local and remote alternate; with --compare-lerobot, each run is "
        "followed by LeRobot's, and the ratios are the medians of each pair's",
    )
    return p


def effective_warmup(cfg: BenchConfig) -> int:
    """Warm-up batches: as given, else until each worker's reservoir is full.

    The reservoir grows by one reference per emitted sample up to ``buffer_size`` (per
    worker), and while it grows readers decode ahead faster than samples leave, so timing
    before that point mixes a transient into the steady-state figures.
    """
    if cfg.warmup_batches is not None:
        return max(0, int(cfg.warmup_batches))
    samples = cfg.buffer_size * max(1, cfg.num_workers)
    return max(1, math.ceil(samples / max(1, cfg.batch_size)))
