"""--compare-lerobot: the driver that runs LeRobot's loaders in LeRobot's own environment,
the decode-only limit, and the comparison fields."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from framestream.bench.ceiling import measure_ceiling
from framestream.bench.config import BenchConfig
from framestream.bench.lerobot_compare import (
    DRIVER,
    comparison_fields,
    find_lerobot_python,
    median_of_pairs,
    run_lerobot_loader,
)
from framestream.testing.synth import generate_synthetic_dataset

LEROBOT_PYTHON = find_lerobot_python()
needs_lerobot = pytest.mark.skipif(
    LEROBOT_PYTHON is None,
    reason="no LeRobot environment this user can run (set FRAMESTREAM_LEROBOT_PYTHON, or "
    "build .lerobot-venv with ../shared/lerobot-reference/setup.sh)",
)


def test_driver_imports_only_stdlib_numpy_torch_and_lerobot():
    allowed = {"json", "os", "sys", "time", "traceback", "importlib", "numpy", "torch", "lerobot"}
    tree = ast.parse(DRIVER.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    assert names - {"__future__"} <= allowed, names - allowed


def test_comparison_fields():
    runs = {
        "map": {"samples_per_s": 100.0},
        "streaming": {"error": "IndexError: Invalid frame index"},
    }
    out = comparison_fields(550.0, runs)
    assert out["vs_lerobot_map"] == pytest.approx(5.5)
    assert out["lerobot_streaming_samples_per_s"] is None
    assert out["vs_lerobot_streaming"] is None
    assert out["lerobot_streaming_error"].startswith("IndexError")
    assert out["lerobot_best_loader"] == "map" and out["vs_lerobot_best"] == pytest.approx(5.5)
    assert comparison_fields(0.0, runs)["vs_lerobot_best"] is None


def test_repeats_report_the_median_of_each_pairs_ratio():
    """--compare-lerobot --repeats: each framestream run is followed by LeRobot's; the ratio
    reported is the median of each pair's ratio, not the ratio of the median rates."""
    runs = []
    for rate, lerobot in ((100.0, 20.0), (25.0, 2.0), (50.0, 25.0)):
        runs.append({"samples_per_s": rate, "label": f"run at {rate:g}"})
        runs[-1].update(comparison_fields(rate, {"map": {"samples_per_s": lerobot}}))
    out = median_of_pairs(runs)
    assert [p["vs_lerobot_map"] for p in out["lerobot_repeats"]] == [5.0, 12.5, 2.0]
    assert out["vs_lerobot_map"] == out["vs_lerobot_best"] == 5.0  # not 50 / 20
    assert out["lerobot_map_samples_per_s"] == 20.0 and out["lerobot_best_loader"] == "map"
    assert out["label"] == "run at 50" and out["samples_per_s"] == 50.0  # the median run
    assert out["repeats"] == 3 and out["repeat_samples_per_s"] == [100.0, 25.0, 50.0]
    assert out["lerobot_streaming_samples_per_s"] is None
    assert out["vs_lerobot_best_pairs"] == "5.000;12.500;2.000"


@pytest.mark.parametrize("other", [{"ranks": 2}, {"ranks": 1}, {"compare_local": True}])
def test_compare_lerobot_refuses_ranks_instead_of_skipping_the_comparison(other):
    """Rank processes run framestream only: combined with --ranks or --compare-local, the
    LeRobot comparison asked for would silently not happen."""
    with pytest.raises(ValueError, match="--compare-lerobot"):
        BenchConfig(compare_lerobot="/usr/bin/python3", **other)
    BenchConfig(compare_lerobot="/usr/bin/python3", repeats=3)  # alone (and repeated): fine
    BenchConfig(**other)  # ranks without the comparison: fine


def test_decode_only_limit(small_root):
    paths = sorted(str(p) for p in Path(small_root).glob("videos/*/*/*.mp4"))
    out = measure_ceiling(paths, processes=1, seconds=0.5, kind="decode")
    assert out["decode_only_frames_per_s"] > 0 and out["decode_only_processes"] == 1
    with pytest.raises(ValueError, match="kind"):
        measure_ceiling(paths, kind="yuv")


@pytest.fixture(scope="module")
def single_file_root(tmp_path_factory) -> Path:
    """One data file and one mp4 per camera: what LeRobot's streaming class reads correctly."""
    return generate_synthetic_dataset(
        tmp_path_factory.mktemp("onefile") / "ds",
        num_episodes=3,
        min_length=20,
        max_length=30,
        height=64,
        width=96,
        codec="h264",
        video_files_size_in_mb=1000,
        data_files_size_in_mb=1000,
        seed=3,
    )


@needs_lerobot
@pytest.mark.parametrize("loader", ["map", "streaming"])
def test_driver_runs_lerobot_loaders(single_file_root, loader):
    # num_workers=0: LeRobot streaming would yield nothing with max_num_shards=0; the driver
    # asks for max(1, workers) shards.
    r = run_lerobot_loader(
        LEROBOT_PYTHON,
        root=str(single_file_root),
        loader=loader,
        delta_timestamps={"observation.images.cam0": [-0.1, 0.0]},
        batch_size=4,
        num_workers=0,
        max_batches=3,
        seconds=None,
        warmup_batches=1,
        timeout=600,
    )
    assert r.get("error") is None, r
    assert r["timed_batches"] == 3 and r["samples_per_s"] > 0
    assert r["versions"]["lerobot"]


@needs_lerobot
def test_driver_reports_a_failure_instead_of_raising(tmp_path):
    r = run_lerobot_loader(
        LEROBOT_PYTHON,
        root=str(tmp_path / "missing"),
        loader="map",
        delta_timestamps=None,
        batch_size=4,
        num_workers=0,
        max_batches=1,
        seconds=None,
        timeout=600,
    )
    assert r["error"] and r["loader"] == "map"
