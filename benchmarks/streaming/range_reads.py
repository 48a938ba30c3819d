"""Per-episode byte-range reads vs whole-file fetch, for one camera file over loopback HTTP/S3.

Question: an episode is a time range of a concatenated mp4. Is it cheaper to read only its
bytes (range requests through a file object handed to the decoder) than to fetch the whole
file into the cache and decode locally? Measured per fraction of the file's episodes a reader
needs (1 episode, 1/8 of them as one rank of 8 would, all of them), for both of torchcodec's
seek modes (``exact`` scans the whole file when it opens; ``approximate`` trusts the mp4 index).

    python benchmarks/streaming/range_reads.py [--source http|s3] [--root DATASET] [--json]

Prints bytes fetched, requests and seconds (median of 3, after a warm-up) per strategy;
nothing is cached between runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from servers import serve  # noqa: E402

from framestream.format.meta import DatasetMeta  # noqa: E402
from framestream.io.source import Source  # noqa: E402


def _decode(src: Any, seek_mode: str, spans: list[tuple[float, int]], fps: int) -> int:
    from torchcodec.decoders import VideoDecoder

    dec = VideoDecoder(src, seek_mode=seek_mode, num_ffmpeg_threads=1)
    n = 0
    for start, length in spans:
        ts = (start + np.arange(length) / fps + 0.25 / fps).tolist()
        n += len(dec.get_frames_played_at(seconds=ts).pts_seconds)
    return n


def measure(url: str, storage: dict[str, Any], rel: str, spans, fps: int) -> dict[str, Any]:
    """The median of three runs of each strategy (bytes and requests do not vary)."""
    runs = [_measure_once(url, storage, rel, spans, fps) for _ in range(3)]
    out = runs[0]
    for name, r in out.items():
        r["seconds"] = float(np.median([run[name]["seconds"] for run in runs]))
    return out


def _measure_once(url: str, storage: dict[str, Any], rel: str, spans, fps: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as cache:
        src = Source(url, storage, cache_dir=cache)
        before, t0 = src.io_stats(), time.perf_counter()
        pin = src.pin(rel)
        assert pin is not None
        frames = _decode(pin.path, "approximate", spans, fps)
        pin.release()
        after = src.io_stats()
        out["whole_file"] = {
            "seconds": time.perf_counter() - t0,
            "bytes": after["bytes_fetched"] - before["bytes_fetched"],
            "requests": after["remote_requests"] - before["remote_requests"],
            "frames": frames,
        }
    for mode in ("approximate", "exact"):
        for buf in (256 * 1024, 1024 * 1024):
            src = Source(url, storage, cache_max_bytes=0, remote={"read_buffer_size": buf})
            before, t0 = src.io_stats(), time.perf_counter()
            with src.open(rel) as f:
                frames = _decode(f, mode, spans, fps)
            after = src.io_stats()
            out[f"ranges_{mode}_{buf // 1024}k"] = {
                "seconds": time.perf_counter() - t0,
                "bytes": after["bytes_fetched"] - before["bytes_fetched"],
                "requests": after["remote_requests"] - before["remote_requests"],
                "frames": frames,
            }
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", choices=("http", "s3"), default="http")
    p.add_argument("--root", help="local dataset folder (default: the synthetic benchmark one)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.root is None:
        from framestream.testing.default_data import synthetic_dataset

        args.root = str(synthetic_dataset())
    local = DatasetMeta(args.root)
    key = local.video_keys[0]
    eps = local.episodes
    vid = eps.videos[key]
    # the camera file holding the most episodes
    files = {}
    for row in range(len(eps)):
        files.setdefault((int(vid.chunk[row]), int(vid.file[row])), []).append(row)
    rows = max(files.values(), key=len)
    rel = local.video_file(int(eps.episode_index[rows[0]]), key)
    size = (Path(args.root) / rel).stat().st_size
    spans_all = [(float(vid.from_ts[r]), int(eps.length[r])) for r in rows]
    cases = {
        "one_episode": [spans_all[len(spans_all) // 2]],
        "one_rank_of_8": spans_all[::8] if len(spans_all) >= 8 else spans_all[:1],
        "all_episodes": spans_all,
    }
    result: dict[str, Any] = {"file": rel, "file_bytes": size, "episodes_in_file": len(rows)}
    with serve(args.source, args.root) as srv:
        measure(srv.url, srv.storage_options, rel, cases["one_episode"], local.fps)  # warm-up
        for name, spans in cases.items():
            result[name] = measure(srv.url, srv.storage_options, rel, spans, local.fps)
            result[name]["episodes"] = len(spans)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{rel}: {size} bytes, {len(rows)} episodes, over {args.source}")
    for name in cases:
        print(f"  {name} ({result[name]['episodes']} episodes)")
        for strategy, r in result[name].items():
            if isinstance(r, dict):
                print(
                    f"    {strategy:<24} {r['bytes']:>10} B {r['requests']:>5} req "
                    f"{r['seconds']:>8.3f} s  ({r['frames']} frames)"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
