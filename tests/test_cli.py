"""The ``framestream`` command as a new user meets it: one-line errors, exit codes, the files
the main job leaves behind, and the help text."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from framestream.cli import main
from framestream.cli.bench import load_note
from framestream.cli.common import CLIError, clean_message, is_hub_repo_id, looks_local
from framestream.cli.validate import format_grouped, pattern
from framestream.validate.dataset import Problem, Report


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(err: str, command: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"framestream {command}: error: "), lines[0]
    return lines[0]


def test_missing_path_is_one_line_from_the_console(tmp_path):
    """End to end, as a user runs it: no traceback, exit 2, no Hub lookup (instant)."""
    proc = subprocess.run(
        [sys.executable, "-m", "framestream", "stream", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    line = assert_one_line(proc.stderr, "stream")
    assert "no such local dataset folder" in line


@pytest.mark.parametrize("command", ["stream", "validate", "bench", "prewarm"])
def test_missing_path_every_command(capsys, tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    for missing in ("data/my_dataset", "./nope", "nope", str(tmp_path / "a" / "b")):
        code, _, err = run_cli(capsys, command, missing)
        assert code == 2, (missing, err)
        assert "no such local dataset folder" in assert_one_line(err, command)


def test_debug_gives_the_traceback(tmp_path):
    with pytest.raises(CLIError, match="no such local dataset folder"):
        main(["--debug", "stream", str(tmp_path / "nope")])
    with pytest.raises(CLIError):
        main(["stream", str(tmp_path / "nope"), "--debug"])


def test_usage_error_is_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["stream", "--batches", "many"])
    assert exc.value.code == 2
    assert_one_line(capsys.readouterr().err, "stream")


def test_v21_dataset_is_one_line(capsys, tiny_root, tmp_path):
    root = tmp_path / "v21"
    shutil.copytree(tiny_root, root)
    info = json.loads((root / "meta" / "info.json").read_text())
    info["codebase_version"] = "v2.1"
    (root / "meta" / "info.json").write_text(json.dumps(info))
    code, _, err = run_cli(capsys, "stream", str(root), "--num-workers", "0")
    assert code == 1
    assert "v2.1" in assert_one_line(err, "stream")


def test_synth_into_existing_folder_says_overwrite(capsys, tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "something").write_text("x")
    code, _, err = run_cli(capsys, "synth", str(out))
    assert code == 2
    line = assert_one_line(err, "synth")
    assert "--overwrite" in line and "overwrite=True" not in line


def test_unknown_episode_is_one_line(capsys, tiny_root):
    code, _, err = run_cli(
        capsys, "stream", str(tiny_root), "--episodes", "999", "--num-workers", "0"
    )
    assert code == 1
    assert "999" in assert_one_line(err, "stream")


def test_bad_episode_spec_is_a_usage_error(capsys, tiny_root):
    code, _, err = run_cli(capsys, "stream", str(tiny_root), "--episodes", "3-x")
    assert code == 2
    assert "--episodes" in assert_one_line(err, "stream")


def test_stream_summary(capsys, tiny_root):
    code, out, _ = run_cli(
        capsys,
        "stream",
        str(tiny_root),
        "--batches",
        "2",
        "--batch-size",
        "4",
        "--num-workers",
        "0",
        "--episodes",
        "0-2",
        "--on-error",
        "skip",
    )
    assert code == 0
    assert sum(line.startswith("samples") for line in out.splitlines()) == 1
    assert "8 in 2 batches" in out
    assert "frames delivered per frame decoded" in out
    assert "(3 episodes" in out


def test_bench_writes_its_files_and_names_them(capsys, tiny_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_cli(
        capsys,
        "bench",
        str(tiny_root),
        "--mode",
        "single",
        "--num-workers",
        "0",
        "--batch-size",
        "4",
        "--max-batches",
        "3",
        "--warmup-batches",
        "1",
        "--buffer-size",
        "16",
        "--no-progress",
    )
    assert code == 0
    last = out.strip().splitlines()[-1]
    assert last.startswith("results written to bench-results/"), last
    folder = tmp_path / last.split(" to ", 1)[1].split("/ (")[0]
    for name in ("results.json", "results.csv", "results.png"):
        assert (folder / name).stat().st_size > 0, name
        assert name in last
    results = json.loads((folder / "results.json").read_text())
    assert [r["mode"] for r in results] == ["single"]
    assert "load_note" in results[0]


def test_bench_output_dir_still_works(capsys, tiny_root, tmp_path):
    out_dir = tmp_path / "mine"
    code, out, _ = run_cli(
        capsys,
        "bench",
        "--root",
        str(tiny_root),
        "--num-workers",
        "0",
        "--batch-size",
        "4",
        "--max-batches",
        "2",
        "--warmup-batches",
        "1",
        "--buffer-size",
        "8",
        "--no-progress",
        "--output-dir",
        str(out_dir),
    )
    assert code == 0
    assert (out_dir / "results.csv").exists() and (out_dir / "results.json").exists()
    assert str(out_dir) in out.strip().splitlines()[-1]


def test_load_note():
    assert load_note(0.1, [2.9], own=3, cpus=2) is None
    note = load_note(3.0, [5.0], own=3, cpus=2)
    assert note is not None and "busy" in note and "2 CPUs" in note
    assert load_note(None, [7.0], own=3, cpus=2) is not None


def test_help_shows_each_default_once(capsys):
    for command in ("stream", "synth", "bench", "validate", "prewarm"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        for option in text.split(" --")[1:]:
            assert option.replace("by default", "").count("default:") <= 1, option
    # the stream options the issue names are documented with their defaults
    with pytest.raises(SystemExit):
        main(["stream", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--batches", "--batch-size", "--num-workers", "--seed", "--on-error"):
        assert flag in text
    assert "(default: 20)" in text and "--cache-dir" in text and "--episodes" in text


def test_clean_message_drops_torchcodec_paths():
    raw = (
        "SingleStreamDecoder, /__w/torchcodec/torchcodec/meta-pytorch/torchcodec/src/"
        "torchcodec/_core/SingleStreamDecoder.cpp:52, Could not open input file: /tmp/x.mp4 "
        "Invalid data found when processing input\nException raised from foo\nframe #0: bar"
    )
    msg = clean_message(f"videos/a.mp4: episode 3: {raw}")
    assert "torchcodec/" not in msg and ".cpp" not in msg and "frame #0" not in msg
    assert msg.endswith(
        "Could not open input file: /tmp/x.mp4 Invalid data found when processing input"
    )
    site = "/usr/lib/python3/site-packages/torchcodec/decoders/_video_decoder.py:120: bad"
    assert clean_message(site) == "bad"


def test_local_or_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert is_hub_repo_id("lerobot/pusht")
    for local in ("/abs/path", "./rel", "../up", "~/ds", "one", "a/b/c", ".hidden/x", "-a/b"):
        assert looks_local(local), local
    assert not looks_local("s3://bucket/ds") and not looks_local("hf://datasets/a/b")
    (tmp_path / "data").mkdir()
    assert looks_local("data/my_dataset")  # its first part is a folder here


def test_validate_groups_repeated_problems():
    problems = [
        Problem("error", "timestamps", f"episode {e}: frame 3 at 0.{e}s, expected 0.1s", episode=e)
        for e in range(100)
    ] + [Problem("warning", "tasks", "task 7 is never used")]
    report = Report(root="/ds", problems=problems, summary={})
    text = format_grouped(report)
    lines = text.splitlines()
    assert len(lines) < 8, text
    assert "100 times in episodes 0, 1, 2, 3, 4, ... (100 episodes)" in text
    assert "task 7 is never used" in text and lines[-1].startswith("FAILED")
    assert pattern("episode 12 frame 3") == pattern("episode 7 frame 40")


def test_python_dash_m_and_console_agree():
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, "-m", "framestream", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0 and "--debug" in proc.stdout
