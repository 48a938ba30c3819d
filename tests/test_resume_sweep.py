"""The resume sweep: a training loop stopped at every kind of point, resumed, compared.

Each scenario runs a small training loop over two epochs, once uninterrupted and once
stopped at a checkpoint (before the first batch, mid-epoch, at the last batch of epoch 0,
after epoch 0 ended, in epoch 1), then resumed in fresh objects. The resumed run must
deliver exactly the uninterrupted run's remaining samples in the same order, every sample
proven by its pixels. Two loops: ``explicit`` calls ``set_epoch`` before each epoch (and
keeps its own epoch counter in the checkpoint); ``auto`` never calls it and counts steps
(LeRobot's ``cycle(dataloader)``), relying on each pass advancing the epoch.

The default sweep changes one option at a time around each loader kind; the full product
runs with ``-m slow``.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

from framestream import StreamingLeRobotDataset
from framestream.format.meta import DatasetMeta
from framestream.testing import decode_frame_id
from framestream.testing.synth import generate_synthetic_dataset

B = 4
EPOCHS = 2
TINY = dict(
    num_episodes=5,
    min_length=7,
    max_length=13,
    num_cameras=1,
    height=48,
    width=80,
    codec="h264",
    data_files_size_in_mb=0.0005,  # one data file per episode
    video_files_size_in_mb=0.005,
    seed=4,
    workers=1,
)
POINTS = ("start", "mid", "last", "after", "next")


@dataclass(frozen=True)
class Scenario:
    loader: str = "direct"  # direct (num_workers=0, ds.state_dict), plain, stateful
    workers: int = 0
    world_size: int = 1
    shuffle: bool = True
    windows: bool = False
    skip: bool = False  # a corrupt episode, on_error="skip"
    drop_last: bool = False
    persistent: bool = False
    loop: str = "explicit"  # explicit: set_epoch each epoch; auto: no set_epoch, by steps
    # shuffle_chunk: None, the default (episodes of 7-13 frames stay whole), or 4: pieces of
    # 2-6 frames and lead-in cuts (persistent workers then prepare each next pass)
    chunk: int | None = None

    def valid(self) -> bool:
        if self.loader == "direct" and self.workers:
            return False
        if self.loader == "plain" and not self.workers:
            return False  # a plain DataLoader without workers is "direct"
        return not (self.persistent and not self.workers)

    def __str__(self) -> str:
        base = Scenario()
        diff = [f"{k}={v}" for k, v in vars(self).items() if getattr(base, k) != v]
        return ",".join(diff) or "base"


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[bool, Path]:
    good = generate_synthetic_dataset(tmp_path_factory.mktemp("sweep") / "ds", **TINY)
    bad = tmp_path_factory.mktemp("sweep_bad") / "ds"
    shutil.copytree(good, bad)
    path = bad / DatasetMeta(str(good)).data_file(2)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return {False: good, True: bad}


class Trainer:
    """One rank's training loop over ``EPOCHS`` epochs (or that many passes' steps)."""

    def __init__(self, sc: Scenario, root: Path, rank: int, total_steps: int | None) -> None:
        self.sc, self.rank = sc, rank
        fps = DatasetMeta(str(root)).fps
        self.ds = StreamingLeRobotDataset(
            str(root),
            return_uint8=True,
            seed=5,
            shuffle=sc.shuffle,
            buffer_size=16,
            active_shards=2,
            shuffle_warmup=4,
            rank=rank,
            world_size=sc.world_size,
            on_error="skip" if sc.skip else "raise",
            shuffle_chunk=sc.chunk,
            delta_timestamps={"observation.images.cam0": [-1 / fps, 0.0]} if sc.windows else None,
        )
        cls = StatefulDataLoader if sc.loader == "stateful" else DataLoader
        self.dl = cls(
            self.ds,
            batch_size=B,
            num_workers=sc.workers,
            drop_last=sc.drop_last,
            persistent_workers=sc.persistent,
            timeout=120 if sc.workers else 0,
        )
        self.epoch = 0  # the loop's own counter (explicit loop)
        self.batches = 0  # batches of the current epoch / pass
        self.steps = 0
        self.total_steps = total_steps
        self.out: list[list[int]] = []

    def ids(self, batch) -> list[int]:
        cams = batch["observation.images.cam0"]
        for i in range(len(batch["index"])):
            frame = cams[i][-1] if cams.dim() == 5 else cams[i]
            fid = decode_frame_id(frame)
            assert (fid.episode, fid.frame) == (
                int(batch["episode_index"][i]),
                int(batch["frame_index"][i]),
            )
        return batch["index"].tolist()

    def save(self) -> dict:
        sc = self.sc
        if sc.loader == "stateful":
            data = self.dl.state_dict()
        elif sc.loader == "direct":
            data = self.ds.state_dict()
        else:
            epoch = self.epoch if sc.loop == "explicit" else None
            data = self.ds.progress_state(
                batches=self.batches,
                batch_size=B,
                num_workers=sc.workers,
                epoch=epoch,
                drop_last=sc.drop_last,
            )
        ckpt = {"data": data, "epoch": self.epoch, "batches": self.batches, "steps": self.steps}
        return json.loads(json.dumps(ckpt))

    def restore(self, ckpt: dict) -> None:
        self.epoch, self.batches, self.steps = ckpt["epoch"], ckpt["batches"], ckpt["steps"]
        if self.sc.loader == "stateful":
            self.dl.load_state_dict(ckpt["data"])
        else:
            self.ds.load_state_dict(ckpt["data"])

    def run(self, stop: str | None = None, stop_step: int = 0) -> dict | None:
        """Train to the end (returns None) or to ``stop`` (returns the checkpoint)."""
        if stop == "start":
            return self.save()
        passes = 0
        while True:
            if self.sc.loop == "explicit":
                if self.epoch >= EPOCHS:
                    return None
                self.ds.set_epoch(self.epoch)
            elif self.steps >= self.total_steps or passes > 2 * EPOCHS + 2:
                return None
            passes += 1
            for batch in self.dl:
                if self.sc.loop == "auto" and self.batches and self.new_pass:
                    self.batches = 0
                self.new_pass = False
                self.out.append(self.ids(batch))
                self.steps += 1
                self.batches += 1
                if stop in ("mid", "last", "next") and self.steps == stop_step:
                    return self.save()
                if self.sc.loop == "auto" and self.steps >= self.total_steps:
                    return None
            self.new_pass = True
            if passes == 1:
                self.first_pass = self.steps
            if self.sc.loop == "explicit":
                self.epoch += 1
                self.batches = 0
            if stop == "after" and passes == 1:
                return self.save()

    new_pass = False
    first_pass = 0  # steps when the first pass ended


def check(sc: Scenario, roots: dict[bool, Path], points=POINTS) -> None:
    root = roots[sc.skip]
    for rank in range(sc.world_size):
        ref = Trainer(sc, root, rank, None)
        if sc.loop == "auto":  # two passes, counted by steps
            ref.total_steps = 10**9
            ref.run(stop="after")
            ref.run(stop="after")
            steps = ref.steps
            ref = Trainer(sc, root, rank, steps)
        ref.run()
        full = ref.out
        n0 = ref.first_pass
        assert len(full) > n0 + 2
        steps = {"mid": n0 // 2, "last": n0, "next": n0 + 2}
        for point in points:
            first = Trainer(sc, root, rank, ref.total_steps)
            ckpt = first.run(point, steps.get(point, 0))
            assert ckpt is not None, point
            second = Trainer(sc, root, rank, ref.total_steps)
            second.restore(ckpt)
            second.run()
            got = first.out + second.out
            pairs = enumerate(zip(got, full, strict=False))
            first_diff = next((i for i, (a, b) in pairs if a != b), len(got))
            assert got == full, (
                f"{sc} rank {rank} stopped at {point!r}: resumed stream differs at batch "
                f"{first_diff} ({len(got)} batches, expected {len(full)})"
            )


def _default_sweep() -> list[tuple[Scenario, tuple[str, ...]]]:
    """Fast (about a minute): every point on the cheap loops, the boundaries with workers."""
    direct, plain, stateful = (
        Scenario(),
        Scenario(loader="plain", workers=2),
        Scenario(loader="stateful", workers=2),
    )
    edges = ("mid", "last", "after")
    out = [
        (direct, POINTS),
        (replace(direct, loop="auto"), POINTS),
        (replace(direct, loader="stateful"), edges),
        (plain, edges),
        (stateful, edges),
        # each worker's last samples dropped: its snapshot after the epoch is not finished
        (replace(stateful, drop_last=True), ("after",)),
        (replace(plain, skip=True, loop="auto"), ("mid",)),
        (replace(stateful, skip=True, windows=True, drop_last=True), ("last",)),
    ]
    pieces = [replace(s, chunk=4) for s in (direct, plain, stateful)]
    out += [(pieces[0], POINTS), (pieces[1], edges), (replace(pieces[2], drop_last=True), edges)]
    out.append((replace(pieces[2], persistent=True, loop="auto"), ("mid", "after", "next")))
    for v in ("shuffle", "windows", "skip", "drop_last"):
        out.append((replace(direct, **{v: not getattr(direct, v)}), ("mid", "last")))
    out.append((replace(direct, world_size=2), ("mid", "last")))
    return out


@pytest.mark.parametrize(
    ("sc", "points"), _default_sweep(), ids=lambda x: str(x) if isinstance(x, Scenario) else ""
)
def test_resume_sweep(sc, points, roots):
    check(sc, roots, points)


def _full_sweep() -> list[Scenario]:
    axes = dict(
        loader=["direct", "plain", "stateful"],
        workers=[0, 1, 2],
        world_size=[1, 2],
        shuffle=[True, False],
        windows=[False, True],
        skip=[False, True],
        drop_last=[False, True],
        persistent=[False, True],
        loop=["explicit", "auto"],
        chunk=[None, 4],
    )
    out = [Scenario(**dict(zip(axes, v, strict=True))) for v in itertools.product(*axes.values())]
    valid = [s for s in out if s.valid()]
    # The whole product (~1,280 scenarios) would take most of CI's hour on 2 cores: a fixed,
    # seeded sample of it runs in CI's slow step; FRAMESTREAM_FULL_SWEEP=1 runs every one.
    if os.environ.get("FRAMESTREAM_FULL_SWEEP") == "1":
        return valid
    return random.Random(0).sample(valid, min(len(valid), 80))


@pytest.mark.slow
@pytest.mark.parametrize("sc", _full_sweep(), ids=str)
def test_resume_sweep_full(sc, roots):
    check(sc, roots)
