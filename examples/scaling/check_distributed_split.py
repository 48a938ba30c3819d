#!/usr/bin/env python
"""Stream one epoch on every rank and check that the ranks read disjoint parts covering it.

Why: before a long multi-node run, confirm on the real launcher (``accelerate launch``,
``torchrun``, ``srun``) that every process resolved its own rank, that no sample is read twice
and none is missed, and that ``even_ranks`` gives every rank the same number of steps. Each
rank writes what it read (global ``index``, ``episode_index``, ``frame_index``, the decoded
``(episode, frame)`` of the first camera on synthetic datasets, ``is_repeat``) to
``OUT/rank<r>.json``; rank 0 then gathers everything and prints a verdict (exit code 1 if the
split is wrong).

    accelerate launch --multi_gpu --num_processes 2 examples/scaling/check_distributed_split.py \\
        --root /path/to/dataset --out /tmp/split --num-workers 0 2 --even-ranks false true

``--case '{"num_workers": 2, "episodes": [3]}'`` adds a case with other DatasetConfig fields.
``OUT/started.rank<r>.json`` is written as soon as a rank knows its (rank, world size), so a
caller can tell "a process did not start" from "a process started and failed".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from framestream import DatasetConfig, make_dataset
from framestream.config import split_overrides


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {text!r}")


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    rest, overrides = split_overrides(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    DatasetConfig.add_arguments(p)
    p.add_argument("--root", help="dataset path or URL")
    p.add_argument("--out", required=True, help="folder for the per-rank JSON files")
    p.add_argument("--num-workers", type=int, nargs="+", default=[0])
    p.add_argument("--even-ranks", type=_bool, nargs="+", default=[True])
    p.add_argument(
        "--case",
        action="append",
        default=[],
        metavar="JSON",
        help='an extra case: {"num_workers": 2, <DatasetConfig field>: value, ...}; repeatable',
    )
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--epoch", type=int, default=0)
    args = p.parse_args(rest)
    return args, overrides


def init_distributed() -> tuple[int, int]:
    """Initialise the process group the way a training job would (Accelerate if installed)."""
    try:
        from accelerate import PartialState
    except ImportError:
        import torch.distributed as dist

        world = int(os.environ.get("WORLD_SIZE", 1))
        if world > 1 and not dist.is_initialized():
            dist.init_process_group("gloo")
        return (dist.get_rank(), dist.get_world_size()) if world > 1 else (0, 1)
    # cpu=True on a machine without CUDA: otherwise Accelerate ignores the launcher's
    # WORLD_SIZE there and every process believes it is alone (world size 1).
    state = PartialState(cpu=not torch.cuda.is_available())
    return state.process_index, state.num_processes


def stream_epoch(cfg: DatasetConfig, *, num_workers: int, batch_size: int, epoch: int) -> dict:
    """One epoch of this rank's share, as plain lists."""
    from framestream.testing import decode_frame_id

    ds = make_dataset(cfg)
    ds.set_epoch(epoch)
    camera = ds.meta.camera_keys[0] if ds.meta.camera_keys else None
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=num_workers)
    samples: list[list[Any]] = []
    decodable = camera is not None
    for batch in loader:
        frames: list[Any] = [None] * len(batch["index"])
        if decodable:
            try:
                frames = [tuple(decode_frame_id(img))[:2] for img in batch[camera]]
            except ValueError:  # not a synthetic dataset
                decodable = False
        repeats = batch["is_repeat"].tolist() if "is_repeat" in batch else [False] * len(frames)
        for i, idx in enumerate(batch["index"].tolist()):
            samples.append(
                [
                    idx,
                    int(batch["episode_index"][i]),
                    int(batch["frame_index"][i]),
                    list(frames[i]) if frames[i] is not None else None,
                    bool(repeats[i]),
                ]
            )
    rank, world = ds.rank_and_world_size()
    return {
        "num_workers": num_workers,
        "even_ranks": cfg.even_ranks,
        "episodes": ds.episodes.tolist(),
        "rank": rank,
        "world_size": world,
        "planned": ds.num_samples(num_workers=num_workers),
        "epoch_frames": int(ds.lengths.sum()),
        "samples": samples,
    }


def verdict(per_rank: list[dict]) -> list[str]:
    """Problems with one case across ranks (empty when the split is right)."""
    problems = []
    seen: Counter[int] = Counter()
    for r in per_rank:
        seen.update(s[0] for s in r["samples"] if not s[4])
        bad = [s for s in r["samples"] if s[3] is not None and s[3] != [s[1], s[2]]]
        if bad:
            problems.append(f"rank {r['rank']}: {len(bad)} samples whose pixels are another frame")
    dup = [i for i, n in seen.items() if n > 1]
    if dup:
        problems.append(f"{len(dup)} indices read more than once, e.g. {dup[:5]}")
    total = per_rank[0]["epoch_frames"]  # the selected episodes' frames
    if len(seen) != total:
        problems.append(f"{len(seen)} distinct indices read, the epoch has {total}")
    counts = {r["rank"]: len(r["samples"]) for r in per_rank}
    if per_rank[0]["even_ranks"] and len(set(counts.values())) > 1:
        problems.append(f"even_ranks but unequal sample counts per rank {counts}")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    rank, world = init_distributed()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = {"rank": rank, "world_size": world, "pid": os.getpid()}
    (out / f"started.rank{rank}.json").write_text(json.dumps(started))

    base = DatasetConfig.from_args(args, overrides)
    if args.root:
        base = base.replace(root=args.root)
    todo = [(base.replace(even_ranks=e), nw) for e in args.even_ranks for nw in args.num_workers]
    for text in args.case:
        spec = json.loads(text)
        nw = int(spec.pop("num_workers", 0))
        todo.append((base.replace(**spec), nw))
    cases = [
        stream_epoch(cfg, num_workers=nw, batch_size=args.batch_size, epoch=args.epoch)
        for cfg, nw in todo
    ]
    result = {"rank": rank, "world_size": world, "cases": cases}
    tmp = out / f".rank{rank}.json.tmp"
    tmp.write_text(json.dumps(result))
    os.replace(tmp, out / f"rank{rank}.json")

    if world == 1:
        gathered = [result]
    else:
        import torch.distributed as dist

        gathered = [None] * world
        dist.all_gather_object(gathered, result)
    failed = False
    if rank == 0:
        for i, case in enumerate(cases):
            problems = verdict([g["cases"][i] for g in gathered])
            counts = [len(g["cases"][i]["samples"]) for g in gathered]
            label = f"num_workers={case['num_workers']} even_ranks={case['even_ranks']}"
            status = "OK" if not problems else "FAIL: " + "; ".join(problems)
            print(f"[split] world_size={world} {label} samples/rank={counts}: {status}")
            failed |= bool(problems)
    if world > 1:
        import torch.distributed as dist

        # Tear the process group down before exit: gloo's threads destroyed at interpreter
        # shutdown otherwise abort the process now and then ("terminate called without an
        # active exception").
        dist.barrier()
        dist.destroy_process_group()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
