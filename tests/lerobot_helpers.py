"""Running LeRobot 0.6.1 itself (its own environment, as a subprocess) for parity tests.

The environment is found through ``FRAMESTREAM_LEROBOT_PYTHON`` (set by ``.ci/run``, which
builds it with ``../shared/lerobot-reference/setup.sh``), else ``.lerobot-venv/bin/python`` in
the repository. Tests skip with that reason when neither exists. Fixtures written by LeRobot's
own writer and LeRobot's reference samples are cached (keyed by the scripts' contents) in
``$FRAMESTREAM_LEROBOT_CACHE`` or ``~/.cache/framestream/lerobot-fixtures``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent / "lerobot_fixtures"
WRITE = SCRIPTS / "write_fixture.py"
DUMP = SCRIPTS / "dump_reference.py"


def lerobot_python() -> Path | None:
    env = os.environ.get("FRAMESTREAM_LEROBOT_PYTHON")
    candidates = [Path(env)] if env else []
    candidates.append(REPO / ".lerobot-venv" / "bin" / "python")
    for c in candidates:
        # os.access, not exists(): a LeRobot env built by root is not runnable by other users
        # (its interpreter lives under /root), and exists() raises there.
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def require_lerobot() -> Path:
    py = lerobot_python()
    if py is None:
        pytest.skip(
            "LeRobot 0.6.1 reference environment absent: set FRAMESTREAM_LEROBOT_PYTHON or "
            "build .lerobot-venv with ../shared/lerobot-reference/setup.sh (.ci/run does)"
        )
    return py


def lerobot_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="disabled", PYTHONHASHSEED="0")
    env.pop("PYTHONPATH", None)
    return env


def cache_dir() -> Path:
    base = os.environ.get("FRAMESTREAM_LEROBOT_CACHE") or os.path.expanduser(
        "~/.cache/framestream/lerobot-fixtures"
    )
    return Path(base)


def _digest(*parts: Any) -> str:
    h = hashlib.sha1()
    for p in parts:
        h.update(p.read_bytes() if isinstance(p, Path) else json.dumps(p, sort_keys=True).encode())
    return h.hexdigest()[:16]


def run_lerobot(args: list[str], *, timeout: float = 600) -> subprocess.CompletedProcess:
    py = require_lerobot()
    proc = subprocess.run(
        [str(py), *args], env=lerobot_env(), capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise AssertionError(f"LeRobot command {args} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def lerobot_fixture(kind: str, *, single_file: bool = False) -> Path:
    """A dataset written by LeRobot's own writer (see write_fixture.py), cached."""
    require_lerobot()
    out = cache_dir() / f"{kind}{'-1' if single_file else ''}-{_digest(WRITE)}"
    if not (out / "meta" / "info.json").exists():
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        run_lerobot([str(WRITE), str(tmp), kind, *(["--single-file"] if single_file else [])])
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    return out


def reference(root: Path, *args: str) -> dict[str, Any]:
    """LeRobot's samples for ``root`` (dump_reference.py ARGS), cached by dataset and args."""
    import torch

    require_lerobot()
    files = sorted(p for p in root.rglob("*") if p.is_file())
    key = _digest(
        DUMP,
        [str(p.relative_to(root)) for p in files],
        [p.stat().st_size for p in files],
        list(args),
    )
    out = cache_dir() / "refs" / f"{root.name}-{key}.pt"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        run_lerobot([str(DUMP), str(root), str(tmp), *args])
        os.replace(tmp, out)
    return torch.load(out, weights_only=False)
