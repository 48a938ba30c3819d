"""``framestream bench``: run the streaming benchmark with a progress bar and a summary table.

The measurement is :func:`framestream.bench.run_benchmarks`, the same one the script in
``benchmarks/streaming/`` runs, so a number printed here means what it means there.

What it leaves behind: a results folder (``--output-dir``, default
``./bench-results/<timestamp>/``) with ``results.json`` (every run), ``results.csv`` (one row
per run), one JSON per run, and ``results.png`` (a plot whose legend explains the labels);
the last line printed names the folder. When the machine was busy (load average against its
CPUs, before and during the run) the summary and the plot say that the figures are low.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from framestream.cli.common import CLIError, check_root

DEFAULT_OUTPUT = "bench-results"


def add_parser(sub: Any) -> argparse.ArgumentParser:
    from framestream.bench import add_arguments

    p = sub.add_parser(
        "bench",
        help="benchmark streaming throughput, latency and decode reuse (synthetic by default)",
        description="Stream a dataset (ROOT or --root; default: the synthetic benchmark "
        "dataset, generated once into ~/.cache/framestream, ~40 s) through a DataLoader with a "
        "dummy consumer and report samples/s, frames/s, latency percentiles, decoder-cache "
        "reuse and, with --ceiling, the ratio to this machine's sequential decode rate. "
        "Several --mode/--num-workers values run a matrix. Results (JSON, CSV, PNG plot) go to "
        f"--output-dir, by default ./{DEFAULT_OUTPUT}/<timestamp>/, named in the last line.",
    )
    p.add_argument("root_pos", nargs="?", metavar="ROOT", help="dataset folder or URL")
    add_arguments(p)
    for action in p._actions:  # this command writes its results by default
        if action.help is None and action.dest in _HELP:
            action.help = _HELP[action.dest]
        if action.dest == "output_dir":
            action.help = (
                "folder for results.json, results.csv, results.png and one JSON per run "
                f"(default: ./{DEFAULT_OUTPUT}/<timestamp>/ for a single-process run; none "
                "with --json or under torchrun/srun unless given)"
            )
        elif action.dest == "ceiling":
            action.help = (str(action.help or "") + " (costs --ceiling-seconds per run)").strip()
    p.add_argument(
        "--json",
        action="store_true",
        help="print the results as a JSON list on stdout (and write no results folder "
        "unless --output-dir is given)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


# Help for the shared flags that come without one (framestream.bench.config.add_arguments).
_HELP = {
    "batch_size": "samples per batch",
    "buffer_size": "shuffle reservoir per worker, in sample references (kilobytes, no pixels)",
    "active_shards": "episodes open at once per worker (each holds its decoded frames: memory)",
    "seed": "shuffle seed",
    "prefetch_factor": "batches each worker prepares ahead (default: torch's, 2)",
    "video_backend": "video decoder (default: torchcodec when it loads, else PyAV)",
    "decoder_threads": "threads per video decoder",
    "ceiling_seconds": "how long --ceiling decodes (time, per measurement)",
}


def _load1() -> float | None:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load_note(before: float | None, during: list[float], own: int, cpus: int) -> str | None:
    """A warning when other work competed for the CPUs, else None.

    ``before``: the 1-minute load average when the command started (other work only);
    ``during``: the ones at the end of each run, which include this run's ``own`` busy
    processes (main + DataLoader workers), subtracted before comparing with ``cpus``.
    """
    busy_before = before is not None and before > 0.5 * cpus
    others = [max(0.0, x - own) for x in during]
    busy_during = bool(others) and max(others) > 0.5 * cpus
    if not (busy_before or busy_during):
        return None
    seen = f"load average {before:.1f} before the run" if before is not None else ""
    if during:
        seen += (", " if seen else "") + f"up to {max(during):.1f} during it"
    return (
        f"NOTE: the machine was busy ({seen}, on {cpus} CPUs; this run itself accounts for "
        f"about {own}): other processes took CPU time, so these figures are lower and noisier "
        "than on an idle machine; compare ratios to the ceiling, or rerun when it is idle"
    )


def _default_output_dir(args: argparse.Namespace) -> str | None:
    if args.output_dir or args.csv or args.json:  # --json: the results go to stdout
        return args.output_dir
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # ranks would pick different folders
        return None
    return str(Path(DEFAULT_OUTPUT) / time.strftime("%Y%m%d-%H%M%S"))


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from framestream.bench import (
        BenchConfig,
        effective_warmup,
        format_summary,
        run_benchmarks,
        write_outputs,
    )

    if args.root_pos and args.root and args.root_pos != args.root:
        raise CLIError("give ROOT or --root, not both")
    args.root = args.root or args.root_pos
    if args.source == "local":
        check_root(args.root)
    args.output_dir = _default_output_dir(args)
    try:
        cfgs = BenchConfig.matrix_from_args(args)
    except json.JSONDecodeError as exc:
        raise CLIError(f"argument --storage-options: not JSON ({exc})") from None
    out = Path(args.output_dir) if args.output_dir else None
    cpus = _cpus()
    load_before = _load1()
    load_during: list[float] = []
    bars: list[Any] = []
    quiet = args.json

    def progress(cfg: BenchConfig) -> Any:
        total = effective_warmup(cfg) + cfg.max_batches if cfg.max_batches else None
        bar = tqdm(
            total=total,
            desc=f"{cfg.label or cfg.mode or 'single'} w{cfg.num_workers}",
            unit="batch",
            disable=args.no_progress,
            file=sys.stderr,
            leave=False,
        )
        bars.append(bar)
        return bar.update

    def log(msg: str) -> None:
        tqdm.write(f"[bench] {msg}", file=sys.stderr)

    results: list[dict[str, Any]] = []

    def done(result: dict[str, Any]) -> None:
        bars[-1].close()
        load = _load1()
        if load is not None:
            load_during.append(load)
        write_outputs(result, cfgs[len(results)])
        results.append(result)
        if out is not None and result["rank"] == 0:
            (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
        if not quiet:
            print(format_summary(result))
            print(flush=True)

    try:
        run_benchmarks(cfgs, progress=progress, log=log, on_result=done)
    finally:
        for bar in bars:
            bar.close()
        own = 1 + max((c.num_workers for c in cfgs), default=0)
        note = load_note(load_before, load_during, own, cpus)
        if results and out is not None and results[0]["rank"] == 0:
            _finish(results, out, note, quiet)
    if quiet:
        print(json.dumps(results, indent=2, default=str))
    elif note:
        print(note)
    if out is not None and results and results[0]["rank"] == 0:
        files = ", ".join(p.name for p in (out / n for n in _NAMES) if p.exists())
        print(f"results written to {out}/ ({files})", file=sys.stderr if quiet else sys.stdout)
    return 0


_NAMES = ("results.json", "results.csv", "results.png")


def _finish(results: list[dict[str, Any]], out: Path, note: str | None, quiet: bool) -> None:
    """Record the load note in results.json and draw results.png (needs matplotlib)."""
    for r in results:
        r["load_note"] = note
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    try:
        from framestream.bench.plot import plot_results

        plot_results(results, out / "results.png", note=note)
    except ImportError:
        print(
            "no plot: matplotlib is not installed (pip install 'framestream[bench]')",
            file=sys.stderr,
        )
