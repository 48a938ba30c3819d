"""The videos of a synthetic dataset: one mp4 per (episode, camera), encoded in a process
pool, then concatenated per camera file by remuxing (see :mod:`framestream.testing.synth`).

Encoders run without B-frames, so packets are in presentation order and frame ``k`` of a file
is at exactly ``k / fps`` seconds; :func:`check_packets` proves it for every file written.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from tqdm.auto import tqdm

from framestream.testing.framecode import encode_frame

ENCODERS: dict[str, tuple[str, dict[str, str]]] = {
    # Preset 12 is SVT-AV1's fastest (mapped to 11 by newer releases); B-frames do not exist
    # at the container level in AV1, every temporal unit shows exactly one frame.
    "av1": ("libsvtav1", {"preset": "12"}),
    "h264": ("libx264", {"preset": "ultrafast", "bf": "0"}),
}


@dataclass(frozen=True)
class SegmentJob:
    """One (episode, camera) video to encode in a worker process."""

    episode: int
    camera: int
    length: int
    height: int
    width: int
    fps: int
    codec: str
    gop: int
    path: str


@dataclass(frozen=True)
class Segment:
    """An encoded (episode, camera) mp4: where it is, its size and pixel statistics."""

    episode: int
    camera: int
    path: str
    frames: int
    size: int
    stats: dict[str, Any] = field(repr=False)


def encode_segment(job: SegmentJob) -> Segment:
    """Encode one episode of one camera; runs in a worker process, so it must be top level."""
    # SVT-AV1 prints a banner per encoder unless told to log errors only.
    os.environ.setdefault("SVT_LOG", "1")
    codec_name, options = ENCODERS[job.codec]
    sums = np.zeros(3)
    sq_sums = np.zeros(3)
    lo = np.full(3, np.inf)
    hi = np.full(3, -np.inf)
    pixels = 0
    sampled = 0
    stride = max(1, job.length // 10)
    with av.open(job.path, "w", format="mp4") as out:
        stream = out.add_stream(codec_name, rate=job.fps, options=dict(options))
        stream.width, stream.height, stream.pix_fmt = job.width, job.height, "yuv420p"
        stream.time_base = Fraction(1, job.fps)
        stream.codec_context.time_base = Fraction(1, job.fps)
        stream.codec_context.gop_size = job.gop
        stream.codec_context.max_b_frames = 0
        for k in range(job.length):
            image = encode_frame(job.episode, k, job.camera, job.height, job.width)
            if k % stride == 0:
                sample = image[::4, ::4].reshape(-1, 3).astype(np.float64) / 255.0
                sums += sample.sum(0)
                sq_sums += (sample**2).sum(0)
                lo = np.minimum(lo, sample.min(0))
                hi = np.maximum(hi, sample.max(0))
                pixels += len(sample)
                sampled += 1
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = k
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    frames = check_packets(job.path, job.length, job.fps)
    mean = sums / pixels
    std = np.sqrt(np.maximum(sq_sums / pixels - mean**2, 0.0))
    stats = {"min": lo, "max": hi, "mean": mean, "std": std, "count": sampled, "pixels": pixels}
    return Segment(
        job.episode, job.camera, job.path, frames, os.path.getsize(job.path), stats=stats
    )


def check_packets(path: str, expected: int, fps: int) -> int:
    """Check ``path`` holds ``expected`` packets, packet ``k`` at exactly ``k / fps``.

    Why: the whole dataset relies on frame k of a file being at k / fps; an encoder that
    reordered frames or dropped one would silently shift every later episode.
    """
    with av.open(path) as container:
        stream = container.streams.video[0]
        ticks = Fraction(1, fps) / stream.time_base
        if ticks.denominator != 1:
            raise RuntimeError(f"{path}: time base {stream.time_base} cannot express 1/{fps} s")
        count = 0
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            if packet.pts != count * ticks or packet.dts != packet.pts:
                raise RuntimeError(
                    f"{path}: packet {count} has pts={packet.pts} dts={packet.dts}, expected "
                    f"{count * ticks} for both (frames must be in presentation order)"
                )
            count += 1
    if count != expected:
        raise RuntimeError(f"{path}: {count} packets written, expected {expected}")
    return count


def concat_segments(segments: list[Segment], path: Path, fps: int) -> None:
    """Concatenate segment mp4s into ``path`` by remuxing, shifting each by the frames before.

    Why remux: re-encoding would cost as much as the first encode and could change pixels.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with av.open(str(path), "w", format="mp4") as out:
        out_stream = None
        extradata = None
        for segment in segments:
            with av.open(segment.path) as source:
                in_stream = source.streams.video[0]
                if out_stream is None:
                    out_stream = out.add_stream_from_template(in_stream, opaque=True)
                    extradata = in_stream.codec_context.extradata
                elif in_stream.codec_context.extradata != extradata:
                    raise RuntimeError(
                        f"{segment.path}: codec parameters differ from the first episode of "
                        f"{path}; the episodes cannot be concatenated without re-encoding"
                    )
                ticks = Fraction(1, fps) / in_stream.time_base
                shift = int(written * ticks)
                for packet in source.demux(in_stream):
                    if packet.size == 0:
                        continue
                    packet.pts += shift
                    packet.dts += shift
                    packet.stream = out_stream
                    out.mux(packet)
            written += segment.frames
    check_packets(str(path), written, fps)


def run_jobs(jobs: list[SegmentJob], workers: int, progress: bool) -> Iterator[Segment]:
    """Encode segments, in a process pool when it can help; yields them as they finish."""
    with tqdm(total=len(jobs), desc="encoding", unit="video", disable=not progress) as bar:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                yield encode_segment(job)
                bar.update()
            return
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
            futures = [pool.submit(encode_segment, job) for job in jobs]
            try:
                for future in as_completed(futures):
                    yield future.result()
                    bar.update()
            except BaseException:
                # Do not encode the rest of the dataset just to throw it away.
                for future in futures:
                    future.cancel()
                raise
