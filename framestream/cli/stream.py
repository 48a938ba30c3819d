"""``framestream stream``: stream a dataset (synthetic by default) and say what happened."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "stream",
        help="stream a dataset through a DataLoader and print throughput and counters",
        description="Stream ROOT (a folder or URL; default: a cached synthetic dataset that "
        "is generated on first use) through a torch DataLoader and print what was read.",
    )
    p.add_argument("root", nargs="?", help="dataset folder or URL (default: synthetic)")
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument(
        "--window",
        action="store_true",
        help="ask for a 16-frame window on every camera and the state",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from framestream import StreamingLeRobotDataset, collate
    from framestream.testing.default_data import synthetic_dataset

    root = args.root or str(synthetic_dataset())
    delta = None
    ds = StreamingLeRobotDataset(root, seed=args.seed, return_uint8=True)
    if args.window:
        step = 10 / ds.fps
        past = [-(15 - i) * step for i in range(16)]
        delta = {k: past for k in ds.meta.camera_keys + ["observation.state"]}
        ds = StreamingLeRobotDataset(
            root, seed=args.seed, return_uint8=True, delta_timestamps=delta, meta=ds.meta
        )
    loader = torch.utils.data.DataLoader(
        ds, batch_size=args.batch_size, num_workers=args.num_workers, collate_fn=collate
    )
    t0 = time.perf_counter()
    first = None
    n = 0
    for i, batch in enumerate(tqdm(loader, total=args.batches, desc="streaming", unit="batch")):
        if first is None:
            first = time.perf_counter() - t0
        n += len(batch["index"])
        if i + 1 >= args.batches:
            break
    elapsed = time.perf_counter() - t0
    summary = {
        "root": root,
        "samples": n,
        "seconds": round(elapsed, 3),
        "samples_per_s": round(n / elapsed, 1),
        "first_batch_s": round(first or 0.0, 3),
        "num_workers": args.num_workers,
        "stats": ds.stats(),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for k, v in summary.items():
            if k != "stats":
                print(f"{k:>16}: {v}")
        for k, v in summary["stats"].items():
            print(f"{k:>16}: {v:.3f}" if isinstance(v, float) else f"{k:>16}: {v}")
    return 0
