"""fetch="ranges" across ranks: one process per rank, each with its own cache (as on separate
nodes), against the loopback HTTP range server and moto's S3 server.

For each world size: every rank's samples equal the local run's (index, frame ids, pixel
hashes), all ranks together fetch at most 1.1x the dataset's data and video bytes in episode
ranges (plus the indexes: mp4 sample tables and parquet footers, counted apart), each rank at
most 1.1x the bytes its own episodes need, no data or video file is fetched whole, and the
requests per episode are bounded.
"""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from ranges_helpers import ranges_dataset, rank_process, stream_rank

from framestream.format.meta import DatasetMeta
from framestream.format.tables import TableReader
from framestream.io.mp4index import episode_ranges, index_file
from framestream.io.parquet_ranges import row_group_span
from framestream.io.spans import SHORT_SEEK_FILL
from framestream.testing.servers import serve

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return ranges_dataset(tmp_path_factory.getbasetemp())


def needed_bytes(root: Path, episodes: list[int]) -> int:
    """The bytes ``episodes`` need (from the local files): per camera the episode's byte
    ranges in its mp4 (keyframe..last packet), plus its row group of the data file."""
    meta = DatasetMeta(str(root))
    total = 0
    indexes: dict[str, Any] = {}
    for ep in episodes:
        length = int(meta.episodes.length[meta.episodes.row(ep)])
        for key in meta.video_keys:
            rel = meta.video_file(ep, key)
            if rel not in indexes:
                data = (root / rel).read_bytes()
                indexes[rel] = index_file(lambda o, n, d=data: d[o : o + n], len(data))
            a = meta.video_from_timestamp(ep, key)
            total += sum(q - p for p, q in episode_ranges(indexes[rel], a, a + length / meta.fps))
        pf = pq.ParquetFile(root / meta.data_file(ep))
        groups = TableReader._row_group_map(pf)
        assert groups is not None and ep in groups  # LeRobot's layout: one group per episode
        a, b = row_group_span(pf.metadata, groups[ep])
        total += b - a
    return total


def run_ranks(srv: Any, world: int, tmp: Path, workers: dict[int, int] | None = None) -> list:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = []
    for r in range(world):
        args = (srv.url, srv.storage_options, r, world, str(tmp / f"cache-{r}"))
        kw = {"num_workers": (workers or {}).get(r, 0)}
        p = ctx.Process(target=rank_process, args=(queue, args, kw))
        p.start()
        procs.append(p)
    results = [queue.get(timeout=500) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    errors = [r["error"] for r in results if "error" in r]
    assert not errors, errors[0]
    return sorted(results, key=lambda r: r["rank"])


def io_of(res: dict[str, Any]) -> dict[str, int]:
    """A rank's remote counters: its main process (metadata; the stream with 0 workers) plus
    its DataLoader workers' (published to stats())."""
    main, st = res["main_io"], res["stats"]
    workers = st["episodes_opened"] > 0 and main["range_requests"] == 0
    return {k: main[k] + (st[k] if workers else 0) for k in main}


def check_world(
    root: Path, results: list[dict[str, Any]], world: int, workers: dict[int, int] | None = None
) -> dict[str, float]:
    files = {
        p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*") if p.is_file()
    }
    body = sum(n for rel, n in files.items() if rel.startswith(("data/", "videos/")))
    meta_bytes = sum(n for rel, n in files.items() if rel.startswith("meta/"))
    all_eps = sorted(e for r in results for e in r["episodes"])
    assert all_eps == list(range(16))  # ranks read disjoint episodes, all of them
    total_range = 0
    cams = 2
    for res in results:
        # every sample equals the local run of the same rank (order, frame ids, pixels)
        nw = (workers or {}).get(res["rank"], 0)
        want = stream_rank(str(root), {}, res["rank"], world, None, nw)["rows"]
        assert res["rows"] == want
        io = io_of(res)
        need = needed_bytes(root, res["episodes"])
        assert abs(io["bytes_needed"] - need) <= 0.01 * need, (io["bytes_needed"], need)
        # FFmpeg reads through gaps shorter than its short-seek reach after the bytes it reads
        # when opening a file (SHORT_SEEK_FILL): an episode starting within 40 KiB of those
        # is fetched from there, at most once per file the rank reads
        n_vid = len({r for r in files if r.startswith("videos/")})
        slack = SHORT_SEEK_FILL * n_vid
        assert io["range_bytes_fetched"] <= 1.1 * need + slack, (res["rank"], io, need)
        whole = io["bytes_fetched"] - io["range_bytes_fetched"] - io["index_bytes_fetched"]
        assert whole <= meta_bytes  # no data or video file fetched whole
        n = len(res["episodes"])
        assert io["range_requests"] <= 2 * n * (cams + 1), io
        n_files = len(files)  # generous: every file of the dataset, 4 index reads each
        assert io["index_requests"] <= 4 * n_files, io
        total_range += io["range_bytes_fetched"]
    assert total_range <= 1.1 * body, (total_range, body)
    index = sum(io_of(r)["index_bytes_fetched"] for r in results)
    return {"range": total_range, "index": index, "body": body}


@pytest.mark.parametrize(
    "world",
    [1, 2, pytest.param(4, marks=pytest.mark.slow), pytest.param(8, marks=pytest.mark.slow)],
)
def test_http_ranks_fetch_their_share(root, tmp_path, world):
    with serve("http", root) as srv:
        results = run_ranks(srv, world, tmp_path)
        got = check_world(root, results, world)
    print(f"world {world}: {got}")


def test_s3_ranks_with_workers(root, tmp_path):
    with serve("s3", root) as srv:
        results = run_ranks(srv, 2, tmp_path, workers={0: 2})
        check_world(root, results, 2, {0: 2})
