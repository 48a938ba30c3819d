"""Dump reference samples from LeRobot 0.6.1's own datasets, for framestream parity tests.

Run in the LeRobot reference venv (as a subprocess from framestream's tests):

    HF_HUB_OFFLINE=1 LEROBOT_PYTHON dump_reference.py ROOT OUT.pt \
        [--cls map|stream] [--indices 0,5,17 | --all] [--episodes 5,2,4] \
        [--delta '{"action": [0, 0.0333333], "observation.images.cam_high": [-0.0333333, 0]}'] \
        [--return-uint8] [--tolerance-s 1e-4] [--depth-output-unit mm|m] \
        [--video-backend pyav|torchcodec] \
        [--max-samples N] [--no-shuffle] [--buffer-size 1] [--seed 42] [--max-num-shards 1]

OUT.pt (torch.save, load with weights_only=False) holds a dict:

  "args":    the arguments used,
  "len":     len(dataset) (map) or dataset.num_frames (stream),
  "num_episodes": dataset.num_episodes,
  "samples": {key: sample}, where key is the map-style position asked for (--indices) or, for
             the streaming class, the sample's global `index` (int);
             a sample is {feature: torch.Tensor | str | None | list | int | float} exactly as
             LeRobot returned it (tensors cloned), or {"__error__": "ExcType: message"} when
             LeRobot raised for that item,
  "order":   keys in the order LeRobot produced them (stream: iteration order),
  "py_types": {key: {feature: type name}} of each value (tells a 0-d tensor from a python int),
  "meta":    a snapshot of ds.meta: features, fps, total_*, camera/video/image/depth keys,
             stats (numpy -> torch), tasks (list of (task, task_index)), episodes columns (dict of
             lists, stats/ columns excluded as LeRobot does), has_language_columns, robot_type.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402


def _to_plain(v):
    if isinstance(v, torch.Tensor):
        return v.detach().clone()
    if isinstance(v, np.ndarray):
        return torch.from_numpy(np.array(v))
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, dict):
        return {k: _to_plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return type(v)(_to_plain(x) for x in v)
    return v


def _sample(item: dict) -> tuple[dict, dict]:
    return {k: _to_plain(v) for k, v in item.items()}, {
        k: type(v).__name__ for k, v in item.items()
    }


def snapshot_meta(meta) -> dict:
    eps = meta.episodes
    episodes = {c: _to_plain(list(eps[c])) for c in eps.column_names} if eps is not None else None
    stats = None
    if meta.stats is not None:
        stats = {
            k: {s: torch.as_tensor(np.asarray(x)) for s, x in d.items()}
            for k, d in meta.stats.items()
        }
    tasks = None
    if meta.tasks is not None:
        tasks = [
            (str(t), int(i))
            for t, i in zip(meta.tasks.index, meta.tasks["task_index"], strict=True)
        ]
    return {
        "features": json.loads(json.dumps(meta.features, default=list)),
        "fps": meta.fps,
        "robot_type": meta.robot_type,
        "total_episodes": meta.total_episodes,
        "total_frames": meta.total_frames,
        "total_tasks": meta.total_tasks,
        "camera_keys": list(meta.camera_keys),
        "video_keys": list(meta.video_keys),
        "image_keys": list(meta.image_keys),
        "depth_keys": list(meta.depth_keys),
        "has_language_columns": bool(meta.has_language_columns),
        "shapes": {k: tuple(v) for k, v in meta.shapes.items()},
        "names": meta.names,
        "stats": stats,
        "tasks": tasks,
        "episodes": episodes,
        "episodes_type": type(eps).__name__,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--cls", choices=["map", "stream"], default="map")
    ap.add_argument("--repo-id", default="local/ref")
    ap.add_argument("--indices", default=None, help="comma list of map-style positions")
    ap.add_argument("--all", action="store_true", help="every position (map) / every item (stream)")
    ap.add_argument("--episodes", default=None, help="comma list, order kept as given")
    ap.add_argument("--delta", default=None, help="JSON dict or @file.json for delta_timestamps")
    ap.add_argument("--return-uint8", action="store_true")
    ap.add_argument("--tolerance-s", type=float, default=1e-4)
    ap.add_argument("--depth-output-unit", default="mm")
    ap.add_argument("--video-backend", default=None)
    # streaming-only
    ap.add_argument("--max-samples", type=int, default=None)
    ap.add_argument("--no-shuffle", action="store_true")
    ap.add_argument("--buffer-size", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--max-num-shards", type=int, default=16)
    ap.add_argument("--no-meta", action="store_true")
    args = ap.parse_args()

    delta = None
    if args.delta:
        delta = json.loads(
            Path(args.delta[1:]).read_text() if args.delta.startswith("@") else args.delta
        )
    episodes = [int(e) for e in args.episodes.split(",")] if args.episodes else None

    result: dict = {
        "args": vars(args) | {"root": str(args.root), "out": str(args.out)},
        "samples": {},
        "order": [],
        "py_types": {},
    }
    if args.cls == "map":
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        ds = LeRobotDataset(
            args.repo_id,
            root=args.root,
            episodes=episodes,
            delta_timestamps=delta,
            tolerance_s=args.tolerance_s,
            video_backend=args.video_backend,
            return_uint8=args.return_uint8,
            depth_output_unit=args.depth_output_unit,
        )
        result["len"] = len(ds)
        result["num_episodes"] = ds.num_episodes
        if args.all or args.indices is None:
            positions = range(len(ds))
        else:
            positions = [int(i) for i in args.indices.split(",")]
        for i in positions:
            try:
                s, t = _sample(ds[i])
            except Exception as e:  # noqa: BLE001 - the error is part of the contract
                s, t = {"__error__": f"{type(e).__name__}: {e}"}, {}
            result["samples"][i] = s
            result["py_types"][i] = t
            result["order"].append(i)
    else:
        from lerobot.datasets.streaming_dataset import StreamingLeRobotDataset

        ds = StreamingLeRobotDataset(
            args.repo_id,
            root=args.root,
            episodes=episodes,
            delta_timestamps=delta,
            tolerance_s=args.tolerance_s,
            shuffle=not args.no_shuffle,
            buffer_size=args.buffer_size,
            seed=args.seed,
            max_num_shards=args.max_num_shards,
            return_uint8=args.return_uint8,
            depth_output_unit=args.depth_output_unit,
        )
        result["len"] = ds.num_frames
        result["num_episodes"] = ds.num_episodes
        it = iter(ds)
        n = 0
        while args.max_samples is None or n < args.max_samples:
            try:
                item = next(it)
            except StopIteration:
                break
            except Exception as e:  # noqa: BLE001 - a decode error ends LeRobot's iterator
                result["stream_error"] = f"{type(e).__name__}: {e}"
                result["stream_traceback"] = traceback.format_exc()
                break
            s, t = _sample(item)
            key = int(s["index"])
            result["samples"][key] = s
            result["py_types"][key] = t
            result["order"].append(key)
            n += 1
    if not args.no_meta:
        result["meta"] = snapshot_meta(ds.meta)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(result, args.out)
    print(f"wrote {len(result['samples'])} samples to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
