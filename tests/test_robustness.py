"""A corpus of broken datasets, each made here from a small synthetic one, and its outcome.

Every break has a documented outcome (docs/robustness.md) under ``on_error="raise"`` (the
error type, and a message naming the file, episode and camera), under ``on_error="skip"``
(exactly the broken episodes' samples are missing, every other sample is present once and is
the right frame, and ``stats()`` counts what was skipped and why), for the map-style reader,
and in ``framestream validate`` (the report names the problem).
"""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from framestream import (
    DatasetFormatError,
    MapDataset,
    StreamingLeRobotDataset,
    TimestampToleranceError,
    VideoDecodeError,
)
from framestream.format.meta import DatasetMeta
from framestream.testing import decode_frame_id, state_ids
from framestream.testing.synth import generate_synthetic_dataset
from framestream.validate.dataset import validate_dataset

# 6 episodes of 14..30 frames, 2 cameras; one data file per episode; camera 0 holds 2
# episodes per video file, camera 1 holds 3 (so the cameras roll over at different episodes).
BASE = dict(
    num_episodes=6,
    min_length=14,
    max_length=30,
    height=48,
    width=80,
    codec="h264",
    data_files_size_in_mb=0.001,
    video_files_size_in_mb=0.012,
    seed=5,
)


@pytest.fixture(scope="module")
def base_root(tmp_path_factory) -> Path:
    return generate_synthetic_dataset(tmp_path_factory.mktemp("robust") / "ds", **BASE)


@pytest.fixture(scope="module")
def base_meta(base_root) -> DatasetMeta:
    meta = DatasetMeta(str(base_root))
    # the layout the breaks below rely on: several files per camera, different boundaries
    assert all(len(set(v.file.tolist())) > 1 for v in meta.episodes.videos.values())
    assert len(set(meta.episodes.data_file.tolist())) == len(meta.episodes)
    return meta


# ----------------------------------------------------------------------------- the breaks
@dataclass
class Outcome:
    """What a break must do; see the table in docs/robustness.md."""

    bad: frozenset[int]  # episodes whose samples on_error="skip" drops (the rest are intact)
    error: type[Exception]  # what on_error="raise" (and MapDataset) raises
    match: list[str]  # substrings of the raise message (file, camera, problem)
    check: str  # the validate check that reports it
    severity: str = "error"
    at_load: bool = False  # the dataset is refused when constructed, under both policies
    partial: bool = False  # samples before the damage are delivered (and correct)
    bad_frame: tuple[int, int] | None = None  # (episode, frame) MapDataset fails on
    reason: str = "skipped_data_errors"  # the stats() counter of the cause
    episode_in_message: int | None = None  # the episode named when iterating in order
    names_frame: bool = True  # False: an episode-level error (its rows cannot be read)
    notes: dict = field(default_factory=dict)


def _remux(src: Path, dst: Path, keep: Callable[[int, av.Packet], bool], **options: str) -> None:
    """Copy ``src``'s packets into ``dst`` without re-encoding, keeping those ``keep`` accepts."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", format="mp4", options=options) as out:
        stream = inp.streams.video[0]
        ostream = out.add_stream_from_template(stream)
        packets = (p for p in inp.demux(stream) if p.size)
        for i, packet in enumerate(packets):
            if keep(i, packet):
                packet.stream = ostream
                out.mux(packet)


def _file_frame(meta: DatasetMeta, key: str, episode: int) -> int:
    """Index, in its camera's file, of ``episode``'s first frame."""
    return round(meta.video_from_timestamp(episode, key) * meta.fps)


def _episodes_in(meta: DatasetMeta, key: str, rel: str) -> list[int]:
    return [int(e) for e in meta.episodes.episode_index if meta.video_file(int(e), key) == rel]


def _write_episodes_column(root: Path, name: str, episode: int, value: float) -> None:
    path = next((root / "meta" / "episodes").rglob("*.parquet"))
    table = pq.read_table(path)
    values = table.column(name).to_numpy().copy()
    rows = table.column("episode_index").to_numpy() == episode
    values[rows] = value
    i = table.column_names.index(name)
    pq.write_table(table.set_column(i, table.field(i), pa.array(values)), path)


def _episode_level(episode: int, match: list[str], check: str) -> Outcome:
    """A data error that fails the whole episode from its first frame, naming no frame."""
    return Outcome(
        frozenset({episode}),
        DatasetFormatError,
        match,
        check,
        bad_frame=(episode, 0),
        episode_in_message=episode,
        names_frame=False,
    )


def truncated_mp4(root: Path, meta: DatasetMeta) -> Outcome:
    """A video cut to 60% of its bytes: its index (moov, written last) is gone."""
    key = meta.video_keys[0]
    rel = meta.video_file(2, key)
    path = root / rel
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * 0.6)])
    bad = _episodes_in(meta, key, rel)
    return Outcome(
        frozenset(bad),
        VideoDecodeError,
        [rel, repr(key), "cannot open video"],
        "video_file",
        reason="skipped_video_errors",
        bad_frame=(bad[0], 0),
        episode_in_message=min(bad),
    )


def truncated_mp4_tail(root: Path, meta: DatasetMeta) -> Outcome:
    """A faststart video (index first) cut mid-way through its last episode: a partial upload."""
    key = meta.video_keys[1]
    rel = meta.video_file(2, key)
    last = max(_episodes_in(meta, key, rel))
    path, tmp = root / rel, root / "tmp.mp4"
    shutil.move(path, tmp)
    _remux(tmp, path, lambda i, p: True, movflags="faststart")
    tmp.unlink()
    length = int(meta.episodes.length[meta.episodes.row(last)])
    cut = _file_frame(meta, key, last) + length // 2
    with av.open(str(path)) as c:
        pos = [p.pos for p in c.demux(c.streams.video[0]) if p.size][cut]
    path.write_bytes(path.read_bytes()[:pos])
    return Outcome(
        frozenset({last}),
        VideoDecodeError,
        [rel, repr(key)],
        "video_frames",
        partial=True,
        reason="skipped_video_errors",
        bad_frame=(last, length - 1),
        episode_in_message=last,
    )


def missing_frames(root: Path, meta: DatasetMeta) -> Outcome:
    """Two packets (a whole GOP) dropped in the middle of an episode: the video skips a beat."""
    key, episode = meta.video_keys[0], 1
    rel = meta.video_file(episode, key)
    start = _file_frame(meta, key, episode)
    length = int(meta.episodes.length[meta.episodes.row(episode)])
    path, tmp = root / rel, root / "tmp.mp4"
    shutil.move(path, tmp)
    with av.open(str(tmp)) as c:
        key_frames = [p.is_keyframe for p in c.demux(c.streams.video[0]) if p.size]
    # the first GOP starting in the episode's second half, up to the next key frame
    first = next(i for i in range(start + length // 2, start + length) if key_frames[i])
    stop = next(i for i in range(first + 1, len(key_frames)) if key_frames[i])
    dropped = list(range(first, stop))
    _remux(tmp, path, lambda i, p: i not in dropped)
    tmp.unlink()
    assert 0 < len(dropped) and stop < start + length
    return Outcome(
        frozenset({episode}),
        TimestampToleranceError,
        [rel, repr(key), "tolerance_s"],
        "video_frames",
        partial=True,
        reason="skipped_timestamp_errors",
        bad_frame=(episode, dropped[0] - start),
        episode_in_message=episode,
    )


def wrong_from_timestamp(root: Path, meta: DatasetMeta) -> Outcome:
    """from_timestamp moved 3 frames late: every frame would still decode, 3 frames off."""
    key, episode = meta.video_keys[1], 4
    row = meta.episodes.row(episode)
    late = float(meta.episodes.videos[key].from_ts[row]) + 3 / meta.fps
    _write_episodes_column(root, f"videos/{key}/from_timestamp", episode, late)
    return Outcome(
        frozenset({episode}),
        DatasetFormatError,
        ["from_timestamp", repr(key)],
        "video_range",
        bad_frame=(episode, 0),
        episode_in_message=episode,
    )


def wrong_totals(root: Path, meta: DatasetMeta) -> Outcome:
    """info.json claims 5 more frames than the episodes hold."""
    path = root / "meta" / "info.json"
    info = json.loads(path.read_text())
    info["total_frames"] += 5
    path.write_text(json.dumps(info, indent=4))
    return Outcome(
        frozenset(), DatasetFormatError, ["info.json", "total_frames"], "totals", at_load=True
    )


def missing_data_file(root: Path, meta: DatasetMeta) -> Outcome:
    episode = 5
    rel = meta.data_file(episode)
    (root / rel).unlink()
    return _episode_level(episode, [rel, "not found"], "missing_file")


def truncated_parquet(root: Path, meta: DatasetMeta) -> Outcome:
    """A data file cut in half: its footer (the row-group index) is gone."""
    episode = 3
    rel = meta.data_file(episode)
    path = root / rel
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return _episode_level(episode, [rel, "parquet"], "data")


def corrupt_row_group(root: Path, meta: DatasetMeta) -> Outcome:
    """A data file whose footer is intact but one column's page header is zeroed."""
    episode = 2
    rel = meta.data_file(episode)
    path = root / rel
    md = pq.ParquetFile(path).metadata
    names = [md.schema.column(i).path for i in range(md.num_columns)]
    col = md.row_group(0).column(names.index("observation.state.list.element"))
    raw = bytearray(path.read_bytes())
    raw[col.data_page_offset : col.data_page_offset + 32] = bytes(32)
    path.write_bytes(bytes(raw))
    return _episode_level(episode, [rel, "cannot read rows"], "data")


def codec_mismatch(root: Path, meta: DatasetMeta) -> Outcome:
    """H.264 videos that info.json declares as AV1: they decode; only validate warns."""
    path = root / "meta" / "info.json"
    info = json.loads(path.read_text())
    for key in meta.video_keys:
        info["features"][key]["info"]["video.codec"] = "av1"
    path.write_text(json.dumps(info, indent=4))
    return Outcome(frozenset(), Exception, [], "codec", severity="warning")


def non_utf8_task(root: Path, meta: DatasetMeta) -> Outcome:
    """tasks.parquet with raw bytes as task strings, one of them not UTF-8."""
    texts = [meta.tasks[t].encode() for t in sorted(meta.tasks)]
    texts[1] = b"Push the \xff\xfe block"
    table = pa.table(
        {
            "task_index": pa.array(sorted(meta.tasks), pa.int64()),
            "task": pa.array(texts, pa.binary()),
        }
    )
    pq.write_table(table, root / "meta" / "tasks.parquet")
    bad = [int(e) for e in meta.episodes.episode_index if int(e) % 3 == 1]  # task = e % 3
    return Outcome(
        frozenset(bad),
        DatasetFormatError,
        ["tasks.parquet", "task_index 1", "UTF-8"],
        "task",
        bad_frame=(bad[0], 0),
        episode_in_message=min(bad),
    )


def nan_state(root: Path, meta: DatasetMeta) -> Outcome:
    """observation.state is NaN at one frame of one episode."""
    episode, frame = 0, 5
    rel = meta.data_file(episode)
    table = pq.read_table(root / rel)
    i = table.column_names.index("observation.state")
    col = table.column(i).combine_chunks()
    values = col.flatten().to_numpy().reshape(len(col), -1).copy()
    hit = (table.column("episode_index").to_numpy() == episode) & (
        table.column("frame_index").to_numpy() == frame
    )
    values[hit, 1] = np.nan
    arr = pa.FixedSizeListArray.from_arrays(pa.array(values.ravel(), pa.float32()), values.shape[1])
    pq.write_table(table.set_column(i, table.field(i), arr), root / rel)
    return _episode_level(episode, [rel, "observation.state", "NaN"], "nan")


# ------------------------------------------------- issue 18: timestamps, dtypes, shapes, index
def _rewrite_data_column(
    root: Path, meta: DatasetMeta, episode: int, name: str, make: Callable[[pa.Table], pa.Array]
) -> str:
    """Replace column ``name`` of ``episode``'s data file (one episode per file) by ``make``'s."""
    rel = meta.data_file(episode)
    table = pq.read_table(root / rel)
    assert set(table.column("episode_index").to_pylist()) == {episode}
    i = table.column_names.index(name)
    arr = make(table)
    pq.write_table(table.set_column(i, pa.field(name, arr.type), arr), root / rel)
    return rel


def _frames_of(table: pa.Table) -> np.ndarray:
    return table.column("frame_index").to_numpy()


def timestamp_int64(root: Path, meta: DatasetMeta) -> Outcome:
    """``timestamp`` stored as int64 (seconds truncated): every frame would show its second's
    first frame."""
    episode = 1
    rel = _rewrite_data_column(
        root,
        meta,
        episode,
        "timestamp",
        lambda t: pa.array((_frames_of(t) // meta.fps).astype(np.int64), pa.int64()),
    )
    return _episode_level(episode, [rel, "'timestamp'", "float32", "int64"], "dtype")


def timestamp_shifted(root: Path, meta: DatasetMeta) -> Outcome:
    """``timestamp`` one frame late: every sample would get the next frame, the episode's last
    one the next episode's first frame."""
    episode = 2
    rel = _rewrite_data_column(
        root,
        meta,
        episode,
        "timestamp",
        lambda t: pa.array((_frames_of(t) + 1) / meta.fps, pa.float32()),
    )
    return _episode_level(episode, [rel, "timestamp of frame 0", "tolerance_s"], "data")


def timestamp_nan(root: Path, meta: DatasetMeta) -> Outcome:
    """A NaN ``timestamp`` at frame 3."""
    episode = 4
    ts = lambda t: pa.array(  # noqa: E731
        np.where(_frames_of(t) == 3, np.nan, _frames_of(t) / meta.fps), pa.float32()
    )
    rel = _rewrite_data_column(root, meta, episode, "timestamp", ts)
    return _episode_level(episode, [rel, "timestamp", "NaN"], "nan")


def _state_with(table: pa.Table, value_type: pa.DataType, convert: Callable) -> pa.Array:
    col = table.column("observation.state").combine_chunks()
    values = col.flatten().to_numpy().reshape(len(col), -1)
    return pa.FixedSizeListArray.from_arrays(
        pa.array(convert(values).ravel().tolist(), value_type), values.shape[1]
    )


def state_as_strings(root: Path, meta: DatasetMeta) -> Outcome:
    """``observation.state`` written as strings where info.json declares float32."""
    episode = 3
    rel = _rewrite_data_column(
        root,
        meta,
        episode,
        "observation.state",
        lambda t: _state_with(t, pa.string(), lambda v: v.astype(str)),
    )
    return _episode_level(episode, [rel, "'observation.state'", "float32", "string"], "dtype")


def state_as_int(root: Path, meta: DatasetMeta) -> Outcome:
    """``observation.state`` written as int64 where info.json declares float32."""
    episode = 0
    rel = _rewrite_data_column(
        root,
        meta,
        episode,
        "observation.state",
        lambda t: _state_with(t, pa.int64(), lambda v: np.round(v).astype(np.int64)),
    )
    return _episode_level(episode, [rel, "'observation.state'", "float32", "int64"], "dtype")


def index_as_float(root: Path, meta: DatasetMeta) -> Outcome:
    """The global ``index`` written as float64 (right values, wrong type)."""
    episode = 5
    rel = _rewrite_data_column(
        root,
        meta,
        episode,
        "index",
        lambda t: pa.array(t.column("index").to_numpy().astype(np.float64), pa.float64()),
    )
    return _episode_level(episode, [rel, "'index'", "int64", "float64"], "dtype")


def inf_state(root: Path, meta: DatasetMeta) -> Outcome:
    """``observation.state`` is +Inf at one frame of one episode."""
    episode = 2
    rel = _rewrite_data_column(
        root,
        meta,
        episode,
        "observation.state",
        lambda t: _state_with(
            t,
            pa.float32(),
            lambda v: np.where((_frames_of(t) == 7)[:, None], np.inf, v).astype(np.float32),
        ),
    )
    return _episode_level(episode, [rel, "observation.state", "Inf", "frame 7"], "nan")


def overlapping_index(root: Path, meta: DatasetMeta) -> Outcome:
    """The last episode's global ``index`` range moved back 4 frames, into the one before it
    (its data rows agree): two episodes claim the same global indices."""
    eps = meta.episodes
    last = int(eps.episode_index[-1])
    row = eps.row(last)
    lo = int(eps.from_index[row]) - 4
    hi = lo + int(eps.length[row])
    for name, value in (("dataset_from_index", lo), ("dataset_to_index", hi)):
        _write_episodes_column(root, name, last, value)
    _rewrite_data_column(
        root, meta, last, "index", lambda t: pa.array(lo + _frames_of(t), pa.int64())
    )
    return Outcome(
        frozenset({last - 1, last}),
        DatasetFormatError,
        ["dataset_from_index", f"episode {last - 1}", f"episode {last}", "overlap"],
        "episode_index",
        at_load=True,
    )


def wrong_resolution(root: Path, meta: DatasetMeta) -> Outcome:
    """One video file of a camera re-encoded at another size (32x64, declared 48x80)."""
    key = meta.video_keys[1]
    rel = meta.video_file(0, key)
    path, tmp = root / rel, root / "tmp.mp4"
    shutil.move(path, tmp)
    with av.open(str(tmp)) as inp, av.open(str(path), "w") as out:
        src = inp.streams.video[0]
        dst = out.add_stream("libx264", rate=meta.fps)
        dst.width, dst.height, dst.pix_fmt = 64, 32, "yuv420p"
        dst.time_base = src.time_base
        for frame in inp.decode(src):
            small = frame.reformat(width=64, height=32)
            small.pts, small.time_base = frame.pts, frame.time_base
            out.mux(dst.encode(small))
        out.mux(dst.encode(None))
    tmp.unlink()
    bad = _episodes_in(meta, key, rel)
    return Outcome(
        frozenset(bad),
        VideoDecodeError,
        [rel, repr(key), "32x64x3", "48x80x3"],
        "shape",
        reason="skipped_video_errors",
        bad_frame=(bad[0], 0),
        episode_in_message=min(bad),
    )


BREAKS = {
    f.__name__: f
    for f in (
        truncated_mp4,
        truncated_mp4_tail,
        missing_frames,
        wrong_from_timestamp,
        wrong_totals,
        missing_data_file,
        truncated_parquet,
        corrupt_row_group,
        codec_mismatch,
        non_utf8_task,
        nan_state,
        timestamp_int64,
        timestamp_shifted,
        timestamp_nan,
        state_as_strings,
        state_as_int,
        index_as_float,
        inf_state,
        overlapping_index,
        wrong_resolution,
    )
}


@pytest.fixture(params=sorted(BREAKS))
def broken(request, base_root, base_meta, tmp_path) -> tuple[Path, Outcome]:
    root = tmp_path / "broken"
    shutil.copytree(base_root, root)
    return root, BREAKS[request.param](root, base_meta)


# ----------------------------------------------------------------------------- checking
def check_sample(sample: dict, meta: DatasetMeta) -> tuple[int, int]:
    """Assert ``sample`` is exactly the frame it claims; return (episode, frame)."""
    ep, fr = int(sample["episode_index"]), int(sample["frame_index"])
    index = int(meta.episodes.from_index[meta.episodes.row(ep)]) + fr
    assert int(sample["index"]) == index
    assert state_ids(sample["observation.state"]) == (ep, fr, index)
    for cam, key in enumerate(meta.video_keys):
        fid = decode_frame_id(sample[key])
        assert (fid.episode, fid.frame, fid.camera) == (ep, fr, cam), (key, ep, fr)
    assert sample["task"] == meta.tasks[int(sample["task_index"])]
    return ep, fr


def check_skip_outcome(
    got: list[tuple[int, int]], stats: dict, meta: DatasetMeta, out: Outcome
) -> None:
    counts = Counter(got)
    assert max(counts.values(), default=1) == 1, "a sample was delivered twice"
    lost = 0
    for row, e in enumerate(meta.episodes.episode_index.tolist()):
        length = int(meta.episodes.length[row])
        mine = {f for (ep, f) in counts if ep == e}
        if e not in out.bad:
            assert mine == set(range(length)), f"episode {e} is not complete"
            continue
        if not out.partial:
            assert not mine, f"episode {e} should have been skipped whole"
        else:  # what was delivered came before the damage, and is correct (checked above)
            assert len(mine) < length
        lost += length - len(mine)
    assert stats["skipped_samples"] == lost
    assert stats["skipped_episodes"] == len(out.bad)
    assert stats["errors"] == len(out.bad)
    assert stats[out.reason] == len(out.bad)
    assert stats["samples"] == len(got)


# ----------------------------------------------------------------------------- tests
def test_raise_policy_names_the_problem(broken, base_meta):
    root, out = broken
    if out.at_load:
        for policy in ("raise", "skip"):
            with pytest.raises(out.error) as info:
                StreamingLeRobotDataset(str(root), on_error=policy)
            assert all(m in str(info.value) for m in out.match), str(info.value)
        return
    ds = StreamingLeRobotDataset(str(root), shuffle=False, return_uint8=True)
    if not out.bad:  # a break that reads correctly (only validate says something)
        got = [check_sample(s, base_meta) for s in ds]
        assert len(got) == base_meta.total_frames
        return
    delivered = []
    with pytest.raises(out.error) as info:
        for s in ds:
            delivered.append(check_sample(s, base_meta))
    msg = str(info.value)
    assert all(m in msg for m in out.match), msg
    assert str(root) in msg  # the dataset
    assert f"episode {out.episode_in_message}" in msg, msg
    if out.names_frame:
        assert "frame " in msg, msg
    # in order, everything before the failure was delivered, and correct
    assert {e for e, _ in delivered} <= set(range(out.episode_in_message + 1))


def test_skip_policy_drops_exactly_the_bad_episodes(broken, base_meta, caplog):
    root, out = broken
    if out.at_load:
        return  # covered above: refused at construction under both policies
    ds = StreamingLeRobotDataset(
        str(root), on_error="skip", shuffle=True, seed=3, active_shards=3, return_uint8=True
    )
    with caplog.at_level("WARNING", logger="framestream"):
        got = [check_sample(s, base_meta) for s in ds]
    check_skip_outcome(got, ds.stats(), base_meta, out)
    skipped_logs = [r for r in caplog.records if "skipping episode" in r.getMessage()]
    assert len(skipped_logs) == len(out.bad)  # logged once per skipped episode
    for e in out.bad:
        assert any(f"skipping episode {e} " in r.getMessage() for r in skipped_logs)


def test_map_dataset_raises_on_the_bad_sample_only(broken, base_meta):
    root, out = broken
    if out.at_load:
        with pytest.raises(out.error):
            MapDataset(str(root))
        return
    ds = MapDataset(str(root), return_uint8=True)
    if out.bad_frame is not None:
        ep, fr = out.bad_frame
        pos = ds.position_of(int(base_meta.episodes.from_index[base_meta.episodes.row(ep)]) + fr)
        with pytest.raises(out.error) as info:
            ds[pos]
        assert all(m in str(info.value) for m in out.match), str(info.value)
    good = [e for e in base_meta.episodes.episode_index.tolist() if e not in out.bad]
    for e in good[:2]:
        row = base_meta.episodes.row(e)
        last = int(base_meta.episodes.to_index[row]) - 1
        assert check_sample(ds[ds.position_of(last)], base_meta) == (
            e,
            last - int(base_meta.episodes.from_index[row]),
        )


def test_validate_names_the_problem(broken):
    root, out = broken
    report = validate_dataset(str(root))
    found = report.find(out.check, severity=out.severity)
    assert found, report.format()
    for e in out.bad:  # per-file problems list their episodes in the message
        named = [
            p for p in found if p.episode == e or re.search(rf"episodes? [\d, ]*\b{e}\b", p.message)
        ]
        assert named, (e, report.format())
    if out.severity == "error":
        assert not report.ok() and report.exit_code() == 1
    else:
        assert report.ok() and not report.errors, report.format()
        assert not report.ok(strict=True) and report.exit_code(strict=True) == 1
    # nothing reported about the episodes the break does not touch, except dataset-wide
    touched = {p.episode for p in report.problems if p.episode is not None}
    assert touched <= set(out.bad), report.format()


@pytest.mark.parametrize("name", ["missing_frames", "missing_data_file"])
def test_skip_across_dataloader_workers(name, base_root, base_meta, tmp_path):
    root = tmp_path / "broken"
    shutil.copytree(base_root, root)
    out = BREAKS[name](root, base_meta)
    ds = StreamingLeRobotDataset(str(root), on_error="skip", seed=1, return_uint8=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, timeout=120)
    got = [check_sample(s, base_meta) for s in loader]
    check_skip_outcome(got, ds.stats(), base_meta, out)


def test_raise_through_dataloader_workers_keeps_type_and_message(base_root, base_meta, tmp_path):
    root = tmp_path / "broken"
    shutil.copytree(base_root, root)
    out = missing_frames(root, base_meta)
    ds = StreamingLeRobotDataset(str(root), seed=1, return_uint8=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, timeout=120)
    with pytest.raises(out.error) as info:
        for _ in loader:
            pass
    msg = str(info.value)
    assert all(m in msg for m in out.match) and f"episode {out.episode_in_message}" in msg, msg


def test_unknown_policy_is_refused(base_root):
    with pytest.raises(ValueError, match="on_error"):
        StreamingLeRobotDataset(str(base_root), on_error="ignore")
