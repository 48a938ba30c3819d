"""One invocation: set up ranks and the dataset once, then run each configuration in turn.

A run builds the dataset for its mode, streams it through :func:`~.measure.stream_timed`,
sums the per-rank rates per node, measures the decode ceiling if asked, and turns all of it
into one flat result dict (the JSON; the CSV is a view of it).
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from framestream.bench.ceiling import ceiling_for_node
from framestream.bench.config import TARGETS, BenchConfig, effective_warmup
from framestream.bench.dist import DistInfo, detect_dist, gather_node_sums, init_dist
from framestream.bench.lerobot_compare import comparison_fields, median_of_pairs
from framestream.bench.measure import percentiles, stream_timed
from framestream.bench.remote import bench_root, link_fields, no_io, rank_io, start_server
from framestream.bench.shuffle import MixingRecorder, expected_distinct_episodes
from framestream.bench.system import load_avg, machine, versions
from framestream.bench.windows import resolve_deltas
from framestream.stream.stats import COMBINE


def _epoch_batches(ds: Any, cfg: BenchConfig, epochs: int) -> int:
    """Batches the DataLoader yields in epochs 0..epochs-1 (each worker batches its own part)."""
    n = max(1, cfg.num_workers)
    return sum(
        math.ceil(ds.plan(worker=w, num_workers=n, epoch=e).num_samples / cfg.batch_size)
        for e in range(epochs)
        for w in range(n)
    )


def _label(mode: str, cfg: BenchConfig) -> str:
    """The mode, ``-cl`` for channels-last, ``-dc`` for torch's default_collate, ``-np`` for
    contiguous cameras deinterleaved by numpy (no OpenCV, or ``FRAMESTREAM_OPENCV=0``)."""
    from framestream.decode.planar import backend

    numpy_planar = not cfg.channels_last and backend() == "numpy" and cfg.pixel_format == "rgb"
    return (
        mode
        + ("-yuv" if cfg.pixel_format == "yuv420" else "")
        + ("-cl" if cfg.channels_last else "")
        + ("-dc" if cfg.collate == "default" else "")
        + ("-np" if numpy_planar else "")
    )


def _ratio(a: float | None, b: float | None) -> float | None:
    return float(a) / float(b) if a is not None and b else None


def _dataset_of(cfg: BenchConfig) -> tuple[Any, ...]:
    """What must be equal for runs to share one dataset setup."""
    link = (cfg.link_latency_ms, cfg.link_mbps, cfg.ranks, cfg.compare_local)
    return (cfg.root, cfg.source, cfg.storage_options, cfg.revision, cfg.cache_dir, *link)


@dataclass
class _Session:
    """What every run of one invocation shares: ranks, the dataset location, the ceiling."""

    info: DistInfo
    root: str
    storage: dict[str, Any]
    local_root: str | None
    ceiling: dict[str, Any] | None = None
    served: bool = False  # a loopback server serves local_root: fresh caches by default
    caches: list[str] = field(default_factory=list)  # made for cold runs, removed at the end

    def fresh_cache(self) -> str:
        import tempfile

        self.caches.append(tempfile.mkdtemp(prefix="framestream-bench-cache-"))
        return self.caches[-1]


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
    if any(_dataset_of(c) != _dataset_of(first) for c in cfgs[1:]):
        raise ValueError("runs of one invocation must share the dataset and how it is read")
    say = log or (lambda _msg: None)
    # --repeats alone (or with --compare-lerobot) repeats in this process, below
    if first.served is None and (first.ranks or first.compare_local):
        from framestream.bench.ranks import run_ranked

        return run_ranked(cfgs, run_benchmarks, progress=progress, log=say, on_result=on_result)
    info = init_dist(detect_dist())
    server = None
    session: _Session | None = None
    try:
        local_root: str | None = None
        storage = dict(first.storage_options)
        if first.served is not None:  # a server run by the --ranks parent
            root, local_root = first.served["url"], first.served["local_root"]
            storage = {**first.served["storage_options"], **storage}
        else:
            root = bench_root(first, info.rank, say)
            if first.source != "local":
                local_root = root
                server = start_server(first, local_root)
                root = server.url
                storage = {**server.storage_options, **storage}
                say(f"serving {local_root} over {first.source} at {root}")
            elif "://" not in root:
                local_root = root
        session = _Session(info, str(root), storage, local_root)
        session.served = first.source != "local"
        results = []
        for cfg in cfgs:
            runs = []  # --repeats: each run followed by LeRobot's with --compare-lerobot
            for rep in range(cfg.repeats):
                if cfg.repeats > 1:
                    say(f"mode={cfg.mode} run {rep + 1}/{cfg.repeats}")
                runs.append(_run_one(cfg, session, progress(cfg) if progress else None, say))
            result = median_of_pairs(runs) if len(runs) > 1 else runs[0]
            if on_result is not None:
                on_result(result)
            results.append(result)
        return results
    finally:
        if server is not None:
            server.stop()
        for folder in session.caches if session is not None else []:
            shutil.rmtree(folder, ignore_errors=True)
        if info.initialised_here:
            import torch.distributed as dist

            dist.destroy_process_group()


def run_benchmark(
    cfg: BenchConfig,
    *,
    progress: Callable[[int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run one benchmark and return its result (see ``benchmarks/streaming/README.md``).

    ``progress(n)`` is called once per consumed batch; ``log`` receives stage messages.
    """
    return run_benchmarks([cfg], progress=(lambda _c: progress), log=log)[0]


def _compare_lerobot(
    cfg: BenchConfig,
    root: str,
    deltas: dict[str, list[float]] | None,
    warmup: int,
    samples_per_s: float,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """LeRobot's loaders on the same dataset and window, right after framestream's run."""
    from framestream.bench.lerobot_compare import (
        LEROBOT_WARMUP_BATCHES,
        comparison_fields,
        run_lerobot_loader,
    )

    runs = {}
    for loader in cfg.lerobot_loaders:
        say(f"LeRobot {loader}: mode={cfg.mode} workers={cfg.num_workers} ({cfg.compare_lerobot})")
        r = run_lerobot_loader(
            str(cfg.compare_lerobot),
            root=root,
            loader=loader,
            delta_timestamps=deltas or None,
            batch_size=cfg.batch_size,
            num_workers=cfg.num_workers,
            max_batches=cfg.max_batches,
            seconds=cfg.seconds,
            warmup_batches=min(warmup, LEROBOT_WARMUP_BATCHES),
            seed=cfg.seed,
            timeout=cfg.loader_timeout * 3,
        )
        if r.get("error"):
            say(f"LeRobot {loader} failed: {str(r['error']).splitlines()[0][:300]}")
        runs[loader] = r
    return comparison_fields(samples_per_s, runs)


def _run_one(
    cfg: BenchConfig,
    session: _Session,
    progress: Callable[[int], None] | None,
    say: Callable[[str], None],
) -> dict[str, Any]:
    import torch

    from framestream import DatasetMeta, StreamingLeRobotDataset
    from framestream.io.source import Source

    info, root, storage, local_root = (
        session.info,
        session.root,
        session.storage,
        session.local_root,
    )
    notes: list[str] = []
    load_start = load_avg()
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    t_setup = time.perf_counter()
    cache_dir = cfg.cache_dir
    if cache_dir is None and session.served:
        cache_dir = session.fresh_cache()  # a cold first epoch, as on a new node
    meta = DatasetMeta(
        Source(
            str(root),
            storage,
            revision=cfg.revision,
            cache_dir=cache_dir,
            cache_max_bytes=cfg.cache_max_bytes,
            remote={"fetch": cfg.fetch},
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
        channels_last=cfg.channels_last,
        seed=cfg.seed,
        buffer_size=cfg.buffer_size,
        active_shards=cfg.active_shards,
        memory_budget=cfg.memory_budget,
        shuffle_chunk=cfg.shuffle_chunk,
        rank=info.rank,
        world_size=info.world_size,
        video_backend=cfg.video_backend,  # type: ignore[arg-type]
        decoder_threads=cfg.decoder_threads,
        pixel_format=cfg.pixel_format,  # type: ignore[arg-type]
    )
    setup_s = time.perf_counter() - t_setup
    main_io = meta.source.io_stats()  # the metadata this rank read, before streaming
    served = local_root if session.served else None
    cameras = len(meta.camera_keys)
    offsets = ds.window.offsets
    per_camera = {k: int(len(offsets[k])) if k in offsets else 1 for k in meta.camera_keys}
    frames_per_sample = sum(per_camera.values())
    window_length = frames_per_sample / cameras if cameras else 0
    if cameras and window_length == int(window_length):
        window_length = int(window_length)

    warmup = effective_warmup(cfg)
    if cfg.warmup_epochs > 0:
        warmup = _epoch_batches(ds, cfg, cfg.warmup_epochs)
    say(
        f"streaming: mode={mode} workers={cfg.num_workers} batch={cfg.batch_size} "
        f"warm-up={warmup} batches"
    )
    length_of = dict(zip(ds.episodes.tolist(), ds.lengths.tolist(), strict=True))
    mixing = MixingRecorder(length_of, cfg.batch_size)
    timing = stream_timed(ds, cfg, warmup, progress, mixing)
    stats1 = timing.stats1
    stats0 = timing.stats0
    if stats0 is None:
        notes.append("the data ran out during warm-up: nothing was timed")
        stats0 = stats1
    elapsed = timing.elapsed
    timed = {
        k: stats1[k] - stats0[k]
        for k in stats1
        if isinstance(stats1[k], int)
        and isinstance(stats0.get(k), int)
        and k not in COMBINE  # peaks and minima (not counters) have no timed difference
        and k not in ("epoch", "decoder_cache_lookups")
    }
    timed_samples = timing.timed_samples
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
    sample_lat = [
        1000.0 * dt / b for dt, b in zip(timing.intervals, timing.batch_sizes, strict=True)
    ]
    batch_lat = [1000.0 * dt for dt in timing.intervals]
    s50, s95, s99 = percentiles(sample_lat)
    b50, b95, b99 = percentiles(batch_lat)
    shuffle_ref = expected_distinct_episodes(ds.lengths.tolist(), cfg.batch_size)
    mean_distinct = float(np.mean(timing.distinct)) if timing.distinct else None
    mach = machine()
    vers = versions()
    rank_fig = {
        "rank": info.rank,
        "hostname": mach["hostname"],
        "samples_per_s": samples_per_s,
        "delivered_frames_per_s": delivered_fps,
        "decoded_frames_per_s": decoded_fps,
    }
    node = gather_node_sums(info, rank_fig)
    if info.world_size > 1 and not info.active:
        notes.append(
            "WORLD_SIZE > 1 but no torch.distributed rendezvous (MASTER_ADDR unset): "
            "per-node sums are not available, only this rank's figures"
        )

    ceiling: dict[str, Any] = {}
    if cfg.ceiling:
        if session.ceiling is None or cfg.ceiling_each:
            session.ceiling = ceiling_for_node(cfg, info, meta, ds.episodes, local_root, say)
        else:
            notes.append("decode ceiling measured once per invocation, by an earlier run")
        ceiling = session.ceiling

    lerobot: dict[str, Any] = comparison_fields(samples_per_s, {})
    if cfg.compare_lerobot and info.rank == 0:
        lerobot = _compare_lerobot(cfg, local_root or root, deltas, warmup, samples_per_s, say)

    ceil_fps = ceiling.get("ceiling_frames_per_s")
    limit_fps = ceiling.get("decode_only_frames_per_s")
    target = TARGETS.get(mode)
    sample_frames_node = (
        node["samples_per_s_node"] * cameras if node["samples_per_s_node"] is not None else None
    )
    sample_vs = _ratio(sample_frames_node, ceil_fps)
    return {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "label": cfg.label or _label(mode, cfg),
        "mode": mode,
        "source": cfg.source,
        "root": str(root),
        "local_root": local_root,
        "num_workers": cfg.num_workers,
        "batch_size": cfg.batch_size,
        "dtype": "float32" if cfg.float else "uint8",
        "layout": "channels_last" if cfg.channels_last else "contiguous",
        "collate": cfg.collate,
        "buffer_size": ds.options.buffer_size,
        "active_shards": ds.options.active_shards,
        "memory_budget": ds.options.memory_budget,  # the option ('auto', bytes or None)
        # what it came to per worker (0: no limit)
        "memory_budget_bytes": int(stats1.get("memory_budget_bytes", 0)) // max(1, cfg.num_workers),
        "shuffle_chunk": ds.mix_chunk() if hasattr(ds, "mix_chunk") else None,
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
        "batches": timing.timed_batches,
        "samples": timed_samples,
        "total_batches": timing.total_batches,
        "total_samples": timing.consumed,
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
        "first_batch_s": timing.first_batch_s,
        **timing.cpu_fields(),
        **timing.rss.summary(),
        "decoder_cache_hits": stats1["decoder_cache_hits"],
        "decoder_cache_misses": stats1["decoder_cache_misses"],
        "decoder_cache_evictions": stats1["decoder_cache_evictions"],
        "decoder_cache_lookups": stats1["decoder_cache_lookups"],
        "decoder_cache_hit_rate": stats1["decoder_cache_hit_rate"],
        **link_fields(cfg),
        **(no_io() if meta.source.is_local else rank_io(cfg, served, meta, ds, stats1, main_io)),
        "distinct_episodes_per_batch": mean_distinct,
        "expected_distinct_episodes": shuffle_ref["exact"],
        "expected_distinct_episodes_with_replacement": shuffle_ref["with_replacement"],
        "shuffle_quality": _ratio(mean_distinct, shuffle_ref["exact"]),
        **mixing.summary(shuffle_ref["exact"]),
        "ceiling_frames_per_s": ceil_fps,
        "ceiling_processes": ceiling.get("ceiling_processes"),
        "ceiling": ceiling or None,
        "delivered_vs_ceiling": _ratio(node["frames_per_s_node"], ceil_fps),
        "decoded_vs_ceiling": _ratio(node["decoded_frames_per_s_node"], ceil_fps),
        "sample_frames_vs_ceiling": sample_vs,
        "decode_only_frames_per_s": limit_fps,
        "ceiling_vs_decode_only": _ratio(ceil_fps, limit_fps),
        "delivered_vs_decode_only": _ratio(node["frames_per_s_node"], limit_fps),
        "decoded_vs_decode_only": _ratio(node["decoded_frames_per_s_node"], limit_fps),
        "sample_frames_vs_decode_only": _ratio(sample_frames_node, limit_fps),
        "pixel_format": cfg.pixel_format,
        **lerobot,
        "repeats": 1,  # runs behind this result (--repeats: medians, see median_of_pairs)
        "target": target,
        "meets_target": (sample_vs >= target) if (target and sample_vs is not None) else None,
        "stats_total": stats1,
        "stats_timed": timed,
        "ranks": node["ranks"],
        "load_avg_start": load_start,
        "load_avg_end": load_avg(),
        "versions": vers,
        "machine": mach,
        **{k: vers.get(k) for k in ("framestream", "torch", "torchcodec", "av", "python")},
        **{k: mach[k] for k in ("cpu_count", "cpu_model", "platform", "hostname")},
        "config": asdict(cfg),
        "notes": notes,
        "consumer_checksum": timing.sink % 1_000_003,  # keeps the touch from being a no-op
    }
