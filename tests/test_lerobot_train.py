"""``python -m framestream.lerobot``: LeRobot 0.6.1's own lerobot-train on framestream's datasets.

One training step of a small ACT policy on CPU (no pretrained weights: no network), map-style
and streaming, on a multi-file dataset written by LeRobot's writer (LeRobot's own streaming
class crashes on it). The wrapper writes a marker line for each dataset it builds, which
proves framestream's classes were the ones lerobot-train used. Skips when LeRobot is absent.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from lerobot_helpers import REPO, lerobot_env, lerobot_fixture, require_lerobot

ACT = [
    "--policy.type=act",
    "--policy.device=cpu",
    "--policy.push_to_hub=false",
    "--policy.pretrained_backbone_weights=null",
    "--policy.chunk_size=10",
    "--policy.n_action_steps=10",
    "--policy.dim_model=64",
    "--policy.dim_feedforward=128",
    "--policy.n_encoder_layers=1",
    "--policy.n_vae_encoder_layers=1",
    "--steps=1",
    "--batch_size=4",
    "--log_freq=1",
    "--save_checkpoint=false",
    "--wandb.enable=false",
    "--num_workers=0",
]


@pytest.mark.parametrize("streaming", [False, True], ids=["map", "streaming"])
def test_lerobot_train_runs_on_framestream(streaming, tmp_path):
    py = require_lerobot()
    root = lerobot_fixture("train")
    marker = tmp_path / "marker.jsonl"
    env = lerobot_env() | {"PYTHONPATH": str(REPO), "FRAMESTREAM_LEROBOT_MARKER": str(marker)}
    proc = subprocess.run(
        [
            str(py), "-m", "framestream.lerobot",
            "--dataset.repo_id=local/fixture", f"--dataset.root={root}",
            f"--dataset.streaming={'true' if streaming else 'false'}",
            *ACT, f"--output_dir={tmp_path / 'out'}",
        ],
        env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "End of training" in log and "step:1" in log, log[-4000:]
    records = [json.loads(line) for line in marker.read_text().splitlines()]
    want = "StreamingLeRobotDataset" if streaming else "MapDataset"
    assert [r["framestream"] for r in records] == [want], records
    assert records[0]["root"] == str(root)
    assert f"-> framestream.{want}" in log


def test_missing_lerobot_is_a_clear_error(tmp_path):
    """In an environment without LeRobot, the wrapper says what is missing."""
    import sys

    code = (
        "import sys; sys.modules['lerobot'] = None\n"
        "import framestream.lerobot as fl\n"
        "try:\n    fl.install()\nexcept ImportError as e:\n    print('ERR', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert "ERR" in out.stdout and "LeRobot is not" in out.stdout, out.stdout + out.stderr
