"""framestream.io.runs: a run's pin records (``<cache>/pins/<run>/``) live as long as the run.

Real processes throughout: a run streamed over the loopback HTTP server with 2 DataLoader
workers leaves no records once it is over, a killed run's records are swept when a cache is
next opened, and a live run's (held by another process, or inherited by a forked child that
lets go) survive every sweep.
"""

from __future__ import annotations

import gc
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from remote_helpers import small_dataset, stream

from framestream import StreamingLeRobotDataset
from framestream.io.runs import (
    PINS,
    STALE_UNLOCKED_S,
    hold_run,
    remove_run_if_done,
    run_dir,
    sweep_runs,
)
from framestream.io.source import Source
from framestream.testing.servers import serve

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return small_dataset(tmp_path_factory)


def pins_of(cache: Path) -> list[str]:
    base = cache / PINS
    return sorted(os.listdir(base)) if base.is_dir() else []


def records(cache: Path) -> dict[str, int]:
    """Run id -> number of pin records in its folder."""
    base = cache / PINS
    return {p.name: len(list(p.glob("*.json"))) for p in base.iterdir() if p.is_dir()}


# A run that holds its lease and records one pin, then waits for a line on stdin.
_HOLDER = textwrap.dedent(
    """
    import sys
    from framestream.io.runs import hold_run, run_dir
    cache, run = sys.argv[1], sys.argv[2]
    lease = hold_run(cache, run)
    assert lease is not None
    d = run_dir(cache, run)
    d.mkdir(parents=True, exist_ok=True)
    (d / "a.json").write_text('{"size": 1}')
    print("held", flush=True)
    sys.stdin.readline()
    """
)


def _holder(cache: Path, run: str) -> subprocess.Popen:
    p = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(cache), run],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdout is not None and p.stdout.readline().strip() == "held"
    return p


def test_finished_run_leaves_no_records(root, tmp_path):
    cache = tmp_path / "cache"
    code = textwrap.dedent(
        """
        import json, os, sys
        import torch
        from framestream import StreamingLeRobotDataset
        url, cache = sys.argv[1], sys.argv[2]
        ds = StreamingLeRobotDataset(url, cache_dir=cache, seed=5, return_uint8=True)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, timeout=60)
        n = sum(1 for _ in loader)
        base = os.path.join(cache, "pins")
        runs = {d: len(os.listdir(os.path.join(base, d))) for d in os.listdir(base)
                if os.path.isdir(os.path.join(base, d))}
        print(json.dumps({"samples": n, "runs": runs}))
        """
    )
    with serve("http", root) as srv:
        out = subprocess.run(
            [sys.executable, "-c", code, srv.url, str(cache)],
            capture_output=True,
            text=True,
            timeout=150,
        )
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["samples"] > 0
    # while it ran: one run folder, a record per file its main process and workers read
    assert len(seen["runs"]) == 1 and next(iter(seen["runs"].values())) > 2, seen
    assert pins_of(cache) == []  # the process exited: neither records nor lock file left


def test_closed_or_collected_source_removes_its_records(root, tmp_path):
    cache = tmp_path / "cache"
    with serve("http", root) as srv:
        ds = StreamingLeRobotDataset(srv.url, cache_dir=cache, seed=5, return_uint8=True)
        assert len(stream(ds, num_workers=2)) > 0
        run = ds.meta.source.run_id
        assert records(cache)[run] > 2
        del ds
        gc.collect()
        assert pins_of(cache) == []
        # an explicit close; using the source afterwards holds the run again
        src = Source(srv.url, cache_dir=str(cache))
        src.read_json("meta/info.json")
        assert records(cache) == {src.run_id: 1}
        src.close()
        assert pins_of(cache) == []
        # the version of info.json stays in memory; a new file is recorded under a new hold
        assert src.exists("meta/tasks.parquet")
        assert records(cache) == {src.run_id: 1}
        src.close()
        assert pins_of(cache) == []


def test_killed_run_is_swept_live_run_survives(tmp_path):
    cache = tmp_path / "cache"
    dead, live = _holder(cache, "dead-run"), _holder(cache, "live-run")
    try:
        dead.send_signal(signal.SIGKILL)
        dead.wait(timeout=30)
        assert records(cache) == {"dead-run": 1, "live-run": 1}
        # another run opens the cache: the killed run's lock died with it
        Source("http://127.0.0.1:9/none", cache_dir=str(cache))
        assert records(cache) == {"live-run": 1}
        assert "dead-run.lock" not in pins_of(cache)
        assert sweep_runs(cache) == 0 and records(cache) == {"live-run": 1}
        assert not remove_run_if_done(cache, "live-run")
    finally:
        live.communicate("\n", timeout=30)
        dead.kill()
    assert sweep_runs(cache) == 1 and pins_of(cache) == []


def test_unlocked_folders_swept_only_when_old(tmp_path):
    cache = tmp_path / "cache"
    old, new = run_dir(cache, "old-run"), run_dir(cache, "new-run")
    for d in (old, new):
        d.mkdir(parents=True)
        (d / "x.json").write_text("{}")
    t = time.time() - STALE_UNLOCKED_S - 60
    os.utime(old, (t, t))
    assert sweep_runs(cache) == 1
    assert records(cache) == {"new-run": 1}


def _forked_child_lets_go(cache: str, run: str) -> None:
    lease = _LEASES[run]
    lease.release()  # the parent's lock, inherited: must stay held
    assert not remove_run_if_done(cache, run)


_LEASES: dict = {}


def test_forked_child_keeps_the_parents_hold(tmp_path):
    cache = tmp_path / "cache"
    lease = hold_run(cache, "parent-run")
    assert lease is not None and lease.held
    run_dir(cache, "parent-run").mkdir(parents=True)
    _LEASES["parent-run"] = lease
    try:
        p = mp.get_context("fork").Process(
            target=_forked_child_lets_go, args=(str(cache), "parent-run")
        )
        p.start()
        p.join(timeout=60)
        assert p.exitcode == 0
        assert sweep_runs(cache) == 0 and (cache / PINS / "parent-run").is_dir()
        assert lease.held
    finally:
        _LEASES.clear()
        lease.release()
    assert pins_of(cache) == []
