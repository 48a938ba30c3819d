"""Write small, deterministic LeRobot v3.0 datasets with LeRobot 0.6.1's own writer.

Run with the LeRobot reference venv:

    HF_HUB_OFFLINE=1 LEROBOT_PYTHON write_fixture.py OUT_DIR KIND [--check]

OUT_DIR must not exist yet (LeRobot's writer refuses an existing root).  KIND is one of

  rgb    2 RGB video cameras + observation.state + action (float32).
  train  rgb + a PNG `image` camera + float64 / uint8 / bool / scalar features.  This is the
         kind `lerobot-train --policy.type=act` trains on (all cameras 3-channel).
  full   train + a depth video camera (is_depth_map, HEVC gray12le, uint16 mm input) +
         the two language columns (dtype "language"; written as null by the recorder).

Every kind: 30 fps, 64x48 frames, 6 episodes of 20..37 frames, 3 tasks (episode 3 switches
task mid-episode), data_files_size_in_mb / video_files_size_in_mb tiny so data and each camera
roll over into several files *independently*.  Pixel content encodes (episode, frame, camera)
so a wrong-frame decode is visible.  --single-file keeps LeRobot's default file sizes (one
file each).  --check reads the result back with LeRobotDataset.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

FPS = 30
H, W = 48, 64
EPISODE_LENGTHS = [24, 31, 20, 37, 28, 33]
TASKS = ["pick the red cube", "push the blue block", "open the drawer"]
CAMERAS = ["observation.images.cam_high", "observation.images.cam_wrist"]
PNG_CAMERA = "observation.images.png_cam"
DEPTH_CAMERA = "observation.images.depth"
# Tiny limits so that files roll over (LeRobot types them `int` MB; floats work and are what
# a small fixture needs: ints would need >1 MB per camera file).
DATA_FILES_SIZE_IN_MB = 0.02
VIDEO_FILES_SIZE_IN_MB = 0.015


def features_for(kind: str) -> dict:
    feats: dict = {
        "observation.state": {
            "dtype": "float32",
            "shape": (6,),
            "names": [f"j{i}" for i in range(6)],
        },
        "action": {"dtype": "float32", "shape": (6,), "names": [f"j{i}" for i in range(6)]},
    }
    for cam in CAMERAS:
        feats[cam] = {
            "dtype": "video",
            "shape": (H, W, 3),
            "names": ["height", "width", "channels"],
        }
    if kind in ("train", "full"):
        feats[PNG_CAMERA] = {
            "dtype": "image",
            "shape": (H, W, 3),
            "names": ["height", "width", "channels"],
        }
        feats["observation.f64"] = {"dtype": "float64", "shape": (3,), "names": ["a", "b", "c"]}
        feats["observation.u8"] = {"dtype": "uint8", "shape": (2,), "names": ["u0", "u1"]}
        feats["extra.u16"] = {"dtype": "uint16", "shape": (1,), "names": None}
        feats["next.reward"] = {"dtype": "float32", "shape": (1,), "names": None}
        feats["next.done"] = {"dtype": "bool", "shape": (1,), "names": None}
    if kind == "full":
        feats[DEPTH_CAMERA] = {
            "dtype": "video",
            "shape": (H, W, 1),
            "names": ["height", "width", "channels"],
            "info": {"is_depth_map": True},
        }
        from lerobot.datasets.language import language_feature_info

        feats.update(language_feature_info())
    return feats


def rgb_frame(ep: int, fi: int, cam_id: int) -> np.ndarray:
    """Smooth background + a bright square whose position encodes the frame index."""
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.empty((H, W, 3), dtype=np.uint8)
    img[..., 0] = (xx * 4 + ep * 30) % 256
    img[..., 1] = (yy * 5 + cam_id * 90) % 256
    img[..., 2] = (fi * 7) % 256
    x0 = (fi * 3) % (W - 8)
    y0 = (ep * 7 + cam_id * 13) % (H - 8)
    img[y0 : y0 + 8, x0 : x0 + 8] = 255 if cam_id % 2 == 0 else 0
    return img


def depth_frame(ep: int, fi: int) -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    d = 400 + 20 * xx + 10 * yy + 15 * fi + 100 * ep  # millimetres
    return d.astype(np.uint16)[..., None]  # (H, W, 1) uint16 -> depth_unit "mm"


def write(out: Path, kind: str, single_file: bool = False) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    rng = np.random.default_rng(1234)
    feats = features_for(kind)
    ds = LeRobotDataset.create(
        repo_id=f"local/fixture_{kind}",
        fps=FPS,
        features=feats,
        root=out,
        robot_type="fixture_bot",
        use_videos=True,
        data_files_size_in_mb=None if single_file else DATA_FILES_SIZE_IN_MB,
        video_files_size_in_mb=None if single_file else VIDEO_FILES_SIZE_IN_MB,
    )
    for ep, length in enumerate(EPISODE_LENGTHS):
        for fi in range(length):
            if ep == 3 and fi >= length // 2:
                task = TASKS[(ep + 1) % len(TASKS)]
            else:
                task = TASKS[ep % len(TASKS)]
            frame = {
                "task": task,
                "observation.state": (rng.standard_normal(6) + ep).astype(np.float32),
                "action": (rng.standard_normal(6) * 0.5 + fi * 0.01).astype(np.float32),
            }
            for cid, cam in enumerate(CAMERAS):
                frame[cam] = rgb_frame(ep, fi, cid)
            if kind in ("train", "full"):
                frame[PNG_CAMERA] = rgb_frame(ep, fi, 2)
                frame["observation.f64"] = (rng.standard_normal(3) * 1e3 + 1 / 3).astype(np.float64)
                frame["observation.u8"] = np.array([(fi * 9) % 256, 250 + (ep % 6)], dtype=np.uint8)
                frame["extra.u16"] = np.array([60000 + ep * 100 + fi], dtype=np.uint16)
                frame["next.reward"] = np.array([float(fi == length - 1)], dtype=np.float32)
                frame["next.done"] = np.array([fi == length - 1], dtype=bool)
            if kind == "full":
                frame[DEPTH_CAMERA] = depth_frame(ep, fi)
                frame["language_persistent"] = None
                frame["language_events"] = None
            ds.add_frame(frame)
        ds.save_episode()
    ds.finalize()


def check(out: Path) -> None:
    import torch
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("local/x", root=out)
    print(ds)
    n_files = (
        {d.name: len(list(d.rglob("*.mp4"))) for d in sorted((out / "videos").iterdir())}
        if (out / "videos").exists()
        else {}
    )
    print("data files:", len(list((out / "data").rglob("*.parquet"))), "video files:", n_files)
    for i in (0, len(ds) // 2, len(ds) - 1):
        s = ds[i]
        print(
            i,
            {
                k: (tuple(v.shape), str(v.dtype)) if isinstance(v, torch.Tensor) else v
                for k, v in s.items()
            },
        )


def main() -> None:
    # LeRobot's writer does `list(set(tasks))` per episode (dataset_writer.py:284): with several
    # tasks in one episode the stored order depends on str hashing -> pin PYTHONHASHSEED.
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("kind", choices=["rgb", "train", "full"])
    ap.add_argument("--check", action="store_true")
    ap.add_argument(
        "--single-file",
        action="store_true",
        help="LeRobot's default file sizes: one data file and one mp4 per camera.  Needed to "
        "compare against StreamingLeRobotDataset, which decodes at index/fps and breaks past a "
        "camera's first file.",
    )
    args = ap.parse_args()
    if args.out.exists():
        sys.exit(f"{args.out} exists; LeRobot's writer needs a fresh root")
    write(args.out, args.kind, args.single_file)
    if args.check:
        check(args.out)


if __name__ == "__main__":
    main()
