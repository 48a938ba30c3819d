"""The frame windows a run asks for: mode presets and ``--delta``/``--deltas-json`` overrides.

Why frames and not seconds on the command line: windows are naturally "16 frames back"; they
become LeRobot's ``delta_timestamps`` (seconds) only once the dataset's fps is known.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from framestream.bench.config import MODES, BenchConfig

CAMERAS_KEY = "cameras"  # in --delta: every camera of the dataset


def parse_delta_spec(spec: str) -> list[int]:
    """``'-120:120:30'`` (inclusive range), ``'0,5,10'`` or a mix, as frame offsets."""
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if ":" in part:
            bits = [int(b) for b in part.split(":")]
            if len(bits) not in (2, 3):
                raise ValueError(f"bad range {part!r}: expected START:STOP or START:STOP:STEP")
            start, stop = bits[0], bits[1]
            step = bits[2] if len(bits) == 3 else (1 if stop >= start else -1)
            if step == 0 or (stop - start) * step < 0:
                raise ValueError(f"bad range {part!r}: the step does not reach STOP")
            out.extend(range(start, stop + (1 if step > 0 else -1), step))
        else:
            out.append(int(part))
    if not out:
        raise ValueError(f"empty delta spec {spec!r}")
    return out


def mode_frames(mode: str, *, camera_keys: Sequence[str], features: Sequence[str]) -> dict:
    """The mode's window as integer frame offsets per key (``{}``: current frame only)."""
    if mode in ("single", "custom"):
        return {}
    state = ["observation.state"] if "observation.state" in features else []
    if mode == "sarm":
        offs = list(range(-120, 121, 30))
        return {k: offs for k in [*state, *camera_keys]}
    if mode == "window":
        past = list(range(-150, 1, 10))  # 16 entries over the last 5 s at 30 fps
        out = {k: past for k in [*state, *camera_keys]}
        if "action" in features:
            out["action"] = list(range(16))
        return out
    raise ValueError(f"unknown mode {mode!r} (choose from {MODES})")


def resolve_deltas(
    cfg: BenchConfig, *, camera_keys: Sequence[str], features: Sequence[str], fps: int
) -> tuple[str, dict[str, list[float]]]:
    """(mode, delta_timestamps in seconds) from the mode preset and the overrides."""
    mode = cfg.mode or ("custom" if (cfg.delta or cfg.deltas_json) else "single")
    frames = mode_frames(mode, camera_keys=camera_keys, features=features)
    seconds: dict[str, list[float]] = {k: [f / fps for f in v] for k, v in frames.items()}
    if cfg.deltas_json:
        loaded = json.loads(Path(cfg.deltas_json).read_text())
        if not isinstance(loaded, dict):
            raise ValueError(f"{cfg.deltas_json}: expected a JSON object {{key: [seconds]}}")
        for key, values in loaded.items():
            keys = list(camera_keys) if key == CAMERAS_KEY else [key]
            for k in keys:
                seconds[k] = [float(v) for v in values]
    for item in cfg.delta:
        key, sep, spec = item.partition("=")
        if not sep:
            raise ValueError(f"--delta {item!r}: expected KEY=SPEC")
        offs = parse_delta_spec(spec)
        keys = list(camera_keys) if key.strip() == CAMERAS_KEY else [key.strip()]
        for k in keys:
            seconds[k] = [f / fps for f in offs]
    return mode, seconds
