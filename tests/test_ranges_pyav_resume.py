"""fetch="ranges" with the PyAV backend, and exact resume of a ranged stream with workers.

On H.264 with B-frames and an edit list (x264's defaults, one keyframe per episode as LeRobot
writes them), over the loopback HTTP server:

- ``video_backend="pyav"`` decodes every sample from the episodes' byte ranges bit for bit
  equal to the local run (PyAV too), and really reads ranges (no video fetched whole);
- a run with 2 DataLoader workers (StatefulDataLoader) saved mid-epoch and resumed in a new
  dataset delivers exactly the rest of the uninterrupted run.
"""

from __future__ import annotations

import json
import shutil
from itertools import islice
from pathlib import Path

import pytest
from ranges_helpers import RANGES_DS, SEED, digest, ranges_dataset, reencode, stream_rank
from test_ranges_dist import io_of, needed_bytes

from framestream import StreamingLeRobotDataset
from framestream.io.mp4index import index_file
from framestream.io.spans import SHORT_SEEK_FILL
from framestream.testing.default_data import synthetic_dataset
from framestream.testing.servers import serve

torchdata = pytest.importorskip("torchdata.stateful_dataloader")
pytest.importorskip("av")

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg CLI not installed"),
]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    base = tmp_path_factory.getbasetemp()
    return reencode(ranges_dataset(base), base / "ranges-h264_bframes", "h264_bframes")


# Half the ranges dataset, one camera: still several episodes per mp4 and per data file, and
# files large enough (150-480 KB) that episodes are fetched as ranges, not with the index reads.
SMALL_DS = dict(RANGES_DS, num_episodes=8, num_cameras=1, video_files_size_in_mb=0.3)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    base = tmp_path_factory.getbasetemp()
    src = synthetic_dataset(SMALL_DS, root=base, progress=False)
    return reencode(src, base / "resume-h264_bframes", "h264_bframes")


def _has_b_frames(root: Path) -> bool:
    data = next((root / "videos").rglob("*.mp4")).read_bytes()
    return index_file(lambda o, n: data[o : o + n], len(data)).reorder_depth >= 1


@pytest.mark.parametrize(
    ("which", "world"), [("small", 1), pytest.param("ranges", 2, marks=pytest.mark.slow)]
)
def test_pyav_ranges_equal_local(request, which, world, tmp_path):
    root = request.getfixturevalue({"small": "small", "ranges": "root"}[which])
    assert _has_b_frames(root)
    n_vid = len(list((root / "videos").rglob("*.mp4")))
    meta_bytes = sum(p.stat().st_size for p in (root / "meta").rglob("*") if p.is_file())
    with serve("http", root) as srv:
        for rank in range(world):
            cache = str(tmp_path / f"c{rank}")
            got = stream_rank(srv.url, {}, rank, world, cache, video_backend="pyav")
            want = stream_rank(str(root), {}, rank, world, None, video_backend="pyav")
            assert len(want["rows"]) > 0
            assert got["rows"] == want["rows"], rank
            io = io_of(got)
            # read as byte ranges: little more than the episodes need, no file fetched whole
            need = needed_bytes(root, got["episodes"])
            assert io["range_requests"] > 0, io
            assert io["range_bytes_fetched"] <= 1.1 * need + SHORT_SEEK_FILL * n_vid, (io, need)
            whole = io["bytes_fetched"] - io["range_bytes_fetched"] - io["index_bytes_fetched"]
            assert whole <= meta_bytes, io


def _loader(url: str, cache: Path, state: dict | None = None):
    ds = StreamingLeRobotDataset(
        url, cache_dir=cache, return_uint8=True, seed=SEED, buffer_size=40, active_shards=3
    )
    loader = torchdata.StatefulDataLoader(ds, batch_size=None, num_workers=2, timeout=120)
    if state is not None:
        loader.load_state_dict(state)
    return ds, loader


@pytest.mark.parametrize(
    ("which", "stops"),
    [("small", [1 / 2]), pytest.param("ranges", [1 / 3, 2 / 3], marks=pytest.mark.slow)],
)
def test_exact_resume_with_workers_over_http(request, which, stops, tmp_path):
    root = request.getfixturevalue({"small": "small", "ranges": "root"}[which])
    assert _has_b_frames(root)
    with serve("http", root) as srv:
        for f in stops:
            # the uninterrupted run: a state saved mid-epoch does not disturb the stream
            ds, loader = _loader(srv.url, tmp_path / f"a{f}")
            keys = ds.meta.video_keys
            it = iter(loader)
            stop = int(f * ds.meta.total_frames)
            head = [digest(s, keys) for s in islice(it, stop)]
            state = json.loads(json.dumps(loader.state_dict()))  # a checkpoint round trip
            want = head + [digest(s, keys) for s in it]
            assert sorted(r[0] for r in want) == list(range(ds.meta.total_frames))
            io = io_of({"main_io": ds.meta.source.io_stats(), "stats": ds.stats()})
            assert io["range_requests"] > 0, io  # episodes were read as byte ranges
            del it, loader, ds
            # a new dataset restored from the state, with a cold cache of its own
            ds2, loader2 = _loader(srv.url, tmp_path / f"b{f}", state)
            rest = [digest(s, keys) for s in loader2]
            assert len(head) == stop and 0 < stop < len(want)
            assert head + rest == want, (stop, len(rest), len(want))
