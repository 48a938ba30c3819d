"""``framestream bench`` against a shaped loopback server, with rank processes (issue 15).

The CLI runs a whole cold first epoch as real rank processes (gloo on 127.0.0.1), each with a
fresh byte cache, against the loopback HTTP server and moto's S3 server with a shaped link.
Figures of speed mean nothing here; what is checked is that the byte and request figures agree
with each other and with the dataset: per-rank figures sum to the totals, every sample of the
epoch is delivered once over the ranks, the needed bytes the stream counted equal those of the
episodes in the local files, episode ranges stay within 1.1x of them, and requests per episode
are bounded. The pure parts (summing ranks, the per-rank arithmetic) are checked on their own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ranges_helpers import ranges_dataset

from framestream.bench import BenchConfig
from framestream.bench.ranks import SUMMED, combine, summarize
from framestream.bench.remote import io_fields
from framestream.format.meta import DatasetMeta
from framestream.io.spans import SHORT_SEEK_FILL

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 600  # generous: the rank processes crawl on a loaded 2-core machine
pytestmark = pytest.mark.timeout(TIMEOUT + 60)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 episodes, 2 cameras, several episodes per mp4 (the byte-range tests' dataset)."""
    return ranges_dataset(tmp_path_factory.getbasetemp())


def _bench(root: Path, *args: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "framestream", "bench", str(root), "--first-epoch"]
    cmd += ["--num-workers", "2", "--batch-size", "8", "--link-latency-ms", "20"]
    cmd += ["--link-mbps", "100", "--json", "--no-progress", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (result,) = json.loads(proc.stdout)
    return result


def _files(root: Path) -> dict[str, int]:
    return {
        p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*") if p.is_file()
    }


def _check_totals(r: dict[str, Any], meta: DatasetMeta, files: dict[str, int]) -> None:
    ranks = r["per_rank"]
    assert r["ranks_launched"] == len(ranks) == r["world_size"]
    assert [x["rank"] for x in ranks] == list(range(len(ranks)))
    for k in SUMMED:
        assert r[f"total_{k}"] == sum(x[k] for x in ranks), k
    # one whole epoch: every frame is one sample of exactly one rank
    assert r["total_samples"] == meta.total_frames == sum(x["samples"] for x in ranks)
    assert r["total_dataset_bytes"] == sum(files.values())
    assert r["total_fetched_vs_dataset"] == pytest.approx(
        r["total_bytes_fetched"] / sum(files.values())
    )
    assert r["time_to_first_batch_s"] == max(x["first_batch_s"] for x in ranks) > 0
    assert r["epoch_samples_per_s"] == pytest.approx(r["total_samples"] / r["total_elapsed_s"])
    assert r["total_cpu_s"] == pytest.approx(sum(x["cpu_s"] for x in ranks))
    for x in ranks:  # everything a rank fetched is metadata, an index or a whole file/range
        assert x["bytes_fetched"] >= x["meta_bytes_fetched"] + x["index_bytes_fetched"]
        assert x["episode_bytes"] > 0 and x["episodes_opened"] > 0 and x["cpu_s"] > 0


def test_http_two_ranks_fetch_their_episodes_ranges(root: Path) -> None:
    r = _bench(root, "--source", "http", "--ranks", "2")
    meta, files = DatasetMeta(str(root)), _files(root)
    _check_totals(r, meta, files)
    assert (r["source"], r["fetch"], r["link_latency_ms"], r["link_mbps"]) == (
        "http",
        "ranges",
        20,
        100,
    )
    n_video = sum(rel.startswith("videos/") for rel in files)
    cams = len(meta.video_keys)
    for x in r["per_rank"]:
        need = x["bytes_needed"]
        assert need > 0 and x["needed_basis"] == "stream"
        assert abs(need - x["episode_bytes"]) <= 0.01 * need  # stream count = the local files
        # no data or video file fetched whole: metadata + indexes + episode ranges
        assert x["bytes_fetched"] == (
            x["meta_bytes_fetched"] + x["index_bytes_fetched"] + x["range_bytes_fetched"]
        )
        assert x["range_bytes_fetched"] <= 1.1 * need + SHORT_SEEK_FILL * n_video
        assert x["range_fetched_vs_needed"] == pytest.approx(x["range_bytes_fetched"] / need)
        # requests per episode bounded: a row group and a range or two per camera, plus each
        # file's index (a few requests, once per file)
        assert x["range_requests"] <= 2 * x["episodes_opened"] * (cams + 1)
        assert x["index_requests"] <= 4 * len(files)
        stream = x["remote_requests"] - x["meta_requests"]
        assert x["requests_per_episode"] == pytest.approx(stream / x["episodes_opened"])
        assert x["requests_per_episode"] <= 2 * (cams + 1) + 4 * len(files) / x["episodes_opened"]
    body = sum(n for rel, n in files.items() if rel.startswith(("data/", "videos/")))
    assert r["total_range_bytes_fetched"] <= 1.1 * body
    assert "vs_local" not in r and set(r["runs"]) == {"remote"}


def test_s3_one_rank_whole_files(root: Path) -> None:
    """fetch="files" at one rank: every data and video file fetched whole, once; the same
    rank on the local folder too (--compare-local)."""
    r = _bench(root, "--source", "s3", "--ranks", "1", "--fetch", "files", "--compare-local")
    meta, files = DatasetMeta(str(root)), _files(root)
    _check_totals(r, meta, files)
    (x,) = r["per_rank"]
    assert (r["source"], r["fetch"]) == ("s3", "files")
    body = sum(n for rel, n in files.items() if rel.startswith(("data/", "videos/")))
    whole = x["bytes_fetched"] - x["meta_bytes_fetched"] - x["index_bytes_fetched"]
    assert whole == body and x["range_requests"] == 0 and x["bytes_needed"] == 0
    assert x["needed_basis"] == "local files"  # the stream counts no needed bytes here
    assert x["fetched_vs_needed"] == pytest.approx(x["bytes_fetched"] / x["episode_bytes"])
    assert r["local_epoch_samples_per_s"] > 0
    assert r["vs_local"] == pytest.approx(r["epoch_samples_per_s"] / r["local_epoch_samples_per_s"])
    assert set(r["runs"]) == {"local", "remote"}
    assert r["runs"]["local"][0]["bytes_fetched"] is None  # nothing remote in the local run


# ----------------------------------------------------------------------------- pure parts
def _rank(rank: int, samples: int, elapsed: float, fetched: int | None) -> dict[str, Any]:
    io = {k: (None if fetched is None else rank + 1) for k in SUMMED}
    if fetched is not None:
        io.update(bytes_fetched=fetched, remote_requests=10, meta_requests=2, episodes_opened=4)
        io.update(bytes_needed=fetched // 2, dataset_bytes=1000)
    base = {"rank": rank, "samples": samples, "elapsed_s": elapsed, "setup_s": 0.1}
    base["cpu_s"] = samples / 100  # 10 ms per sample
    return {**base, "samples_per_s": samples / elapsed, "first_batch_s": 0.5 + rank, **io}


def test_summarize_sums_ranks_and_takes_the_slowest() -> None:
    s = summarize([_rank(0, 100, 2.0, 400), _rank(1, 60, 4.0, 200)])
    assert (s["samples"], s["elapsed_s"], s["samples_per_s"]) == (160, 4.0, 40.0)
    assert s["samples_per_s_sum"] == pytest.approx(50.0 + 15.0)
    assert s["time_to_first_batch_s"] == 1.5
    assert s["cpu_s"] == pytest.approx(1.6) and s["cpu_ms_per_sample"] == pytest.approx(10.0)
    assert (s["bytes_fetched"], s["bytes_needed"]) == (600, 300)
    assert s["fetched_vs_needed"] == 2.0 and s["fetched_vs_dataset"] == 0.6
    assert s["requests_per_episode"] == pytest.approx((20 - 4) / 8)
    local = summarize([_rank(0, 100, 1.0, None)])
    assert local["bytes_fetched"] is None and "fetched_vs_dataset" not in local


def test_combine_takes_medians_and_compares_with_local() -> None:
    cfg = BenchConfig(repeats=3)
    remote = [[_rank(0, 100, t, 400)] for t in (1.0, 4.0, 2.0)]
    local = [[_rank(0, 100, t, None)] for t in (2.0, 1.0, 4.0)]
    r = combine(cfg, {"local": local, "remote": remote})
    assert r["epoch_samples_per_s"] == 50.0 and r["local_epoch_samples_per_s"] == 50.0
    assert r["vs_local"] == 1.0 and r["repeats"] == 3
    assert r["cpu_ms_per_sample"] == r["local_cpu_ms_per_sample"] == pytest.approx(10.0)
    assert r["per_rank"][0]["elapsed_s"] == 2.0  # the median run's ranks
    assert len(r["runs"]["remote"]) == len(r["runs"]["local"]) == 3


def test_io_fields_add_the_main_process_and_fall_back_to_local_bytes() -> None:
    stream = {"bytes_fetched": 900, "remote_requests": 8, "episodes_opened": 4}
    main = {"bytes_fetched": 100, "remote_requests": 2}
    out = io_fields(stream, main, data_bytes=2000, local_bytes=500)
    assert (out["bytes_fetched"], out["remote_requests"]) == (1000, 10)
    assert out["needed_basis"] == "local files" and out["fetched_vs_needed"] == 2.0
    assert out["requests_per_episode"] == 2.0 and out["fetched_vs_dataset"] == 0.5
    out = io_fields({**stream, "bytes_needed": 800}, main, data_bytes=None, local_bytes=500)
    assert out["needed_basis"] == "stream" and out["fetched_vs_needed"] == 1.25
    assert out["fetched_vs_dataset"] is None


def test_first_epoch_and_bad_values() -> None:
    cfg = BenchConfig(first_epoch=True, max_batches=5, warmup_batches=3, epochs=4)
    assert (cfg.max_batches, cfg.warmup_batches, cfg.epochs) == (0, 0, 1)
    for bad in ({"ranks": 0}, {"repeats": 0}, {"link_mbps": -1.0}):
        with pytest.raises(ValueError):
            BenchConfig(**bad)
