"""The Accelerate training example: stop, resume, and the data stream continues exactly.

Every run logs (``--log-samples``) the global indices of each step's batch and the
``(episode, frame)`` decoded from the pixels, so "continued rather than restarted" is checked
on the frames themselves: the resumed run's steps are exactly the uninterrupted run's next
steps, and never a replay of its first ones. The loss is logged too: equal losses after the
resume show the model and optimizer came back as well.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from framestream import StreamingLeRobotDataset

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "scaling" / "train_streaming_multinode.py"
TIMEOUT_S = 240


def _env() -> dict[str, str]:
    # CPU runs (gloo) even on a GPU machine: deterministic, and 2 processes need no 2 GPUs.
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="")


def run_example(args: list[str], *, launcher: list[str] | None = None, check: bool = True) -> str:
    """Run the example to completion; its output (asserting success when ``check``)."""
    cmd = [*(launcher or [sys.executable]), str(SCRIPT), *args]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=_env(), cwd=REPO
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"timed out after {TIMEOUT_S}s: {cmd}\n{exc.stdout}\n{exc.stderr}")
    log = proc.stdout + proc.stderr
    if check:
        assert proc.returncode == 0, f"{cmd} failed (rc={proc.returncode}):\n{log[-6000:]}"
    return log + f"\n[rc={proc.returncode}]"


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_frames(records: list[dict]) -> None:
    """The pixels are the frames the rows name (so indices identify real decoded frames)."""
    for rec in records:
        assert rec["frames"] is not None
        pairs = [[e, f] for e, f, _cam in rec["frames"]]
        assert pairs == [
            list(p) for p in zip(rec["episode_index"], rec["frame_index"], strict=True)
        ]


def first_deliveries(records: list[dict]) -> set[int]:
    """Indices of the samples in ``records`` that are not ``is_repeat`` padding."""
    out = set()
    for r in records:
        flags = r.get("is_repeat") or [False] * len(r["index"])
        out |= {i for i, rep in zip(r["index"], flags, strict=True) if not rep}
    return out


def assert_continues(reference: list[dict], before: list[dict], after: list[dict]) -> None:
    """``before`` + ``after`` is ``reference`` step for step: same samples, same order."""
    split = len(before)
    assert split > 0 and after, "both parts of the interrupted run must have run steps"
    assert [r["step"] for r in after] == [r["step"] for r in reference[split:]]
    assert [r["index"] for r in before] == [r["index"] for r in reference[:split]]
    assert [r["index"] for r in after] == [r["index"] for r in reference[split:]], (
        "the resumed stream is not the continuation of the uninterrupted one"
    )
    assert [r["frames"] for r in after] == [r["frames"] for r in reference[split:]]
    # Continued, not restarted: no frame of the first part comes again (one epoch). Padding
    # repeats (even_ranks, flagged is_repeat) are a rank's own frames again: shuffled in with
    # the rest, they may come at any step, so only first deliveries count.
    seen_before, seen_after = first_deliveries(before), first_deliveries(after)
    assert seen_before and seen_after and seen_before.isdisjoint(seen_after)
    # Model and optimizer restored: the resumed losses are the uninterrupted run's.
    assert [r["loss"] for r in after] == pytest.approx(
        [r["loss"] for r in reference[split:]], rel=1e-4, abs=1e-6
    )


COMMON = ["--batch-size", "4", "--log-every", "2", "--action-horizon", "4"]


@pytest.mark.timeout(4 * TIMEOUT_S)
def test_stop_and_resume_single_process_with_workers(tiny_root: Path, tmp_path: Path) -> None:
    """2 DataLoader workers (StatefulDataLoader state): stop at step 3 and resume to step 6."""
    args = [*COMMON, "--root", str(tiny_root), "--num-workers", "2"]
    ref_dir, run_dir = tmp_path / "reference", tmp_path / "interrupted"
    run_example([*args, "--max-steps", "6", "--output-dir", str(ref_dir),
                 "--log-samples", str(ref_dir / "samples.jsonl")])  # fmt: skip
    run_example([*args, "--max-steps", "3", "--output-dir", str(run_dir),
                 "--log-samples", str(run_dir / "before.jsonl")])  # fmt: skip
    assert (run_dir / "checkpoints" / "latest").read_text() == "step-000000003"
    log = run_example([*args, "--max-steps", "6", "--output-dir", str(run_dir), "--resume",
                       "--log-samples", str(run_dir / "after.jsonl")])  # fmt: skip
    assert "[resume]" in log and "step 3, epoch 0" in log
    reference = read_log(ref_dir / "samples.jsonl")
    before, after = read_log(run_dir / "before.jsonl"), read_log(run_dir / "after.jsonl")
    assert len(reference) == 6
    check_frames(reference + before + after)
    assert_continues(reference, before, after)


@pytest.mark.slow  # ~25 s of CPU: two launches of 2 processes (CI runs it in its slow step)
@pytest.mark.timeout(3 * TIMEOUT_S)
def test_resume_two_processes(tiny_root: Path, tmp_path: Path) -> None:
    """2 processes (Accelerate + gloo on CPU, DDP): resume from the step-3 checkpoint of a run
    that went on to step 6, and compare each rank's steps 4-6 with that run's."""
    pytest.importorskip("accelerate")

    def launcher() -> list[str]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1",
                "--main_process_port", str(port)]  # fmt: skip

    args = [*COMMON, "--root", str(tiny_root), "--num-workers", "0"]
    ref_dir, run_dir = tmp_path / "reference", tmp_path / "resumed"
    log = run_example(
        [*args, "--max-steps", "6", "--checkpoint-every", "3", "--output-dir", str(ref_dir),
         "--log-samples", str(ref_dir / "samples.jsonl")],
        launcher=launcher(),
        check=False,
    )  # fmt: skip
    if "[config] world_size=2" not in log:
        pytest.skip(f"2 processes did not start as one job here:\n{log[-3000:]}")
    assert log.endswith("[rc=0]"), log[-6000:]
    ckpt = ref_dir / "checkpoints" / "step-000000003"
    assert (ckpt / "data_rank0.pt").exists() and (ckpt / "data_rank1.pt").exists()
    run_example(
        [*args, "--max-steps", "6", "--output-dir", str(run_dir), "--resume", str(ckpt),
         "--log-samples", str(run_dir / "after.jsonl")],
        launcher=launcher(),
    )  # fmt: skip
    ranks = []
    for r in (0, 1):
        reference = read_log(ref_dir / f"samples.rank{r}.jsonl")
        after = read_log(run_dir / f"after.rank{r}.jsonl")
        assert {rec["rank"] for rec in reference + after} == {r}
        assert {rec["world_size"] for rec in reference + after} == {2}
        check_frames(reference + after)
        assert_continues(reference, reference[:3], after)
        ranks.append({i for rec in reference for i in rec["index"]})
    assert ranks[0].isdisjoint(ranks[1]), "the two ranks streamed the same samples"


@pytest.mark.timeout(2 * TIMEOUT_S)
def test_sigterm_checkpoints_at_a_step_boundary(tiny_root: Path, tmp_path: Path) -> None:
    """SIGTERM (SLURM's time limit / preemption) saves the stream at a step boundary."""
    out = tmp_path / "run"
    cmd = [sys.executable, str(SCRIPT), *COMMON, "--root", str(tiny_root), "--epochs", "1000",
           "--log-every", "1", "--output-dir", str(out),
           "--log-samples", str(out / "before.jsonl")]  # fmt: skip
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env() | {"PYTHONUNBUFFERED": "1"},  # see "step 2" when it happens
        cwd=REPO,
    )
    killer = threading.Timer(TIMEOUT_S, proc.kill)  # never hang on a stuck child
    killer.start()
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("step 2 |"):
                proc.send_signal(signal.SIGTERM)
        rc = proc.wait()
    finally:
        killer.cancel()
    log = "".join(lines)
    assert rc == 0, log[-4000:]
    summary = json.loads(log.split("[summary] ", 1)[1].splitlines()[0])
    assert summary["stopped_by_signal"] is True
    stopped_at = summary["final_step"]
    assert 2 <= stopped_at < 20  # soon after the signal (--epochs 1000 would run for ages)
    assert (out / "checkpoints" / "latest").read_text() == f"step-{stopped_at:09d}"
    before = read_log(out / "before.jsonl")
    assert len(before) == stopped_at
    # The stream position saved at the signal is that of the last logged step: the same code
    # path as --max-steps, whose continuation the other tests check sample by sample.
    assert before[-1]["step"] == stopped_at


@pytest.mark.timeout(4 * TIMEOUT_S)
def test_resume_at_epoch_boundaries(tiny_root: Path, tmp_path: Path) -> None:
    """Data only (--dummy), 2 workers. Run 1 ends with its epoch; run 2 resumes into epoch 1
    and stops (--max-steps) exactly on that epoch's last batch; run 3 resumes into epoch 2.
    Each resumed run must stream one whole new epoch: no epoch skipped, none replayed."""
    out = tmp_path / "run"
    args = ["--dummy", "--root", str(tiny_root), "--batch-size", "32", "--num-workers", "2",
            "--log-every", "0", "--output-dir", str(out)]  # fmt: skip
    # Batches per epoch: the workers' shares change with the epoch's episode order.
    plan_of = StreamingLeRobotDataset(str(tiny_root), seed=0)  # the script's seed and shuffle

    def batches(epoch: int) -> int:
        shares = [plan_of.plan(worker=w, num_workers=2, epoch=epoch).num_samples for w in (0, 1)]
        return sum(math.ceil(n / 32) for n in shares)

    run_example([*args, "--epochs", "1", "--log-samples", str(out / "e0.jsonl")])
    run_example([*args, "--epochs", "3", "--max-steps", str(batches(0) + batches(1)), "--resume",
                 "--log-samples", str(out / "e1.jsonl")])  # fmt: skip
    run_example([*args, "--epochs", "3", "--resume", "--log-samples", str(out / "e2.jsonl")])
    total = int(json.loads((tiny_root / "meta" / "info.json").read_text())["total_frames"])
    epochs = [read_log(out / f"e{k}.jsonl") for k in range(3)]
    for number, records in enumerate(epochs):
        assert {r["epoch"] for r in records} == {number}
        assert len(records) == batches(number)
        indices = [i for r in records for i in r["index"]]
        assert sorted(indices) == list(range(total)), f"epoch {number} is not one whole epoch"
    assert epochs[2][0]["step"] == batches(0) + batches(1) + 1
    orders = [[i for r in records for i in r["index"]] for records in epochs]
    assert orders[0] != orders[1] != orders[2]  # a new order per epoch, not a replay


def run_chain(out: Path, base: list[str], runs: list[tuple[list[str], str | None]]) -> list[int]:
    """Run each step resuming the previous one's checkpoint; every index read, in order."""
    indices: list[int] = []
    for k, (extra, how) in enumerate(runs):
        part = out / f"part{k}.jsonl"
        log = run_example([*base, *extra, "--output-dir", str(out), "--log-samples", str(part)])
        if how is not None:
            assert f"epoch 0 ({how}" in log, log[-3000:]
        records = read_log(part)
        assert records and {r["epoch"] for r in records} == {0}
        check_frames(records)
        indices += [i for r in records for i in r["index"]]
    return indices


@pytest.mark.slow  # ~35 s of CPU: six runs of the script
@pytest.mark.timeout(6 * TIMEOUT_S)
def test_resume_with_other_layouts_and_loaders(tiny_root: Path, tmp_path: Path) -> None:
    """Data only (--dummy); one epoch in several runs, each resuming the previous checkpoint.
    Chain 1: StatefulDataLoader with 2 workers -> 0 workers (elastic, merged states) -> a plain
    DataLoader with 0 workers (exact). Chain 2: a plain DataLoader with 2 workers, stopped and
    resumed (exact, rebuilt from the batches consumed). Each chain must read every frame of the
    epoch exactly once."""
    total = int(json.loads((tiny_root / "meta" / "info.json").read_text())["total_frames"])
    base = ["--dummy", "--root", str(tiny_root), "--batch-size", "8", "--log-every", "0",
            "--epochs", "1", "--resume"]  # fmt: skip
    chains = {
        "elastic": [
            (["--num-workers", "2", "--max-steps", "3"], None),
            (["--num-workers", "0", "--max-steps", "6"], "elastic, from world_size=1"),
            (["--num-workers", "0", "--plain-loader"], "exact"),
        ],
        "plain": [
            (["--num-workers", "2", "--plain-loader", "--max-steps", "4"], None),
            (["--num-workers", "2", "--plain-loader"], "exact"),
        ],
    }  # fmt: skip
    for name, runs in chains.items():
        indices = run_chain(tmp_path / name, base, runs)
        assert len(indices) == len(set(indices)), f"{name}: a sample was read twice"
        assert sorted(indices) == list(range(total)), f"{name}: samples were lost"
    # A plain DataLoader with workers cannot take part in an elastic resume: refused, clearly.
    mid_epoch = tmp_path / "plain" / "checkpoints" / "step-000000004"
    args = [*base[:-1], "--num-workers", "0", "--output-dir", str(tmp_path / "x")]
    log = run_example([*args, "--resume", str(mid_epoch)], check=False)
    assert "[rc=0]" not in log and "needs stream states on both sides" in log, log[-3000:]


def _load_script():  # noqa: ANN202 - a module object
    spec = importlib.util.spec_from_file_location("train_streaming_multinode", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["train_streaming_robocasa.yaml", "train_streaming_tiny_cpu.yaml"])
def test_shipped_configs_parse(name: str) -> None:
    """The example configs stay valid: both sections load, overrides and --root win."""
    script = _load_script()
    config = str(REPO / "configs" / name)
    args, overrides = script.parse_args(
        ["--config", config, "--root", "/data/ds", "--dataset.streaming_buffer_size=77"]
    )
    cfg, needs_synthetic = script.dataset_config(args, overrides, world_size=2)
    assert cfg.root == "/data/ds" and not needs_synthetic
    assert cfg.streaming_buffer_size == 77
    assert cfg.even_ranks is True  # several processes: always on
    train = yaml.safe_load(Path(config).read_text())["train"]
    for key, value in train.items():
        assert getattr(args, key) == value, key


def test_even_ranks_off_with_several_processes_is_refused() -> None:
    script = _load_script()
    args, overrides = script.parse_args(["--root", "/data/ds", "--dataset.even_ranks=false"])
    assert script.dataset_config(args, overrides, world_size=1)[0].even_ranks is False
    with pytest.raises(SystemExit, match="DDP would hang"):
        script.dataset_config(args, overrides, world_size=2)
