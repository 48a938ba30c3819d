"""Several ranks on one machine (``--ranks N``): N rank processes sharing one loopback server.

Why processes started here rather than ``torchrun``: a remote benchmark needs one server for
all ranks (one store, many nodes), started once before them and shaped once; and each rank
needs its own byte cache, fresh for every run, as on separate nodes, else the first rank to
fetch a range serves it to the others and hides the traffic being measured. The ranks join a
gloo group on 127.0.0.1 (the per-node sums of :mod:`.dist`), each runs
:func:`~.runner.run_benchmarks` on the server's URL and sends its result back; this process
adds the totals: all ranks' bytes against the dataset's and against what their episodes
needed, requests per episode, the slowest rank's time to first batch and epoch, and with
``--compare-local`` the same ranks on the local folder (``vs_local``), alternating with the
remote runs when ``--repeats`` asks for several.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue as queue_mod
import shutil
import socket
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from framestream.bench.config import BenchConfig
from framestream.bench.remote import bench_root, start_server

Run = Callable[[Sequence[BenchConfig]], list[dict[str, Any]]]
# Summed over ranks into the totals (None where no rank has the figure: a local run).
SUMMED = (
    "bytes_fetched",
    "bytes_needed",
    "episode_bytes",
    "meta_bytes_fetched",
    "meta_requests",
    "index_bytes_fetched",
    "index_requests",
    "range_bytes_fetched",
    "range_requests",
    "remote_requests",
    "remote_retries",
    "episodes_opened",
)
# Per-rank figures kept in ``per_rank``.
PER_RANK = (
    "rank",
    "samples",
    "elapsed_s",
    "samples_per_s",
    "first_batch_s",
    "setup_s",
    "cpu_s",
    *SUMMED,
    "needed_basis",
    "fetched_vs_needed",
    "range_fetched_vs_needed",
    "requests_per_episode",
    "fetched_vs_dataset",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_s(children: bool) -> float:
    """CPU seconds of this process (and of its children that have been waited for).

    Why: on a shared machine samples/s moves with the load; CPU time per sample does not, and
    shows what the remote path costs the client beyond the local one.
    """
    import resource

    usages = [resource.RUSAGE_SELF] + ([resource.RUSAGE_CHILDREN] if children else [])
    return sum(u.ru_utime + u.ru_stime for u in map(resource.getrusage, usages))


def _rank_main(out: Any, rank: int, cfg: dict[str, Any], env: dict[str, str], run: Run) -> None:
    """One rank: run the benchmark as that rank and send ``(rank, result)`` back."""
    os.environ.update(env)
    try:
        cpu0 = _cpu_s(children=True)
        (result,) = run([BenchConfig(**cfg)])
        result["cpu_s"] = _cpu_s(children=True) - cpu0  # its DataLoader workers included
        out.put((rank, result))
    except BaseException:
        out.put((rank, {"error": traceback.format_exc()}))


def launch(
    cfg: BenchConfig, n: int, root: str, served: dict[str, Any] | None, run: Run
) -> list[dict]:
    """Run ``cfg`` as ``n`` rank processes (on ``served``'s URL, or on ``root`` locally) and
    return their results by rank; each remote rank gets a fresh cache unless ``--cache-dir``.
    ``run`` is :func:`~.runner.run_benchmarks` (passed in: the runner imports this module)."""
    fresh = served is not None and cfg.cache_dir is None
    caches = (
        [tempfile.mkdtemp(prefix=f"framestream-bench-r{r}-") for r in range(n)] if fresh else []
    )
    base = asdict(cfg)
    base.update(ranks=None, compare_local=False, repeats=1, output_dir=None, csv=None)
    base.update(ceiling=False, compare_lerobot=None, served=served, root=root)
    if served is None:
        base.update(source="local")
    port = str(_free_port())
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = []
    cpu0 = _cpu_s(children=False)
    try:
        for r in range(n):
            env = {"RANK": str(r), "WORLD_SIZE": str(n), "LOCAL_RANK": str(r)}
            env.update(LOCAL_WORLD_SIZE=str(n), MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
            rank_cfg = dict(base, cache_dir=caches[r] if fresh else cfg.cache_dir)
            p = ctx.Process(
                target=_rank_main, args=(out, r, rank_cfg, env, run), name=f"bench-rank{r}"
            )
            p.start()
            procs.append(p)
        results = _gather(out, procs)
        results[0]["server_cpu_s"] = _cpu_s(children=False) - cpu0  # the loopback server's
        return results
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()  # a failed rank leaves the others waiting on the group
            p.join(timeout=30)
        for folder in caches:
            shutil.rmtree(folder, ignore_errors=True)


def _gather(out: Any, procs: Sequence[Any]) -> list[dict]:
    results: dict[int, dict] = {}
    exited_at: float | None = None
    while len(results) < len(procs):
        try:
            rank, res = out.get(timeout=1.0)
        except queue_mod.Empty:
            crashed = [p.name for p in procs if p.exitcode not in (None, 0)]
            if crashed:
                raise RuntimeError(f"{', '.join(crashed)} died without a result") from None
            if all(p.exitcode is not None for p in procs):
                exited_at = exited_at or time.monotonic()
                if time.monotonic() - exited_at > 10:
                    raise RuntimeError("every rank exited, some without a result") from None
            continue
        if "error" in res:
            raise RuntimeError(f"rank {rank} failed:\n{res['error']}")
        results[rank] = res
    return [results[r] for r in sorted(results)]


def _ratio(a: float | None, b: float | None) -> float | None:
    return float(a) / float(b) if a is not None and b else None


def summarize(ranks: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """All ranks of one run together: the epoch ends with the slowest rank."""
    elapsed = max(r["elapsed_s"] for r in ranks)
    samples = sum(r["samples"] for r in ranks)
    out: dict[str, Any] = {
        "ranks": len(ranks),
        "samples": samples,
        "elapsed_s": elapsed,
        "samples_per_s": samples / elapsed if elapsed else 0.0,
        "samples_per_s_sum": sum(r["samples_per_s"] for r in ranks),
        "time_to_first_batch_s": max(r["first_batch_s"] or 0.0 for r in ranks),
        "setup_s": max(r["setup_s"] for r in ranks),
        "cpu_s": sum(r.get("cpu_s") or 0.0 for r in ranks),
        "server_cpu_s": ranks[0].get("server_cpu_s"),
    }
    out["cpu_ms_per_sample"] = 1000 * out["cpu_s"] / samples if samples else None
    for k in SUMMED:
        vals = [r.get(k) for r in ranks]
        out[k] = sum(v for v in vals if v is not None) if any(v is not None for v in vals) else None
    if out["bytes_fetched"] is not None:
        data = ranks[0].get("dataset_bytes")
        stream_requests = out["remote_requests"] - out["meta_requests"]
        out.update(
            dataset_bytes=data,
            fetched_vs_needed=_ratio(
                out["bytes_fetched"], out["bytes_needed"] or out["episode_bytes"]
            ),
            range_fetched_vs_needed=_ratio(out["range_bytes_fetched"], out["bytes_needed"]),
            fetched_vs_dataset=_ratio(out["bytes_fetched"], data),
            requests_per_episode=_ratio(stream_requests, out["episodes_opened"]),
        )
    return out


def _median_run(runs: Sequence[list[dict]]) -> int:
    """Index of the run whose epoch rate is the median (the lower one of an even count)."""
    rates = [summarize(r)["samples_per_s"] for r in runs]
    order = sorted(range(len(runs)), key=rates.__getitem__)
    return order[(len(order) - 1) // 2]


def _median(runs: Sequence[list[dict]], key: str) -> float | None:
    vals = [v for v in (summarize(r)[key] for r in runs) if v is not None]
    return statistics.median(vals) if vals else None


def combine(cfg: BenchConfig, runs: dict[str, list[list[dict]]]) -> dict[str, Any]:
    """One result: the median remote (or local) run's rank 0 result, plus every rank's figures
    (``per_rank``), the totals (``total_*``), each repeat's summary and ``vs_local``."""
    kind = "remote" if "remote" in runs else "local"
    mine = runs[kind]
    pick = mine[_median_run(mine)]
    result = dict(pick[0])
    total = summarize(pick)
    rate = _median(mine, "samples_per_s")
    result.update(
        ranks_launched=len(pick),
        repeats=len(mine),
        per_rank=[{k: r.get(k) for k in PER_RANK} for r in pick],
        **{f"total_{k}": v for k, v in total.items() if k != "ranks"},
        epoch_samples_per_s=rate,
        cpu_ms_per_sample=_median(mine, "cpu_ms_per_sample"),
        time_to_first_batch_s=total["time_to_first_batch_s"],
        runs={k: [summarize(r) for r in v] for k, v in runs.items()},
    )
    if "local" in runs and kind == "remote":
        local = _median(runs["local"], "samples_per_s")
        cpu = _median(runs["local"], "cpu_ms_per_sample")
        result.update(
            local_epoch_samples_per_s=local,
            local_time_to_first_batch_s=_median(runs["local"], "time_to_first_batch_s"),
            local_cpu_ms_per_sample=cpu,
            vs_local=_ratio(rate, local),
            cpu_vs_local=_ratio(result["cpu_ms_per_sample"], cpu),
        )
    return result


def run_ranked(
    cfgs: Sequence[BenchConfig],
    run: Run,
    *,
    progress: Callable[[BenchConfig], Callable[[int], None] | None] | None = None,
    log: Callable[[str], None],
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Each configuration as ``--ranks`` processes (default 1), against one server."""
    first = cfgs[0]
    root = bench_root(first, 0, log)
    server = None
    try:
        served = None
        if first.source != "local":
            if "://" in root:
                raise ValueError(f"--source {first.source} serves a local folder, not {root}")
            server = start_server(first, root)
            served = {"url": server.url, "storage_options": server.storage_options}
            served["local_root"] = root
            log(
                f"serving {root} over {first.source} at {server.url} (latency "
                f"{first.link_latency_ms:g} ms, {first.link_mbps:g} MB/s; 0: unlimited)"
            )
        results = []
        for cfg in cfgs:
            if progress is not None:
                progress(cfg)  # no live bar: the batches happen in the rank processes
            kinds = ["local", "remote"] if served and cfg.compare_local else []
            kinds = kinds or (["remote"] if served else ["local"])
            runs: dict[str, list[list[dict]]] = {k: [] for k in kinds}
            n = cfg.ranks or 1
            for rep in range(cfg.repeats):
                for kind in kinds if rep % 2 == 0 else kinds[::-1]:
                    log(f"{n} rank(s), {kind}, mode={cfg.mode} run {rep + 1}/{cfg.repeats}")
                    runs[kind].append(
                        launch(cfg, n, root, served if kind == "remote" else None, run)
                    )
            result = combine(cfg, runs)
            if on_result is not None:
                on_result(result)
            results.append(result)
        return results
    finally:
        if server is not None:
            with contextlib.suppress(Exception):
                server.stop()
