"""Two real processes stream one epoch: disjoint ranks that together cover it.

The processes are started by torchrun (``python -m torch.distributed.run``, always there with
torch) on loopback, with gloo; each builds the dataset through Accelerate's ``PartialState``
when Accelerate is installed, which is where the dataset reads its rank from, like a training
job would. The launched script is ``examples/scaling/check_distributed_split.py``.

If fewer than two processes start with world size 2 (no process group possible here), the
test skips and says why; it never passes on a single process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from framestream import DatasetMeta

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "scaling" / "check_distributed_split.py"
TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_two(out: Path, args: list[str]) -> list[dict]:
    """Run the split check on 2 processes; the per-rank results, or skip if 2 did not start."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(SCRIPT),
        "--out",
        str(out),
        *args,
    ]
    # CPU + gloo even on a GPU machine (2 processes must not need 2 GPUs).
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="")
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=env, cwd=REPO
        )
        rc, log = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, log = None, f"timed out after {TIMEOUT_S}s\n{exc.stdout or ''}{exc.stderr or ''}"
    started = []
    for p in sorted(out.glob("started.rank*.json")):
        info = json.loads(p.read_text())
        if info["world_size"] == 2:
            started.append(info["rank"])
    if sorted(started) != [0, 1]:
        pytest.skip(
            f"2 processes with world_size 2 did not start (ranks started: {started}, rc={rc}); "
            f"launcher output:\n{log[-3000:]}"
        )
    assert rc == 0, f"the 2-process run failed (rc={rc}):\n{log[-6000:]}"
    results = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in results] == [0, 1]
    assert all(r["world_size"] == 2 for r in results)
    return results


def check_case(per_rank: list[dict], meta: DatasetMeta, expected: set[int]) -> None:
    """Disjoint, covering, right pixels; equal counts and flagged repeats with even_ranks."""
    even = per_rank[0]["even_ranks"]
    assert all(c["world_size"] == 2 for c in per_rank)
    assert [c["rank"] for c in per_rank] == [0, 1]
    owned: list[set[int]] = []
    for case in per_rank:
        samples = case["samples"]
        assert samples, f"rank {case['rank']} got an empty stream"
        assert len(samples) == case["planned"]
        for index, episode, frame, pixels, _repeat in samples:
            row = meta.episodes.row(episode)
            assert index == int(meta.episodes.from_index[row]) + frame
            assert pixels == [episode, frame], f"index {index}: pixels show {pixels}"
        fresh = [s[0] for s in samples if not s[4]]
        assert len(fresh) == len(set(fresh)), f"rank {case['rank']} read an index twice"
        repeats = [s for s in samples if s[4]]
        if not even:
            assert not repeats
        assert {s[0] for s in repeats} <= expected
        owned.append(set(fresh))
    assert owned[0].isdisjoint(owned[1]), f"both ranks read {sorted(owned[0] & owned[1])[:10]}"
    assert owned[0] | owned[1] == expected
    counts = [len(c["samples"]) for c in per_rank]
    if even:
        assert counts[0] == counts[1]
    else:
        assert sum(counts) == len(expected)


@pytest.mark.timeout(TIMEOUT_S + 60)
def test_two_ranks_split_one_epoch(tiny_root: Path, tmp_path: Path) -> None:
    """Shuffled epoch over 6 episodes, 0 and 2 workers per rank, with and without even_ranks;
    then a single episode for 2 ranks x 2 workers (cut inside the episode, nobody empty).
    One launch for all cases: starting processes is the expensive part."""
    results = launch_two(
        tmp_path / "split",
        [
            "--root",
            str(tiny_root),
            "--num-workers",
            "0",
            "2",
            "--even-ranks",
            "false",
            "true",
            "--epoch",
            "1",
            "--dataset.seed=5",
            "--dataset.return_uint8=true",
            "--case",
            json.dumps({"num_workers": 2, "even_ranks": True, "episodes": [3], "shuffle": False}),
        ],
    )
    meta = DatasetMeta(str(tiny_root))
    everything = set(range(meta.total_frames))
    cases = [(c["num_workers"], c["even_ranks"]) for c in results[0]["cases"]]
    assert cases == [(0, False), (2, False), (0, True), (2, True), (2, True)]
    for i in range(4):
        check_case([r["cases"][i] for r in results], meta, everything)
    # The ranks read pieces of the episodes (frames disjoint: check_case), so that each
    # rank's batches mix nearly all of them, not a half each.
    eps = [Counter(s[1] for s in r["cases"][0]["samples"]) for r in results]
    assert len(set(eps[0]) & set(eps[1])) >= 3

    # Fewer episodes than (rank, worker) readers.
    row = meta.episodes.row(3)
    lo, hi = int(meta.episodes.from_index[row]), int(meta.episodes.to_index[row])
    single = [r["cases"][4] for r in results]
    assert single[0]["episodes"] == [3]
    check_case(single, meta, set(range(lo, hi)))
