"""YUV 4:2:0 output (half the bytes of RGB) and the exact conversion to torchcodec's RGB.

With ``pixel_format="yuv420"`` a camera frame is the decoder's own 8-bit 4:2:0 planes in
one uint8 ``(H * 3 // 2, W)`` tensor (I420: the Y plane, then U, then V, each plane's rows
packed), 1.5 bytes per pixel against 3 for RGB, and no colour conversion in the worker.
:func:`yuv_to_rgb` turns such tensors into RGB on any torch device (the training process's
GPU): it reproduces, bit for bit, what torchcodec 0.13 returns on CPU, which is FFmpeg
swscale's unscaled yuv420p -> rgb24 SIMD path (16-bit fixed point, ``pmulhw``; chroma
nearest-neighbour: one U/V sample per 2x2 block of pixels). The largest difference to
torchcodec's RGB is **0** wherever torchcodec takes that path: 8-bit limited-range yuv420p,
even height, width a multiple of 32 (torchcodec uses a filter graph for other widths).
The integer arithmetic was checked against swscale on all 256^3 (Y, U, V) triples for every
colour space, and against torchcodec on AV1, H.264, HEVC and MPEG-4 part 2 files (tests).

Colour spaces: swscale picks its coefficients from the stream's ``AVColorSpace``
(unspecified, BT.470BG and SMPTE 170M give BT.601; BT.709; FCC; SMPTE 240M; BT.2020). The
streaming dataset puts the number beside each camera as ``"{key}_yuv_colorspace"`` (an int64
per sample), so ``yuv_to_rgb(batch)`` converts every YUV camera of a batch with the right
coefficients and drops those keys.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, MutableMapping
from typing import Any

import numpy as np
import torch

COLORSPACE_SUFFIX = "_yuv_colorspace"

# libswscale/yuv2rgb.c ff_yuv2rgb_coeffs (FFmpeg 5.1 through 8): index = AVColorSpace;
# (crv, cbu, cgu, cgv) scaled by 65536. Out of range and 8 (YCgCo) give the default (5).
_FF_COEFFS = (
    (117489, 138438, 13975, 34925),
    (117489, 138438, 13975, 34925),
    (104597, 132201, 25675, 53279),
    (104597, 132201, 25675, 53279),
    (104448, 132798, 24759, 53109),
    (104597, 132201, 25675, 53279),
    (104597, 132201, 25675, 53279),
    (117579, 136230, 16907, 35559),
    (0, 0, 0, 0),
    (110013, 140363, 12277, 42626),
    (110013, 140363, 12277, 42626),
)
_NAMES = {"bt601": 5, "bt470bg": 5, "smpte170m": 6, "bt709": 1, "fcc": 4, "smpte240m": 7}
_NAMES.update({"bt2020": 9, "unspecified": 2})


def _round16(f: int) -> int:
    r = (f + (1 << 15)) >> 16
    return max(-0x8000, min(0x7FFF, r))


@functools.cache
def sws_coefficients(colorspace: int = 2) -> tuple[int, int, int, int, int, int]:
    """``(y, vr, ub, vg, ug, y_offset)``: swscale's 16-bit factors for limited-range input.

    From ``ff_yuv2rgb_c_init_tables`` with brightness 0, contrast and saturation 1 (what
    torchcodec leaves them at).
    """
    cs = int(colorspace)
    if cs < 0 or cs > 10 or cs == 8:
        cs = 5
    crv, cbu, cgu, cgv = _FF_COEFFS[cs]
    cgu, cgv = -cgu, -cgv
    cy = (1 << 16) * 255 // 219
    oy = 16 << 16
    # contrast = saturation = 1 << 16: (c * (1 << 16) * (1 << 16)) >> 32 == c
    return (
        _round16(cy << 13),
        _round16(crv << 13),
        _round16(cbu << 13),
        _round16(cgv << 13),
        _round16(cgu << 13),
        _round16(oy << 3),
    )


def colorspace_id(colorspace: int | str) -> int:
    """An ``AVColorSpace`` number from a number or a name (``"bt601"``, ``"bt709"``, ...)."""
    if isinstance(colorspace, str):
        try:
            return _NAMES[colorspace.lower()]
        except KeyError:
            known = sorted(_NAMES)
            raise ValueError(f"unknown colour space {colorspace!r}; known: {known}") from None
    return int(colorspace)


def i420_to_rgb(x: torch.Tensor, colorspace: int | str = 2) -> torch.Tensor:
    """uint8 ``(..., H*3/2, W)`` I420 frames to uint8 ``(..., 3, H, W)`` RGB on ``x``'s device.

    Bit-identical to torchcodec's CPU RGB (see the module docstring); integer arithmetic
    only, so any device gives the same bytes.
    """
    if x.dtype != torch.uint8 or x.dim() < 2 or x.shape[-2] % 3:
        raise ValueError(f"expected uint8 (..., H*3/2, W) I420 frames, got {tuple(x.shape)}")
    rows, w = x.shape[-2], x.shape[-1]
    h = rows * 2 // 3
    if h % 2 or w % 2:
        raise ValueError(f"I420 needs an even height and width, got {h}x{w}")
    lead = x.shape[:-2]
    flat = x.reshape(-1, rows * w)
    n = flat.shape[0]
    yc, vr, ub, vg, ug, yoff = sws_coefficients(colorspace_id(colorspace))
    y = flat[:, : h * w].to(torch.int32).view(n, h // 2, 2, w // 2, 2)
    q = (h // 2) * (w // 2)
    u = flat[:, h * w : h * w + q].to(torch.int32).view(n, h // 2, 1, w // 2, 1) * 8 - 1024
    v = flat[:, h * w + q :].to(torch.int32).view(n, h // 2, 1, w // 2, 1) * 8 - 1024
    yt = ((y * 8 - yoff) * yc) >> 16
    r = yt + ((v * vr) >> 16)
    g = yt + (((u * ug) >> 16) + ((v * vg) >> 16))
    b = yt + ((u * ub) >> 16)
    out = torch.stack([r, g, b], dim=1).clamp_(0, 255).to(torch.uint8)  # (n, 3, h/2, 2, w/2, 2)
    return out.view(*lead, 3, h, w)


def yuv_to_rgb(
    x: torch.Tensor | MutableMapping[str, Any],
    colorspace: int | str | None = None,
    *,
    dtype: torch.dtype = torch.uint8,
) -> Any:
    """RGB from YUV output (``pixel_format="yuv420"``), exactly torchcodec's RGB.

    ``x`` is a batch (or sample) dict: every key ``K`` that has ``K + "_yuv_colorspace"``
    beside it is converted to ``(..., 3, H, W)`` with that colour space, and the marker is
    removed (in place; the dict is returned). Or ``x`` is one I420 tensor ``(..., H*3/2, W)``
    and ``colorspace`` names its colour space (default: unspecified, i.e. BT.601). Runs on
    the tensors' device; move the batch to the GPU first. ``dtype=torch.float32`` gives
    values in [0, 1] (LeRobot's default float output) after the exact uint8 conversion.
    """
    if isinstance(x, torch.Tensor):
        return _out(i420_to_rgb(x, 2 if colorspace is None else colorspace), dtype)
    for key in [k for k in x if k.endswith(COLORSPACE_SUFFIX)]:
        cam = key[: -len(COLORSPACE_SUFFIX)]
        marks = torch.as_tensor(x.pop(key)).reshape(-1)
        frames = x[cam]
        values = marks.unique().tolist() if colorspace is None else [colorspace]
        if len(values) == 1:
            x[cam] = _out(i420_to_rgb(frames, values[0]), dtype)
            continue
        # Samples of different files with different colour spaces in one batch.
        rows = frames.shape[-2] * 2 // 3
        out = torch.empty((*frames.shape[:-2], 3, rows, frames.shape[-1]), dtype=torch.uint8)
        out = out.to(frames.device)
        marks = marks.to(frames.device)
        for cs in values:
            sel = marks == cs
            out[sel] = i420_to_rgb(frames[sel], cs)
        x[cam] = _out(out, dtype)
    return x


def _out(rgb: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return rgb if dtype == torch.uint8 else rgb.to(dtype).div_(255.0)


def i420_into(frame: Any, out: np.ndarray) -> np.ndarray:
    """Copy a PyAV yuv420p frame's planes into ``out``, a C-contiguous ``(H*3/2, W)`` array.

    Raises ValueError for frames :func:`i420_to_rgb` cannot reproduce torchcodec on (another
    pixel format, full range, odd size).
    """
    fmt = frame.format.name
    if fmt != "yuv420p" or int(frame.color_range or 0) == 2:
        raise ValueError(
            f"pixel_format='yuv420' needs 8-bit limited-range yuv420p video, this frame is "
            f"{fmt}{' (full range)' if fmt == 'yuv420p' else ''}; use pixel_format='rgb'"
        )
    h, w = frame.height, frame.width
    if h % 2 or w % 2:
        raise ValueError(f"pixel_format='yuv420' needs an even height and width, got {w}x{h}")
    flat = out.reshape(-1)
    pos = 0
    for i, (ph, pw) in enumerate(((h, w), (h // 2, w // 2), (h // 2, w // 2))):
        plane = frame.planes[i]
        src = np.frombuffer(plane, dtype=np.uint8).reshape(-1, plane.line_size)[:ph, :pw]
        flat[pos : pos + ph * pw].reshape(ph, pw)[...] = src
        pos += ph * pw
    return out


def colorspaces_of(sample: Mapping[str, Any]) -> dict[str, int]:
    """``{camera: AVColorSpace}`` of the YUV cameras in a sample or batch."""
    return {
        k[: -len(COLORSPACE_SUFFIX)]: int(torch.as_tensor(v).reshape(-1)[0])
        for k, v in sample.items()
        if k.endswith(COLORSPACE_SUFFIX)
    }
