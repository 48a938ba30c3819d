#!/usr/bin/env python
"""Plot a benchmark CSV: modes x workers, samples/s and frames/s/node, with the ceiling.

    python benchmarks/streaming/plot_results.py bench-results/results.csv --out results.png

Rows with the same (label, workers, nodes, source) are averaged (repeated runs); the bar
label gives the count. The decode ceiling (frames/s per node) is drawn as a horizontal line
on the frames panel and, divided by the number of cameras, on the samples panel, where it
is the single-frame samples/s the ceiling would allow.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path


def _float(v: str | None) -> float | None:
    try:
        return float(v) if v not in (None, "") else None
    except ValueError:
        return None


def load(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def group(rows: list[dict[str, str]]) -> dict[tuple[str, int, str], dict[str, float]]:
    """(label, workers, nodes/source tag) -> mean of each figure over its rows."""
    acc: dict[tuple[str, int, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        tag_bits = []
        if r.get("nodes") not in (None, "", "1"):
            tag_bits.append(f"{r['nodes']}n")
        if r.get("source") not in (None, "", "local"):
            tag_bits.append(r["source"])
        key = (
            r.get("label") or r.get("mode") or "?",
            int(r.get("num_workers") or 0),
            "/".join(tag_bits),
        )
        for name in (
            "samples_per_s",
            "samples_per_s_node",
            "frames_per_s_node",
            "decoded_frames_per_s_node",
            "ceiling_frames_per_s",
            "cameras",
        ):
            v = _float(r.get(name))
            if v is not None:
                acc[key][name].append(v)
        acc[key]["runs"].append(1.0)
    return {
        k: {n: (sum(v) / len(v) if n != "runs" else len(v)) for n, v in d.items()}
        for k, d in acc.items()
    }


def plot(rows: list[dict[str, str]], out: str | Path, title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        raise SystemExit("no rows to plot")
    g = group(rows)
    labels = list(dict.fromkeys(k[0] for k in g))  # in the CSV's order
    variants = sorted({(k[1], k[2]) for k in g})
    fig, axes = plt.subplots(1, 2, figsize=(6 + 1.6 * len(labels), 4.8))
    width = 0.8 / max(1, len(variants))
    panels = (
        (axes[0], "samples_per_s_node", "samples/s per node"),
        (axes[1], "frames_per_s_node", "delivered frames/s per node"),
    )
    for ax, metric, ylabel in panels:
        for j, (workers, tag) in enumerate(variants):
            xs, ys = [], []
            for i, label in enumerate(labels):
                d = g.get((label, workers, tag))
                if d is None:
                    continue
                y = d.get(
                    metric, d.get("samples_per_s") if metric == "samples_per_s_node" else None
                )
                if y is None:
                    continue
                xs.append(i - 0.4 + width * (j + 0.5))
                ys.append(y)
            name = f"{workers} workers" + (f" ({tag})" if tag else "")
            bars = ax.bar(xs, ys, width=width, label=name)
            ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=1)
            if metric == "frames_per_s_node":
                dec = []
                for i, label in enumerate(labels):
                    d = g.get((label, workers, tag))
                    if d and d.get("decoded_frames_per_s_node") is not None:
                        dec.append((i - 0.4 + width * (j + 0.5), d["decoded_frames_per_s_node"]))
                if dec:
                    ax.scatter(
                        *zip(*dec, strict=True),
                        marker="_",
                        s=200,
                        color="black",
                        zorder=3,
                        label="decoded frames/s" if j == 0 else None,
                    )
        ceilings = [d["ceiling_frames_per_s"] for d in g.values() if "ceiling_frames_per_s" in d]
        if ceilings:
            ceiling = sum(ceilings) / len(ceilings)
            cams = [d["cameras"] for d in g.values() if d.get("cameras")]
            level = (
                ceiling / (sum(cams) / len(cams))
                if metric == "samples_per_s_node" and cams
                else ceiling
            )
            what = "ceiling / cameras" if metric == "samples_per_s_node" else "decode ceiling"
            ax.axhline(
                level, color="red", linestyle="--", linewidth=1.2, label=f"{what} ({level:,.0f})"
            )
        ax.set_xticks(range(len(labels)), labels)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("mode")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title or "framestream streaming benchmark")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


TABLE = (
    ("mode", "label", "{}"),
    ("workers", "num_workers", "{}"),
    ("samples/s", "samples_per_s", "{:,.1f}"),
    ("delivered fr/s", "delivered_frames_per_s", "{:,.0f}"),
    ("decoded fr/s", "decoded_frames_per_s", "{:,.0f}"),
    ("reuse", "reuse_ratio", "{:.2f}"),
    ("fr/s/node", "frames_per_s_node", "{:,.0f}"),
    ("lat p50/p95/p99 ms/sample", "sample_latency_ms_p50", None),
    ("first batch s", "first_batch_s", "{:.2f}"),
    ("peak RSS MB main/worker", "peak_rss_mb_main", None),
    ("dec. cache hit rate", "decoder_cache_hit_rate", "{:.1%}"),
    ("episodes/batch (perfect)", "distinct_episodes_per_batch", None),
    ("samples×cams / ceiling", "sample_frames_vs_ceiling", "{:.1%}"),
    ("decoded / ceiling", "decoded_vs_ceiling", "{:.1%}"),
    ("delivered / ceiling", "delivered_vs_ceiling", "{:.1%}"),
)


def _cell(row: dict[str, str], key: str, fmt: str | None) -> str:
    def num(k: str, f: str) -> str:
        v = _float(row.get(k))
        return "-" if v is None else f.format(v)

    if key == "sample_latency_ms_p50":
        return " / ".join(num(f"sample_latency_ms_p{q}", "{:.1f}") for q in (50, 95, 99))
    if key == "peak_rss_mb_main":
        return f"{num('peak_rss_mb_main', '{:,.0f}')} / {num('peak_rss_mb_worker_max', '{:,.0f}')}"
    if key == "distinct_episodes_per_batch":
        return f"{num(key, '{:.1f}')} ({num('expected_distinct_episodes', '{:.1f}')})"
    if fmt == "{}":
        return row.get(key) or row.get("mode") or "-"
    return num(key, fmt or "{}")


def markdown_table(rows: list[dict[str, str]]) -> str:
    """The rows as a Markdown table (what the README's results section shows)."""
    lines = ["| " + " | ".join(h for h, _, _ in TABLE) + " |", "|" + "---|" * len(TABLE)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row, k, f) for _, k, f in TABLE) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("csv", help="a CSV written by benchmark_streaming.py / framestream bench")
    p.add_argument("--out", default="benchmark.png", help="PNG to write")
    p.add_argument("--title", default=None)
    p.add_argument("--table", action="store_true", help="also print a Markdown table")
    args = p.parse_args(argv)
    rows = load(args.csv)
    print(plot(rows, args.out, args.title))
    if args.table:
        print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
