"""Several ranks: who this process is (torchrun, accelerate, SLURM) and per-node sums over gloo.

Why sums over a process group rather than after the fact: a node's throughput is what its
ranks delivered *together*, and only the ranks know which host each of them ran on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from framestream.stream.plan import resolve_rank


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    initialised_here: bool = False
    active: bool = False  # a torch.distributed group is usable for reductions


def _slurm_tasks_per_node() -> int | None:
    raw = os.environ.get("SLURM_NTASKS_PER_NODE") or os.environ.get("SLURM_TASKS_PER_NODE")
    if not raw:
        return None
    try:  # SLURM_TASKS_PER_NODE looks like "4(x2),3": the first node's count is ours if equal
        return int(raw.split(",")[0].split("(")[0])
    except ValueError:
        return None


def detect_dist() -> DistInfo:
    """Rank and world size as the datasets resolve them (:func:`resolve_rank`: Accelerate,
    then torch.distributed, then ``RANK``/``WORLD_SIZE``), else SLURM's; plus the local layout.

    SLURM is only a fallback here: a plain ``srun`` sets no ``RANK``, and the benchmark passes
    the rank it found to the dataset explicitly.
    """
    env = os.environ
    rank, world = resolve_rank(None, None)
    if world > 1 or "RANK" in env:
        local_rank = int(env.get("LOCAL_RANK", 0))
        local_world = int(env.get("LOCAL_WORLD_SIZE", 0)) or None
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        rank, world = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])
        local_rank = int(env.get("SLURM_LOCALID", 0))
        local_world = _slurm_tasks_per_node()
    else:
        return DistInfo()
    return DistInfo(rank, world, local_rank, local_world or 1)


def init_dist(info: DistInfo) -> DistInfo:
    """Join (or reuse) a gloo group so that per-node sums are real sums, not estimates."""
    import torch.distributed as dist

    if info.world_size <= 1 or not dist.is_available():
        return info
    if dist.is_initialized():
        info.active = True
        return info
    if not os.environ.get("MASTER_ADDR"):
        return info  # no rendezvous: per-rank figures only, and the JSON says so
    os.environ.setdefault("MASTER_PORT", "29500")
    dist.init_process_group(
        "gloo",
        init_method="env://",
        rank=info.rank,
        world_size=info.world_size,
        timeout=timedelta(minutes=30),
    )
    info.initialised_here = info.active = True
    return info


def gather_node_sums(dist_info: DistInfo, mine: dict[str, Any]) -> dict[str, Any]:
    """Sum per-rank rates over the ranks on this host (and over the world) via gloo."""
    import torch.distributed as dist

    if dist_info.world_size <= 1:
        return {
            "samples_per_s_node": mine["samples_per_s"],
            "frames_per_s_node": mine["delivered_frames_per_s"],
            "decoded_frames_per_s_node": mine["decoded_frames_per_s"],
            "frames_per_s_total": mine["delivered_frames_per_s"],
            "nodes": 1,
            "ranks": [mine],
        }
    if not dist_info.active:
        return {
            "samples_per_s_node": None,
            "frames_per_s_node": None,
            "decoded_frames_per_s_node": None,
            "frames_per_s_total": None,
            "nodes": None,
            "ranks": [mine],
        }
    gathered: list[Any] = [None] * dist_info.world_size
    dist.all_gather_object(gathered, mine)
    host = mine["hostname"]
    node = [g for g in gathered if g["hostname"] == host]
    return {
        "samples_per_s_node": sum(g["samples_per_s"] for g in node),
        "frames_per_s_node": sum(g["delivered_frames_per_s"] for g in node),
        "decoded_frames_per_s_node": sum(g["decoded_frames_per_s"] for g in node),
        "frames_per_s_total": sum(g["delivered_frames_per_s"] for g in gathered),
        "nodes": len({g["hostname"] for g in gathered}),
        "ranks": gathered,
    }
