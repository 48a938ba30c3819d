"""``--compare-lerobot PYTHON``: LeRobot's loaders, timed in their own environment.

LeRobot pins its own torch, datasets and torchcodec, so it runs in its own interpreter: the
benchmark starts ``PYTHON lerobot_driver.py`` (a file shipped with framestream that imports
only LeRobot, torch and numpy) once per loader, right after the framestream run it is
compared with, on the same dataset, ``delta_timestamps``, workers and batch size.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from framestream.bench.lerobot_driver import MARK

DRIVER = Path(__file__).with_name("lerobot_driver.py")
LEROBOT_WARMUP_BATCHES = 5


def find_lerobot_python() -> str | None:
    """A Python with LeRobot: ``FRAMESTREAM_LEROBOT_PYTHON``, else ``.lerobot-venv`` in the
    current folder (None when none exists or this user cannot run it)."""
    env = os.environ.get("FRAMESTREAM_LEROBOT_PYTHON")
    candidates = [env] if env else []
    candidates.append(".lerobot-venv/bin/python")
    for c in candidates:
        path = c if os.sep in c else shutil.which(c)
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return c
    return None


def run_lerobot_loader(
    python: str,
    *,
    root: str,
    loader: str,
    delta_timestamps: dict[str, list[float]] | None,
    batch_size: int,
    num_workers: int,
    max_batches: int | None,
    seconds: float | None,
    warmup_batches: int = LEROBOT_WARMUP_BATCHES,
    seed: int = 0,
    timeout: float = 1800.0,
) -> dict[str, Any]:
    """Run one LeRobot loader in ``python``; its result dict (with ``error`` on failure)."""
    cfg = {
        "root": str(root),
        "loader": loader,
        "delta_timestamps": delta_timestamps,
        "batch_size": batch_size,
        "num_workers": num_workers,
        "warmup_batches": warmup_batches,
        "max_batches": max_batches or 0,
        "seconds": seconds,
        "seed": seed,
    }
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    try:
        proc = subprocess.run(
            [python, str(DRIVER), json.dumps(cfg)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return {"loader": loader, "error": f"timed out after {timeout:g} s"}
    except OSError as exc:
        return {"loader": loader, "error": f"cannot run {python}: {exc}"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARK):
            return json.loads(line[len(MARK) :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-8:]
    return {
        "loader": loader,
        "error": f"the driver exited with {proc.returncode} and no result: " + " | ".join(tail),
    }


def comparison_fields(samples_per_s: float, runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Flat result fields: each loader's samples/s, framestream's ratio to it, errors.

    Every field is present (None for a loader that was not run), so JSON and CSV rows of
    runs with and without ``--compare-lerobot`` have the same keys.
    """
    out: dict[str, Any] = {}
    for name in ("map", "streaming"):
        for key in ("lerobot_{}_samples_per_s", "vs_lerobot_{}", "lerobot_{}_error"):
            out[key.format(name)] = None
    best = None
    for name, r in runs.items():
        rate = r.get("samples_per_s") if not r.get("error") else None
        out[f"lerobot_{name}_samples_per_s"] = rate
        out[f"vs_lerobot_{name}"] = samples_per_s / rate if rate and samples_per_s else None
        out[f"lerobot_{name}_error"] = r.get("error")
        if rate and (best is None or rate > best[1]):
            best = (name, rate)
    out["lerobot_best_loader"] = best[0] if best else None
    out["lerobot_best_samples_per_s"] = best[1] if best else None
    out["vs_lerobot_best"] = samples_per_s / best[1] if best and samples_per_s else None
    out["lerobot_runs"] = runs
    out["vs_lerobot_best_pairs"] = None  # with --repeats: each pair's ratio (median_of_pairs)
    return out


_FIGURES = tuple(
    key.format(name)
    for name in ("map", "streaming", "best")
    for key in ("lerobot_{}_samples_per_s", "vs_lerobot_{}")
)


def median_of_pairs(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One result from ``--repeats`` runs of one configuration, each followed by LeRobot's.

    framestream and LeRobot alternate, so each ratio is measured between adjacent runs: the
    ratios reported are the medians of each pair's ratio (a machine drifting during the
    invocation moves both runs of a pair, not one against the other); the rates are medians
    of the rates; the rest is the run of median samples/s. ``lerobot_repeats`` keeps every
    pair and ``repeats`` their number.
    """
    order = sorted(range(len(results)), key=lambda i: results[i]["samples_per_s"] or 0.0)
    out = dict(results[order[(len(order) - 1) // 2]])  # the lower median of an even count
    pairs = [
        {"samples_per_s": r["samples_per_s"], **{k: r.get(k) for k in _FIGURES}} for r in results
    ]
    for k in _FIGURES:
        vals = [p[k] for p in pairs if p[k] is not None]
        out[k] = statistics.median(vals) if vals else None
    rates = {n: out[f"lerobot_{n}_samples_per_s"] for n in ("map", "streaming")}
    out["lerobot_best_loader"] = max(
        (n for n, rate in rates.items() if rate is not None), key=rates.__getitem__, default=None
    )
    out["repeats"] = len(results)
    out["lerobot_repeats"] = pairs
    out["repeat_samples_per_s"] = [p["samples_per_s"] for p in pairs]
    out["vs_lerobot_best_pairs"] = ";".join(  # each pair's ratio, in one CSV cell
        "-" if p["vs_lerobot_best"] is None else f"{p['vs_lerobot_best']:.3f}" for p in pairs
    )
    return out
