"""The synthetic generator writes a valid multi-file v3.0 dataset whose every frame is findable."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from torchcodec.decoders import VideoDecoder

from framestream.testing import action_ids, decode_frame_id, decode_frame_ids, state_ids
from framestream.testing.synth import camera_key, generate_synthetic_dataset, task_string

FPS = 30
HEIGHT, WIDTH = 64, 96
CAMERAS = [camera_key(0), camera_key(1)]
# Tiny limits: data and each camera roll over, at different episodes (checked below). AV1
# segments are about twice the size of H.264 ones at this resolution, hence their larger limit.
CONFIGS = {
    "h264": dict(codec="h264", workers=1, chunks_size=3, gop=2, video_files_size_in_mb=0.015),
    "av1": dict(codec="av1", workers=2, chunks_size=1000, gop=3, video_files_size_in_mb=0.03),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def dataset(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic_dataset(
        tmp_path_factory.mktemp(request.param) / "ds",
        num_episodes=6,
        min_length=20,
        max_length=40,
        num_cameras=2,
        height=HEIGHT,
        width=WIDTH,
        fps=FPS,
        data_files_size_in_mb=0.007,
        seed=0,
        **CONFIGS[request.param],
    )


def _info(root: Path) -> dict[str, Any]:
    return json.loads((root / "meta" / "info.json").read_text())


def _episodes(root: Path) -> dict[str, list[Any]]:
    return pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pydict()


def _boundaries(file_ids: list[tuple[int, int]]) -> set[int]:
    """Episodes that start a new file."""
    return {e for e in range(1, len(file_ids)) if file_ids[e] != file_ids[e - 1]}


def _file_ids(episodes: dict[str, list[Any]], prefix: str) -> list[tuple[int, int]]:
    return list(
        zip(episodes[f"{prefix}/chunk_index"], episodes[f"{prefix}/file_index"], strict=True)
    )


def test_info_json(dataset: Path) -> None:
    info = _info(dataset)
    episodes = _episodes(dataset)
    assert info["codebase_version"] == "v3.0"
    assert info["robot_type"] == "framestream_synthetic"
    assert info["fps"] == FPS
    assert info["total_episodes"] == 6
    assert info["total_frames"] == sum(episodes["length"])
    assert info["total_tasks"] == 3
    assert info["splits"] == {"train": "0:6"}
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert (
        info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    )
    features = info["features"]
    assert features["observation.state"] == {
        "dtype": "float32",
        "shape": [6],
        "names": ["episode_index", "frame_index", "index", "sin_3", "sin_4", "sin_5"],
    }
    assert features["action"]["dtype"] == "float32" and features["action"]["shape"] == [6]
    assert features["timestamp"] == {"dtype": "float32", "shape": [1], "names": None}
    for name in ("frame_index", "episode_index", "index", "task_index"):
        assert features[name] == {"dtype": "int64", "shape": [1], "names": None}
    codec = "h264" if "h264" in str(dataset) else "av1"
    for key in CAMERAS:
        assert features[key]["dtype"] == "video"
        assert features[key]["shape"] == [HEIGHT, WIDTH, 3]
        assert features[key]["names"] == ["height", "width", "channels"]
        assert features[key]["info"] == {
            "video.height": HEIGHT,
            "video.width": WIDTH,
            "video.codec": codec,
            "video.pix_fmt": "yuv420p",
            "video.is_depth_map": False,
            "video.fps": FPS,
            "video.channels": 3,
            "has_audio": False,
        }


def test_tasks_parquet_like_lerobot(dataset: Path) -> None:
    table = pq.read_table(dataset / "meta" / "tasks.parquet")
    assert table.schema.field("task_index").type == pa.int64()
    assert table.column("task_index").to_pylist() == [0, 1, 2]
    assert table.column("__index_level_0__").to_pylist() == [task_string(t) for t in range(3)]
    pandas_meta = json.loads(table.schema.metadata[b"pandas"])
    assert pandas_meta["index_columns"] == ["__index_level_0__"]


def test_episode_index(dataset: Path) -> None:
    episodes = _episodes(dataset)
    n = 6
    lengths = episodes["length"]
    assert episodes["episode_index"] == list(range(n))
    assert all(20 <= length <= 40 for length in lengths)
    assert len(set(lengths)) > 1
    assert episodes["tasks"] == [[task_string(e % 3)] for e in range(n)]
    assert episodes["dataset_from_index"][0] == 0
    for e in range(n):
        assert episodes["dataset_to_index"][e] - episodes["dataset_from_index"][e] == lengths[e]
        if e:
            assert episodes["dataset_from_index"][e] == episodes["dataset_to_index"][e - 1]
    schema = pq.read_schema(dataset / "meta/episodes/chunk-000/file-000.parquet")
    for key in CAMERAS:
        assert schema.field(f"videos/{key}/from_timestamp").type == pa.float64()
        assert schema.field(f"videos/{key}/chunk_index").type == pa.int64()
        assert f"stats/{key}/mean" in schema.names
    for name in ("stats/observation.state/mean", "stats/index/min", "stats/action/count"):
        assert name in schema.names
    assert episodes["meta/episodes/chunk_index"] == [0] * n
    assert episodes["meta/episodes/file_index"] == [0] * n

    boundaries = {"data": _boundaries(_file_ids(episodes, "data"))}
    for key in CAMERAS:
        ids = _file_ids(episodes, f"videos/{key}")
        boundaries[key] = _boundaries(ids)
        start, stop = (
            episodes[f"videos/{key}/from_timestamp"],
            episodes[f"videos/{key}/to_timestamp"],
        )
        for e in range(n):
            assert stop[e] - start[e] == pytest.approx(lengths[e] / FPS, abs=1e-9)
            if e in boundaries[key] or e == 0:
                assert start[e] == 0.0
            else:
                assert start[e] == pytest.approx(stop[e - 1], abs=1e-9)
        # File indices advance one at a time, filling chunks of chunks_size files.
        chunks_size = _info(dataset)["chunks_size"]
        flat = [chunk * chunks_size + file for chunk, file in ids]
        assert flat[0] == 0 and all(
            b - a in (0, 1) for a, b in zip(flat[:-1], flat[1:], strict=True)
        )
        for chunk, file in ids:
            path = dataset / f"videos/{key}/chunk-{chunk:03d}/file-{file:03d}.mp4"
            assert path.is_file()
    # The layout that breaks loaders: every stream rolls over, each at its own episodes.
    assert all(boundaries.values()), boundaries
    assert boundaries[CAMERAS[0]] != boundaries[CAMERAS[1]]
    assert boundaries["data"] not in (boundaries[CAMERAS[0]], boundaries[CAMERAS[1]])


def test_data_files_one_row_group_per_episode(dataset: Path) -> None:
    episodes = _episodes(dataset)
    seen = []
    for chunk, file in sorted(set(_file_ids(episodes, "data"))):
        parquet = pq.ParquetFile(dataset / f"data/chunk-{chunk:03d}/file-{file:03d}.parquet")
        schema = parquet.schema_arrow
        assert schema.field("observation.state").type == pa.list_(
            pa.field("element", pa.float32()), 6
        )
        assert schema.field("timestamp").type == pa.float32()
        for name in ("frame_index", "episode_index", "index", "task_index"):
            assert schema.field(name).type == pa.int64()
        assert b"huggingface" in schema.metadata
        for group in range(parquet.num_row_groups):
            rows = parquet.read_row_group(group).to_pydict()
            episode = rows["episode_index"][0]
            seen.append(episode)
            assert set(rows["episode_index"]) == {episode}
            assert (
                episodes["data/chunk_index"][episode],
                episodes["data/file_index"][episode],
            ) == (
                chunk,
                file,
            )
            length = episodes["length"][episode]
            start = episodes["dataset_from_index"][episode]
            assert rows["frame_index"] == list(range(length))
            assert rows["index"] == list(range(start, start + length))
            assert rows["task_index"] == [episode % 3] * length
            np.testing.assert_array_equal(
                np.array(rows["timestamp"], dtype=np.float32),
                (np.arange(length) / FPS).astype(np.float32),
            )
            for f in (0, length - 1):
                ids = (episode, f, start + f)
                assert state_ids(rows["observation.state"][f]) == ids
                assert action_ids(rows["action"][f]) == ids
    assert seen == list(range(6))


def test_every_frame_of_every_camera_decodes_to_its_identity(dataset: Path) -> None:
    episodes = _episodes(dataset)
    for camera, key in enumerate(CAMERAS):
        by_file: dict[tuple[int, int], list[int]] = {}
        for e, ids in enumerate(_file_ids(episodes, f"videos/{key}")):
            by_file.setdefault(ids, []).append(e)
        for (chunk, file), members in by_file.items():
            path = dataset / f"videos/{key}/chunk-{chunk:03d}/file-{file:03d}.mp4"
            decoder = VideoDecoder(str(path))
            expected, seconds, indices = [], [], []
            for e in members:
                start = episodes[f"videos/{key}/from_timestamp"][e]
                for f in range(episodes["length"][e]):
                    expected.append((e, f, camera))
                    seconds.append(start + f / FPS)
                    indices.append(round(start * FPS) + f)
            assert decoder.metadata.num_frames == len(seconds)
            # from_timestamp + f / fps can land one ulp *before* the frame's pts, and "played
            # at" then means the previous frame: nudge the query, compare with the exact time.
            batch = decoder.get_frames_played_at(seconds=[t + 1e-6 for t in seconds])
            assert batch.data.shape == (len(seconds), 3, HEIGHT, WIDTH)
            np.testing.assert_allclose(batch.pts_seconds.numpy(), seconds, rtol=0, atol=1e-4)
            assert decode_frame_ids(batch.data) == expected
            by_index = decoder.get_frames_at(indices=indices)
            np.testing.assert_allclose(by_index.pts_seconds.numpy(), seconds, rtol=0, atol=1e-4)
            assert decode_frame_ids(by_index.data) == expected


def test_videos_have_no_reordering_and_the_requested_gop(dataset: Path) -> None:
    gop = 2 if "h264" in str(dataset) else 3
    for path in sorted(dataset.glob("videos/*/*/*.mp4")):
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            packets = [p for p in container.demux(stream) if p.size]
        ticks = int(1 / (FPS * stream.time_base))
        assert [p.pts for p in packets] == [k * ticks for k in range(len(packets))]
        assert [p.dts for p in packets] == [p.pts for p in packets]
        keys = [k for k, p in enumerate(packets) if p.is_keyframe]
        assert keys and all(b - a <= gop for a, b in zip(keys[:-1], keys[1:], strict=True))


def test_stats_json(dataset: Path) -> None:
    stats = json.loads((dataset / "meta" / "stats.json").read_text())
    total = _info(dataset)["total_frames"]
    assert stats["index"]["min"] == [0] and stats["index"]["max"] == [total - 1]
    assert stats["index"]["count"] == [total]
    assert stats["observation.state"]["max"][0] == 5.0
    assert len(stats["action"]["mean"]) == 6
    for key in CAMERAS:
        assert set(stats[key]) >= {"min", "max", "mean", "std", "count"}
        assert np.array(stats[key]["mean"]).shape == (3, 1, 1)
        assert 0.0 <= np.min(stats[key]["min"]) <= np.max(stats[key]["max"]) <= 1.0


def test_seed_determines_lengths_and_no_camera_dataset(tmp_path: Path) -> None:
    kwargs = dict(num_episodes=5, min_length=3, max_length=50, num_cameras=0, workers=1)
    a = generate_synthetic_dataset(tmp_path / "a", seed=7, **kwargs)
    b = generate_synthetic_dataset(tmp_path / "b", seed=7, **kwargs)
    c = generate_synthetic_dataset(tmp_path / "c", seed=8, **kwargs)
    assert _episodes(a)["length"] == _episodes(b)["length"] != _episodes(c)["length"]
    assert _info(a)["video_path"] is None
    assert not (a / "videos").exists()
    assert [p.name for p in a.iterdir()] and not list(tmp_path.glob(".*synth*"))


def test_overwrite_rules(tmp_path: Path) -> None:
    kwargs = dict(num_episodes=1, min_length=2, max_length=2, num_cameras=1, workers=1)
    root = generate_synthetic_dataset(tmp_path / "ds", codec="h264", **kwargs)
    with pytest.raises(FileExistsError):
        generate_synthetic_dataset(root, **kwargs)
    generate_synthetic_dataset(root, overwrite=True, codec="h264", **kwargs)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("do not delete")
    with pytest.raises(FileExistsError, match="does not look like a dataset"):
        generate_synthetic_dataset(precious, overwrite=True, **kwargs)
    assert (precious / "thesis.tex").exists()


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(height=40, width=96),
        dict(height=64, width=72),
        dict(height=65, width=96),
        dict(state_dim=2),
        dict(min_length=10, max_length=5),
        dict(codec="vp9"),
        dict(num_cameras=17),
        dict(video_files_size_in_mb=0),
    ],
)
def test_invalid_options_raise_before_writing(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        generate_synthetic_dataset(tmp_path / "ds", num_episodes=1, **kwargs)
    assert not list(tmp_path.iterdir())


def test_decoded_frame_matches_encoder_input(dataset: Path) -> None:
    """Beyond the code: the texture survives too, so a camera swap would show in pixels."""
    from framestream.testing import encode_frame

    decoder = VideoDecoder(str(dataset / f"videos/{CAMERAS[1]}/chunk-000/file-000.mp4"))
    frame = decoder.get_frames_played_at(seconds=[3 / FPS]).data[0].permute(1, 2, 0).numpy()
    assert decode_frame_id(frame) == (0, 3, 1)
    error = np.abs(frame.astype(int) - encode_frame(0, 3, 1, HEIGHT, WIDTH).astype(int))
    other = np.abs(frame.astype(int) - encode_frame(0, 3, 0, HEIGHT, WIDTH).astype(int))
    assert error.mean() < 12 < other.mean()


def test_assign_files_rolls_over_and_fills_chunks() -> None:
    from framestream.testing.synth import _assign_files

    # An item larger than the limit still gets a file of its own; chunks hold 2 files.
    placement = _assign_files([4, 4, 3, 9, 1, 1, 1], limit=8, chunks_size=2)
    assert placement == [(0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0), (1, 1, 0), (1, 1, 1),
                         (1, 1, 2)]  # fmt: skip


def test_cli_writes_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from framestream.cli.synth import add_synth_parser, run_synth

    parser = argparse.ArgumentParser(prog="framestream")
    add_synth_parser(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "cli-ds"
    args = parser.parse_args(
        ["synth", str(out), "--episodes", "3", "--min-length", "5", "--max-length", "9",
         "--cameras", "1", "--height", "64", "--width", "96", "--codec", "h264",
         "--video-file-mb", "0.01", "--workers", "1"]
    )  # fmt: skip
    assert args.func is run_synth
    assert run_synth(args) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "3 episodes" in printed
    assert "observation.images.cam0:" in printed
    assert _info(out)["features"][camera_key(0)]["info"]["video.codec"] == "h264"
