"""The picture ``framestream bench`` leaves behind: samples/s and frames/s per run, with the
decode ceiling, and a legend that says what each label means.

Why in the package: the main job must end with its plot without a second script (the fuller
``benchmarks/streaming/plot_results.py`` still reads any CSV, many runs and machines at once).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# What a label is made of (see framestream.bench.runner._label and --mode).
MODE_MEANING = {
    "single": "single: one frame per camera per sample",
    "sarm": "sarm: state and cameras at -120..+120 frames every 30 (9 per camera)",
    "window": "window: 16 frames per camera over the last 5 s, plus 16 future actions",
    "custom": "custom: the windows --delta / --deltas-json give",
}
SUFFIX_MEANING = {
    "-cl": "-cl: channels-last camera tensors (--channels-last; no transpose)",
    "-dc": "-dc: torch's default_collate instead of framestream.collate (--collate default)",
    "-np": "-np: frames transposed by numpy, no OpenCV (pip install opencv-python-headless)",
}


def label_legend(labels: Sequence[str]) -> list[str]:
    """One line per mode and suffix that occurs in ``labels``."""
    lines = []
    for mode, text in MODE_MEANING.items():
        if any(label.split("-")[0] == mode for label in labels):
            lines.append(text)
    for suffix, text in SUFFIX_MEANING.items():
        if any(suffix in label for label in labels):
            lines.append(text)
    return lines


def plot_results(
    results: Sequence[Mapping[str, Any]], out: str | Path, *, note: str | None = None
) -> Path:
    """Bars of samples/s and delivered frames/s per (label, workers); returns ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(str(r["label"]) for r in results))
    workers = sorted({int(r["num_workers"]) for r in results})
    legend = label_legend(labels)
    fig, axes = plt.subplots(1, 2, figsize=(7 + 1.4 * len(labels), 5.2))
    width = 0.8 / max(1, len(workers))
    panels = (
        (axes[0], "samples_per_s", "samples/s"),
        (axes[1], "delivered_frames_per_s", "delivered camera frames/s"),
    )
    for ax, metric, ylabel in panels:
        for j, w in enumerate(workers):
            xs, ys = [], []
            for i, label in enumerate(labels):
                vals = [
                    float(r[metric])
                    for r in results
                    if r["label"] == label and int(r["num_workers"]) == w and r.get(metric)
                ]
                if vals:
                    xs.append(i - 0.4 + width * (j + 0.5))
                    ys.append(sum(vals) / len(vals))
            bars = ax.bar(xs, ys, width=width, label=f"{w} DataLoader workers")
            ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=1)
        ceilings = [
            float(r["ceiling_frames_per_s"]) for r in results if r.get("ceiling_frames_per_s")
        ]
        if ceilings:
            level = sum(ceilings) / len(ceilings)
            cams = [int(r["cameras"]) for r in results if r.get("cameras")]
            if metric == "samples_per_s" and cams:
                level /= sum(cams) / len(cams)
                what = "decode ceiling / cameras"
            else:
                what = "decode ceiling (sequential decode, all cores)"
            ax.axhline(
                level, color="red", linestyle="--", linewidth=1.2, label=f"{what}: {level:,.0f}"
            )
        ax.set_xticks(range(len(labels)), labels)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("run (mode and variant)")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    footer = [("labels:  " if i == 0 else "         ") + t for i, t in enumerate(legend)]
    if note:
        footer.append(note)
    fig.suptitle("framestream streaming benchmark")
    if footer:
        fig.text(0.01, 0.01, "\n".join(footer), fontsize=7, va="bottom", ha="left", wrap=True)
    fig.tight_layout(rect=(0, 0.02 + 0.03 * len(footer), 1, 1))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
