"""The results: one JSON per run and rank, one CSV row per run, and the printed summary.

Why a fixed CSV column list: rows from many runs, versions and machines accumulate in one file
that ``benchmarks/streaming/plot_results.py`` reads by column name.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from framestream.bench.config import BenchConfig

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
    "layout",
    "collate",
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
    "worker_cpu_ms_per_sample",
    "main_cpu_ms_per_sample",
    "cpu_cores_used",
    "peak_rss_mb_main",
    "peak_rss_mb_worker_max",
    "peak_rss_mb_total",
    "decoder_cache_hits",
    "decoder_cache_misses",
    "decoder_cache_evictions",
    "decoder_cache_lookups",
    "decoder_cache_hit_rate",
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
    "decode_only_frames_per_s",
    "ceiling_vs_decode_only",
    "delivered_vs_decode_only",
    "sample_frames_vs_decode_only",
    "pixel_format",
    "lerobot_map_samples_per_s",
    "vs_lerobot_map",
    "lerobot_streaming_samples_per_s",
    "vs_lerobot_streaming",
    "lerobot_best_loader",
    "lerobot_best_samples_per_s",
    "vs_lerobot_best",
    "lerobot_map_error",
    "lerobot_streaming_error",
    "repeats",
    "vs_lerobot_best_pairs",
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
    # remote runs (--source s3|http): how the bytes came, what this rank fetched and needed
    "fetch",
    "link_latency_ms",
    "link_mbps",
    "bytes_needed",
    "fetched_vs_needed",
    "requests_per_episode",
    "fetched_vs_dataset",
)


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
            "CPU per sample workers / main",
            f"{_fmt(r.get('worker_cpu_ms_per_sample'), ' ms', 3)} / "
            f"{_fmt(r.get('main_cpu_ms_per_sample'), ' ms', 3)} "
            f"({_fmt(r.get('cpu_cores_used'), ' cores', 2)})",
        ),
        (
            "peak RSS main / worker max",
            f"{_fmt(r['peak_rss_mb_main'], ' MB')} / {_fmt(r['peak_rss_mb_worker_max'], ' MB')}",
        ),
        ("memory budget", _budget_line(r)),
        (
            "decoder cache",
            f"{r['decoder_cache_hits']} hits, {r['decoder_cache_misses']} misses, "
            f"{r['decoder_cache_evictions']} evictions ({pct(r['decoder_cache_hit_rate'])} hits)",
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
    if r.get("decode_only_frames_per_s"):
        rows += [
            (
                "decode-only limit",
                f"{_fmt(r['decode_only_frames_per_s'])} frames/s (PyAV, no colour conversion; "
                f"RGB ceiling = {pct(r.get('ceiling_vs_decode_only'))} of it)",
            ),
            ("samples x cameras / limit", pct(r.get("sample_frames_vs_decode_only"))),
        ]
    for name in ("map", "streaming"):
        if name not in (r.get("lerobot_runs") or {}):
            continue
        err = r.get(f"lerobot_{name}_error")
        rate = r.get(f"lerobot_{name}_samples_per_s")
        rows.append(
            (
                f"LeRobot {name}",
                f"FAILED: {str(err).splitlines()[0][:160]}"
                if err
                else f"{_fmt(rate)} samples/s; framestream = "
                f"{_fmt(r.get(f'vs_lerobot_{name}'), 'x', 2)}",
            )
        )
    if r.get("vs_lerobot_best") is not None:
        rows.append(
            (
                "vs LeRobot's best",
                f"{_fmt(r['vs_lerobot_best'], 'x', 2)} (best: {r['lerobot_best_loader']})",
            )
        )
    pairs = r.get("lerobot_repeats") or []
    if len(pairs) > 1:
        each = ", ".join(_fmt(p.get("vs_lerobot_best"), "x", 2) for p in pairs)
        rows.append(("LeRobot figures", f"medians of {len(pairs)} alternated pairs ({each})"))
    rows += _remote_rows(r)
    for note in r.get("notes") or []:
        rows.append(("note", note))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:>{width}}  {v}" for k, v in rows)


def _remote_rows(r: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Bytes and requests of a remote run, and the totals over ``--ranks`` processes."""
    x = lambda v: _fmt(v, "x", 2)  # noqa: E731
    b = lambda v: "-" if v is None else f"{int(v):,}"  # noqa: E731
    link = f"{r['source']}, fetch={r.get('fetch')}"
    if r.get("link_latency_ms") is not None:
        link += f", {r['link_latency_ms']:g} ms/request, {r['link_mbps']:g} MB/s (0: unlimited)"
    rows: list[tuple[str, str]] = []
    if r.get("bytes_fetched") is not None:
        needed = b(r.get("bytes_needed") or r.get("episode_bytes"))
        rows += [
            ("remote", link),
            (
                "fetched / needed",
                f"{b(r['bytes_fetched'])} / {needed} bytes = {x(r.get('fetched_vs_needed'))} "
                f"(episode ranges {x(r.get('range_fetched_vs_needed'))}); "
                f"{x(r.get('fetched_vs_dataset'))} dataset",
            ),
            (
                "requests",
                f"{r['remote_requests']} ({r.get('index_requests')} index, "
                f"{r.get('range_requests')} range, {r.get('meta_requests')} metadata); "
                f"{_fmt(r.get('requests_per_episode'), '', 1)} per episode",
            ),
        ]
    if r.get("ranks_launched"):
        rows += [
            (
                f"all {r['ranks_launched']} ranks",
                f"{r['total_samples']} samples in {r['total_elapsed_s']:.2f} s = "
                f"{_fmt(r['epoch_samples_per_s'])} samples/s (median of {r['repeats']}); "
                f"first batch {_fmt(r['time_to_first_batch_s'], ' s', 2)}",
            ),
        ]
    if r.get("ranks_launched") and r.get("total_bytes_fetched") is not None:
        rows += [
            (
                "all ranks fetched",
                f"{b(r.get('total_bytes_fetched'))} bytes = "
                f"{x(r.get('total_fetched_vs_needed'))} needed, "
                f"{x(r.get('total_fetched_vs_dataset'))} dataset; "
                f"{_fmt(r.get('total_requests_per_episode'), '', 1)} requests per episode",
            ),
        ]
    if r.get("cpu_ms_per_sample") is not None:
        cpu = f"{_fmt(r['cpu_ms_per_sample'], ' ms', 2)} (ranks and their workers)"
        if r.get("local_cpu_ms_per_sample") is not None:
            cpu += f"; local {_fmt(r['local_cpu_ms_per_sample'], ' ms', 2)}"
        rows.append(("CPU per sample", cpu))
    if r.get("vs_local") is not None:
        rows.append(
            (
                "vs local",
                f"{x(r['vs_local'])} (local {_fmt(r['local_epoch_samples_per_s'])} samples/s, "
                f"first batch {_fmt(r['local_time_to_first_batch_s'], ' s', 2)})",
            )
        )
    return rows


def _budget_line(r: dict[str, Any]) -> str:
    """The budget option and what it came to per worker."""
    option, nbytes = r.get("memory_budget"), r.get("memory_budget_bytes") or 0
    if option is None:
        return "none (unbounded)"
    size = f"{nbytes / 2**20:,.0f} MB per worker"
    return f"auto: {size}" if option == "auto" else size
