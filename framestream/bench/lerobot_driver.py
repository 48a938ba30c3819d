"""Time one of LeRobot's loaders the way framestream's benchmark times its own.

Run by ``framestream bench --compare-lerobot PYTHON`` as ``PYTHON lerobot_driver.py JSON``,
inside LeRobot's environment: it imports only the standard library, numpy, torch and LeRobot
(never framestream, which that environment need not have). It prints one line
``FRAMESTREAM_LEROBOT_RESULT {json}``; an error is reported in that JSON, not raised.

JSON fields: ``root``, ``loader`` (``map``: ``LeRobotDataset`` through a shuffling
``DataLoader``, as ``lerobot-train`` builds it; ``streaming``: ``StreamingLeRobotDataset``
with ``max_num_shards = max(1, num_workers)``, since 0 yields nothing), ``delta_timestamps``
(seconds, or null), ``batch_size``, ``num_workers``, ``warmup_batches``, ``max_batches``
(0: no limit), ``seconds`` (null: no limit), ``seed``.

The timed phase runs from the arrival of the last warm-up batch to the arrival of the last
timed batch; the consumer touches one element per memory page of every tensor, as
framestream's does. Cameras are uint8 (``return_uint8=True``, what ``lerobot-train`` asks).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

MARK = "FRAMESTREAM_LEROBOT_RESULT "

if (
    __name__ == "__main__"
    and sys.path
    and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__))
):
    del sys.path[0]  # run as a file: never let framestream/bench/ shadow installed packages


def _touch(batch, sink: int) -> int:
    import torch

    for v in batch.values() if isinstance(batch, dict) else ():
        if isinstance(v, torch.Tensor) and v.numel():
            step = max(1, 4096 // v.element_size())
            sink += int(v.reshape(-1)[::step].sum().item()) & 0xFFFF
    return sink


def _loader(cfg: dict):
    import torch

    common = dict(delta_timestamps=cfg.get("delta_timestamps") or None, return_uint8=True)
    repo_id = "local/framestream-bench"
    workers = int(cfg["num_workers"])
    extra = {"prefetch_factor": 2} if workers > 0 else {}
    if cfg["loader"] == "map":
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        ds = LeRobotDataset(repo_id, root=cfg["root"], **common)
        gen = torch.Generator().manual_seed(int(cfg.get("seed", 0)))
        return torch.utils.data.DataLoader(
            ds,
            batch_size=int(cfg["batch_size"]),
            shuffle=True,
            generator=gen,
            num_workers=workers,
            drop_last=False,
            **extra,
        ), {"len": len(ds)}
    if cfg["loader"] == "streaming":
        from lerobot.datasets.streaming_dataset import StreamingLeRobotDataset

        shards = max(1, workers)
        ds = StreamingLeRobotDataset(
            repo_id,
            root=cfg["root"],
            max_num_shards=shards,
            seed=int(cfg.get("seed", 0)) or 42,
            **common,
        )
        return torch.utils.data.DataLoader(
            ds, batch_size=int(cfg["batch_size"]), num_workers=workers, **extra
        ), {"max_num_shards": shards}
    raise ValueError(f"unknown loader {cfg['loader']!r}")


def run(cfg: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    t_setup = time.perf_counter()
    loader, info = _loader(cfg)
    setup_s = time.perf_counter() - t_setup
    warmup = int(cfg.get("warmup_batches", 5))
    max_batches = int(cfg.get("max_batches") or 0)
    seconds = cfg.get("seconds")
    sink = consumed = batches = timed_samples = timed_batches = 0
    t_first = t0 = t_last = None
    t_iter = time.perf_counter()
    for batch in loader:
        now = time.perf_counter()
        sink = _touch(batch, sink)
        n = len(next(iter(batch.values())))
        consumed += n
        batches += 1
        if t_first is None:
            t_first = now - t_iter
        if batches == warmup or (warmup == 0 and t0 is None):
            t0 = now
            continue
        if t0 is None:
            continue
        timed_samples += n
        timed_batches += 1
        t_last = time.perf_counter()
        if max_batches and timed_batches >= max_batches:
            break
        if seconds and t_last - t0 >= float(seconds):
            break
    elapsed = (t_last - t0) if (t0 is not None and t_last is not None) else 0.0
    out = {
        "samples_per_s": timed_samples / elapsed if elapsed else None,
        "timed_samples": timed_samples,
        "timed_batches": timed_batches,
        "elapsed_s": elapsed,
        "total_batches": batches,
        "total_samples": consumed,
        "first_batch_s": t_first,
        "setup_s": setup_s,
        "checksum": sink % 1_000_003,
        **info,
    }
    if not timed_batches:
        out["error"] = (
            f"no timed batch: the loader yielded {batches} batches ({consumed} samples), "
            f"warm-up was {warmup}"
        )
    return out


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for name in ("lerobot", "torch", "torchcodec", "av", "datasets"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def main(argv: list[str]) -> int:
    cfg = json.loads(argv[1] if len(argv) > 1 else sys.stdin.read())
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        result = run(cfg)
    except BaseException as exc:  # reported, so the benchmark can say what failed
        tb = traceback.format_exc().strip().splitlines()
        msg = f"{type(exc).__name__}: {str(exc).strip()}"
        if "Original Traceback" in msg:  # raised in a DataLoader worker: keep its last line
            msg = msg.splitlines()[-1] + " (in a DataLoader worker)"
        result = {"error": msg, "traceback": tb[-12:]}
    result["loader"] = cfg.get("loader")
    result["versions"] = _versions()
    print(MARK + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
