"""The synthetic dataset commands fall back on when no dataset is given: generated once, cached.

Generation writes into a temporary folder and renames it into place, so an interrupted run
or two processes starting at once never leave a half-written dataset behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from framestream.io.cache import cache_dir

BENCHMARK_DATASET: dict[str, Any] = {
    "num_episodes": 40,
    "num_cameras": 2,
    "height": 240,
    "width": 320,
    "fps": 30,
    "codec": "av1",
    "gop": 2,
    "seed": 0,
}

# A quick dataset (~3 s to make): 6 episodes of 20-40 frames, 2 cameras at 64x96, H.264, with
# several data and video files per camera. The training example's --tiny and the tests use it.
TINY_DATASET: dict[str, Any] = {
    "num_episodes": 6,
    "min_length": 20,
    "max_length": 40,
    "num_cameras": 2,
    "height": 64,
    "width": 96,
    "fps": 30,
    "codec": "h264",
    "gop": 2,
    "data_files_size_in_mb": 0.002,
    "video_files_size_in_mb": 0.02,
    "seed": 0,
}


def synthetic_dataset(
    params: dict[str, Any] | None = None, *, root: Path | None = None, progress: bool = True
) -> Path:
    """Path of the synthetic dataset with ``params`` (default: the benchmark's), made if absent."""
    from framestream.testing.synth import generate_synthetic_dataset

    params = dict(BENCHMARK_DATASET if params is None else params)
    key = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    target = (root or cache_dir()) / f"synthetic-{key}"
    if (target / "meta" / "info.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".synthetic-", dir=target.parent))
    try:
        generate_synthetic_dataset(tmp / "ds", progress=progress, overwrite=True, **params)
        (tmp / "ds" / "framestream-synthetic.json").write_text(json.dumps(params, indent=2))
        try:
            os.rename(tmp / "ds", target)
        except OSError:
            if not (target / "meta" / "info.json").exists():  # lost a race only if it exists
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
