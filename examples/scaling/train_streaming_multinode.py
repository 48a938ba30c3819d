#!/usr/bin/env python
"""Train a small visuomotor policy on a streaming LeRobot dataset, from one CPU to many nodes.

Why this script exists: it is the reference for dropping framestream into an Accelerate job
without the three classic mistakes of streaming + DDP:

1. **No dispatch from rank 0.** The DataLoader is *not* passed through
   ``accelerator.prepare``. For an ``IterableDataset`` Accelerate would either dispatch
   (rank 0 reads every batch and scatters slices: one process decodes for the whole job) or,
   with ``dispatch_batches=False``, wrap it in ``IterableDatasetShard`` (every rank reads the
   whole stream and keeps 1/world_size of it; on top of framestream's own rank split that
   silently drops data). Each rank here streams its own episodes: the dataset resolves
   (rank, world size) from Accelerate's state, no DistributedSampler involved.
2. **No DDP hang at the end of an epoch.** With more than one process the dataset is built
   with ``even_ranks=True``: every rank gets the same number of samples (repeats are flagged
   ``is_repeat``), hence the same number of steps.
3. **Preemption resumes the stream, not just the model.** A checkpoint holds the model, the
   optimizer, the step and each rank's stream position: ``StatefulDataLoader.state_dict()``
   (torchdata; it collects every worker's ``dataset.state_dict()``), or with a plain
   DataLoader ``dataset.state_dict()`` (``--num-workers 0``) or ``dataset.progress_state()``
   (workers; rebuilt from the batches consumed). ``--resume`` continues exactly where the
   stream stopped; with another number of processes or workers it resumes elastically
   (``framestream.merge_states`` of every rank's state: no sample lost or repeated, the rest of
   the epoch in another order). SIGTERM (what SLURM sends at the time limit or on preemption)
   saves a checkpoint at the next step boundary and exits.

Usage::

    # CPU, quick: a tiny synthetic dataset (generated once, cached)
    python examples/scaling/train_streaming_multinode.py --tiny --max-steps 20

    # 2 processes on one machine; on a CPU-only machine too (gloo). Not `--cpu`: with it,
    # `accelerate launch` starts a single process unless run under mpirun (the script says
    # so in one line at start-up: "[launch] asked for 2 processes but got 1").
    accelerate launch --multi_gpu --num_processes 2 \\
        examples/scaling/train_streaming_multinode.py --tiny

    # a real dataset, config file + overrides, data loading only (throughput)
    accelerate launch --multi_gpu --num_processes 8 examples/scaling/train_streaming_multinode.py \\
        --config configs/train_streaming_robocasa.yaml --root s3://bucket/robocasa \\
        --dataset.streaming_buffer_size=2000 --num-workers 8 --dummy

Without ``--root``/``--config`` root, the 40-episode synthetic benchmark dataset is used.
``--dataset.<field>=<value>`` overrides any :class:`framestream.DatasetConfig` field.
``--log-samples FILE`` writes, per step and rank, the global ``index`` values and the decoded
``(episode, frame)`` ids of the first camera (synthetic datasets), one JSON line per step; with
several processes each rank writes ``FILE`` with ``.rank<r>`` before the suffix (or put
``{rank}`` in the name).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from framestream import DatasetConfig, DatasetMeta, collate, make_dataset
from framestream.config import load_config_file, split_overrides
from framestream.testing.default_data import TINY_DATASET, synthetic_dataset

# What the script changes from DatasetConfig's defaults (a config file or overrides win).
SCRIPT_DATASET_DEFAULTS: dict[str, Any] = {"return_uint8": True}

TRAIN_STATE = "train_state.pt"
LATEST = "latest"


# ============================================================================ arguments
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Any DatasetConfig field: --dataset.<field>=<value> (value parsed as YAML).",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="YAML/JSON with a 'dataset:' section (DatasetConfig fields) and a 'train:' section "
        "(defaults for the options below, underscores for dashes)",
    )
    data = p.add_argument_group("data")
    data.add_argument("--root", help="dataset path or URL (overrides the config's root)")
    data.add_argument("--tiny", action="store_true", help="use a tiny synthetic dataset")
    data.add_argument(
        "--synthetic-episodes",
        type=int,
        default=None,
        metavar="N",
        help="a synthetic dataset of N episodes with --tiny's geometry (implies --tiny)",
    )
    data.add_argument("--batch-size", type=int, default=8, help="per process")
    data.add_argument("--num-workers", type=int, default=0, help="DataLoader workers per process")
    data.add_argument("--prefetch-factor", type=int, default=2)
    data.add_argument(
        "--plain-loader",
        action="store_true",
        help="torch's DataLoader instead of torchdata's StatefulDataLoader (the stream position "
        "is then rebuilt from the batches consumed)",
    )
    train = p.add_argument_group("training")
    train.add_argument("--epochs", type=int, default=1)
    train.add_argument("--max-steps", type=int, default=None, help="stop after this global step")
    train.add_argument("--lr", type=float, default=3e-4)
    train.add_argument(
        "--action-horizon",
        type=int,
        default=8,
        help="action chunk length predicted per sample (sets delta_timestamps['action'] "
        "unless the config sets it)",
    )
    train.add_argument("--seed", type=int, default=0, help="model initialisation seed")
    train.add_argument(
        "--cpu", action="store_true", help="train on CPU even if an accelerator is present"
    )
    train.add_argument("--dummy", action="store_true", help="no model: load data, log throughput")
    run = p.add_argument_group("checkpoints and logs")
    run.add_argument("--output-dir", default="outputs/train_streaming")
    run.add_argument(
        "--checkpoint-every", type=int, default=0, help="steps between checkpoints (0: only at end)"
    )
    run.add_argument("--keep-checkpoints", type=int, default=2)
    run.add_argument(
        "--resume",
        nargs="?",
        const=LATEST,
        default=None,
        metavar="DIR",
        help="resume from DIR, or from the latest checkpoint in --output-dir (a fresh start if "
        "there is none, so a requeued job can always pass --resume)",
    )
    run.add_argument("--log-every", type=int, default=10, help="steps between throughput logs")
    run.add_argument(
        "--log-samples",
        metavar="FILE",
        help="JSON lines of the samples per step; one file per rank: with several processes "
        "rank r writes FILE with .rank<r> before the suffix (or put {rank} in the name)",
    )
    run.add_argument("--metrics-json", metavar="FILE", help="write a run summary (main process)")
    return p


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """argparse options, with ``train:`` defaults from ``--config``; plus dataset overrides."""
    rest, overrides = split_overrides(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    pre, _ = parser.parse_known_args(rest)
    if pre.config:
        defaults = load_config_file(pre.config, section="train")
        known = {a.dest for a in parser._actions}
        unknown = sorted({k.replace("-", "_") for k in defaults} - known)
        if unknown:
            parser.error(f"{pre.config}: unknown train option(s) {unknown}")
        parser.set_defaults(**{k.replace("-", "_"): v for k, v in defaults.items()})
    args = parser.parse_args(rest)
    if args.synthetic_episodes is not None:
        args.tiny = True
    return args, overrides


def dataset_config(
    args: argparse.Namespace, overrides: Sequence[str], *, world_size: int
) -> tuple[DatasetConfig, bool]:
    """DatasetConfig from defaults < config file < --root < --dataset.* overrides.

    Returns the config and whether it still needs a synthetic root (no root given).
    """
    fields: dict[str, Any] = dict(SCRIPT_DATASET_DEFAULTS)
    if args.config:
        section = load_config_file(args.config, section="dataset")
        fields.update(section)
    if args.root:
        fields["root"] = args.root
    cfg = DatasetConfig.from_dict(fields).with_overrides(overrides)
    if world_size > 1 and not cfg.even_ranks:
        if "even_ranks" in fields or any(o.startswith("even_ranks=") for o in overrides):
            raise SystemExit(
                "even_ranks=false with several processes: ranks would run different numbers of "
                "steps and DDP would hang at the end of the epoch. Leave it on."
            )
        cfg = cfg.replace(even_ranks=True)
    needs_synthetic = not (cfg.root or cfg.repo_id)
    return cfg, needs_synthetic


# ============================================================================ model
class Policy(nn.Module):
    """A small visuomotor policy: a conv encoder per camera (shared weights) and an MLP on the
    state, predicting an action chunk. Big enough that a step is real work, small enough for CPU.
    """

    def __init__(
        self,
        camera_keys: Sequence[str],
        state_dim: int,
        action_dim: int,
        horizon: int,
        *,
        stats: Mapping[str, Any] | None = None,
        state_key: str | None = "observation.state",
    ) -> None:
        super().__init__()
        self.camera_keys = list(camera_keys)
        self.state_key = state_key if state_dim > 0 else None
        self.action_dim, self.horizon = action_dim, horizon
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 32, 5, stride=2, padding=2),
            nn.GELU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(64, 128, 3, stride=2, padding=1),
            nn.GELU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.state_mlp = nn.Sequential(nn.Linear(max(state_dim, 1), 128), nn.GELU())
        features = 128 * len(self.camera_keys) + (128 if self.state_key else 0)
        self.head = nn.Sequential(
            nn.Linear(features, 512),
            nn.GELU(),
            nn.Linear(512, 512),
            nn.GELU(),
            nn.Linear(512, horizon * action_dim),
        )
        # Normalisation from the dataset's stats.json, where present (identity otherwise).
        self.register_buffer("state_mean", _stat(stats, state_key, "mean", state_dim, 0.0))
        self.register_buffer("state_std", _stat(stats, state_key, "std", state_dim, 1.0))
        self.register_buffer("action_mean", _stat(stats, "action", "mean", action_dim, 0.0))
        self.register_buffer("action_std", _stat(stats, "action", "std", action_dim, 1.0))

    def predict(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The normalised action chunk ``(B, horizon, action_dim)``."""
        feats = []
        for key in self.camera_keys:
            img = batch[key]
            if img.ndim == 5:  # a camera window (B, T, C, H, W): use its last frame
                img = img[:, -1]
            img = img.float() / 255.0 if img.dtype == torch.uint8 else img.float()
            if img.shape[1] != 3:  # depth or grey cameras: one channel, or drop alpha
                img = img[:, :1].expand(-1, 3, -1, -1) if img.shape[1] == 1 else img[:, :3]
            feats.append(self.encoder(img))
        if self.state_key:
            state = batch[self.state_key]
            state = state[:, -1] if state.ndim == 3 else state
            feats.append(self.state_mlp((state - self.state_mean) / self.state_std))
        out = self.head(torch.cat(feats, dim=1))
        return out.view(-1, self.horizon, self.action_dim)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The loss: MSE on the normalised action chunk, ignoring steps padded past the episode
        end. It is ``forward`` so that DDP's wrapper sees the call and syncs gradients."""
        target = batch["action"]
        target = target if target.ndim == 3 else target[:, None]
        target = (target - self.action_mean) / self.action_std
        pred = self.predict(batch)
        err = (pred - target).pow(2).mean(dim=-1)  # (B, T)
        pad = batch.get("action_is_pad")
        keep = torch.ones_like(err) if pad is None else (~pad).float().view_as(err)
        return (err * keep).sum() / keep.sum().clamp_min(1.0)


def _stat(
    stats: Mapping[str, Any] | None, key: str | None, name: str, dim: int, default: float
) -> torch.Tensor:
    value = ((stats or {}).get(key or "", {}) or {}).get(name)
    t = torch.full((max(dim, 1),), default, dtype=torch.float32)
    if value is not None and len(value) == dim:
        t = torch.as_tensor(value, dtype=torch.float32)
        if name == "std":
            t = t.clamp_min(1e-3)
    return t


# ============================================================================ data
def make_loader(
    dataset: torch.utils.data.IterableDataset, args: argparse.Namespace, pin_memory: bool
) -> tuple[torch.utils.data.DataLoader, bool]:
    """A StatefulDataLoader when torchdata is installed (its state_dict holds every worker's
    stream position), else (or with ``--plain-loader``) a plain DataLoader, whose position is
    rebuilt from the number of batches consumed (``dataset.progress_state``)."""
    kwargs: dict[str, Any] = {
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "pin_memory": pin_memory,
        # Same batches as default_collate; workers reuse their shared memory across batches.
        "collate_fn": collate,
    }
    if args.num_workers > 0:
        kwargs["prefetch_factor"] = args.prefetch_factor
        kwargs["worker_init_fn"] = _worker_init
    if not args.plain_loader:
        try:
            from torchdata.stateful_dataloader import StatefulDataLoader
        except ImportError:
            pass
        else:
            return StatefulDataLoader(dataset, **kwargs), True
    return torch.utils.data.DataLoader(dataset, **kwargs), False


def _worker_init(_: int) -> None:
    # Workers must die on SIGTERM (the DataLoader stops them that way); only the main
    # process turns SIGTERM into "checkpoint, then exit".
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)


class SampleLog:
    """``--log-samples``: per step and rank, the samples' global indices and decoded frame ids."""

    def __init__(self, path: str | None, *, rank: int, world_size: int, cfg: DatasetConfig):
        self.file = None
        self.rank, self.world_size = rank, world_size
        self.camera_pos = 0
        self.decodable = True
        if not path:
            return
        self.path = rank_path(path, rank, world_size)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a")  # noqa: SIM115 - closed in close()
        self.cfg = cfg

    def write(
        self,
        step: int,
        epoch: int,
        batch: Mapping[str, Any],
        camera: str | None,
        loss: float | None,
    ) -> None:
        if self.file is None:
            return
        frames = None
        if camera is not None and self.decodable:
            frames = self._frames(batch[camera], camera)
        record = {
            "step": step,
            "epoch": epoch,
            "rank": self.rank,
            "world_size": self.world_size,
            "index": batch["index"].tolist(),
            "episode_index": batch["episode_index"].tolist(),
            "frame_index": batch["frame_index"].tolist(),
            "frames": frames,
            "is_repeat": batch["is_repeat"].tolist() if "is_repeat" in batch else None,
            "loss": loss,
        }
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def _frames(self, images: torch.Tensor, camera: str) -> list[list[int]] | None:
        from framestream.testing import decode_frame_id

        if images.ndim == 5:  # a window: decode the current frame (delta 0), else the first
            deltas = (self.cfg.delta_timestamps or {}).get(camera, [])
            pos = min(range(len(deltas)), key=lambda i: abs(deltas[i])) if deltas else 0
            images = images[:, pos]
        try:
            ids = [decode_frame_id(img) for img in images.cpu()]
        except ValueError:  # not a synthetic dataset: frame ids are not in the pixels
            self.decodable = False
            return None
        return [[fid.episode, fid.frame, fid.camera] for fid in ids]

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def rank_path(path: str, rank: int, world_size: int) -> Path:
    """``path`` for ``rank``: ``{rank}`` formatted, else ``.rank<r>`` added when world > 1."""
    if "{rank}" in path:
        return Path(path.format(rank=rank))
    p = Path(path)
    return p if world_size == 1 else p.with_name(f"{p.stem}.rank{rank}{p.suffix}")


def delivered_frames(batch: Mapping[str, Any], camera_keys: Sequence[str]) -> int:
    """Camera frames in a batch (samples x window x cameras): what the loader delivered."""
    n = 0
    for key in camera_keys:
        t = batch[key]
        n += t.shape[0] * (t.shape[1] if t.ndim == 5 else 1)
    return n


# ============================================================================ checkpoints
def _load_data_state(path: Path, rank: int) -> dict[str, Any] | None:
    return torch.load(path / f"data_rank{rank}.pt", map_location="cpu", weights_only=False)


def resolve_resume(arg: str | None, output_dir: Path) -> Path | None:
    if arg is None:
        return None
    if arg != LATEST:
        path = Path(arg)
        if not (path / TRAIN_STATE).exists():
            raise SystemExit(f"--resume {path}: no {TRAIN_STATE} there")
        return path
    marker = output_dir / "checkpoints" / LATEST
    if not marker.exists():
        return None
    return output_dir / "checkpoints" / marker.read_text().strip()


def save_checkpoint(
    accelerator: Any,
    ckpt_root: Path,
    *,
    step: int,
    epoch: int,
    model: nn.Module | None,
    optimizer: torch.optim.Optimizer | None,
    data_state: dict[str, Any],
    meta: dict[str, Any],
    keep: int,
) -> Path:
    """Every rank writes its stream state, then the main process the model, optimizer and step,
    and last the ``latest`` marker: a checkpoint interrupted half-way is never picked up.

    The folder must be on a filesystem all nodes see (the usual case on a cluster).
    """
    name = f"step-{step:09d}"
    tmp = ckpt_root / f".{name}.tmp"
    final = ckpt_root / name
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(data_state, tmp / f"data_rank{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {"step": step, "epoch": epoch, **meta}
        if model is not None and optimizer is not None:
            state["model"] = accelerator.unwrap_model(model).state_dict()
            state["optimizer"] = optimizer.state_dict()
        torch.save(state, tmp / TRAIN_STATE)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        marker = ckpt_root / LATEST
        (ckpt_root / f".{LATEST}.tmp").write_text(name)
        os.replace(ckpt_root / f".{LATEST}.tmp", marker)
        old = sorted(p for p in ckpt_root.glob("step-*") if p.is_dir())
        for p in old[: max(0, len(old) - max(1, keep))]:
            shutil.rmtree(p, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


# ============================================================================ main
class StopFlag:
    """SIGTERM/SIGUSR1 turn into "checkpoint at the next step boundary, then exit"."""

    def __init__(self) -> None:
        self.raised = False
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handler)

    def _handler(self, signum: int, _frame: Any) -> None:
        print(f"[signal {signum}] checkpointing at the next step", file=sys.stderr, flush=True)
        self.raised = True


def prepare_data(
    args: argparse.Namespace, overrides: Sequence[str], accelerator: Any
) -> tuple[DatasetConfig, DatasetMeta, Any]:
    """The dataset config (with a synthetic root when none is given), its metadata, the dataset."""
    cfg, needs_synthetic = dataset_config(args, overrides, world_size=accelerator.num_processes)
    if needs_synthetic or args.tiny:
        params = dict(TINY_DATASET) if args.tiny else None
        if params is not None and args.synthetic_episodes is not None:
            params["num_episodes"] = args.synthetic_episodes
        with accelerator.local_main_process_first():  # one node-local generation, then cached
            root = synthetic_dataset(params, progress=accelerator.is_local_main_process)
        cfg = cfg.replace(root=str(root))
    meta = cfg.load_meta()
    if cfg.delta_timestamps is None and not args.dummy and args.action_horizon > 1:
        horizon = [k / meta.fps for k in range(args.action_horizon)]
        cfg = cfg.replace(delta_timestamps={"action": horizon})
    return cfg, meta, make_dataset(cfg, meta=meta)


def build_policy(cfg: DatasetConfig, meta: DatasetMeta, lr: float) -> tuple[Policy, Any]:
    """The policy sized from the dataset's features, and its optimizer."""
    if "action" not in meta.features:
        raise SystemExit(f"{cfg.url} has no 'action' feature to train on (try --dummy)")
    state_key = "observation.state" if "observation.state" in meta.features else None
    state_dim = meta.features[state_key].shape[0] if state_key else 0
    actions = (cfg.delta_timestamps or {}).get("action")
    model = Policy(
        meta.camera_keys,
        state_dim,
        meta.features["action"].shape[0],
        len(actions) if actions else 1,
        stats=meta.stats,
        state_key=state_key,
    )
    return model, torch.optim.AdamW(model.parameters(), lr=lr)


class Run:
    """The training loop's state (step, epoch, stream position) and what it does with it."""

    def __init__(self, args: argparse.Namespace, accelerator: Any, dataset: Any) -> None:
        self.args, self.accelerator, self.dataset = args, accelerator, dataset
        self.loader, self.stateful = make_loader(
            dataset, args, pin_memory=accelerator.device.type == "cuda"
        )
        self.model: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.step = self.epoch = 0
        self.epoch_batches = 0  # batches of the current epoch consumed, across resumes
        # True between the end of one epoch and the first batch of the next: a checkpoint
        # taken then keeps no stream position. (A StatefulDataLoader state saved after its
        # epoch ended resumes *that* finished epoch: the next one would be skipped.)
        self.between_epochs = False
        self.ckpt_root = Path(args.output_dir) / "checkpoints"
        self.meta = {
            "world_size": accelerator.num_processes,
            "num_workers": args.num_workers,
            "batch_size": args.batch_size,
            "stateful_loader": self.stateful,
        }

    def restore(self, path: Path) -> None:
        """Model, optimizer, step, and the stream: exactly where it stopped when the layout
        (processes, workers, loader) is the one saved, else elastically (no sample lost or
        repeated; the rest of the epoch in another order) through ``merge_states``."""
        acc = self.accelerator
        saved = torch.load(path / TRAIN_STATE, map_location="cpu", weights_only=False)
        self.step, self.epoch = int(saved["step"]), int(saved["epoch"])
        self.epoch_batches = int(saved.get("epoch_batches", 0))
        if self.model is not None and self.optimizer is not None:
            if "model" not in saved:
                raise SystemExit(f"{path} was written by a --dummy run (no model)")
            acc.unwrap_model(self.model).load_state_dict(saved["model"])
            self.optimizer.load_state_dict(saved["optimizer"])
        layout = ("world_size", "num_workers", "stateful_loader")
        if all(saved[k] == self.meta[k] for k in layout):
            state = _load_data_state(path, acc.process_index)
            if state is not None:
                (self.loader if self.stateful else self.dataset).load_state_dict(state)
            self.between_epochs = state is None
        else:
            self.between_epochs = not self._restore_other_layout(path, saved)
        resplit = any(saved[k] != self.meta[k] for k in ("world_size", "num_workers"))
        how = "exact"
        if resplit:
            how = "elastic, from " + ", ".join(f"{k}={saved[k]}" for k in layout[:2])
        acc.print(f"[resume] {path}: step {self.step}, epoch {self.epoch} ({how})")

    def _restore_other_layout(self, path: Path, saved: Mapping[str, Any]) -> bool:
        """Every saved rank's stream state, merged: each new rank and worker takes its part of
        what the saved streams still owed (exact when processes and workers are unchanged).
        False if the checkpoint holds no stream position (saved between two epochs)."""
        plain_workers = not self.stateful and self.args.num_workers > 0
        saved_plain_workers = not saved["stateful_loader"] and int(saved["num_workers"]) > 0
        states = [_load_data_state(path, r) for r in range(int(saved["world_size"]))]
        if all(s is None for s in states):
            return False
        if saved_plain_workers or plain_workers:
            # A plain DataLoader's position is "k batches into the epoch's own plan": it
            # cannot describe another layout's leftovers, and cannot be described by them.
            raise SystemExit(
                f"{path}: resuming with other processes/workers/loader needs stream states on "
                "both sides: a StatefulDataLoader (torchdata) or --num-workers 0; this run or "
                "the saved one uses a plain DataLoader with workers. Resume with the saved "
                f"layout (world_size={saved['world_size']}, num_workers={saved['num_workers']}, "
                f"stateful_loader={saved['stateful_loader']})."
            )
        from framestream import merge_states

        self.dataset.load_state_dict(merge_states([s for s in states if s is not None]))
        return True

    def data_state(self) -> dict[str, Any] | None:
        """This rank's stream position for a checkpoint."""
        if self.between_epochs:
            return None
        if self.stateful:
            return self.loader.state_dict()
        if self.args.num_workers == 0:
            return self.dataset.state_dict()
        # A plain DataLoader with workers: the position follows from the batches consumed.
        return self.dataset.progress_state(
            batches=self.epoch_batches,
            batch_size=self.args.batch_size,
            num_workers=self.args.num_workers,
            epoch=self.epoch,
        )

    def checkpoint(self, dataset_cfg: DatasetConfig) -> None:
        path = save_checkpoint(
            self.accelerator,
            self.ckpt_root,
            step=self.step,
            epoch=self.epoch,
            model=self.model,
            optimizer=self.optimizer,
            data_state=self.data_state(),
            meta=self.meta
            | {"epoch_batches": self.epoch_batches, "dataset": dataset_cfg.to_dict()},
            keep=self.args.keep_checkpoints,
        )
        self.accelerator.print(f"[checkpoint] step {self.step} -> {path}")

    def train_step(self, batch: Mapping[str, Any]) -> float | None:
        """One optimisation step on this rank's batch (DDP syncs gradients); None if --dummy."""
        if self.model is None or self.optimizer is None:
            return None
        acc = self.accelerator
        on_device = {
            k: v.to(acc.device, non_blocking=True)
            for k, v in batch.items()
            if isinstance(v, torch.Tensor)
        }
        with acc.autocast():
            loss = self.model(on_device)
        self.optimizer.zero_grad(set_to_none=True)
        acc.backward(loss)
        acc.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        return float(loss.detach())


class Throughput:
    """Samples and delivered camera frames, summed over ranks at each report."""

    def __init__(self, accelerator: Any) -> None:
        self.accelerator = accelerator
        world = accelerator.num_processes
        self.nodes = max(1, world // int(os.environ.get("LOCAL_WORLD_SIZE", world)))
        self.pending = torch.zeros(2, dtype=torch.float64)  # since the last report
        self.totals = torch.zeros(2, dtype=torch.float64)
        self.t_start = self.t_last = time.perf_counter()

    def add(self, samples: int, frames: int) -> None:
        self.pending += torch.tensor([samples, frames], dtype=torch.float64)

    def report(self) -> tuple[float, float]:
        """(samples/s over all ranks, frames/s per node) since the last report; collective."""
        now = time.perf_counter()
        summed = self.accelerator.reduce(self.pending.to(self.accelerator.device), "sum").cpu()
        dt = max(now - self.t_last, 1e-9)
        self.totals += summed
        self.pending.zero_()
        self.t_last = now
        return float(summed[0]) / dt, float(summed[1]) / dt / self.nodes

    def summary(self) -> dict[str, Any]:
        self.report()
        elapsed = max(time.perf_counter() - self.t_start, 1e-9)
        return {
            "nodes": self.nodes,
            "seconds": elapsed,
            "samples": int(self.totals[0]),
            "samples_per_s": float(self.totals[0]) / elapsed,
            "frames_per_s_per_node": float(self.totals[1]) / elapsed / self.nodes,
        }


def main(argv: Sequence[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    warnings.filterwarnings("ignore", message=".*set_vital.*")  # torchdata 0.11 noise
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.utils import set_seed

    # dispatch_batches=False/split_batches=False only matter if someone later passes a loader
    # through prepare(); this script never does (see the module docstring).
    accelerator = Accelerator(
        cpu=args.cpu or _cpu_only_distributed(),
        dataloader_config=DataLoaderConfiguration(dispatch_batches=False, split_batches=False),
    )
    rank, world = accelerator.process_index, accelerator.num_processes
    asked = requested_processes()
    if asked is not None and asked > world:
        accelerator.print(
            f"[launch] asked for {asked} processes but got {world}: `accelerate launch --cpu` "
            "starts one process; use `accelerate launch --multi_gpu --num_processes N` (gloo "
            "on CPU) or torchrun --nproc_per_node N"
        )
    set_seed(args.seed)
    stop = StopFlag()

    cfg, meta, dataset = prepare_data(args, overrides, accelerator)
    accelerator.print(f"[config] world_size={world} dataset={json.dumps(cfg.to_dict())}")
    accelerator.print(
        f"[data] {cfg.url}: {len(dataset.episodes)} episodes, rank {rank} reads "
        f"{dataset.num_samples(num_workers=args.num_workers)} samples/epoch"
    )
    run = Run(args, accelerator, dataset)
    if not args.dummy:
        model, optimizer = build_policy(cfg, meta, args.lr)
        run.model, run.optimizer = accelerator.prepare(model, optimizer)  # NOT the DataLoader

    resume_dir = resolve_resume(args.resume, Path(args.output_dir))
    if resume_dir is not None:
        run.restore(resume_dir)
    elif args.resume is not None:
        accelerator.print(f"[resume] no checkpoint in {run.ckpt_root}: starting fresh")

    sample_log = SampleLog(args.log_samples, rank=rank, world_size=world, cfg=cfg)
    cameras = list(meta.camera_keys)
    speed = Throughput(accelerator)
    last_loss: float | None = None
    steps_run = 0
    done = args.max_steps is not None and run.step >= args.max_steps
    stopped = False
    while not done and not stopped and run.epoch < args.epochs:
        dataset.set_epoch(run.epoch)
        for batch in run.loader:
            run.step += 1
            run.epoch_batches += 1
            run.between_epochs = False
            steps_run += 1
            speed.add(len(batch["index"]), delivered_frames(batch, cameras))
            loss = run.train_step(batch)
            last_loss = loss if loss is not None else last_loss
            sample_log.write(run.step, run.epoch, batch, cameras[0] if cameras else None, loss)
            if args.log_every > 0 and run.step % args.log_every == 0:
                samples_s, frames_s = speed.report()
                loss_txt = "" if last_loss is None else f"loss {last_loss:.4f} | "
                accelerator.print(
                    f"step {run.step} | epoch {run.epoch} | {loss_txt}{samples_s:.1f} samples/s "
                    f"(all ranks) | {frames_s:.1f} frames/s/node"
                )
            done = args.max_steps is not None and run.step >= args.max_steps
            stopped = _any(accelerator, stop.raised) if world > 1 else stop.raised
            due = args.checkpoint_every > 0 and run.step % args.checkpoint_every == 0
            if done or stopped:
                break
            if due:
                run.checkpoint(cfg)
        else:  # the epoch ran out
            run.epoch += 1
            run.epoch_batches = 0
            run.between_epochs = True

    run.checkpoint(cfg)
    summary = {
        "steps": steps_run,
        "final_step": run.step,
        "epoch": run.epoch,
        "world_size": world,
        **speed.summary(),
        "last_loss": last_loss,
        "stopped_by_signal": stopped,
        "dataset_stats_rank0": dataset.stats(),
    }
    accelerator.print("[summary] " + json.dumps(summary))
    if args.metrics_json and accelerator.is_main_process:
        Path(args.metrics_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.metrics_json).write_text(json.dumps(summary, indent=2))
    sample_log.close()
    # Every rank past its last collective before any destroys the process group: a rank that
    # tore gloo down while another still talked to it aborted at exit now and then
    # ("terminate called without an active exception", SIGABRT).
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


def requested_processes() -> int | None:
    """How many processes the launcher was asked for, when it can be told; else None.

    ``accelerate launch --num_processes 2 --cpu`` runs the script once, without WORLD_SIZE,
    but sets MASTER_ADDR (it does so only for more than one process): the number asked for is
    then read from the launcher's command line (the parent process), or is at least 2.
    """
    if "WORLD_SIZE" in os.environ or "MASTER_ADDR" not in os.environ:
        return None
    asked = 2
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            argv = f.read().decode(errors="replace").split("\0")
    except OSError:
        return asked
    for i, arg in enumerate(argv):
        name, _, value = arg.partition("=")
        if name in ("--num_processes", "--num-processes"):
            value = value or (argv[i + 1] if i + 1 < len(argv) else "")
            if value.isdigit():
                asked = int(value)
    return asked


def _cpu_only_distributed() -> bool:
    """Several processes on a machine without an accelerator: Accelerate needs ``cpu=True``
    there, otherwise it ignores the launcher's WORLD_SIZE and every process trains alone."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    accel = getattr(torch, "accelerator", None)
    has_accelerator = accel.is_available() if accel is not None else torch.cuda.is_available()
    return not has_accelerator


def _any(accelerator: Any, flag: bool) -> bool:
    """True on every rank if any rank saw a stop signal (all ranks must stop at the same step)."""
    t = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(t, reduction="sum").item() > 0)


if __name__ == "__main__":
    sys.exit(main())
