"""Identity codes carried by every synthetic frame and row (see :mod:`framestream.testing`).

Why: a reader that returns a neighbouring episode's frame, a frame one step off, or the other
camera's frame produces plausible-looking tensors. Writing the identity *into* the data lets a
test prove which frame it got, even after lossy AV1/H.264 compression and the yuv420p round trip.

Pixel code
----------
A grid of ``6 x 10`` square cells in the top-left corner, each fully black (bit 0) or white
(bit 1). The cell side is ``8 * max(1, min(H, W) // 120)`` pixels (8 below 240, 16 from 240 to
359, ...), capped so that the grid fits and always a multiple of 8, so that cells align with
the codecs' blocks. Cells under 8 pixels would not survive compression, so resolutions under
48 x 80 (H x W) are refused. The 60 bits, row-major and most significant first, are::

    episode (20 bits) | frame (20 bits) | camera (4 bits) | CRC-16/CCITT-FALSE of those 44 bits

XORed with a fixed whitening mask, so that a black, white or grey image is never a valid code.
Decoding averages the centre half of each cell over the colour channels and refuses a cell
that is neither clearly dark nor clearly bright, then checks the CRC.

The rest of the image is a cheap, smoothly varying texture (colour triangle waves that depend on the
episode, frame and camera, plus a moving square below the code) so that the video is not
trivially compressible and neighbouring frames differ everywhere.

Tabular code
------------
``observation.state = [episode_index, frame_index, index, s_3, s_4, ...]`` and
``action = [index + 0.5, episode_index, frame_index, a_3, a_4, ...]`` (float32, trimmed to the
feature's dimension), where ``index`` is the dataset-global frame index and the extras are
``s_j = sin(0.05 * frame_index + j)`` and ``a_j = cos(0.05 * frame_index + j)``. float32 holds
these integers exactly below ``2**24`` (``index + 0.5`` below ``2**23``), which the generator
enforces.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

CODE_ROWS = 6
CODE_COLS = 10
EPISODE_BITS = 20
FRAME_BITS = 20
CAMERA_BITS = 4
CRC_BITS = 16
PAYLOAD_BITS = EPISODE_BITS + FRAME_BITS + CAMERA_BITS
TOTAL_BITS = PAYLOAD_BITS + CRC_BITS
MIN_CELL = 8
MIN_HEIGHT = CODE_ROWS * MIN_CELL
MIN_WIDTH = CODE_COLS * MIN_CELL
MAX_EPISODE = (1 << EPISODE_BITS) - 1
MAX_FRAME = (1 << FRAME_BITS) - 1
MAX_CAMERA = (1 << CAMERA_BITS) - 1
# The golden-ratio constant cut to 60 bits: all-zero and all-one grids decode to garbage.
_WHITEN = 0x9E3779B97F4A7C1
_MASK = (1 << TOTAL_BITS) - 1
# A cell's centre mean must be below _DARK or above _BRIGHT (0..255) to count as a bit.
_DARK = 0.3 * 255
_BRIGHT = 0.7 * 255

assert CODE_ROWS * CODE_COLS == TOTAL_BITS


class FrameId(NamedTuple):
    """Which frame an image is: episode index, episode-relative frame index, camera index."""

    episode: int
    frame: int
    camera: int


def cell_size(height: int, width: int) -> int:
    """Cell side in pixels for a ``height x width`` image; ValueError if the code cannot fit.

    Sides are multiples of 8 so that cells align with the codecs' transform blocks: a uniform
    block is cheap to encode and does not ring, which halves AV1 encode time.
    """
    fit = min(height // CODE_ROWS, width // CODE_COLS) // MIN_CELL * MIN_CELL
    if fit < MIN_CELL:
        raise ValueError(
            f"resolution {height}x{width} (HxW) is too small for the frame code: it needs at "
            f"least {MIN_HEIGHT}x{MIN_WIDTH} ({CODE_ROWS}x{CODE_COLS} cells of {MIN_CELL} px)"
        )
    return min(fit, MIN_CELL * max(1, min(height, width) // 120))


def _crc16(value: int, nbits: int) -> int:
    """CRC-16/CCITT-FALSE of the ``nbits`` low bits of ``value``, most significant bit first."""
    crc = 0xFFFF
    for shift in range(nbits - 1, -1, -1):
        top = (crc >> 15) ^ ((value >> shift) & 1)
        crc = (crc << 1) & 0xFFFF
        if top:
            crc ^= 0x1021
    return crc


def _check_range(name: str, value: int, maximum: int) -> int:
    value = int(value)
    if not 0 <= value <= maximum:
        raise ValueError(f"{name} {value} is outside the frame code's range [0, {maximum}]")
    return value


def code_bits(episode: int, frame: int, camera: int) -> np.ndarray:
    """The ``CODE_ROWS x CODE_COLS`` bool grid (True = white) for one frame identity."""
    episode = _check_range("episode", episode, MAX_EPISODE)
    frame = _check_range("frame", frame, MAX_FRAME)
    camera = _check_range("camera", camera, MAX_CAMERA)
    payload = (episode << (FRAME_BITS + CAMERA_BITS)) | (frame << CAMERA_BITS) | camera
    word = ((payload << CRC_BITS) | _crc16(payload, PAYLOAD_BITS)) ^ _WHITEN
    bits = [(word >> (TOTAL_BITS - 1 - i)) & 1 for i in range(TOTAL_BITS)]
    return np.array(bits, dtype=bool).reshape(CODE_ROWS, CODE_COLS)


def bits_to_id(bits: np.ndarray) -> FrameId:
    """Inverse of :func:`code_bits`; ValueError when the checksum does not match."""
    word = 0
    for bit in np.asarray(bits, dtype=bool).reshape(-1):
        word = (word << 1) | int(bit)
    word ^= _WHITEN
    payload, crc = word >> CRC_BITS, word & 0xFFFF
    if _crc16(payload, PAYLOAD_BITS) != crc:
        raise ValueError("frame code checksum mismatch: not an intact framestream synthetic frame")
    return FrameId(
        episode=payload >> (FRAME_BITS + CAMERA_BITS),
        frame=(payload >> CAMERA_BITS) & MAX_FRAME,
        camera=payload & MAX_CAMERA,
    )


@functools.lru_cache(maxsize=16)
def _ramps(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Horizontal and vertical colour ramps, cached because every frame of a video reuses them."""
    xs = np.arange(width, dtype=np.int64) * 128 // width
    ys = np.arange(height, dtype=np.int64) * 128 // height
    return xs, ys


def encode_frame(episode: int, frame: int, camera: int, height: int, width: int) -> np.ndarray:
    """Render the synthetic RGB frame (HWC uint8) that carries ``(episode, frame, camera)``.

    This is exactly what the generator encodes, so tests can compare decoded pixels with it.
    """
    side = cell_size(height, width)
    bits = code_bits(episode, frame, camera)
    xs, ys = _ramps(height, width)
    # Triangle waves, not saw-tooth ramps: no sharp edge for the encoder to spend bits on.
    row = np.empty((width, 3), dtype=np.uint8)
    row[:, 0] = 40 + np.abs((xs + 3 * frame + 50 * camera) % 256 - 128)
    row[:, 2] = (60 + 23 * episode + 80 * camera) % 256
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = row  # whole rows at once: cheaper than three strided channel writes
    image[..., 1] = (40 + np.abs((ys + 40 * camera + 7 * episode) % 256 - 128))[:, None]
    code_h, code_w = CODE_ROWS * side, CODE_COLS * side
    square = max(4, height // 6)
    if code_h + square <= height and square < width:
        x0 = (2 * frame + 13 * episode + 29 * camera) % (width - square)
        y0 = code_h + (frame // 3 + 5 * camera) % (height - code_h - square + 1)
        image[y0 : y0 + square, x0 : x0 + square] = (
            (200 + 40 * camera) % 256,
            (60 + 90 * camera) % 256,
            (40 + 17 * episode) % 256,
        )
    # A (rows, side, cols, side, 3) view of the code area: one broadcast write paints all cells.
    cells = image[:code_h, :code_w].reshape(CODE_ROWS, side, CODE_COLS, side, 3)
    cells[...] = (bits.astype(np.uint8) * 255)[:, None, :, None, None]
    return image


def decode_gray(gray: np.ndarray, size: tuple[int, int] | None = None) -> FrameId:
    """Decode a float ``(H, W)`` luminance image in [0, 255].

    ``size`` is the ``(height, width)`` the frame was generated at, for images resized since
    (cell positions are scaled); by default the image's own size.
    """
    height, width = gray.shape
    src_h, src_w = size if size is not None else (height, width)
    side = cell_size(int(src_h), int(src_w))
    sy, sx = height / src_h, width / src_w
    means = np.empty((CODE_ROWS, CODE_COLS), dtype=np.float64)
    for r in range(CODE_ROWS):
        y0 = int(round((r * side + side / 4) * sy))
        y1 = max(y0 + 1, int(round(((r + 1) * side - side / 4) * sy)))
        for c in range(CODE_COLS):
            x0 = int(round((c * side + side / 4) * sx))
            x1 = max(x0 + 1, int(round(((c + 1) * side - side / 4) * sx)))
            means[r, c] = gray[y0:y1, x0:x1].mean()
    unclear = (means > _DARK) & (means < _BRIGHT)
    if unclear.any():
        r, c = np.argwhere(unclear)[0]
        raise ValueError(
            f"frame code cell ({r}, {c}) has mean {means[r, c]:.1f}, neither black nor white: "
            "not an intact framestream synthetic frame"
        )
    return bits_to_id(means >= 127.5)


def state_rows(episode: int, frames: np.ndarray, indices: np.ndarray, dim: int) -> np.ndarray:
    """``observation.state`` rows ``(len(frames), dim)`` float32, as the generator writes them."""
    frames = np.asarray(frames, dtype=np.float64)
    extras = np.sin(0.05 * frames[:, None] + np.arange(3, max(dim, 3))[None, :])
    ids = np.stack([np.full_like(frames, episode), frames, np.asarray(indices, np.float64)], 1)
    return np.concatenate([ids, extras], axis=1)[:, :dim].astype(np.float32)


def action_rows(episode: int, frames: np.ndarray, indices: np.ndarray, dim: int) -> np.ndarray:
    """``action`` rows ``(len(frames), dim)`` float32, as the generator writes them."""
    frames = np.asarray(frames, dtype=np.float64)
    extras = np.cos(0.05 * frames[:, None] + np.arange(3, max(dim, 3))[None, :])
    first = np.asarray(indices, np.float64) + 0.5
    ids = np.stack([first, np.full_like(frames, episode), frames], 1)
    return np.concatenate([ids, extras], axis=1)[:, :dim].astype(np.float32)
