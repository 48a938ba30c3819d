"""The timed phase: a real DataLoader, a dummy consumer, a clock per batch, peak memory.

Why apart from the runner: this is the only code whose speed is the measurement; everything
around it (building the dataset, summing ranks, writing files) happens outside the clock.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from framestream.bench.config import BenchConfig


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 95, 99)) -> list[float | None]:
    if not len(values):
        return [None for _ in qs]
    return [float(v) for v in np.percentile(np.asarray(values, dtype=np.float64), list(qs))]


def torch_default_collate(batch: Any) -> Any:
    """torch's ``default_collate`` on plain dicts: what a loader without framestream's
    collation does (framestream's samples would otherwise be routed to it)."""
    from torch.utils.data import default_collate

    return default_collate([dict(sample) for sample in batch])


def touch(batch: Mapping[str, Any]) -> int:
    """Read one element per memory page of every tensor (what a consumer costs, at least)."""
    import torch

    acc = 0
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.numel():
            # Walk the tensor in memory order (a channels-last batch is not contiguous in its
            # logical order, and reshape(-1) would copy all of it).
            order = sorted(range(value.dim()), key=lambda d: -value.stride(d))
            flat = value.permute(order).reshape(-1)
            step = max(1, 4096 // value.element_size())
            acc += int(flat[::step].to(torch.int64).sum())
    return acc


def _vm_hwm_mb(pid: int) -> float | None:
    """Peak resident set of a live process (Linux ``VmHWM``), in MB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


class RssTracker:
    """Peak RSS of this process and of its children (the DataLoader workers).

    Linux keeps each process's peak (``VmHWM``); elsewhere psutil's current RSS is sampled
    and the maximum kept, which can miss short spikes.
    """

    def __init__(self) -> None:
        self.main_pid = os.getpid()
        self.peaks: dict[int, float] = {}
        # Several runs share the main process (a mode x workers matrix): reset its peak so
        # each run reports its own (Linux >= 4.0; else the peak since the process started).
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.main_reset = True
        except OSError:
            self.main_reset = False
        try:
            import psutil

            self._proc: Any = psutil.Process()
        except ImportError:  # psutil is in the bench extra; without it: main process only
            self._proc = None

    def sample(self) -> None:
        procs = [self.main_pid]
        if self._proc is not None:
            try:
                procs += [c.pid for c in self._proc.children(recursive=True)]
            except Exception:  # a child exiting mid-listing: keep what we have
                pass
        for pid in procs:
            mb = _vm_hwm_mb(pid)
            if mb is None and self._proc is not None:
                try:
                    import psutil

                    mb = psutil.Process(pid).memory_info().rss / 2**20
                except Exception:
                    mb = None
            if mb is not None:
                self.peaks[pid] = max(self.peaks.get(pid, 0.0), mb)

    def summary(self) -> dict[str, Any]:
        import resource

        main = self.peaks.get(self.main_pid, 0.0)
        if not self.main_reset or not main:
            ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            main = max(main, ru / 2**20 if sys.platform == "darwin" else ru / 1024.0)
        workers = [round(v, 1) for p, v in sorted(self.peaks.items()) if p != self.main_pid]
        return {
            "peak_rss_mb_main": round(main, 1),
            "peak_rss_mb_workers": workers,
            "peak_rss_mb_worker_max": max(workers) if workers else None,
            "peak_rss_mb_total": round(main + sum(workers), 1),
        }


def cpu_seconds() -> tuple[float, float] | None:
    """CPU seconds (user + system) used so far by this process and by its workers (live
    children, plus those already exited and reaped); None without psutil.

    Why: samples/s on a shared machine moves with other tenants, while the CPU a sample costs
    moves much less, and its split (workers against the training process) says where to look.
    """
    try:
        import psutil
    except ImportError:
        return None
    me = psutil.Process()
    own = me.cpu_times()
    workers = own.children_user + own.children_system
    try:
        kids = me.children(recursive=True)
    except Exception:  # a child exiting mid-listing: count none of them rather than some
        kids = []
    for kid in kids:
        try:
            t = kid.cpu_times()
        except Exception:  # exited meanwhile
            continue
        workers += t.user + t.system
    return own.user + own.system, workers


@dataclass
class Timing:
    """What the timed phase saw; figures are derived from it by the runner.

    ``stats0`` is the dataset's counters when timing started (None: the data ran out during
    warm-up, nothing was timed); ``stats1`` at the end, read while the workers were alive.
    """

    rss: RssTracker
    stats1: dict[str, Any]
    stats0: dict[str, Any] | None = None
    intervals: list[float] = field(default_factory=list)  # seconds between timed batches
    batch_sizes: list[int] = field(default_factory=list)
    distinct: list[int] = field(default_factory=list)  # episodes in each full timed batch
    first_batch_s: float | None = None
    consumed: int = 0  # samples, warm-up included
    total_batches: int = 0
    timed_samples: int = 0
    timed_batches: int = 0
    t_start: float = 0.0
    t_prev: float = 0.0
    sink: int = 0  # the consumer's checksum
    cpu0: tuple[float, float] | None = None  # cpu_seconds() when timing started
    cpu1: tuple[float, float] | None = None  # and after the last timed batch

    def cpu_fields(self) -> dict[str, float | None]:
        """CPU per timed sample of the workers and of the training process, and the cores
        they used together (all None when psutil is missing or nothing was timed)."""
        if self.cpu0 is None or self.cpu1 is None or not self.timed_samples:
            return {
                "worker_cpu_ms_per_sample": None,
                "main_cpu_ms_per_sample": None,
                "cpu_cores_used": None,
            }
        main = self.cpu1[0] - self.cpu0[0]
        workers = self.cpu1[1] - self.cpu0[1]
        return {
            "worker_cpu_ms_per_sample": 1000.0 * workers / self.timed_samples,
            "main_cpu_ms_per_sample": 1000.0 * main / self.timed_samples,
            "cpu_cores_used": (main + workers) / self.elapsed,
        }

    @property
    def elapsed(self) -> float:
        """Seconds from the start of timing to the last timed batch (0.0: none timed)."""
        return max(self.t_prev - self.t_start, 1e-9) if self.timed_batches else 0.0


def stream_timed(
    ds: Any,
    cfg: BenchConfig,
    warmup: int,
    progress: Callable[[int], None] | None,
    mixing: Any = None,
) -> Timing:
    """Iterate ``ds`` through a DataLoader for up to ``cfg.epochs``, timing after ``warmup``.

    ``mixing`` (a :class:`~framestream.bench.shuffle.MixingRecorder`) sees every batch.

    Returns once the DataLoader workers are shut down, so that whatever runs next (the decode
    ceiling) has the cores to itself.
    """
    import torch

    loader_kwargs: dict[str, Any] = {
        "batch_size": cfg.batch_size,
        "num_workers": cfg.num_workers,
    }
    if cfg.collate == "framestream":
        from framestream import collate

        loader_kwargs["collate_fn"] = collate
    else:
        loader_kwargs["collate_fn"] = torch_default_collate
    if cfg.num_workers > 0:
        loader_kwargs["persistent_workers"] = cfg.epochs > 1
        loader_kwargs["timeout"] = cfg.loader_timeout
        if cfg.prefetch_factor is not None:
            loader_kwargs["prefetch_factor"] = cfg.prefetch_factor
    loader = torch.utils.data.DataLoader(ds, **loader_kwargs)

    t = Timing(rss=RssTracker(), stats1={})
    max_batches = cfg.max_batches or None
    t_end = 0.0
    last_rss = 0.0
    done = False
    it: Any = None
    # warm-up of whole epochs: its counters are read when the last warm-up pass has ended
    at_epoch_end = cfg.warmup_epochs > 0
    started = False

    def start(now: float, *, read_stats: bool) -> None:
        nonlocal started
        started = True
        t.t_start, t.t_prev = now, now
        t.cpu0 = cpu_seconds()
        if read_stats:
            t.stats0 = ds.stats()

    for epoch in range(cfg.epochs):
        ds.set_epoch(epoch)
        t_iter = time.perf_counter()
        if epoch == 0 and warmup == 0:
            start(t_iter, read_stats=True)
        it = iter(loader)
        for batch in it:
            now = time.perf_counter()
            n = len(batch["index"])
            t.sink += touch(batch)
            if mixing is not None:
                mixing.add(batch["episode_index"], batch["frame_index"], now, epoch)
            if t.first_batch_s is None:
                t.first_batch_s = now - t_iter
            t.total_batches += 1
            t.consumed += n
            if not started:
                if t.total_batches >= warmup:
                    start(now, read_stats=not at_epoch_end)
            else:
                t.intervals.append(now - t.t_prev)
                t.batch_sizes.append(n)
                t.t_prev = now
                t.timed_batches += 1
                t.timed_samples += n
                if n == cfg.batch_size:
                    t.distinct.append(len(torch.unique(batch["episode_index"])))
            del batch
            if now - last_rss > 0.5:
                t.rss.sample()
                last_rss = now
            if progress is not None:
                progress(1)
            t_end = time.perf_counter()
            if started and (
                (max_batches is not None and t.timed_batches >= max_batches)
                or (cfg.seconds is not None and t_end - t.t_start >= cfg.seconds)
            ):
                done = True
                break
        if started and t.stats0 is None:
            # A worker publishes its last counters when its pass ends, which may be after
            # the main process has its last batch: read them once the pass is over.
            t.stats0 = ds.stats()
        if done:
            break
    t.cpu1 = cpu_seconds() if t.cpu0 is not None else None
    t.rss.sample()  # while the workers are still alive (the iterator holds them)
    t.stats1 = ds.stats()
    del it, loader  # shuts the workers down before the ceiling takes every core
    return t
