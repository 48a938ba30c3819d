"""Shared fixtures: small synthetic datasets (generated once per session) and the real files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

# The mp4 index tests' videos (test_io_mp4*.py, test_io_ranged.py); a module's own fixture of
# the same name wins.
from mp4_helpers import video, videos  # noqa: F401

from framestream.testing.default_data import TINY_DATASET, synthetic_dataset
from framestream.testing.synth import generate_synthetic_dataset


def _raise_open_file_limit() -> None:
    """Tests keep whole epochs of samples alive (``list(loader)``); torch shares every tensor a
    DataLoader worker sends by one file descriptor, held while the tensor lives. A login
    shell's soft limit is often 1024 (the hard one much higher): raise the soft limit to the
    hard one, as one would before such a run, instead of failing with EMFILE."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 16
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


_raise_open_file_limit()

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REAL = SHARED / "fixtures" / "real" / "record-test"

# Sizes chosen so data files and each camera's video files roll over at different episodes.
SMALL = dict(
    num_episodes=6,
    min_length=20,
    max_length=40,
    height=64,
    width=96,
    data_files_size_in_mb=0.007,
    seed=1,
)


@pytest.fixture(scope="session")
def small_root(tmp_path_factory) -> Path:
    """6 episodes, 2 cameras, H.264 GOP 2, several data and video files per camera."""
    return generate_synthetic_dataset(
        tmp_path_factory.mktemp("small") / "ds", codec="h264", video_files_size_in_mb=0.03, **SMALL
    )


@pytest.fixture(scope="session")
def small_av1_root(tmp_path_factory) -> Path:
    """The same layout encoded with AV1 (libsvtav1), as LeRobot's recorder writes."""
    return generate_synthetic_dataset(
        tmp_path_factory.mktemp("small_av1") / "ds",
        codec="av1",
        video_files_size_in_mb=0.025,
        **SMALL,
    )


@pytest.fixture(scope="session")
def ds40_root(tmp_path_factory) -> Path:
    """40 short episodes: enough episodes for shuffle statistics."""
    return generate_synthetic_dataset(
        tmp_path_factory.mktemp("ds40") / "ds",
        num_episodes=40,
        min_length=12,
        max_length=24,
        height=48,
        width=80,
        codec="h264",
        num_cameras=1,
        video_files_size_in_mb=0.05,
        seed=2,
    )


@pytest.fixture(scope="session")
def long_root(tmp_path_factory) -> Path:
    """Episodes longer than 241 frames, for the stage-aware reward model's window."""
    return generate_synthetic_dataset(
        tmp_path_factory.mktemp("long") / "ds",
        num_episodes=3,
        min_length=260,
        max_length=300,
        height=48,
        width=80,
        codec="h264",
        num_cameras=1,
        video_files_size_in_mb=0.2,
        seed=3,
    )


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """The training example's --tiny dataset: 6 episodes, 2 cameras, several files per camera."""
    return synthetic_dataset(TINY_DATASET, root=tmp_path_factory.mktemp("tiny"), progress=False)


@pytest.fixture()
def real_root(tmp_path) -> Path:
    """A private copy of the real third-party dataset (skips when ../shared is absent)."""
    if not REAL.exists():
        pytest.skip(f"real fixtures not found at {REAL} (they live in ../shared beside the clone)")
    dst = tmp_path / "record-test"
    shutil.copytree(REAL, dst)
    for p in dst.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dst


def copy_dataset(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
