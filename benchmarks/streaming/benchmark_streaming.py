#!/usr/bin/env python
"""Streaming benchmark: a dummy consumer over StreamingLeRobotDataset through a DataLoader.

A thin wrapper: the measurement lives in :mod:`framestream.bench` so that this script and
``framestream bench`` report the same figures. Several ``--mode``/``--num-workers`` values
run a matrix in one process (one JSON and one CSV row per run; the decode ceiling is
measured once). Run it under ``torchrun``, ``accelerate launch`` or ``srun`` for several
ranks; README.md in this folder says what each figure means and how to run the matrix.

    python benchmarks/streaming/benchmark_streaming.py --mode single sarm window \\
        --num-workers 0 2 --ceiling --output-dir bench-results
"""

from __future__ import annotations

import argparse
import json
import sys

from framestream.bench import (
    BenchConfig,
    add_arguments,
    format_summary,
    run_benchmarks,
    write_outputs,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(output_dir="bench-results")
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="print only one JSON line per run: the files it wrote",
    )
    args = parser.parse_args(argv)
    cfgs = BenchConfig.matrix_from_args(args)

    def log(msg: str) -> None:
        if not args.quiet:
            print(f"[bench] {msg}", file=sys.stderr, flush=True)

    def done(result: dict) -> None:
        cfg = cfgs[len(finished)]
        finished.append(result)
        written = write_outputs(result, cfg)
        if not args.quiet:
            print(format_summary(result), flush=True)
        print(json.dumps(written), flush=True)

    finished: list[dict] = []
    run_benchmarks(cfgs, log=log, on_result=done)
    return 0


if __name__ == "__main__":
    sys.exit(main())
