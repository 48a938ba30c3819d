"""The decode ceiling: how fast this node decodes the same mp4s sequentially, all cores busy.

Two figures, same files, same cores, one single-threaded decoder per process: the RGB
ceiling (torchcodec's sequential RGB decode, what a loader that delivers RGB is measured
against) and the decode-only limit (PyAV decoding frames and dropping them, no colour
conversion and no copy: what any loader of these files could reach at most, RGB or YUV).

Why: samples/s alone says nothing about how close a loader gets to what the hardware can do;
the ceiling is the yardstick the targets are fractions of. It is measured once per node, while
no rank streams, on local copies of the files (a remote source is copied first, untimed).
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from framestream.bench.config import BenchConfig
from framestream.bench.dist import DistInfo


def _widen_affinity() -> int | None:
    """Allow this process on every CPU the node lets it use; returns how many that is.

    A rank launched by srun/torchrun is often bound to its own cores, and processes inherit
    that binding; the ceiling is a per-node figure, so its decoders must be free to use the
    whole node (the kernel still confines them to the job's cpuset).
    """
    try:
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def node_cpus() -> int:
    """CPUs usable on this node by this job (not just by this rank), without side effects."""
    try:
        mine = os.sched_getaffinity(0)
    except AttributeError:
        return os.cpu_count() or 1
    wide = _widen_affinity()
    try:
        os.sched_setaffinity(0, mine)
    except OSError:
        pass
    return wide or len(mine) or os.cpu_count() or 1


def _ceiling_worker(
    index: int, paths: list[str], seconds: float, chunk: int, barrier: Any, out: Any
) -> None:
    """Decode whole files in order, one FFmpeg thread, until ``seconds`` have passed."""
    try:
        import torch
        from torchcodec.decoders import VideoDecoder

        torch.set_num_threads(1)
        _widen_affinity()
        VideoDecoder(paths[index % len(paths)], num_ffmpeg_threads=1).get_frames_in_range(0, 1)
        barrier.wait(timeout=300)
        frames = files = 0
        t0 = time.perf_counter()
        deadline = t0 + seconds
        k = index
        while True:
            dec = VideoDecoder(paths[k % len(paths)], num_ffmpeg_threads=1)
            n = dec.metadata.num_frames or len(dec)
            for start in range(0, n, chunk):
                frames += int(dec.get_frames_in_range(start, min(n, start + chunk)).data.shape[0])
                if time.perf_counter() >= deadline:
                    break
            else:
                files += 1
            k += 1
            if time.perf_counter() >= deadline:
                break
        out.put((index, frames, time.perf_counter() - t0, files, None))
    except Exception as exc:  # reported to the parent rather than lost in a child
        out.put((index, 0, 0.0, 0, f"{type(exc).__name__}: {exc}"))


def _decode_only_worker(
    index: int, paths: list[str], seconds: float, chunk: int, barrier: Any, out: Any
) -> None:
    """Decode whole files in order with PyAV, one thread, frames dropped unconverted."""
    del chunk
    try:
        import av

        _widen_affinity()
        with av.open(paths[index % len(paths)]) as c:
            next(c.decode(video=0))
        barrier.wait(timeout=300)
        frames = files = 0
        t0 = time.perf_counter()
        deadline = t0 + seconds
        k = index
        while time.perf_counter() < deadline:
            with av.open(paths[k % len(paths)]) as c:
                stream = c.streams.video[0]
                stream.thread_count = 1
                for _ in c.decode(stream):
                    frames += 1
                    if frames % 16 == 0 and time.perf_counter() >= deadline:
                        break
                else:
                    files += 1
            k += 1
        out.put((index, frames, time.perf_counter() - t0, files, None))
    except Exception as exc:
        out.put((index, 0, 0.0, 0, f"{type(exc).__name__}: {exc}"))


def measure_ceiling(
    paths: Sequence[str],
    *,
    processes: int | None = None,
    seconds: float = 10.0,
    chunk: int = 32,
    kind: str = "rgb",
) -> dict[str, Any]:
    """Sequential torchcodec decode rate of ``paths`` on this machine, all cores busy.

    ``processes`` (default: the CPUs usable on this node, :func:`node_cpus`, which is
    ``os.cpu_count()`` unless a cpuset restricts the job) processes each hold one single-threaded
    decoder and decode whole files front to back (starting at different files, cycling), for
    ``seconds`` after a common start barrier. The ceiling is the sum of their frames/s.
    ``kind="decode"`` measures the decode-only limit instead (PyAV, no conversion), under
    the keys ``decode_only_*``.
    """
    if kind not in ("rgb", "decode"):
        raise ValueError(f"kind must be 'rgb' or 'decode', got {kind!r}")
    target = _ceiling_worker if kind == "rgb" else _decode_only_worker
    import multiprocessing as mp

    paths = [str(p) for p in paths]
    if not paths:
        raise ValueError("no video files to measure a ceiling on")
    n = int(processes or node_cpus())
    # fork where it exists: the children inherit the imported decoder (no re-import per
    # process); they never touch the parent's thread pools, they only decode.
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    ctx = mp.get_context(method)
    barrier, out = ctx.Barrier(n), ctx.Queue()
    procs = [
        ctx.Process(target=target, args=(i, paths, seconds, chunk, barrier, out)) for i in range(n)
    ]
    for p in procs:
        p.start()
    results = []
    try:
        for _ in range(n):
            results.append(out.get(timeout=seconds + 600))
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
    errors = [r[4] for r in results if r[4]]
    if errors:
        raise RuntimeError(f"ceiling measurement failed: {errors[0]}")
    per_proc = [r[1] / r[2] if r[2] > 0 else 0.0 for r in sorted(results)]
    if kind == "decode":
        return {
            "decode_only_frames_per_s": float(sum(per_proc)),
            "decode_only_processes": n,
            "decode_only_per_process_frames_per_s": [round(x, 1) for x in per_proc],
            "decode_only_frames": int(sum(r[1] for r in results)),
            "decode_only_seconds": seconds,
        }
    return {
        "ceiling_frames_per_s": float(sum(per_proc)),
        "ceiling_processes": n,
        "ceiling_per_process_frames_per_s": [round(x, 1) for x in per_proc],
        "ceiling_frames": int(sum(r[1] for r in results)),
        "ceiling_files_completed": int(sum(r[3] for r in results)),
        "ceiling_seconds": seconds,
        "ceiling_files": len(paths),
    }


def _ceiling_paths(meta: Any, episodes: Sequence[int], local_root: str | None, tmp: str) -> list:
    """Local paths of the dataset's mp4s (copied out of a remote source, untimed)."""
    rels = sorted({meta.video_file(int(e), k) for e in episodes for k in meta.video_keys})
    out = []
    for rel in rels:
        if local_root is not None:
            out.append(os.path.join(local_root, rel))
            continue
        local = meta.source.local_path(rel)
        if local is None:
            local = os.path.join(tmp, rel)
            os.makedirs(os.path.dirname(local), exist_ok=True)
            with meta.source.open(rel) as src, open(local, "wb") as dst:
                while block := src.read(1 << 22):
                    dst.write(block)
        out.append(local)
    return out


def ceiling_for_node(
    cfg: BenchConfig,
    info: DistInfo,
    meta: Any,
    episodes: Sequence[int],
    local_root: str | None,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """One ceiling per node (local rank 0 measures, with every core; the others wait)."""
    import torch.distributed as dist

    result: dict[str, Any] = {}
    if info.active:
        dist.barrier()  # nobody streams while the ceiling takes the cores
    if info.local_rank == 0:
        with tempfile.TemporaryDirectory(prefix="framestream-ceiling-") as tmp:
            paths = _ceiling_paths(meta, episodes, local_root, tmp)
            say(
                f"ceiling: {len(paths)} files, {cfg.ceiling_processes or node_cpus()} "
                f"processes, {cfg.ceiling_seconds:g} s"
            )
            result = measure_ceiling(
                paths, processes=cfg.ceiling_processes, seconds=cfg.ceiling_seconds
            )
            if cfg.decode_limit:
                say("decode-only limit: PyAV, no colour conversion, same files and processes")
                result |= measure_ceiling(
                    paths,
                    processes=cfg.ceiling_processes,
                    seconds=cfg.ceiling_seconds,
                    kind="decode",
                )
    if info.active:
        gathered: list[Any] = [None] * info.world_size
        dist.all_gather_object(gathered, (socket.gethostname(), info.local_rank, result))
        host = socket.gethostname()
        for h, lr, r in gathered:
            if h == host and lr == 0 and r:
                result = r
    return result
