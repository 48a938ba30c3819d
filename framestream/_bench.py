"""The streaming benchmark, shared by ``benchmarks/streaming/benchmark_streaming.py`` and
``framestream bench``.

Why a library module: the numbers people compare loaders by must come from one definition.
The script (for clusters, CSV matrices) and the CLI (for a quick look) both call
:func:`run_benchmark`, so they cannot drift apart in what "samples/s" or "latency" means.

What a run does: build a :class:`~framestream.StreamingLeRobotDataset` for a *mode* (the
shape of the samples), iterate it through a real ``torch.utils.data.DataLoader`` with a dummy
consumer that touches every tensor page and discards it, time every batch, read the dataset's
counters (summed over the DataLoader workers), and optionally measure the machine's
sequential decode ceiling on the same mp4 files. Under ``torchrun``/``accelerate launch``/
``srun`` every rank runs the same thing and figures are summed per node over a gloo group.
See ``benchmarks/streaming/README.md`` for what each figure means.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

MODES = ("single", "sarm", "window", "custom")
# Targets of the streaming issue: decoded-frame equivalents (samples/s x cameras) per node as
# a fraction of the sequential decode ceiling. Modes without a stated target get None.
TARGETS: dict[str, float] = {"single": 0.60, "window": 0.15}
CAMERAS_KEY = "cameras"  # in --delta: every camera of the dataset

# The CSV's columns, in order. A row is a flat view of the JSON; an existing CSV keeps the
# header it was created with (unknown columns are dropped, missing ones left empty).
CSV_FIELDS = (
    "timestamp",
    "label",
    "mode",
    "source",
    "root",
    "num_workers",
    "batch_size",
    "dtype",
    "buffer_size",
    "active_shards",
    "seed",
    "torch_threads",
    "rank",
    "world_size",
    "local_world_size",
    "nodes",
    "cameras",
    "window_length",
    "frames_per_sample",
    "batches",
    "samples",
    "elapsed_s",
    "samples_per_s",
    "delivered_frames",
    "delivered_frames_per_s",
    "decoded_frames",
    "decoded_frames_per_s",
    "reuse_ratio",
    "reuse_ratio_total",
    "warmup_batches",
    "samples_per_s_node",
    "frames_per_s_node",
    "decoded_frames_per_s_node",
    "frames_per_s_total",
    "sample_latency_ms_p50",
    "sample_latency_ms_p95",
    "sample_latency_ms_p99",
    "batch_latency_ms_p50",
    "batch_latency_ms_p95",
    "batch_latency_ms_p99",
    "first_batch_s",
    "peak_rss_mb_main",
    "peak_rss_mb_worker_max",
    "peak_rss_mb_total",
    "cache_hits",
    "cache_misses",
    "cache_evictions",
    "cache_lookups",
    "cache_hit_rate",
    "bytes_fetched",
    "remote_requests",
    "byte_cache_hits",
    "byte_cache_misses",
    "distinct_episodes_per_batch",
    "expected_distinct_episodes",
    "shuffle_quality",
    "ceiling_frames_per_s",
    "ceiling_processes",
    "delivered_vs_ceiling",
    "decoded_vs_ceiling",
    "sample_frames_vs_ceiling",
    "target",
    "meets_target",
    "load_avg_start",
    "load_avg_end",
    "framestream",
    "torch",
    "torchcodec",
    "av",
    "python",
    "cpu_count",
    "cpu_model",
    "platform",
    "hostname",
)


# ----------------------------------------------------------------------------- configuration
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
    epochs: int = 1
    buffer_size: int = 1000
    active_shards: int = 8
    float: bool = False
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
    ceiling_processes: int | None = None
    storage_options: dict[str, Any] = field(default_factory=dict)
    source: str = "local"
    revision: str | None = None
    cache_dir: str | None = None
    cache_max_bytes: int | None = None

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
    p.add_argument("--epochs", type=int, default=1, help="epochs at most (set_epoch between)")
    p.add_argument("--buffer-size", type=int, default=1000)
    p.add_argument("--active-shards", type=int, default=8)
    p.add_argument(
        "--float", action="store_true", help="float32 cameras in [0, 1] (default: uint8)"
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
        "--ceiling-processes",
        type=int,
        default=None,
        help="default: one per CPU usable on the node (os.cpu_count() unless a cpuset "
        "restricts the job)",
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
        "default the synthetic dataset) from a loopback S3/HTTP server and read it from there",
    )
    return p


def parse_size(text: str) -> int:
    """``'500M'``, ``'20G'``, ``'1.5T'`` or a byte count."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 500M, 20G)") from None


# ----------------------------------------------------------------------------- windows
def parse_delta_spec(spec: str) -> list[int]:
    """``'-120:120:30'`` (inclusive range), ``'0,5,10'`` or a mix, as frame offsets."""
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if ":" in part:
            bits = [int(b) for b in part.split(":")]
            if len(bits) not in (2, 3):
                raise ValueError(f"bad range {part!r}: expected START:STOP or START:STOP:STEP")
            start, stop = bits[0], bits[1]
            step = bits[2] if len(bits) == 3 else (1 if stop >= start else -1)
            if step == 0 or (stop - start) * step < 0:
                raise ValueError(f"bad range {part!r}: the step does not reach STOP")
            out.extend(range(start, stop + (1 if step > 0 else -1), step))
        else:
            out.append(int(part))
    if not out:
        raise ValueError(f"empty delta spec {spec!r}")
    return out


def mode_frames(mode: str, *, camera_keys: Sequence[str], features: Sequence[str]) -> dict:
    """The mode's window as integer frame offsets per key (``{}``: current frame only)."""
    if mode in ("single", "custom"):
        return {}
    state = ["observation.state"] if "observation.state" in features else []
    if mode == "sarm":
        offs = list(range(-120, 121, 30))
        return {k: offs for k in [*state, *camera_keys]}
    if mode == "window":
        past = list(range(-150, 1, 10))  # 16 entries over the last 5 s at 30 fps
        out = {k: past for k in [*state, *camera_keys]}
        if "action" in features:
            out["action"] = list(range(16))
        return out
    raise ValueError(f"unknown mode {mode!r} (choose from {MODES})")


def resolve_deltas(
    cfg: BenchConfig, *, camera_keys: Sequence[str], features: Sequence[str], fps: int
) -> tuple[str, dict[str, list[float]]]:
    """(mode, delta_timestamps in seconds) from the mode preset and the overrides."""
    mode = cfg.mode or ("custom" if (cfg.delta or cfg.deltas_json) else "single")
    frames = mode_frames(mode, camera_keys=camera_keys, features=features)
    seconds: dict[str, list[float]] = {k: [f / fps for f in v] for k, v in frames.items()}
    if cfg.deltas_json:
        loaded = json.loads(Path(cfg.deltas_json).read_text())
        if not isinstance(loaded, dict):
            raise ValueError(f"{cfg.deltas_json}: expected a JSON object {{key: [seconds]}}")
        for key, values in loaded.items():
            keys = list(camera_keys) if key == CAMERAS_KEY else [key]
            for k in keys:
                seconds[k] = [float(v) for v in values]
    for item in cfg.delta:
        key, sep, spec = item.partition("=")
        if not sep:
            raise ValueError(f"--delta {item!r}: expected KEY=SPEC")
        offs = parse_delta_spec(spec)
        keys = list(camera_keys) if key.strip() == CAMERAS_KEY else [key.strip()]
        for k in keys:
            seconds[k] = [f / fps for f in offs]
    return mode, seconds


# ----------------------------------------------------------------------------- figures
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


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 95, 99)) -> list[float | None]:
    if not len(values):
        return [None for _ in qs]
    return [float(v) for v in np.percentile(np.asarray(values, dtype=np.float64), list(qs))]


def expected_distinct_episodes(lengths: Sequence[int], batch_size: int) -> dict[str, float]:
    """Expected distinct episodes in a batch of a perfect global shuffle.

    A perfect shuffle is a uniform permutation of all N frames cut into batches of B, so a
    batch is B frames drawn *without* replacement: episode e (n_e frames) is absent with
    probability C(N - n_e, B) / C(N, B), computed exactly with integers. The with-replacement
    approximation ``sum_e 1 - (1 - n_e/N)^B`` is given alongside.
    """
    lengths = [int(n) for n in lengths if int(n) > 0]
    total = sum(lengths)
    b = min(int(batch_size), total)
    if b <= 0:
        return {"exact": 0.0, "with_replacement": 0.0}
    denom = math.comb(total, b)
    exact = sum(1.0 - math.comb(total - n, b) / denom for n in lengths)
    approx = sum(1.0 - (1.0 - n / total) ** b for n in lengths)
    return {"exact": float(exact), "with_replacement": float(approx)}


def touch(batch: Mapping[str, Any]) -> int:
    """Read one element per memory page of every tensor (what a consumer costs, at least)."""
    import torch

    acc = 0
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.numel():
            flat = value.reshape(-1)
            step = max(1, 4096 // value.element_size())
            acc += int(flat[::step].to(torch.int64).sum())
    return acc


def _vm_hwm_mb(pid: int) -> float | None:
    """Peak resident set of a live process (Linux ``VmHWM``), in MB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


class RssTracker:
    """Peak RSS of this process and of its children (the DataLoader workers).

    Linux keeps each process's peak (``VmHWM``); elsewhere psutil's current RSS is sampled
    and the maximum kept, which can miss short spikes.
    """

    def __init__(self) -> None:
        self.main_pid = os.getpid()
        self.peaks: dict[int, float] = {}
        # Several runs share the main process (a mode x workers matrix): reset its peak so
        # each run reports its own (Linux >= 4.0; else the peak since the process started).
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.main_reset = True
        except OSError:
            self.main_reset = False
        try:
            import psutil

            self._proc: Any = psutil.Process()
        except ImportError:  # psutil is in the bench extra; without it: main process only
            self._proc = None

    def sample(self) -> None:
        procs = [self.main_pid]
        if self._proc is not None:
            try:
                procs += [c.pid for c in self._proc.children(recursive=True)]
            except Exception:  # a child exiting mid-listing: keep what we have
                pass
        for pid in procs:
            mb = _vm_hwm_mb(pid)
            if mb is None and self._proc is not None:
                try:
                    import psutil

                    mb = psutil.Process(pid).memory_info().rss / 2**20
                except Exception:
                    mb = None
            if mb is not None:
                self.peaks[pid] = max(self.peaks.get(pid, 0.0), mb)

    def summary(self) -> dict[str, Any]:
        import resource

        main = self.peaks.get(self.main_pid, 0.0)
        if not self.main_reset or not main:
            ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            main = max(main, ru / 2**20 if sys.platform == "darwin" else ru / 1024.0)
        workers = [round(v, 1) for p, v in sorted(self.peaks.items()) if p != self.main_pid]
        return {
            "peak_rss_mb_main": round(main, 1),
            "peak_rss_mb_workers": workers,
            "peak_rss_mb_worker_max": max(workers) if workers else None,
            "peak_rss_mb_total": round(main + sum(workers), 1),
        }


# ----------------------------------------------------------------------------- environment
@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    initialised_here: bool = False
    active: bool = False  # a torch.distributed group is usable for reductions


def _slurm_tasks_per_node() -> int | None:
    raw = os.environ.get("SLURM_NTASKS_PER_NODE") or os.environ.get("SLURM_TASKS_PER_NODE")
    if not raw:
        return None
    try:  # SLURM_TASKS_PER_NODE looks like "4(x2),3": the first node's count is ours if equal
        return int(raw.split(",")[0].split("(")[0])
    except ValueError:
        return None


def detect_dist() -> DistInfo:
    """Rank, world size and local layout from torchrun/accelerate env vars, else SLURM's."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local_rank = int(env.get("LOCAL_RANK", 0))
        local_world = int(env.get("LOCAL_WORLD_SIZE", 0)) or None
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        rank, world = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])
        local_rank = int(env.get("SLURM_LOCALID", 0))
        local_world = _slurm_tasks_per_node()
    else:
        return DistInfo()
    return DistInfo(rank, world, local_rank, local_world or 1)


def init_dist(info: DistInfo) -> DistInfo:
    """Join (or reuse) a gloo group so that per-node sums are real sums, not estimates."""
    import torch.distributed as dist

    if info.world_size <= 1 or not dist.is_available():
        return info
    if dist.is_initialized():
        info.active = True
        return info
    if not os.environ.get("MASTER_ADDR"):
        return info  # no rendezvous: per-rank figures only, and the JSON says so
    os.environ.setdefault("MASTER_PORT", "29500")
    dist.init_process_group(
        "gloo",
        init_method="env://",
        rank=info.rank,
        world_size=info.world_size,
        timeout=timedelta(minutes=30),
    )
    info.initialised_here = info.active = True
    return info


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name, mod in (
        ("framestream", "framestream"),
        ("torch", "torch"),
        ("torchcodec", "torchcodec"),
        ("av", "av"),
        ("numpy", "numpy"),
        ("pyarrow", "pyarrow"),
        ("fsspec", "fsspec"),
    ):
        try:
            out[name] = str(__import__(mod).__version__)
        except Exception:  # missing or broken optional package: say so, do not fail
            out[name] = None
    return out


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    try:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        mem_gb = None
    return {
        "hostname": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "memory_gb": round(mem_gb, 1) if mem_gb else None,
    }


def _load_avg() -> str | None:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return None


def load_serve() -> Callable[[str, str], Any]:
    """``serve(source, local_root)`` from ``benchmarks/streaming/servers.py`` (loopback S3/HTTP).

    Loaded by path and only for ``--source s3|http``: the servers are a benchmark tool, not
    part of the installed package, and a local run must not depend on them.
    """
    import importlib.util

    here = Path(__file__).resolve().parent.parent / "benchmarks" / "streaming" / "servers.py"
    env = os.environ.get("FRAMESTREAM_BENCH_SERVERS")
    path = Path(env) if env else here
    if not path.exists():
        raise RuntimeError(
            f"--source s3/http needs benchmarks/streaming/servers.py (looked at {path}); run "
            "from a framestream checkout or set FRAMESTREAM_BENCH_SERVERS to its path"
        )
    spec = importlib.util.spec_from_file_location("framestream_bench_servers", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.serve


# ----------------------------------------------------------------------------- ceiling
def _widen_affinity() -> int | None:
    """Allow this process on every CPU the node lets it use; returns how many that is.

    A rank launched by srun/torchrun is often bound to its own cores, and processes inherit
    that binding; the ceiling is a per-node figure, so its decoders must be free to use the
    whole node (the kernel still confines them to the job's cpuset).
    """
    try:
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def node_cpus() -> int:
    """CPUs usable on this node by this job (not just by this rank), without side effects."""
    try:
        mine = os.sched_getaffinity(0)
    except AttributeError:
        return os.cpu_count() or 1
    wide = _widen_affinity()
    try:
        os.sched_setaffinity(0, mine)
    except OSError:
        pass
    return wide or len(mine) or os.cpu_count() or 1


def _ceiling_worker(
    index: int, paths: list[str], seconds: float, chunk: int, barrier: Any, out: Any
) -> None:
    """Decode whole files in order, one FFmpeg thread, until ``seconds`` have passed."""
    try:
        import torch
        from torchcodec.decoders import VideoDecoder

        torch.set_num_threads(1)
        _widen_affinity()
        VideoDecoder(paths[index % len(paths)], num_ffmpeg_threads=1).get_frames_in_range(0, 1)
        barrier.wait(timeout=300)
        frames = files = 0
        t0 = time.perf_counter()
        deadline = t0 + seconds
        k = index
        while True:
            dec = VideoDecoder(paths[k % len(paths)], num_ffmpeg_threads=1)
            n = dec.metadata.num_frames or len(dec)
            for start in range(0, n, chunk):
                frames += int(dec.get_frames_in_range(start, min(n, start + chunk)).data.shape[0])
                if time.perf_counter() >= deadline:
                    break
            else:
                files += 1
            k += 1
            if time.perf_counter() >= deadline:
                break
        out.put((index, frames, time.perf_counter() - t0, files, None))
    except Exception as exc:  # reported to the parent rather than lost in a child
        out.put((index, 0, 0.0, 0, f"{type(exc).__name__}: {exc}"))


def measure_ceiling(
    paths: Sequence[str], *, processes: int | None = None, seconds: float = 10.0, chunk: int = 32
) -> dict[str, Any]:
    """Sequential torchcodec decode rate of ``paths`` on this machine, all cores busy.

    ``processes`` (default: the CPUs usable on this node, :func:`node_cpus`, which is
    ``os.cpu_count()`` unless a cpuset restricts the job) processes each hold one single-threaded
    decoder and decode whole files front to back (starting at different files, cycling), for
    ``seconds`` after a common start barrier. The ceiling is the sum of their frames/s.
    """
    import multiprocessing as mp

    paths = [str(p) for p in paths]
    if not paths:
        raise ValueError("no video files to measure a ceiling on")
    n = int(processes or node_cpus())
    # fork where it exists: the children inherit the imported decoder (no re-import per
    # process); they never touch the parent's thread pools, they only decode.
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    ctx = mp.get_context(method)
    barrier, out = ctx.Barrier(n), ctx.Queue()
    procs = [
        ctx.Process(target=_ceiling_worker, args=(i, paths, seconds, chunk, barrier, out))
        for i in range(n)
    ]
    for p in procs:
        p.start()
    results = []
    try:
        for _ in range(n):
            results.append(out.get(timeout=seconds + 600))
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
    errors = [r[4] for r in results if r[4]]
    if errors:
        raise RuntimeError(f"ceiling measurement failed: {errors[0]}")
    per_proc = [r[1] / r[2] if r[2] > 0 else 0.0 for r in sorted(results)]
    return {
        "ceiling_frames_per_s": float(sum(per_proc)),
        "ceiling_processes": n,
        "ceiling_per_process_frames_per_s": [round(x, 1) for x in per_proc],
        "ceiling_frames": int(sum(r[1] for r in results)),
        "ceiling_files_completed": int(sum(r[3] for r in results)),
        "ceiling_seconds": seconds,
        "ceiling_files": len(paths),
    }


def _ceiling_paths(meta: Any, episodes: Sequence[int], local_root: str | None, tmp: str) -> list:
    """Local paths of the dataset's mp4s (copied out of a remote source, untimed)."""
    rels = sorted({meta.video_file(int(e), k) for e in episodes for k in meta.video_keys})
    out = []
    for rel in rels:
        if local_root is not None:
            out.append(os.path.join(local_root, rel))
            continue
        local = meta.source.local_path(rel)
        if local is None:
            local = os.path.join(tmp, rel)
            os.makedirs(os.path.dirname(local), exist_ok=True)
            with meta.source.open(rel) as src, open(local, "wb") as dst:
                while block := src.read(1 << 22):
                    dst.write(block)
        out.append(local)
    return out


# ----------------------------------------------------------------------------- the run
def _gather_node_sums(dist_info: DistInfo, mine: dict[str, Any]) -> dict[str, Any]:
    """Sum per-rank rates over the ranks on this host (and over the world) via gloo."""
    import torch.distributed as dist

    if dist_info.world_size <= 1:
        return {
            "samples_per_s_node": mine["samples_per_s"],
            "frames_per_s_node": mine["delivered_frames_per_s"],
            "decoded_frames_per_s_node": mine["decoded_frames_per_s"],
            "frames_per_s_total": mine["delivered_frames_per_s"],
            "nodes": 1,
            "ranks": [mine],
        }
    if not dist_info.active:
        return {
            "samples_per_s_node": None,
            "frames_per_s_node": None,
            "decoded_frames_per_s_node": None,
            "frames_per_s_total": None,
            "nodes": None,
            "ranks": [mine],
        }
    gathered: list[Any] = [None] * dist_info.world_size
    dist.all_gather_object(gathered, mine)
    host = mine["hostname"]
    node = [g for g in gathered if g["hostname"] == host]
    return {
        "samples_per_s_node": sum(g["samples_per_s"] for g in node),
        "frames_per_s_node": sum(g["delivered_frames_per_s"] for g in node),
        "decoded_frames_per_s_node": sum(g["decoded_frames_per_s"] for g in node),
        "frames_per_s_total": sum(g["delivered_frames_per_s"] for g in gathered),
        "nodes": len({g["hostname"] for g in gathered}),
        "ranks": gathered,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return float(a) / float(b) if a is not None and b else None


@dataclass
class _Session:
    """What every run of one invocation shares: ranks, the dataset location, the ceiling."""

    info: DistInfo
    root: str
    storage: dict[str, Any]
    local_root: str | None
    ceiling: dict[str, Any] | None = None


def run_benchmarks(
    cfgs: Sequence[BenchConfig],
    *,
    progress: Callable[[BenchConfig], Callable[[int], None] | None] | None = None,
    log: Callable[[str], None] | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run several benchmarks (a mode x workers matrix) on one dataset, one after the other.

    The process group, the loopback server (``--source s3|http``) and the decode ceiling are
    set up once and shared. The runs must share ``root``, ``source`` and ``storage_options``.
    ``progress(cfg)`` returns a per-batch callback for that run; ``on_result`` gets each
    result as soon as it exists (so a failing later run does not lose earlier ones).
    """
    if not cfgs:
        return []
    first = cfgs[0]
    for c in cfgs[1:]:
        mine = (c.root, c.source, c.storage_options, c.revision, c.cache_dir)
        if mine != (
            first.root,
            first.source,
            first.storage_options,
            first.revision,
            first.cache_dir,
        ):
            raise ValueError("runs of one invocation must share the dataset and how it is read")
    say = log or (lambda _msg: None)
    info = init_dist(detect_dist())
    server = None
    try:
        root = first.root
        local_root: str | None = None
        storage = dict(first.storage_options)
        if root is None:
            from framestream._default_data import synthetic_dataset

            say("using the synthetic benchmark dataset (generated once, then cached)")
            root = str(synthetic_dataset(progress=info.rank == 0))
        if first.source != "local":
            serve = load_serve()
            local_root = root
            server = serve(first.source, local_root)
            root = server.url
            storage = {**server.storage_options, **storage}
            say(f"serving {local_root} over {first.source} at {root}")
        elif "://" not in root:
            local_root = root
        session = _Session(info, str(root), storage, local_root)
        results = []
        for cfg in cfgs:
            result = _run_one(cfg, session, progress(cfg) if progress else None, say)
            if on_result is not None:
                on_result(result)
            results.append(result)
        return results
    finally:
        if server is not None:
            server.stop()
        if info.initialised_here:
            import torch.distributed as dist

            dist.destroy_process_group()


def run_benchmark(
    cfg: BenchConfig,
    *,
    progress: Callable[[int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run one benchmark and return its result (see the module docstring and the README).

    ``progress(n)`` is called once per consumed batch; ``log`` receives stage messages.
    """
    return run_benchmarks([cfg], progress=(lambda _c: progress), log=log)[0]


def _run_one(
    cfg: BenchConfig,
    session: _Session,
    progress: Callable[[int], None] | None,
    say: Callable[[str], None],
) -> dict[str, Any]:
    import torch

    from framestream import DatasetMeta, StreamingLeRobotDataset
    from framestream._source import Source

    info, root, storage, local_root = (
        session.info,
        session.root,
        session.storage,
        session.local_root,
    )
    notes: list[str] = []
    load_start = _load_avg()
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    t_setup = time.perf_counter()
    meta = DatasetMeta(
        Source(
            str(root),
            storage,
            revision=cfg.revision,
            cache_dir=cfg.cache_dir,
            cache_max_bytes=cfg.cache_max_bytes,
        )
    )
    features = list(meta.features)
    mode, deltas = resolve_deltas(
        cfg, camera_keys=meta.camera_keys, features=features, fps=meta.fps
    )
    ds = StreamingLeRobotDataset(
        root,
        meta=meta,
        delta_timestamps=deltas or None,
        return_uint8=not cfg.float,
        seed=cfg.seed,
        buffer_size=cfg.buffer_size,
        active_shards=cfg.active_shards,
        rank=info.rank,
        world_size=info.world_size,
        video_backend=cfg.video_backend,  # type: ignore[arg-type]
        decoder_threads=cfg.decoder_threads,
    )
    setup_s = time.perf_counter() - t_setup
    cameras = len(meta.camera_keys)
    offsets = ds.window.offsets
    per_camera = {k: int(len(offsets[k])) if k in offsets else 1 for k in meta.camera_keys}
    frames_per_sample = sum(per_camera.values())
    window_length = frames_per_sample / cameras if cameras else 0
    if cameras and window_length == int(window_length):
        window_length = int(window_length)

    loader_kwargs: dict[str, Any] = {
        "batch_size": cfg.batch_size,
        "num_workers": cfg.num_workers,
    }
    if cfg.num_workers > 0:
        loader_kwargs["persistent_workers"] = cfg.epochs > 1
        loader_kwargs["timeout"] = cfg.loader_timeout
        if cfg.prefetch_factor is not None:
            loader_kwargs["prefetch_factor"] = cfg.prefetch_factor
    loader = torch.utils.data.DataLoader(ds, **loader_kwargs)

    rss = RssTracker()
    max_batches = cfg.max_batches or None
    intervals: list[float] = []
    batch_sizes: list[int] = []
    distinct: list[int] = []
    first_batch_s: float | None = None
    consumed = timed_samples = timed_batches = total_batches = 0
    sink = 0
    stats0: dict[str, Any] | None = None
    t_start = t_prev = t_end = 0.0
    last_rss = 0.0
    done = False
    warmup = effective_warmup(cfg)
    say(
        f"streaming: mode={mode} workers={cfg.num_workers} batch={cfg.batch_size} "
        f"warm-up={warmup} batches"
    )
    it: Any = None
    for epoch in range(cfg.epochs):
        ds.set_epoch(epoch)
        t_iter = time.perf_counter()
        if epoch == 0 and warmup == 0:
            stats0, t_start, t_prev = ds.stats(), t_iter, t_iter
        it = iter(loader)
        for batch in it:
            now = time.perf_counter()
            n = len(batch["index"])
            sink += touch(batch)
            if first_batch_s is None:
                first_batch_s = now - t_iter
            total_batches += 1
            consumed += n
            if stats0 is None:
                if total_batches >= warmup:
                    stats0, t_start, t_prev = ds.stats(), now, now
            else:
                intervals.append(now - t_prev)
                batch_sizes.append(n)
                t_prev = now
                timed_batches += 1
                timed_samples += n
                if n == cfg.batch_size:
                    distinct.append(len(torch.unique(batch["episode_index"])))
            del batch
            if now - last_rss > 0.5:
                rss.sample()
                last_rss = now
            if progress is not None:
                progress(1)
            t_end = time.perf_counter()
            if stats0 is not None and (
                (max_batches is not None and timed_batches >= max_batches)
                or (cfg.seconds is not None and t_end - t_start >= cfg.seconds)
            ):
                done = True
                break
        if done:
            break
    rss.sample()  # while the workers are still alive (the iterator holds them)
    stats1 = ds.stats()
    del it, loader  # shuts the workers down before the ceiling takes every core
    if stats0 is None:
        notes.append("the data ran out during warm-up: nothing was timed")
        stats0, t_start, t_end = stats1, t_end, t_end
    elapsed = max(t_prev - t_start, 1e-9) if timed_batches else 0.0
    timed = {
        k: stats1[k] - stats0[k]
        for k in stats1
        if isinstance(stats1[k], int) and k != "epoch" and k != "cache_lookups"
    }
    delivered = timed_samples * frames_per_sample
    samples_per_s = timed_samples / elapsed if elapsed else 0.0
    delivered_fps = delivered / elapsed if elapsed else 0.0
    decoded_fps = timed["decoded_frames"] / elapsed if elapsed else 0.0
    if timed["decoded_frames"]:
        reuse = timed["delivered_frames"] / timed["decoded_frames"]
        reuse_basis = "timed"
    else:
        reuse = stats1["reuse_ratio"]
        reuse_basis = "whole run"
    sample_lat = [1000.0 * dt / b for dt, b in zip(intervals, batch_sizes, strict=True)]
    batch_lat = [1000.0 * dt for dt in intervals]
    s50, s95, s99 = percentiles(sample_lat)
    b50, b95, b99 = percentiles(batch_lat)
    shuffle_ref = expected_distinct_episodes(ds.lengths.tolist(), cfg.batch_size)
    mean_distinct = float(np.mean(distinct)) if distinct else None
    mach = machine()
    vers = versions()
    rank_fig = {
        "rank": info.rank,
        "hostname": mach["hostname"],
        "samples_per_s": samples_per_s,
        "delivered_frames_per_s": delivered_fps,
        "decoded_frames_per_s": decoded_fps,
    }
    node = _gather_node_sums(info, rank_fig)
    if info.world_size > 1 and not info.active:
        notes.append(
            "WORLD_SIZE > 1 but no torch.distributed rendezvous (MASTER_ADDR unset): "
            "per-node sums are not available, only this rank's figures"
        )

    ceiling: dict[str, Any] = {}
    if cfg.ceiling:
        if session.ceiling is None:
            session.ceiling = _ceiling_for_node(cfg, info, meta, ds.episodes, local_root, say)
        else:
            notes.append("decode ceiling measured once per invocation, by an earlier run")
        ceiling = session.ceiling

    ceil_fps = ceiling.get("ceiling_frames_per_s")
    target = TARGETS.get(mode)
    sample_frames_node = (
        node["samples_per_s_node"] * cameras if node["samples_per_s_node"] is not None else None
    )
    sample_vs = _ratio(sample_frames_node, ceil_fps)
    result: dict[str, Any] = {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "label": cfg.label or mode,
        "mode": mode,
        "source": cfg.source,
        "root": str(root),
        "local_root": local_root,
        "num_workers": cfg.num_workers,
        "batch_size": cfg.batch_size,
        "dtype": "float32" if cfg.float else "uint8",
        "buffer_size": cfg.buffer_size,
        "active_shards": cfg.active_shards,
        "seed": cfg.seed,
        "torch_threads": torch.get_num_threads(),
        "rank": info.rank,
        "world_size": info.world_size,
        "local_rank": info.local_rank,
        "local_world_size": info.local_world_size,
        "nodes": node["nodes"],
        "cameras": cameras,
        "camera_keys": list(meta.camera_keys),
        "window_length": window_length,
        "window_lengths": per_camera,
        "frames_per_sample": frames_per_sample,
        "delta_frames": {k: [int(x) for x in v] for k, v in offsets.items()},
        "warmup_batches": warmup,
        "batches": timed_batches,
        "samples": timed_samples,
        "total_batches": total_batches,
        "total_samples": consumed,
        "elapsed_s": elapsed,
        "setup_s": setup_s,
        "samples_per_s": samples_per_s,
        "delivered_frames": delivered,
        "delivered_frames_per_s": delivered_fps,
        "decoded_frames": timed["decoded_frames"],
        "decoded_frames_per_s": decoded_fps,
        "reuse_ratio": reuse,
        "reuse_ratio_basis": reuse_basis,
        "reuse_ratio_total": stats1["reuse_ratio"],
        "samples_per_s_node": node["samples_per_s_node"],
        "frames_per_s_node": node["frames_per_s_node"],
        "decoded_frames_per_s_node": node["decoded_frames_per_s_node"],
        "frames_per_s_total": node["frames_per_s_total"],
        "sample_latency_ms_p50": s50,
        "sample_latency_ms_p95": s95,
        "sample_latency_ms_p99": s99,
        "batch_latency_ms_p50": b50,
        "batch_latency_ms_p95": b95,
        "batch_latency_ms_p99": b99,
        "first_batch_s": first_batch_s,
        **rss.summary(),
        "cache_hits": stats1["cache_hits"],
        "cache_misses": stats1["cache_misses"],
        "cache_evictions": stats1["cache_evictions"],
        "cache_lookups": stats1["cache_lookups"],
        "cache_hit_rate": stats1["cache_hit_rate"],
        **{
            k: stats1.get(k)
            for k in ("bytes_fetched", "remote_requests", "byte_cache_hits", "byte_cache_misses")
        },
        "distinct_episodes_per_batch": mean_distinct,
        "expected_distinct_episodes": shuffle_ref["exact"],
        "expected_distinct_episodes_with_replacement": shuffle_ref["with_replacement"],
        "shuffle_quality": _ratio(mean_distinct, shuffle_ref["exact"]),
        "ceiling_frames_per_s": ceil_fps,
        "ceiling_processes": ceiling.get("ceiling_processes"),
        "ceiling": ceiling or None,
        "delivered_vs_ceiling": _ratio(node["frames_per_s_node"], ceil_fps),
        "decoded_vs_ceiling": _ratio(node["decoded_frames_per_s_node"], ceil_fps),
        "sample_frames_vs_ceiling": sample_vs,
        "target": target,
        "meets_target": (sample_vs >= target) if (target and sample_vs is not None) else None,
        "stats_total": stats1,
        "stats_timed": timed,
        "ranks": node["ranks"],
        "load_avg_start": load_start,
        "load_avg_end": _load_avg(),
        "versions": vers,
        "machine": mach,
        **{k: vers.get(k) for k in ("framestream", "torch", "torchcodec", "av", "python")},
        **{k: mach[k] for k in ("cpu_count", "cpu_model", "platform", "hostname")},
        "config": asdict(cfg),
        "notes": notes,
        "consumer_checksum": sink % 1_000_003,  # keeps the touch from being a no-op
    }
    return result


def _ceiling_for_node(
    cfg: BenchConfig,
    info: DistInfo,
    meta: Any,
    episodes: Sequence[int],
    local_root: str | None,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """One ceiling per node (local rank 0 measures, with every core; the others wait)."""
    import torch.distributed as dist

    result: dict[str, Any] = {}
    if info.active:
        dist.barrier()  # nobody streams while the ceiling takes the cores
    if info.local_rank == 0:
        with tempfile.TemporaryDirectory(prefix="framestream-ceiling-") as tmp:
            paths = _ceiling_paths(meta, episodes, local_root, tmp)
            say(
                f"ceiling: {len(paths)} files, {cfg.ceiling_processes or node_cpus()} "
                f"processes, {cfg.ceiling_seconds:g} s"
            )
            result = measure_ceiling(
                paths, processes=cfg.ceiling_processes, seconds=cfg.ceiling_seconds
            )
    if info.active:
        gathered: list[Any] = [None] * info.world_size
        dist.all_gather_object(gathered, (socket.gethostname(), info.local_rank, result))
        host = socket.gethostname()
        for h, lr, r in gathered:
            if h == host and lr == 0 and r:
                result = r
    return result


# ----------------------------------------------------------------------------- output
def write_outputs(result: dict[str, Any], cfg: BenchConfig) -> dict[str, str]:
    """JSON per run (every rank) and one CSV row per run (rank 0); returns the paths."""
    written: dict[str, str] = {}
    if cfg.output_dir:
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S") + f"{time.time() % 1:.6f}"[1:]
        name = (
            f"{stamp}-{result['label']}-w{result['num_workers']}-b{result['batch_size']}"
            f"-r{result['rank']}.json"
        )
        path = out / name.replace("/", "_")
        path.write_text(json.dumps(result, indent=2, default=str))
        written["json"] = str(path)
    csv_path = cfg.csv or (str(Path(cfg.output_dir) / "results.csv") if cfg.output_dir else None)
    if csv_path and result["rank"] == 0:
        append_csv(csv_path, result)
        written["csv"] = csv_path
    return written


def append_csv(path: str | os.PathLike[str], result: Mapping[str, Any]) -> None:
    """Append ``result`` as a row; a new file gets :data:`CSV_FIELDS` as its header."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    header: Sequence[str] = CSV_FIELDS
    if p.exists() and p.stat().st_size > 0:
        with p.open(newline="") as f:
            header = next(csv.reader(f), None) or list(CSV_FIELDS)
        new = False
    else:
        new = True
    row = {k: _csv_value(result.get(k)) for k in header}
    with p.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(header), extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow(row)


def _csv_value(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return v


def _fmt(v: Any, unit: str = "", digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}{unit}"
    return f"{v}{unit}"


def format_summary(r: Mapping[str, Any]) -> str:
    """A readable table of one result (what ``framestream bench`` prints)."""
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    rows = [
        ("mode", f"{r['label']} (window {r['window_length']} x {r['cameras']} cameras)"),
        ("dataset", r["root"]),
        ("workers / batch", f"{r['num_workers']} / {r['batch_size']} ({r['dtype']})"),
        ("ranks", f"rank {r['rank']} of {r['world_size']} ({r['nodes']} node(s))"),
        (
            "timed",
            f"{r['batches']} batches, {r['samples']} samples in {r['elapsed_s']:.2f} s "
            f"(after {r['warmup_batches']} warm-up batches)",
        ),
        ("samples/s", _fmt(r["samples_per_s"])),
        ("delivered frames/s", _fmt(r["delivered_frames_per_s"])),
        ("decoded frames/s", _fmt(r["decoded_frames_per_s"])),
        (
            "reuse ratio",
            f"{_fmt(r['reuse_ratio'], 'x', 2)} timed, "
            f"{_fmt(r['reuse_ratio_total'], 'x', 2)} whole run",
        ),
        ("frames/s/node", _fmt(r["frames_per_s_node"])),
        (
            "sample latency p50/95/99",
            " / ".join(_fmt(r[f"sample_latency_ms_p{q}"], " ms", 2) for q in ("50", "95", "99")),
        ),
        (
            "batch latency p50/95/99",
            " / ".join(_fmt(r[f"batch_latency_ms_p{q}"], " ms", 1) for q in ("50", "95", "99")),
        ),
        ("first batch", _fmt(r["first_batch_s"], " s", 2)),
        (
            "peak RSS main / worker max",
            f"{_fmt(r['peak_rss_mb_main'], ' MB')} / {_fmt(r['peak_rss_mb_worker_max'], ' MB')}",
        ),
        (
            "decoder cache",
            f"{r['cache_hits']} hits, {r['cache_misses']} misses, "
            f"{r['cache_evictions']} evictions ({pct(r['cache_hit_rate'])} hits)",
        ),
        (
            "episodes per batch",
            f"{_fmt(r['distinct_episodes_per_batch'], '', 2)} "
            f"(perfect shuffle {_fmt(r['expected_distinct_episodes'], '', 2)}, "
            f"{pct(r['shuffle_quality'])})",
        ),
    ]
    if r.get("ceiling_frames_per_s"):
        rows += [
            (
                "decode ceiling",
                f"{_fmt(r['ceiling_frames_per_s'])} frames/s ({r['ceiling_processes']} processes)",
            ),
            ("delivered / ceiling", pct(r["delivered_vs_ceiling"])),
            ("decoded / ceiling", pct(r["decoded_vs_ceiling"])),
            (
                "samples x cameras / ceiling",
                pct(r["sample_frames_vs_ceiling"])
                + (
                    f" (target {pct(r['target'])}: {'met' if r['meets_target'] else 'NOT met'})"
                    if r.get("target")
                    else ""
                ),
            ),
        ]
    for note in r.get("notes") or []:
        rows.append(("note", note))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:>{width}}  {v}" for k, v in rows)
