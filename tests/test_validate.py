"""``framestream validate``: a clean dataset passes, each kind of problem is reported by file,
episode and camera, and the command's output and exit status follow the report.

The corpus of broken datasets shared with the error policies is in test_robustness.py; this
file covers the validator's own surface and the checks the corpus does not reach.
"""

from __future__ import annotations

import argparse
import json
import shutil
import uuid
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from framestream.cli import validate as _validate_cli
from framestream.format.meta import DatasetMeta
from framestream.testing.synth import generate_synthetic_dataset
from framestream.validate.dataset import CHECKS, validate_dataset

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "real" / "record-test"


@pytest.fixture(scope="module")
def clean_root(tmp_path_factory) -> Path:
    return generate_synthetic_dataset(
        tmp_path_factory.mktemp("validate") / "ds",
        num_episodes=4,
        min_length=10,
        max_length=20,
        height=48,
        width=80,
        codec="h264",
        data_files_size_in_mb=0.001,
        video_files_size_in_mb=0.01,
        seed=8,
    )


@pytest.fixture()
def root(clean_root, tmp_path) -> Path:
    """A private copy to break."""
    return Path(shutil.copytree(clean_root, tmp_path / "ds"))


def run_cli(*argv: str, capsys) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    _validate_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["validate", *argv])
    rc = args.func(args)
    return rc, capsys.readouterr().out


def set_info(root: Path, change) -> None:
    path = root / "meta" / "info.json"
    info = json.loads(path.read_text())
    change(info)
    path.write_text(json.dumps(info))


def rewrite_parquet(path: Path, column: str, change) -> None:
    table = pq.read_table(path)
    i = table.column_names.index(column)
    values = change(table.column(i).to_numpy().copy(), table)
    pq.write_table(table.set_column(i, table.field(i), pa.array(values, table.field(i).type)), path)


# ----------------------------------------------------------------------------- clean
def test_a_clean_dataset_passes(clean_root):
    meta = DatasetMeta(str(clean_root))
    report = validate_dataset(str(clean_root))
    assert report.problems == [], report.format()
    assert report.ok(strict=True) and report.exit_code(strict=True) == 0
    s = report.summary
    assert (s["episodes"], s["frames"]) == (len(meta.episodes), meta.total_frames)
    assert s["cameras"] == meta.video_keys
    # first and last frame of every episode and camera
    assert s["decoded_frames"] == 2 * len(meta.episodes) * len(meta.video_keys)
    assert report.format().splitlines()[-1] == "OK: no problems found"


def test_no_decode_skips_only_decoding(clean_root, root):
    (root / DatasetMeta(str(root)).video_file(1, "observation.images.cam1")).unlink()
    fast = validate_dataset(str(root), decode=False)
    assert fast.summary["decoded_frames"] == 0
    assert [p.check for p in fast.problems] == ["missing_file"]
    assert validate_dataset(str(clean_root), decode=False).problems == []


# ----------------------------------------------------------------------------- problems
def test_unloadable_metadata_is_one_error(root):
    set_info(root, lambda info: info.update(codebase_version="v2.1"))
    report = validate_dataset(str(root))
    assert [(p.severity, p.check) for p in report.problems] == [("error", "metadata")]
    assert "v2.1" in report.problems[0].message and report.exit_code() == 1


def test_non_contiguous_episode_ranges(root):
    path = next((root / "meta" / "episodes").rglob("*.parquet"))
    for col in ("dataset_from_index", "dataset_to_index"):
        rewrite_parquet(path, col, lambda v, t: v + 2 * (t.column("episode_index").to_numpy() >= 2))
    report = validate_dataset(str(root), decode=False)
    ranges = report.find("episode_index")
    assert [p.episode for p in ranges] == [2], report.format()
    assert "dataset_from_index is" in ranges[0].message and "gap" in ranges[0].message
    # the data's own 'index' column now disagrees for every shifted episode
    assert sorted(p.episode for p in report.find("data")) == [2, 3]
    assert all("'index' runs" in p.message for p in report.find("data"))


def test_timestamps_off_the_frame_grid(root):
    meta = DatasetMeta(str(root))
    rel = meta.data_file(1)

    def shift(ts, table):
        return (ts + 0.01 * (table.column("episode_index").to_numpy() == 1)).astype("float32")

    rewrite_parquet(root / rel, "timestamp", shift)
    report = validate_dataset(str(root), decode=False)
    found = report.find("data", episode=1)
    assert len(found) == 1 and "timestamp of frame 0" in found[0].message, report.format()
    assert rel in found[0].message and found[0].file == rel


def test_declared_shape_differs_from_the_video(root):
    key = "observation.images.cam0"
    set_info(root, lambda info: info["features"][key].update(shape=[96, 128, 3]))
    report = validate_dataset(str(root))
    shapes = report.find("shape")
    assert shapes and {p.camera for p in shapes} == {key}, report.format()
    assert "48x80" in shapes[0].message and "[96, 128, 3]" in shapes[0].message


def test_missing_tasks_file(root):
    (root / "meta" / "tasks.parquet").unlink()
    report = validate_dataset(str(root), decode=False)
    assert report.find("task") and "tasks.parquet" in report.find("task")[0].message
    assert not report.ok()


def test_wrong_total_tasks_is_a_warning(root):
    set_info(root, lambda info: info.update(total_tasks=info["total_tasks"] + 1))
    report = validate_dataset(str(root), decode=False)
    assert [(p.severity, p.check) for p in report.problems] == [("warning", "totals")]
    assert report.ok() and not report.ok(strict=True)


def test_longer_video_range_is_a_warning(root):
    """A range longer than the episode still decodes right; a shorter one is refused."""
    key = "observation.images.cam1"
    meta = DatasetMeta(str(root))
    last = max(
        int(e)
        for e in meta.episodes.episode_index
        if meta.video_file(int(e), key)
        == meta.video_file(int(meta.episodes.episode_index[-1]), key)
    )
    path = next((root / "meta" / "episodes").rglob("*.parquet"))
    col = f"videos/{key}/to_timestamp"
    rewrite_parquet(
        path, col, lambda v, t: v + 0.5 * (t.column("episode_index").to_numpy() == last)
    )
    report = validate_dataset(str(root))
    assert [(p.severity, p.check, p.episode) for p in report.problems] == [
        ("warning", "video_range", last)
    ], report.format()
    rewrite_parquet(
        path, col, lambda v, t: v - 1.0 * (t.column("episode_index").to_numpy() == last)
    )
    # A range shorter than the episode: LeRobot reads the frames at from_timestamp + frame /
    # fps and never reads to_timestamp, so it is a warning (issue 14), not an error.
    report = validate_dataset(str(root))
    assert not report.errors, report.format()
    assert [(p.severity, p.check, p.episode) for p in report.problems] == [
        ("warning", "video_range", last)
    ], report.format()


def test_every_check_name_is_documented():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "robustness.md").read_text()
    assert all(f"`{c}`" in doc for c in CHECKS), [c for c in CHECKS if f"`{c}`" not in doc]


# ----------------------------------------------------------------------------- remote
def test_an_fsspec_url(clean_root):
    """The same checks through fsspec (no local paths): here the in-memory filesystem."""
    fs = fsspec.filesystem("memory")
    base = f"/fs-validate-{uuid.uuid4().hex}"
    try:
        fs.put(str(clean_root), base, recursive=True)
        url = f"memory://{base}"
        report = validate_dataset(url)
        assert report.problems == [], report.format()
        assert report.summary["decoded_frames"] > 0
        rel = DatasetMeta(url).video_file(0, "observation.images.cam0")
        fs.rm(f"{base}/{rel}")
        report = validate_dataset(url)
        assert [p.check for p in report.errors] == ["missing_file"]
        assert report.errors[0].message.startswith(f"{url}/{rel}")
    finally:
        if fs.exists(base):
            fs.rm(base, recursive=True)


def test_real_metadata_passes_but_its_missing_videos_are_reported():
    """A third-party dataset whose mp4s were not kept: only those files are reported."""
    if not REAL.exists():
        pytest.skip(f"real fixtures not found at {REAL}")
    report = validate_dataset(str(REAL))
    assert {p.check for p in report.problems} == {"missing_file"}, report.format()
    cams = {p.camera for p in report.problems}
    assert cams == {"observation.images.front", "observation.images.top"}
    assert all("episodes 0, 1, 2, 3" in p.message for p in report.problems)


# ----------------------------------------------------------------------------- command
def test_cli_report_and_exit_status(clean_root, root, capsys):
    rc, out = run_cli(str(clean_root), capsys=capsys)
    assert rc == 0 and out.strip().endswith("OK: no problems found")
    meta = DatasetMeta(str(root))
    rel = meta.data_file(2)
    (root / rel).unlink()
    rc, out = run_cli(str(root), "--no-decode", capsys=capsys)
    assert rc == 1
    assert any(
        line.split()[:2] == ["ERROR", "missing_file"] and rel in line for line in out.splitlines()
    ), out
    assert out.strip().endswith("FAILED: 1 error, 0 warnings")
    rc, out = run_cli(str(root), "--json", "--no-decode", capsys=capsys)
    doc = json.loads(out)
    assert rc == 1 and doc["ok"] is False and doc["errors"] == 1
    assert doc["problems"][0]["file"] == rel and doc["problems"][0]["episode"] == 2


def test_cli_strict_fails_on_warnings(root, capsys):
    set_info(
        root,
        lambda info: [
            f["info"].update({"video.codec": "av1"})
            for f in info["features"].values()
            if f["dtype"] == "video"
        ],
    )
    rc, out = run_cli(str(root), capsys=capsys)
    assert rc == 0 and "WARNING codec" in out.replace("  ", " ") and "'h264'" in out
    rc, out = run_cli(str(root), "--strict", "--json", capsys=capsys)
    doc = json.loads(out)
    assert (
        rc == 1
        and doc["ok"] is False
        and doc["strict"] is True
        and doc["warnings"] == doc["summary"]["video_files"]
    )


def test_registered_in_the_framestream_command(clean_root, capsys):
    from framestream import cli

    assert cli.COMMANDS["validate"] == "framestream.cli.validate"
    assert cli.main(["validate", str(clean_root), "--no-decode"]) == 0
    assert "OK: no problems found" in capsys.readouterr().out
