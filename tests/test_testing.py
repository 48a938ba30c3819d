"""The frame and row identity codes round-trip, and refuse anything that is not intact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from framestream.testing import (
    FrameId,
    action_ids,
    decode_frame_id,
    decode_frame_ids,
    encode_frame,
    state_ids,
)
from framestream.testing.framecode import (
    MAX_CAMERA,
    MAX_EPISODE,
    MAX_FRAME,
    action_rows,
    cell_size,
    code_bits,
    state_rows,
)

SIZES = [(48, 80), (64, 96), (240, 320), (480, 640), (97, 131)]


@pytest.mark.parametrize(("height", "width"), SIZES)
@pytest.mark.parametrize(
    "ident", [(0, 0, 0), (1, 2, 3), (MAX_EPISODE, MAX_FRAME, MAX_CAMERA), (54321, 999, 7)]
)
def test_round_trip_numpy_hwc_uint8(height: int, width: int, ident: tuple[int, int, int]) -> None:
    image = encode_frame(*ident, height, width)
    assert image.shape == (height, width, 3) and image.dtype == np.uint8
    decoded = decode_frame_id(image)
    assert isinstance(decoded, FrameId)
    assert decoded == ident


def test_accepts_torch_chw_float_and_grey() -> None:
    image = encode_frame(12, 34, 5, 64, 96)
    chw_uint8 = torch.from_numpy(image).permute(2, 0, 1)
    chw_float = chw_uint8.float() / 255.0
    assert decode_frame_id(chw_uint8) == (12, 34, 5)
    assert decode_frame_id(chw_float) == (12, 34, 5)
    assert decode_frame_id(chw_float.numpy().astype(np.float16)) == (12, 34, 5)
    assert decode_frame_id(torch.from_numpy(image)) == (12, 34, 5)
    assert decode_frame_id(image[..., 1]) == (12, 34, 5)


@settings(max_examples=60, deadline=None)
@given(
    episode=st.integers(0, MAX_EPISODE),
    frame=st.integers(0, MAX_FRAME),
    camera=st.integers(0, MAX_CAMERA),
)
def test_round_trip_any_identity(episode: int, frame: int, camera: int) -> None:
    assert decode_frame_id(encode_frame(episode, frame, camera, 64, 96)) == (episode, frame, camera)


def test_survives_noise_and_resizing() -> None:
    image = encode_frame(777, 4321, 2, 240, 320)
    rng = np.random.default_rng(0)
    noisy = np.clip(image + rng.normal(0, 25, image.shape), 0, 255).astype(np.uint8)
    assert decode_frame_id(noisy) == (777, 4321, 2)
    chw = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    for scale in (0.5, 1.5):
        resized = torch.nn.functional.interpolate(
            chw, scale_factor=scale, mode="bilinear", antialias=True
        )[0]
        assert decode_frame_id(resized.clamp(0, 1), size=(240, 320)) == (777, 4321, 2)


def test_batches_with_leading_dimensions() -> None:
    ids = [[(e, f, c) for f in range(3)] for e, c in [(0, 0), (9, 1)]]
    frames = np.stack([np.stack([encode_frame(*i, 64, 96) for i in row]) for row in ids])
    btchw = torch.from_numpy(frames).permute(0, 1, 4, 2, 3)
    assert decode_frame_ids(btchw) == ids
    assert decode_frame_ids(btchw[:, 0]) == [row[0] for row in ids]
    assert decode_frame_ids(frames[0]) == ids[0]
    with pytest.raises(ValueError, match="batch"):
        decode_frame_ids(frames[0, 0])


def _flip_cell(image: np.ndarray, row: int, col: int) -> np.ndarray:
    side = cell_size(*image.shape[:2])
    out = image.copy()
    cell = out[row * side : (row + 1) * side, col * side : (col + 1) * side]
    cell[...] = 255 - cell
    return out


@pytest.mark.parametrize("cell", [(0, 0), (2, 7), (5, 9)])
def test_one_flipped_cell_is_refused(cell: tuple[int, int]) -> None:
    image = encode_frame(5, 6, 1, 64, 96)
    with pytest.raises(ValueError, match="checksum"):
        decode_frame_id(_flip_cell(image, *cell))


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((64, 96, 3), np.uint8),
        np.full((64, 96, 3), 255, np.uint8),
        np.full((64, 96, 3), 128, np.uint8),
        np.random.default_rng(1).integers(0, 256, (64, 96, 3)).astype(np.uint8),
    ],
    ids=["black", "white", "grey", "noise"],
)
def test_non_synthetic_images_are_refused(image: np.ndarray) -> None:
    with pytest.raises(ValueError):
        decode_frame_id(image)


def test_blend_of_two_frames_is_refused() -> None:
    a = encode_frame(3, 10, 0, 64, 96).astype(np.float64)
    b = encode_frame(3, 11, 0, 64, 96).astype(np.float64)
    assert not np.array_equal(code_bits(3, 10, 0), code_bits(3, 11, 0))
    with pytest.raises(ValueError, match="neither black nor white"):
        decode_frame_id(((a + b) / 2).astype(np.uint8))


def test_bad_inputs_raise_value_error() -> None:
    with pytest.raises(ValueError, match="too small"):
        encode_frame(0, 0, 0, 40, 80)
    with pytest.raises(ValueError, match="too small"):
        decode_frame_id(np.zeros((64, 72, 3), np.uint8))
    with pytest.raises(ValueError, match="outside"):
        encode_frame(MAX_EPISODE + 1, 0, 0, 64, 96)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        decode_frame_id(encode_frame(1, 2, 3, 64, 96).astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        decode_frame_id(np.zeros((2, 64, 96, 3), np.uint8))


def test_state_and_action_codes() -> None:
    frames = np.arange(50)
    index = 1_000_000 + frames
    states = state_rows(17, frames, index, 6)
    actions = action_rows(17, frames, index, 6)
    assert states.dtype == actions.dtype == np.float32
    assert states.shape == actions.shape == (50, 6)
    for f in (0, 49):
        assert state_ids(states[f]) == (17, f, 1_000_000 + f)
        assert action_ids(torch.from_numpy(actions[f])) == (17, f, 1_000_000 + f)
    assert state_rows(1, frames, index, 3).shape == (50, 3)
    assert action_rows(1, frames, index, 1)[:, 0].tolist() == (index + 0.5).tolist()
    big = 2**23 - 1  # the largest index whose index + 0.5 is exact in float32
    assert action_ids(action_rows(0, np.array([5]), np.array([big]), 3)[0]) == (0, 5, big)


def test_state_ids_refuse_non_integers() -> None:
    with pytest.raises(ValueError, match="not a non-negative integer"):
        state_ids([1.0, 2.5, 3.0])
    with pytest.raises(ValueError, match="not a non-negative integer"):
        action_ids([3.0, 1.0, 2.0])  # index + 0.5 expected in the first slot
    with pytest.raises(ValueError, match="at least 3"):
        state_ids([1.0, 2.0])
