"""``framestream bench``: run the streaming benchmark with a progress bar and a summary table.

The measurement is :func:`framestream.bench.run_benchmarks`, the same one the script in
``benchmarks/streaming/`` runs, so a number printed here means what it means there.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_parser(sub: Any) -> argparse.ArgumentParser:
    from framestream.bench import add_arguments

    p = sub.add_parser(
        "bench",
        help="benchmark streaming throughput, latency and decode reuse (synthetic by default)",
        description="Stream a dataset (ROOT or --root; default: the cached synthetic benchmark "
        "dataset) through a DataLoader with a dummy consumer and report samples/s, frames/s, "
        "latency percentiles, decoder-cache reuse and, with --ceiling, the ratio to this "
        "machine's sequential decode rate. Several --mode/--num-workers values run a matrix.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("root_pos", nargs="?", metavar="ROOT", help="dataset folder or URL")
    add_arguments(p)
    p.add_argument("--json", action="store_true", help="print the results as a JSON list")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


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
        print("framestream bench: give ROOT or --root, not both", file=sys.stderr)
        return 2
    args.root = args.root or args.root_pos
    cfgs = BenchConfig.matrix_from_args(args)
    bars: list[Any] = []

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
        written = write_outputs(result, cfgs[len(results)])
        results.append(result)
        if not args.json:
            print(format_summary(result))
            for kind, path in written.items():
                print(f"{kind} written to {path}")
            print(flush=True)

    try:
        run_benchmarks(cfgs, progress=progress, log=log, on_result=done)
    finally:
        for bar in bars:
            bar.close()
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    return 0
