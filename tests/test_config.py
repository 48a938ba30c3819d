"""DatasetConfig / make_dataset: files, overrides, type conversion, and the dataset it builds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from framestream import DatasetConfig, MapDataset, StreamingLeRobotDataset, make_dataset
from framestream.config import split_overrides
from framestream.testing import decode_frame_id


# ----------------------------------------------------------------------------- files
def test_yaml_file_with_dataset_section(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(
        "train:\n  batch_size: 4\n"
        "dataset:\n"
        "  root: s3://bucket/ds\n"
        "  episodes: [3, 1]\n"
        "  delta_timestamps:\n    action: [0, 0.1, 0.2]\n"
        "  streaming_buffer_size: 250\n"
        "  tolerance_s: 1e-3\n"
        "  storage_options: {anon: true}\n"
    )
    cfg = DatasetConfig.from_file(path)
    assert cfg.root == "s3://bucket/ds"
    assert cfg.episodes == [3, 1]
    assert cfg.delta_timestamps == {"action": [0.0, 0.1, 0.2]}
    assert cfg.streaming_buffer_size == 250
    assert cfg.tolerance_s == pytest.approx(1e-3)  # YAML reads "1e-3" as a string
    assert isinstance(cfg.tolerance_s, float)
    assert cfg.storage_options == {"anon": True}
    assert cfg.streaming is True and cfg.seed == 0  # defaults kept


def test_json_file_round_trip(tmp_path: Path) -> None:
    cfg = DatasetConfig(
        root="/data/x",
        episodes=[0, 2],
        streaming=False,
        return_uint8=True,
        streaming_active_shards=3,
        video_backend="pyav",
    )
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg.to_dict()))
    assert DatasetConfig.from_file(path) == cfg


def test_unknown_key_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("root: /x\nstreaming_bufer_size: 10\n")
    with pytest.raises(ValueError, match="streaming_bufer_size"):
        DatasetConfig.from_file(path)


# ----------------------------------------------------------------------------- overrides
def test_overrides_are_typed() -> None:
    cfg = DatasetConfig(root="/x").with_overrides(
        [
            "--dataset.streaming_buffer_size=64",
            "episodes=[4, 0, 2]",
            "shuffle=false",
            "tolerance_s=2e-4",
            "delta_timestamps={action: [0, 0.5], observation.state: [-0.5, 0]}",
            "video_decoder_cache_size=null",
            "even_ranks=yes",
            "storage_options={endpoint_url: 'http://127.0.0.1:5000'}",
        ]
    )
    assert cfg.streaming_buffer_size == 64
    assert cfg.episodes == [4, 0, 2]
    assert cfg.shuffle is False
    assert cfg.tolerance_s == pytest.approx(2e-4)
    assert cfg.delta_timestamps == {"action": [0.0, 0.5], "observation.state": [-0.5, 0.0]}
    assert cfg.video_decoder_cache_size is None
    assert cfg.even_ranks is True
    assert cfg.storage_options == {"endpoint_url": "http://127.0.0.1:5000"}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("streaming_buffer_size=0", "streaming_buffer_size must be >= 1"),
        ("streaming_buffer_size=ten", "streaming_buffer_size"),
        ("streaming_active_shards=2.5", "streaming_active_shards"),
        ("episodes=3", "episodes"),
        ("shuffle=maybe", "shuffle"),
        ("video_backend=ffmpeg", "video_backend"),
        ("tolerance_s=-1", "tolerance_s"),
        ("on_error=ignore", "on_error"),
        ("streaming_prefetch=-1", "streaming_prefetch"),
        ("revision=main", "revision='main' applies to Hub datasets only"),
        ("nonexistent=1", "unknown DatasetConfig field 'nonexistent'"),
        ("streaming", "not key=value"),
    ],
)
def test_bad_overrides_name_the_field(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DatasetConfig(root="/x").with_overrides([override])


def test_split_overrides_both_forms() -> None:
    rest, overrides = split_overrides(
        ["--max-steps", "5", "--dataset.seed=3", "--dataset.episodes", "[1,2]", "--tiny"]
    )
    assert rest == ["--max-steps", "5", "--tiny"]
    assert overrides == ["seed=3", "episodes=[1,2]"]
    cfg = DatasetConfig(root="/x").with_overrides(overrides)
    assert (cfg.seed, cfg.episodes) == (3, [1, 2])
    with pytest.raises(ValueError, match="needs a value"):
        split_overrides(["--dataset.seed"])


def test_url_from_root_or_repo_id() -> None:
    assert DatasetConfig(root="/data/a").url == "/data/a"
    assert DatasetConfig(repo_id="user/ds").url == "hf://datasets/user/ds"
    assert DatasetConfig(repo_id="user/ds", revision="v3.0").url == "hf://datasets/user/ds@v3.0"
    assert DatasetConfig(root="/a", repo_id="user/ds").url == "/a"  # root wins
    hub_root = DatasetConfig(root="hf://datasets/user/ds", revision="refs/pr/1")
    assert hub_root.url == "hf://datasets/user/ds@refs%2Fpr%2F1"
    with pytest.raises(ValueError, match="root .* or repo_id"):
        _ = DatasetConfig().url


# ----------------------------------------------------------------------------- make_dataset
def test_make_dataset_streaming_uses_the_config(tiny_root: Path) -> None:
    cfg = DatasetConfig(
        root=str(tiny_root),
        episodes=[4, 1],
        streaming_buffer_size=7,
        streaming_active_shards=2,
        video_decoder_cache_size=5,
        seed=11,
        even_ranks=True,
        return_uint8=True,
        streaming_prefetch=0,
        on_error="skip",
        cache_max_bytes=0,
    )
    ds = make_dataset(cfg)
    assert isinstance(ds, StreamingLeRobotDataset)
    assert (ds.buffer_size, ds.active_shards, ds.video_decoder_cache_size) == (7, 2, 5)
    assert (ds.seed, ds.even_ranks, ds.return_uint8) == (11, True, True)
    assert (ds.prefetch, ds.on_error, ds.meta.source.cache_max_bytes) == (0, "skip", 0)
    assert ds.episodes.tolist() == [4, 1]


def test_make_dataset_map_style_matches_streaming(tiny_root: Path) -> None:
    cfg = DatasetConfig(root=str(tiny_root), episodes=[2], return_uint8=True, shuffle=False)
    map_ds = make_dataset(cfg.replace(streaming=False))
    assert isinstance(map_ds, MapDataset)
    stream = list(make_dataset(cfg))
    assert len(map_ds) == len(stream) > 0
    for i in (0, len(stream) - 1):
        assert int(map_ds[i]["index"]) == int(stream[i]["index"])
        assert torch.equal(
            map_ds[i]["observation.images.cam0"], stream[i]["observation.images.cam0"]
        )


@pytest.mark.parametrize("num_workers", [0, 2])
def test_stream_is_whole_epoch_whatever_num_workers(tiny_root: Path, num_workers: int) -> None:
    """The buffer comes from streaming_buffer_size: num_workers=0 still yields every frame."""
    cfg = DatasetConfig(root=str(tiny_root), streaming_buffer_size=16, return_uint8=True)
    ds = make_dataset(cfg)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=num_workers)
    indices: list[int] = []
    for batch in loader:
        indices += batch["index"].tolist()
        # The pixels are the frames the rows say (spot check, one per batch).
        fid = decode_frame_id(batch["observation.images.cam0"][0])
        assert (fid.episode, fid.frame) == (
            int(batch["episode_index"][0]),
            int(batch["frame_index"][0]),
        )
    total = int(ds.meta.total_frames)
    assert sorted(indices) == list(range(total))
    assert indices != sorted(indices)  # shuffled: a non-trivial stream, not an in-order copy
