"""Prove which frame a reader returned, for datasets made by ``generate_synthetic_dataset``.

Why: a loader bug rarely crashes; it returns a neighbouring episode's frame or a frame one step
off. Synthetic frames carry ``(episode, frame, camera)`` in their pixels and synthetic rows carry
``(episode, frame, index)`` in their values (encoding described in
:mod:`framestream.testing.framecode`), so a test can assert identity instead of eyeballing images::

    sample = dataset[i]
    assert decode_frame_id(sample["observation.images.cam0"]) == (ep, frame, 0)
    assert state_ids(sample["observation.state"]) == (ep, frame, i)

Decoding raises ``ValueError`` on anything that is not an intact synthetic frame, so a wrong,
blended or garbled image cannot pass silently.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from framestream.testing.framecode import FrameId, decode_gray, encode_frame

__all__ = [
    "FrameId",
    "action_ids",
    "decode_frame_id",
    "decode_frame_ids",
    "encode_frame",
    "state_ids",
]


def _to_numpy(array: Any) -> np.ndarray:
    """A numpy view of a numpy array, torch tensor (any device) or nested sequence."""
    if hasattr(array, "detach"):  # torch.Tensor, without importing torch
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def decode_frame_id(image: Any, size: tuple[int, int] | None = None) -> FrameId:
    """Decode ``(episode, frame, camera)`` from one synthetic image.

    ``image``: numpy array or torch tensor, CHW or HWC (or HW grey), uint8 in [0, 255] or
    float in [0, 1]. ``size``: the ``(height, width)`` it was generated at, if it was resized
    since. Raises ``ValueError`` if the code is unreadable or its checksum fails.
    """
    array = _to_numpy(image)
    floating = np.issubdtype(array.dtype, np.floating)
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        gray = array[:3].astype(np.float64).mean(axis=0)
    elif array.ndim == 3 and array.shape[-1] in (1, 3, 4):
        gray = array[..., :3].astype(np.float64).mean(axis=-1)
    elif array.ndim == 2:
        gray = array.astype(np.float64)
    else:
        raise ValueError(f"expected one image (HW, CHW or HWC), got shape {array.shape}")
    if floating:
        if gray.size and np.nanmax(gray) > 1.0 + 1e-3:
            raise ValueError("a float image must be in [0, 1]; pass uint8 for [0, 255]")
        gray = gray * 255.0
    return decode_gray(gray, size)


def decode_frame_ids(batch: Any, size: tuple[int, int] | None = None) -> list[Any]:
    """Decode every image of a batch with leading dimensions, e.g. ``(B, C, H, W)`` or
    ``(B, T, C, H, W)``: a list of :class:`FrameId` (nested one level per extra dimension)."""
    array = _to_numpy(batch)
    if array.ndim < 4:
        raise ValueError(f"expected a batch of images (ndim >= 4), got shape {array.shape}")
    if array.ndim == 4:
        return [decode_frame_id(image, size) for image in array]
    return [decode_frame_ids(item, size) for item in array]


def _integer(value: float, what: str) -> int:
    if not np.isfinite(value) or value != round(value) or value < 0:
        raise ValueError(f"{what} {value!r} is not a non-negative integer: not a synthetic row")
    return int(round(value))


def state_ids(state: Any) -> tuple[int, int, int]:
    """``(episode, frame, index)`` from a synthetic ``observation.state`` vector."""
    values = _to_numpy(state).astype(np.float64).reshape(-1)
    if len(values) < 3:
        raise ValueError(f"a synthetic state has at least 3 values, got {len(values)}")
    return (
        _integer(values[0], "episode"),
        _integer(values[1], "frame"),
        _integer(values[2], "index"),
    )


def action_ids(action: Any) -> tuple[int, int, int]:
    """``(episode, frame, index)`` from a synthetic ``action`` vector (needs 3 values)."""
    values = _to_numpy(action).astype(np.float64).reshape(-1)
    if len(values) < 3:
        raise ValueError(f"need an action with at least 3 values, got {len(values)}")
    return (
        _integer(values[1], "episode"),
        _integer(values[2], "frame"),
        _integer(values[0] - 0.5, "index"),
    )
