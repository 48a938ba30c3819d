"""The streaming benchmark end to end: script, JSON, CSV, plot and ``framestream bench``.

The runs are tiny (a few batches of a 6-episode dataset), so the figures themselves mean
nothing here; what is checked is that every figure is present and that the figures agree
with each other (delivered = samples x window x cameras, hits + misses = lookups, ...).
"""

from __future__ import annotations

import csv
import importlib.util
import itertools
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from framestream.bench import (
    CSV_FIELDS,
    BenchConfig,
    detect_dist,
    expected_distinct_episodes,
    format_summary,
    node_cpus,
    parse_delta_spec,
    resolve_deltas,
)

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "streaming" / "benchmark_streaming.py"
PLOT = REPO / "benchmarks" / "streaming" / "plot_results.py"
RUNS = [("single", 0), ("single", 1), ("sarm", 0), ("sarm", 1)]
BATCH = 8
TIMEOUT = 240


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for k in (
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
        "SLURM_PROCID",
        "SLURM_NTASKS",
    ):
        env.pop(k, None)  # a single-process run, whatever launched pytest
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture(scope="module")
def runs(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The 2 x 2 matrix in one invocation (one JSON line per run on stdout)."""
    out = tmp_path_factory.mktemp("bench-out")
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--root",
        str(tiny_root),
        "--mode",
        *sorted({m for m, _ in RUNS}, key=[m for m, _ in RUNS].index),
        "--num-workers",
        *sorted({str(w) for _, w in RUNS}),
        "--batch-size",
        str(BATCH),
        "--max-batches",
        "3",
        "--warmup-batches",
        "1",
        "--ceiling",
        "--ceiling-seconds",
        "0.2",
        "--output-dir",
        str(out),
        "--quiet",
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=TIMEOUT, env=_env(), cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert len(lines) == len(RUNS)
    results = {}
    for written in lines:
        r = json.loads(Path(written["json"]).read_text())
        results[(r["mode"], r["num_workers"])] = r
        assert Path(written["csv"]) == out / "results.csv"
    assert sorted(results) == sorted(RUNS)
    return {"results": results, "csv": out / "results.csv", "out": out}


@pytest.mark.parametrize("mode,workers", RUNS)
def test_json_fields_present_and_consistent(runs: dict, mode: str, workers: int) -> None:
    r = runs["results"][(mode, workers)]
    missing = [k for k in CSV_FIELDS if k not in r]
    assert not missing, missing
    assert (r["mode"], r["num_workers"], r["batch_size"]) == (mode, workers, BATCH)
    assert r["dtype"] == "uint8"
    assert r["cameras"] == 2 and r["window_length"] == (1 if mode == "single" else 9)
    assert r["frames_per_sample"] == r["window_length"] * r["cameras"]
    assert r["batches"] == 3 and r["samples"] == 3 * BATCH
    assert r["delivered_frames"] == r["samples"] * r["window_length"] * r["cameras"]
    assert math.isclose(r["samples_per_s"], r["samples"] / r["elapsed_s"], rel_tol=1e-9)
    assert math.isclose(
        r["delivered_frames_per_s"], r["delivered_frames"] / r["elapsed_s"], rel_tol=1e-9
    )
    assert r["decoded_frames"] == r["stats_timed"]["decoded_frames"]
    assert math.isclose(
        r["decoded_frames_per_s"], r["decoded_frames"] / r["elapsed_s"], rel_tol=1e-9
    )
    basis = r["stats_timed"] if r["reuse_ratio_basis"] == "timed" else r["stats_total"]
    assert math.isclose(
        r["reuse_ratio"], basis["delivered_frames"] / basis["decoded_frames"], rel_tol=1e-9
    )
    # the dataset's own counters agree with what the consumer saw
    assert r["stats_total"]["delivered_frames"] == (
        r["stats_total"]["samples"] * r["frames_per_sample"]
    )
    assert r["stats_total"]["samples"] >= r["total_samples"] == (1 + 3) * BATCH
    assert r["decoder_cache_hits"] + r["decoder_cache_misses"] == r["decoder_cache_lookups"] > 0
    hit_rate = r["decoder_cache_hits"] / r["decoder_cache_lookups"]
    assert math.isclose(r["decoder_cache_hit_rate"], hit_rate)
    # one process, so the node is this rank
    assert r["world_size"] == 1 and r["nodes"] == 1
    assert r["frames_per_s_node"] == r["delivered_frames_per_s"]
    assert r["samples_per_s_node"] == r["samples_per_s"]
    lat = [r[f"sample_latency_ms_p{q}"] for q in (50, 95, 99)]
    assert 0 < lat[0] <= lat[1] <= lat[2]
    assert math.isclose(r["batch_latency_ms_p50"], lat[0] * BATCH, rel_tol=1e-6)
    assert r["first_batch_s"] > 0
    if importlib.util.find_spec("psutil") is not None:  # CPU per sample needs psutil
        # CPU clocks tick every 10 ms and 3 timed batches may fall between ticks: >= 0.
        main_ms, worker_ms = r["main_cpu_ms_per_sample"], r["worker_cpu_ms_per_sample"]
        assert main_ms >= 0 and worker_ms >= 0
        total_s = (main_ms + worker_ms) * r["samples"] / 1000.0
        assert math.isclose(r["cpu_cores_used"], total_s / r["elapsed_s"], rel_tol=1e-9)
    assert r["peak_rss_mb_main"] > 0
    assert len(r["peak_rss_mb_workers"]) == workers
    assert 1 <= r["distinct_episodes_per_batch"] <= min(BATCH, 6)
    assert 1 < r["expected_distinct_episodes"] <= min(BATCH, 6)
    assert math.isclose(
        r["shuffle_quality"], r["distinct_episodes_per_batch"] / r["expected_distinct_episodes"]
    )
    assert r["ceiling_frames_per_s"] > 0 and r["ceiling_processes"] == node_cpus()
    assert math.isclose(
        r["delivered_vs_ceiling"], r["frames_per_s_node"] / r["ceiling_frames_per_s"]
    )
    assert math.isclose(
        r["decoded_vs_ceiling"], r["decoded_frames_per_s_node"] / r["ceiling_frames_per_s"]
    )
    assert math.isclose(
        r["sample_frames_vs_ceiling"],
        r["samples_per_s_node"] * r["cameras"] / r["ceiling_frames_per_s"],
    )
    assert (r["target"] is not None) == (mode == "single")
    for key in ("framestream", "torch", "torchcodec", "av", "python"):
        assert r["versions"][key], key
    assert r["machine"]["cpu_count"] >= 1 and r["machine"]["cpu_model"]


def test_csv_has_one_row_per_run(runs: dict) -> None:
    with open(runs["csv"], newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        assert tuple(reader.fieldnames or ()) == CSV_FIELDS
    assert len(rows) == len(RUNS)
    assert [(row["mode"], int(row["num_workers"])) for row in rows] == RUNS
    for row in rows:
        r = runs["results"][(row["mode"], int(row["num_workers"]))]
        for key in ("samples", "delivered_frames", "decoded_frames", "decoder_cache_lookups"):
            assert int(row[key]) == r[key], key
        for key in ("samples_per_s", "reuse_ratio", "ceiling_frames_per_s", "frames_per_s_node"):
            assert math.isclose(float(row[key]), r[key], rel_tol=1e-5), key
    assert len(list(runs["out"].glob("*.json"))) == len(RUNS)


def test_plot_writes_png(runs: dict, tmp_path: Path) -> None:
    png = tmp_path / "plot.png"
    proc = subprocess.run(
        [sys.executable, str(PLOT), str(runs["csv"]), "--out", str(png)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_framestream_bench_cli(tiny_root: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "framestream.cli",
        "bench",
        str(tiny_root),
        "--mode",
        "window",
        "--max-batches",
        "2",
        "--warmup-batches",
        "1",
        "--batch-size",
        str(BATCH),
        "--num-workers",
        "0",
        "--no-progress",
        "--json",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    (r,) = json.loads(proc.stdout)
    assert r["root"] == str(tiny_root)
    assert (r["batches"], r["samples"]) == (2, 2 * BATCH)
    assert r["window_length"] == 16
    assert r["delta_frames"]["action"] == list(range(16))
    assert r["delta_frames"]["observation.state"] == list(range(-150, 1, 10))
    assert r["delivered_frames"] == 2 * BATCH * 16 * 2
    table = format_summary(r)
    assert f"{r['samples_per_s']:,.1f}" in table and "reuse ratio" in table


def _script_runs(args: list[str], out: Path) -> list[dict]:
    """Run the benchmark script with ``args`` into ``out``; each run's JSON, in order."""
    cmd = [sys.executable, str(SCRIPT), *args, "--output-dir", str(out), "--quiet"]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=TIMEOUT, env=_env(), cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    return [json.loads(Path(json.loads(x)["json"]).read_text()) for x in lines]


def test_warmup_epochs_times_whole_epochs(tiny_root: Path, tmp_path: Path) -> None:
    """--warmup-epochs 1 --epochs 3: epochs 1 and 2 timed whole, every frame decoded in them."""
    (r,) = _script_runs(
        ["--root", str(tiny_root), "--mode", "single", "--num-workers", "2"]
        + ["--batch-size", str(BATCH), "--max-batches", "0", "--warmup-epochs", "1"]
        + ["--epochs", "3"],
        tmp_path,
    )
    from framestream import StreamingLeRobotDataset

    ds = StreamingLeRobotDataset(str(tiny_root), seed=r["seed"])
    per_worker = [ds.plan(worker=w, num_workers=2, epoch=0).num_samples for w in range(2)]
    assert r["warmup_batches"] == sum(math.ceil(n / BATCH) for n in per_worker)
    assert r["total_samples"] == 3 * sum(per_worker)
    assert r["samples"] == 2 * sum(per_worker)  # epochs 1 and 2, whole
    assert r["decoded_frames"] == r["delivered_frames"] == r["samples"] * r["cameras"]
    assert r["reuse_ratio"] == 1.0


def test_ceiling_each_measures_after_every_run(tiny_root: Path, tmp_path: Path) -> None:
    runs = _script_runs(
        ["--root", str(tiny_root), "--mode", "single", "sarm", "--num-workers", "0"]
        + ["--batch-size", str(BATCH), "--max-batches", "1", "--warmup-batches", "1"]
        + ["--ceiling", "--ceiling-each", "--ceiling-seconds", "0.2"],
        tmp_path,
    )
    assert [r["mode"] for r in runs] == ["single", "sarm"]
    for r in runs:
        assert r["ceiling_frames_per_s"] > 0
        assert not any("measured once" in n for n in r["notes"]), r["notes"]


# ----------------------------------------------------------------------------- pure parts
def test_parse_delta_spec() -> None:
    assert parse_delta_spec("-120:120:30") == [-120, -90, -60, -30, 0, 30, 60, 90, 120]
    assert parse_delta_spec("0:3") == [0, 1, 2, 3]
    assert parse_delta_spec("3:0") == [3, 2, 1, 0]
    assert parse_delta_spec("0,5,-2:-1") == [0, 5, -2, -1]
    for bad in ("", "0:5:-1", "1:2:3:4", "0:5:0"):
        with pytest.raises(ValueError):
            parse_delta_spec(bad)


def test_resolve_deltas_presets_and_overrides(tmp_path: Path) -> None:
    cams = ["observation.images.a", "observation.images.b"]
    feats = [*cams, "observation.state", "action"]
    mode, d = resolve_deltas(BenchConfig(mode="sarm"), camera_keys=cams, features=feats, fps=30)
    assert mode == "sarm" and set(d) == {*cams, "observation.state"}
    assert [round(x * 30) for x in d[cams[0]]] == list(range(-120, 121, 30))
    mode, d = resolve_deltas(BenchConfig(mode=None), camera_keys=cams, features=feats, fps=30)
    assert (mode, d) == ("single", {})
    js = tmp_path / "d.json"
    js.write_text(json.dumps({"action": [0.0, 0.1]}))
    cfg = BenchConfig(mode=None, delta=["cameras=-2:0"], deltas_json=str(js))
    mode, d = resolve_deltas(cfg, camera_keys=cams, features=feats, fps=10)
    assert mode == "custom"
    assert d == {cams[0]: [-0.2, -0.1, 0.0], cams[1]: [-0.2, -0.1, 0.0], "action": [0.0, 0.1]}
    cfg = BenchConfig(mode="window", delta=["action=0:3"])
    mode, d = resolve_deltas(cfg, camera_keys=cams, features=feats, fps=30)
    assert mode == "window" and len(d[cams[1]]) == 16 and len(d["action"]) == 4


@pytest.mark.parametrize("lengths,batch", [([1, 2, 3], 2), ([4, 1, 1, 2], 3), ([5], 2)])
def test_expected_distinct_episodes_is_exact(lengths: list[int], batch: int) -> None:
    frames = [e for e, n in enumerate(lengths) for _ in range(n)]
    combos = list(itertools.combinations(frames, batch))
    brute = sum(len(set(c)) for c in combos) / len(combos)
    got = expected_distinct_episodes(lengths, batch)
    assert math.isclose(got["exact"], brute, rel_tol=1e-12)
    assert got["with_replacement"] <= got["exact"] + 1e-12


def test_detect_dist_from_slurm(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_TASKS_PER_NODE", "4(x2)")
    d = detect_dist()
    assert (d.rank, d.world_size, d.local_rank, d.local_world_size) == (5, 8, 1, 4)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    d = detect_dist()
    assert (d.rank, d.world_size, d.local_world_size) == (2, 3, 3)


def test_labels_name_the_layout_collate_and_deinterleave(monkeypatch):
    """A results table must tell a numpy-deinterleaved run from an OpenCV one."""
    from framestream.bench.runner import _label
    from framestream.decode import planar as _planar

    monkeypatch.setenv("FRAMESTREAM_OPENCV", "0")
    _planar._opencv_split.cache_clear()
    try:
        assert _label("single", BenchConfig()) == "single-np"
        assert _label("window", BenchConfig(collate="default")) == "window-dc-np"
        assert _label("single", BenchConfig(channels_last=True)) == "single-cl"  # no deinterleave
        if importlib.util.find_spec("cv2") is not None:
            monkeypatch.setenv("FRAMESTREAM_OPENCV", "1")
            _planar._opencv_split.cache_clear()
            assert _label("single", BenchConfig()) == "single"
    finally:
        _planar._opencv_split.cache_clear()


def test_cpu_seconds_counts_this_process_and_its_workers():
    pytest.importorskip("psutil")
    from framestream.bench.measure import cpu_seconds

    own0, workers0 = cpu_seconds()
    t = time.process_time()
    while time.process_time() - t < 0.3:  # 0.3 s of this process's CPU, on any machine
        pass
    # A child that burns CPU and exits: reaped, it still counts (as a finished worker would).
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
    subprocess.run([sys.executable, "-c", burn], check=True)
    own1, workers1 = cpu_seconds()
    assert own1 - own0 >= 0.28  # clock ticks of 10 ms
    assert workers1 - workers0 >= 0.29


class _LatePublisher:
    """Counts its samples only when its pass ends, after its last sample was handed out:
    as a DataLoader worker publishes its last counters (its last batch full, the main
    process has that batch before the worker learns its stream is over)."""

    def __init__(self, n: int) -> None:
        self.n, self.published = n, 0

    def set_epoch(self, epoch: int) -> None:
        pass

    def stats(self) -> dict:
        return {"samples": self.published}

    def __iter__(self):
        import torch

        for i in range(self.n):
            row = {"index": i, "episode_index": 0, "frame_index": i}
            yield {key: torch.tensor(v) for key, v in row.items()}
        self.published += self.n


def test_warmup_epochs_read_counters_once_the_warmup_pass_has_ended():
    """--warmup-epochs: the counters timing starts from include the warm-up pass's last
    publication, even when it comes after the pass's last batch (CI once saw a reuse ratio
    of 1.023 from that race)."""
    from torch.utils.data import IterableDataset

    from framestream.bench.measure import stream_timed

    class _Dataset(_LatePublisher, IterableDataset):
        pass

    ds = _Dataset(8)
    cfg = BenchConfig(batch_size=4, num_workers=0, epochs=3, warmup_epochs=1, collate="default")
    cfg.max_batches, cfg.seconds = 0, None
    t = stream_timed(ds, cfg, 2, None)  # warm-up: the first epoch's 2 full batches
    assert t.timed_samples == 16
    assert t.stats1["samples"] - t.stats0["samples"] == t.timed_samples
