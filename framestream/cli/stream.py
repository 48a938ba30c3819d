"""``framestream stream``: stream a dataset (synthetic by default) and say what happened."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from framestream.cli.common import add_remote_arguments, check_root, parse_episodes


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "stream",
        help="stream a dataset through a DataLoader and print throughput and counters",
        description="Stream ROOT (a folder or URL; default: a cached synthetic dataset that "
        "is generated on first use, ~40 s once) through a torch DataLoader and print what "
        "was read: samples/s, frames delivered and decoded, skipped episodes, cache counters.",
    )
    p.add_argument(
        "root",
        nargs="?",
        metavar="ROOT",
        help="dataset folder, s3://, http(s)://, hf://datasets/org/name URL or Hub repo id "
        "org/name (default: the synthetic benchmark dataset)",
    )
    p.add_argument(
        "--batches", type=int, default=20, help="batches to read, then stop; time grows with it"
    )
    p.add_argument("--batch-size", type=int, default=32, help="samples per batch")
    p.add_argument(
        "--num-workers",
        type=int,
        default=2,
        help="DataLoader worker processes; each holds its own decoders and buffers (memory)",
    )
    p.add_argument(
        "--window",
        action="store_true",
        help="ask for a 16-frame window (every 10th frame) on every camera and the state: "
        "~16x the pixels per sample",
    )
    p.add_argument("--seed", type=int, default=0, help="shuffle seed")
    p.add_argument(
        "--episodes",
        nargs="+",
        metavar="EP",
        help="only these episodes: indices or inclusive ranges, e.g. 0 3-7 9,12 (default: all)",
    )
    p.add_argument(
        "--on-error",
        choices=("raise", "skip"),
        default="raise",
        help="a broken episode (video, timestamps, data) stops the run (raise) or is skipped "
        "and counted (skip)",
    )
    p.add_argument(
        "--video-backend",
        choices=("torchcodec", "pyav"),
        default=None,
        help="video decoder (default: torchcodec when it loads, else PyAV)",
    )
    add_remote_arguments(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from framestream import DatasetMeta, StreamingLeRobotDataset, collate
    from framestream.io.source import Source

    check_root(args.root)
    episodes = parse_episodes(args.episodes)
    if args.root is None:
        from framestream.testing.default_data import synthetic_dataset

        root = str(synthetic_dataset())
    else:
        root = args.root
    meta = DatasetMeta(
        Source(
            root,
            args.storage_options,
            revision=args.revision,
            cache_dir=args.cache_dir,
            cache_max_bytes=args.cache_max_bytes,
        )
    )
    delta = None
    if args.window:
        step = 10 / meta.fps
        past = [-(15 - i) * step for i in range(16)]
        delta = {k: past for k in meta.camera_keys + ["observation.state"]}
    ds = StreamingLeRobotDataset(
        root,
        meta=meta,
        episodes=episodes,
        seed=args.seed,
        return_uint8=True,
        delta_timestamps=delta,
        on_error=args.on_error,
        video_backend=args.video_backend,
    )
    loader = torch.utils.data.DataLoader(
        ds, batch_size=args.batch_size, num_workers=args.num_workers, collate_fn=collate
    )
    t0 = time.perf_counter()
    first = None
    n = batches = 0
    bar = tqdm(loader, total=args.batches, desc="streaming", unit="batch", disable=args.json)
    for batch in bar:
        if first is None:
            first = time.perf_counter() - t0
        n += len(batch["index"])
        batches += 1
        if batches >= args.batches:
            break
    bar.close()
    elapsed = time.perf_counter() - t0
    stats = ds.stats()
    summary = {
        "root": root,
        "episodes": len(ds.episodes),
        "cameras": len(meta.camera_keys),
        "batches": batches,
        "samples": n,
        "seconds": round(elapsed, 3),
        "samples_per_s": round(n / elapsed, 1) if elapsed else 0.0,
        "first_batch_s": round(first or 0.0, 3),
        "num_workers": args.num_workers,
        "stats": stats,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_summary(summary))
    return 0


def format_summary(s: dict[str, Any]) -> str:
    """The printed report: one samples line, frames with what their ratio means, counters."""
    st = s["stats"]
    decoded, delivered = st.get("decoded_frames", 0), st.get("delivered_frames", 0)
    reuse = delivered / decoded if decoded else 0.0
    lines = [
        f"dataset   {s['root']} ({s['episodes']} episodes, {s['cameras']} cameras)",
        f"samples   {s['samples']} in {s['batches']} batches, {s['seconds']:.2f} s: "
        f"{s['samples_per_s']:,.1f} samples/s (first batch after {s['first_batch_s']:.2f} s, "
        f"{s['num_workers']} workers)",
        f"frames    {delivered} delivered (camera frames in samples), {decoded} decoded: "
        f"{reuse:.2f} frames delivered per frame decoded",
    ]
    if reuse < 1 and decoded:
        lines.append(
            "          (below 1 early in an epoch: open episodes decode ahead of the samples "
            "waiting in the shuffle buffer; over a whole epoch each frame is decoded once and "
            "delivered once per window that holds it, so the ratio ends >= 1)"
        )
    else:
        lines.append("          (above 1: samples whose windows share a frame share one decode)")
    produced = st.get("samples", 0)
    if produced > s["samples"]:
        lines.append(
            f"workers   built {produced} samples: {produced - s['samples']} more than were "
            "read (prefetched batches, dropped when the loop stopped)"
        )
    skipped = st.get("skipped_episodes", 0)
    if skipped or st.get("errors"):
        lines.append(
            f"errors    {st.get('errors', 0)} errors, {skipped} episodes skipped "
            f"({st.get('skipped_video_errors', 0)} video, "
            f"{st.get('skipped_timestamp_errors', 0)} timestamp, "
            f"{st.get('skipped_data_errors', 0)} data)"
        )
    lines.append(
        f"decoders  {st.get('cache_hits', 0)} hits, {st.get('cache_misses', 0)} misses "
        "(an open video file reused vs opened)"
    )
    if st.get("remote_requests") or st.get("byte_cache_hits") or st.get("byte_cache_misses"):
        lines.append(
            f"remote    {st.get('bytes_fetched', 0) / 2**20:.1f} MiB fetched in "
            f"{st.get('remote_requests', 0)} requests; byte cache "
            f"{st.get('byte_cache_hits', 0)} hits, {st.get('byte_cache_misses', 0)} misses"
        )
    return "\n".join(lines)
