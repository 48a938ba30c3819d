"""Depth videos as LeRobot 0.6.1 writes and reads them.

LeRobot stores a depth camera (``info.is_depth_map``) as 12-bit codes in a ``gray12le`` video
(HEVC lossless); the codes are a log (or linear) quantization of depth between ``depth_min``
and ``depth_max`` metres (``video.depth_min/depth_max/shift/use_log`` in the feature's info).
:func:`dequantize` inverts it with the same float32 operations as LeRobot's
``dequantize_depth`` (torch path), so the values are identical: millimetres rounded to whole
numbers (``"mm"``, the default) or metres (``"m"``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

DEPTH_QMAX = 4095  # 12-bit codes
MM_PER_METRE = 1000.0
DepthUnit = Literal["mm", "m"]


@dataclass(frozen=True)
class DepthCoding:
    """How one depth camera's codes map to metres (from its feature ``info``)."""

    depth_min: float = 0.01
    depth_max: float = 10.0
    shift: float = 3.5
    use_log: bool = True

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> DepthCoding:
        def get(name: str, default: Any) -> Any:
            value = info.get(f"video.{name}")
            return default if value is None else value

        return cls(
            float(get("depth_min", cls.depth_min)),
            float(get("depth_max", cls.depth_max)),
            float(get("shift", cls.shift)),
            bool(get("use_log", cls.use_log)),
        )


def dequantize(codes: torch.Tensor, coding: DepthCoding, unit: DepthUnit) -> torch.Tensor:
    """12-bit codes ``(..., 1, H, W)`` to float32 depth ``(..., 1, H, W)`` in ``unit``."""
    if unit not in ("mm", "m"):
        raise ValueError(f"depth_output_unit must be 'mm' or 'm', got {unit!r}")
    lo, hi, shift = coding.depth_min, coding.depth_max, coding.shift
    if coding.use_log:
        if lo + shift <= 0:
            raise ValueError(f"depth_min + shift must be > 0 for log depth, got {lo + shift}")
        log_min, log_max = math.log(lo + shift), math.log(hi + shift)
        scale, offset = (log_max - log_min) / DEPTH_QMAX, log_min
    else:
        scale, offset = (hi - lo) / DEPTH_QMAX, lo
    buf = codes.squeeze(-3).to(dtype=torch.float32, copy=True)
    buf.mul_(scale).add_(offset)
    if coding.use_log:
        buf.exp_().sub_(shift)
    buf.clamp_(lo, hi)
    buf.unsqueeze_(-3)
    if unit == "m":
        return buf
    return buf.mul_(MM_PER_METRE).round_().clamp_(0.0, 65535.0)
