"""``framestream prewarm``: copy what a run will read from a remote dataset into the byte cache.

Why: a timed run (or a cluster job on a slow link) should not pay for the first fetch of every
file; prewarming once per machine makes the run read local copies. The cache is the one the
datasets use (same folder, same keys), so a prewarmed file is a cache hit for every worker.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from framestream.cli.common import (
    CLIError,
    add_remote_arguments,
    check_root,
    parse_episodes,
    parse_size,
)

__all__ = ["add_parser", "parse_episodes", "parse_size", "run"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "prewarm",
        help="copy a remote dataset's files (or some episodes' files) into the local cache",
        description="Fetch the metadata, data and video files that reading URL (or only "
        "--episodes) needs into the byte cache, so that a later run reads local copies.",
    )
    p.add_argument("url", help="s3://, http(s)://, hf://datasets/... URL or a Hub repo id")
    p.add_argument(
        "--episodes",
        nargs="*",
        help="episode indices or inclusive ranges (0 3-7 9,12); default: all",
    )
    add_remote_arguments(p)
    p.add_argument("--cache", dest="cache_dir", help=argparse.SUPPRESS)  # old name of --cache-dir
    p.add_argument(
        "--jobs", type=int, default=4, help="files fetched at once (each holds a connection)"
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from framestream.format.meta import INFO_PATH, TASKS_PATH, DatasetMeta
    from framestream.format.selection import select_episodes
    from framestream.io.source import Source

    check_root(args.url)
    options = args.storage_options
    t0 = time.perf_counter()
    episodes = parse_episodes(args.episodes)
    source = Source(
        args.url,
        options,
        revision=args.revision,
        cache_dir=args.cache_dir,
        cache_max_bytes=args.cache_max_bytes,
    )
    if source.is_local:
        print(f"{args.url} is a local dataset: nothing to prewarm")
        return 0
    if source.cache is None:
        raise CLIError("the cache is disabled (--cache-max-bytes 0): nothing to prewarm")
    meta = DatasetMeta(source)
    selected = select_episodes(meta, episodes)
    files: list[str] = [INFO_PATH] + meta.source.list("meta/episodes")
    if source.exists(TASKS_PATH):
        files.append(TASKS_PATH)
    for ep in selected.tolist():
        files.append(meta.data_file(ep))
        files += [meta.video_file(ep, key) for key in meta.video_keys]
    files = list(dict.fromkeys(files))
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        found = pool.map(lambda r: source._remote_info(r).size, files)
        sizes = dict(zip(files, found, strict=True))
    total = sum(sizes.values())
    limit = source.cache.max_bytes
    if limit is not None and total > limit:
        print(
            f"warning: the selection is {total / 2**20:.1f} MiB but the cache holds "
            f"{limit / 2**20:.1f} MiB: files fetched last will evict the first ones",
            file=sys.stderr,
        )
    before = source.io_stats()
    with (
        ThreadPoolExecutor(max(1, args.jobs)) as pool,
        tqdm(total=total, unit="B", unit_scale=True, desc="prewarm") as bar,
    ):
        futures = {pool.submit(source.prefetch, rel): rel for rel in files}
        for fut in as_completed(futures):
            fut.result()
            bar.update(sizes[futures[fut]])
    after = source.io_stats()
    summary = {
        "url": source.url,
        "cache_dir": str(source.cache.root),
        "episodes": len(selected),
        "files": len(files),
        "bytes": total,
        "bytes_fetched": after["bytes_fetched"] - before["bytes_fetched"],
        "already_cached": after["byte_cache_hits"] - before["byte_cache_hits"],
        "did_not_fit": after["byte_cache_bypass"] - before["byte_cache_bypass"],
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for k, v in summary.items():
            print(f"{k:>15}: {v}")
    return 0 if summary["did_not_fit"] == 0 else 1
